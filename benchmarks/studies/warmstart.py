"""Warm starts: does a network fitted on one tile of a scene make the other tiles converge sooner?

For each target tile of a real scene (simulated SLC-off stripes), DIP is fitted from a fresh network
and from the weights of a network already fitted on another tile of the same scene (the "scene prior";
a fresh optimiser), once with the tile's own input z and once with the prior's z (the network has
learnt to map that z to a tile of this scene). Both record the gap RMSE of the network's output
(no EMA, no blend: the network alone) at checkpoints, so the curves show how many iterations a warm
start saves at equal quality, if any. A plain loop, one thread, as the public DIP code runs it.

Usage
-----
    python benchmarks/studies/warmstart.py --scene landsat8 --preset default --iterations 500 --tiles 4
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tilefill import load_config
from tilefill._dip import SkipNet

CHECKPOINTS = (25, 50, 100, 150, 200, 300, 400, 500, 750, 1000)


def scene_tiles(scene: str, size: int, count: int, seed: int = 0):
    """``count + 1`` tiles (image in [0, 1], gap mask) of a real scene with SLC-off stripes; the first is the prior's."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/quality.py
    from quality import load_case

    truth, gap, *_ = load_case(f"{scene}:slc", None, seed)
    truth = truth.astype(np.float32)
    lo, hi = truth.min(axis=(1, 2), keepdims=True), truth.max(axis=(1, 2), keepdims=True)
    norm = (truth - lo) / (hi - lo)
    h, w = gap.shape
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count + 1):
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        out.append((norm[:, y:y + size, x:x + size], gap[y:y + size, x:x + size]))
    return out


def fit(image, gap, cfg, iterations: int, seed: int, init: dict | None = None,
        z_seed: int | None = None) -> tuple[dict, dict]:
    """A plain DIP loop; returns the final weights and {iteration: gap RMSE (mean of bands)} at checkpoints.

    ``init``: weights to start from; ``z_seed``: the seed of the input z (default ``seed``).
    """
    torch.manual_seed(seed)
    c, h, w = image.shape
    net = SkipNet(c, c, cfg.network)
    if init is not None:
        net.load_state_dict(init)
    z = torch.rand((1, c, h, w), generator=torch.Generator().manual_seed(seed if z_seed is None else z_seed))
    z = z * cfg.fit.input_scale
    gen = torch.Generator().manual_seed(seed)
    img = torch.from_numpy(image)[None]
    mask = torch.from_numpy(np.broadcast_to(~gap, image.shape).astype(np.float32).copy())[None]
    opt = torch.optim.Adam(net.parameters(), lr=cfg.fit.learning_rate)
    curve = {}
    for it in range(1, iterations + 1):
        opt.zero_grad()
        out = net(z + torch.randn(z.shape, generator=gen) * cfg.fit.input_noise)
        loss = ((out - img) ** 2 * mask).mean()
        loss.backward()
        opt.step()
        if it in CHECKPOINTS or it == iterations:
            with torch.no_grad():
                pred = net(z)[0].numpy()
            curve[it] = float(np.mean([np.sqrt(np.mean((pred[b] - image[b])[gap] ** 2)) for b in range(c)]))
    return net.state_dict(), curve


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scene", default="landsat8")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--prior-iterations", type=int, default=None, help="default: --iterations")
    ap.add_argument("--tiles", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    import yaml

    torch.set_num_threads(1)
    cfg = load_config(args.preset, {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)})
    tiles = scene_tiles(args.scene, cfg.tiles.size, args.tiles, args.seed)
    t0 = time.perf_counter()
    prior_seed = args.seed + 1000
    prior, prior_curve = fit(*tiles[0], cfg, args.prior_iterations or args.iterations, seed=prior_seed)
    rows = []
    for k, (image, gap) in enumerate(tiles[1:], start=1):
        _, fresh = fit(image, gap, cfg, args.iterations, seed=args.seed + k)
        _, warm = fit(image, gap, cfg, args.iterations, seed=args.seed + k, init=prior)
        _, warm_z = fit(image, gap, cfg, args.iterations, seed=args.seed + k, init=prior, z_seed=prior_seed)
        rows.append({"tile": k, "gap_fraction": float(gap.mean()), "fresh": fresh, "warm": warm,
                     "warm_prior_z": warm_z})
        print(f"tile {k} (fresh/warm/warm, prior's z): "
              + "  ".join(f"{it}: {fresh[it]:.4f}/{warm[it]:.4f}/{warm_z[it]:.4f}" for it in fresh), flush=True)
    its = sorted(rows[0]["fresh"])
    kinds = ("fresh", "warm", "warm_prior_z")
    mean = {kind: {it: float(np.mean([r[kind][it] for r in rows])) for it in its} for kind in kinds}
    target = mean["fresh"][its[-1]]
    reach = {kind: next((it for it in its if mean[kind][it] <= target), None) for kind in mean}
    result = {"meta": {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                       "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
                       "device": "cpu, 1 thread (no GPU in this run)", "scene": args.scene, "preset": args.preset,
                       "overrides": args.set, "iterations": args.iterations, "tiles": args.tiles, "seed": args.seed,
                       "seconds": time.perf_counter() - t0},
              "prior_curve": prior_curve, "rows": rows, "mean_gap_rmse": mean,
              "iterations_to_fresh_final_rmse": reach}
    print("mean gap RMSE (network alone), fresh / warm / warm with the prior's z: "
          + "  ".join(f"{it}: " + "/".join(f"{mean[k][it]:.4f}" for k in kinds) for it in its))
    print(f"iterations to reach the fresh fit's final {target:.4f}: "
          + ", ".join(f"{k} {reach[k]}" for k in kinds))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"warmstart-{args.scene}-{Path(args.preset).stem}-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
