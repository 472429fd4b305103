"""Quality against compute: where each network, tile size and iteration budget sits, and the Pareto front.

Each point is a preset plus overrides, run through the whole pipeline (``tilefill.fill_scene``, via
``quality.run_case``) on the same cases, and scored on the gap pixels. Its cost is counted, not timed:
FLOPs of every fit of the run (each tile's iterations x the network's FLOPs per iteration on its
window, ``tilefill._dip.flops_per_iteration``), per gap-filled megapixel, and extrapolated to a full
8000 x 7000 x 4 Landsat scene with simulated SLC-off stripes (:func:`scene_flops`: the tiles that
have gaps, less those the thin-gap rule fills without a fit). Wall seconds are reported too, but on a
shared 2-core machine they are only indicative.

Usage
-----
    python benchmarks/frontier.py --points all --cases landsat8:slc,paper:paper26,sentinel2:slc,landsat8:f35 \\
        --crop 192 --workers 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import machine_meta  # noqa: E402
from quality import run_case  # noqa: E402

from tilefill import TileGrid, load_config  # noqa: E402
from tilefill._dip import flops_per_iteration  # noqa: E402

_FLAT = lambda c, s: {"network.channels_down": [c] * 5, "network.channels_up": [c] * 5,  # noqa: E731
                      "network.channels_skip": [s] * 5}
_SLIM = lambda cs, s: {"network.channels_down": list(cs), "network.channels_up": list(cs),  # noqa: E731
                       "network.channels_skip": [s] * len(cs)}
# `default`'s own settings (32 channels flat, 128 px tiles, 500 iterations, 1 px thin-gap rule; `fast`'s
# too until it became the slim pyramid below), spelt out: the points below vary this copy, so what they
# measure does not move if the preset ever does
_FLAT32 = {**_FLAT(32, 32), "tiles.size": 128, "tiles.overlap": 32, "fit.iterations": 500,
           "fit.check_every": 500, "fit.thin_gap_px": 1}


def _vary(overrides: dict) -> tuple[str, dict]:
    return "default", {**_FLAT32, **overrides}


_SLIM8 = _SLIM((8, 16, 32, 64, 64), 4)
# name -> (preset, overrides). "default" and "fast" are the presets as shipped; the others change one or
# two things of default's settings.
POINTS = {
    "default": ("default", {}),
    "fast": ("fast", {}),
    # the most iterations of `default`'s network within the 10 PFLOP a `default` may cost (9.73 PFLOP)
    "flat32-it600": _vary({"fit.iterations": 600, "fit.check_every": 600}),
    "flat32-skip4": _vary(_FLAT(32, 4)),
    "flat24-skip8": _vary(_FLAT(24, 8)),
    "flat16": _vary(_FLAT(16, 16)),
    "flat16-skip4": _vary(_FLAT(16, 4)),
    "flat16-skip4-it300": _vary({**_FLAT(16, 4), "fit.iterations": 300}),
    "flat16-skip4-it1000": _vary({**_FLAT(16, 4), "fit.iterations": 1000}),
    "flat16-skip4-stop": _vary({**_FLAT(16, 4), "fit.iterations": 1000, "fit.check_every": 50, "experimental.patience": 4}),
    "slim8-64-skip4": _vary(_SLIM8),
    "slim16-128-skip4": _vary(_SLIM((16, 32, 64, 128, 128), 4)),
    "slim8-64-skip4-lr0.02": _vary({**_SLIM8, "fit.learning_rate": 0.02}),
    # the thin-gap rule widened to 3 px (tiles whose gaps all lie within 3 px of data: biharmonic
    # alone, 0.77x the fitted tiles of a full SLC-off scene) pays for 650 iterations
    "slim8-64-skip4-thin3-it650": _vary({**_SLIM8, "fit.thin_gap_px": 3, "fit.iterations": 650,
                                         "fit.check_every": 650}),
    "slim8-128-skip4-thin3": _vary({**_SLIM((8, 16, 32, 64, 128), 4), "fit.thin_gap_px": 3}),
    # larger tiles waste less on overlaps (a scene's pixels fitted 1.31x at 256 px, 1.44x at 192 px,
    # 1.78x at 128 px): the same 1.6 PFLOP buys more iterations per tile
    "slim8-64-skip4-t192-thin3-it780": _vary({**_SLIM8, "tiles.size": 192, "fit.thin_gap_px": 3,
                                              "fit.iterations": 780, "fit.check_every": 780}),
    # `fast` since 2026-12-03 (with its own distance curve): with the fixed blend of the time it lost two
    # bands to biharmonic on the demo's crop
    "slim8-64-skip4-t192-it590": _vary({**_SLIM8, "tiles.size": 192, "fit.iterations": 590, "fit.check_every": 590,
                                        "engine.channels_last": True}),
    "slim8-64-skip4-t256-thin3-it840": _vary({**_SLIM8, "tiles.size": 256, "fit.thin_gap_px": 3,
                                              "fit.iterations": 840, "fit.check_every": 840}),
    # `fast` stopped on its hidden pixels: up to 1000 iterations, scored every 50 from the 500th (the EMA
    # averages the second half of the cap), stopped after 3 checks without a better score, each tile giving
    # its best-scored output; its cost is the iterations the tiles ran (`pflop_at_mean_iterations`)
    "fast-stop1000": ("fast", {"fit.iterations": 1000, "fit.check_every": 50, "experimental.patience": 3}),
    "flat16-skip4-tile64": _vary({**_FLAT(16, 4), "tiles.size": 64, "tiles.overlap": 32}),
    "flat16-skip4-lr0.02": _vary({**_FLAT(16, 4), "fit.learning_rate": 0.02}),
}
SCENE = (7000, 8000)  # rows, columns of the full scene the FLOPs are extrapolated to


def run_flops(cfg, report, bands: int) -> float:
    """FLOPs of a run's fits: each fitted tile's iterations x its network's FLOPs per iteration, x networks."""
    per_tile = 0.0
    nets = cfg.experimental.ensemble * (bands if cfg.fit.per_band else 1) * len(cfg.experimental.inputs)
    cin = 1 if cfg.fit.per_band else bands
    for t in report.tiles:
        if t.status == "filled" and t.iterations:
            per_tile += t.iterations * _flops(cin, cfg.network, t.window) * nets
    return per_tile


@lru_cache(maxsize=None)
def _flops(cin: int, network, side: int) -> float:
    return flops_per_iteration(cin, cin, network, side, side)


@lru_cache(maxsize=None)
def _scene_mask():
    from tilefill._gaps import slc_off_mask

    return slc_off_mask(SCENE, seed=0)


def scene_flops(cfg, bands: int = 4) -> dict:
    """FLOPs of ``cfg`` over a full 8000 x 7000 Landsat scene with simulated SLC-off stripes (21% gaps).

    Counts the grid's tiles that have gaps, less those whose gaps all lie within ``fit.thin_gap_px`` of
    data (filled by the classical partner, no fit), each at ``fit.iterations`` (an upper bound where
    early stopping ends fits sooner; the measured mean iterations per tile are reported beside it).
    """
    from tilefill._fill import _tile_kind

    mask = _scene_mask()
    grid = TileGrid.from_config(SCENE[0], SCENE[1], cfg)
    with_gaps = fitted = 0
    for t in grid:
        g = mask[t.slices]
        if not g.any():
            continue
        with_gaps += 1
        if _tile_kind(cfg, np.broadcast_to(~g, (1,) + g.shape), True) == "thin":  # the pipeline's own rule
            continue
        fitted += 1
    nets = cfg.experimental.ensemble * (bands if cfg.fit.per_band else 1) * len(cfg.experimental.inputs)
    per_fit = cfg.fit.iterations * _flops(1 if cfg.fit.per_band else bands, cfg.network, cfg.tiles.size) * nets
    return {"tiles": len(grid), "tiles_with_gaps": with_gaps, "tiles_fitted": fitted,
            "pflop": fitted * per_fit / 1e15}


def pareto(points: list[dict]) -> list[str]:
    """Names of the points no other point beats on both quality (mean gap r2, higher) and cost (lower)."""
    front = []
    for p in points:
        if not any(q["r2"] >= p["r2"] and q["pflop"] <= p["pflop"] and (q["r2"] > p["r2"] or q["pflop"] < p["pflop"])
                   for q in points):
            front.append(p["name"])
    return front


def summarise_point(name: str, rows: list[dict], cfg) -> dict:
    r2 = float(np.mean([r["gaps_mean"]["r2"] for r in rows]))
    rmse = float(np.mean([r["gaps_mean"]["rmse"] for r in rows]))
    flops = sum(r["flops"] for r in rows)
    gap_mpx = sum(r["gap_fraction"] * r["shape"][0] * r["shape"][1] for r in rows) / 1e6
    iters = [r["mean_iterations"] for r in rows if r["mean_iterations"]]
    mean_iterations = float(np.mean(iters)) if iters else 0.0
    scene = scene_flops(cfg)
    return {"name": name, "r2": r2, "rmse": rmse, "flops_per_gap_mpx": flops / gap_mpx,
            "seconds": float(sum(r["seconds"] for r in rows)), "mean_iterations": mean_iterations,
            **{f"scene_{k}": v for k, v in scene.items()}, "pflop": scene["pflop"],
            # with early stopping the cap overstates the cost: the scene at the cases' mean iterations (their
            # tile mix, not the full scene's)
            "pflop_at_mean_iterations": scene["pflop"] * mean_iterations / cfg.fit.iterations,
            "per_case_r2": {r["case"]: r["gaps_mean"]["r2"] for r in rows}}


def markdown(summary: list[dict], front: list[str], peers: dict) -> str:
    cases = list(summary[0]["per_case_r2"])
    out = ["| point | PFLOP / full scene (at the cases' mean iterations) | TFLOP / gap Mpx | mean iterations | mean gap r2 | "
           "mean gap RMSE | " + " | ".join(cases) + " | s |", "|---" * (7 + len(cases)) + "|"]
    for p in sorted(summary, key=lambda p: p["pflop"]):
        mark = "**" if p["name"] in front else ""
        ran = p.get("pflop_at_mean_iterations", p["pflop"])  # reports before 2026-12-06 lack it
        cost = f"{p['pflop']:.2f}" + (f" ({ran:.2f})" if round(ran, 2) != round(p["pflop"], 2) else "")
        out.append(f"| {mark}{p['name']}{mark} | {cost} | {p['flops_per_gap_mpx'] / 1e12:.1f} | "
                   f"{p['mean_iterations']:.0f} | {p['r2']:.3f} | {p['rmse']:.4f} | "
                   + " | ".join(f"{p['per_case_r2'][c]:.3f}" for c in cases) + f" | {p['seconds']:.0f} |")
    for method, per_case in peers.items():
        out.append(f"| {method} (no fit) | 0 | 0 | 0 | {np.mean(list(per_case.values())):.3f} | | "
                   + " | ".join(f"{per_case.get(c, float('nan')):.3f}" for c in cases) + " | |")
    return "\n".join(out) + "\n\nBold: the Pareto front (no other point has both higher mean gap r2 and fewer FLOPs).\n"


def plot(summary: list[dict], front: list[str], peers: dict, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p in summary:
        on = p["name"] in front
        ax.scatter(p["pflop"], p["r2"], color="C3" if on else "C0", zorder=3)
        ax.annotate(p["name"], (p["pflop"], p["r2"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    fr = sorted((p for p in summary if p["name"] in front), key=lambda p: p["pflop"])
    ax.plot([p["pflop"] for p in fr], [p["r2"] for p in fr], color="C3", lw=1)
    for i, (method, per_case) in enumerate(peers.items()):
        ax.axhline(np.mean(list(per_case.values())), color=f"C{i + 4}", ls="--", lw=1, label=f"{method} (no fit)")
    ax.set(xscale="log", xlabel="PFLOP per full 8000 x 7000 x 4 Landsat scene (SLC-off)", ylabel="mean gap r2")
    if peers:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", default="all", help=f"comma-separated, or all: {', '.join(POINTS)}")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every point")
    ap.add_argument("--cases", default="landsat8:slc,paper:paper26,sentinel2:slc,landsat8:f35")
    ap.add_argument("--peers", default="biharmonic,gdal")
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    import yaml

    common = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    names = list(POINTS) if args.points == "all" else args.points.split(",")
    cases = args.cases.split(",")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    prefix = out_dir / f"frontier-{stamp}"
    meta = {**machine_meta(torch.device("cpu")), "cases": cases, "crop": args.crop, "seed": args.seed,
            "workers": args.workers, "common_overrides": common, "scene": list(SCENE)}
    rows, summary, peers = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for method in [m for m in args.peers.split(",") if m]:
            cfg = load_config("default", common)
            for case in cases:
                r = run_case(case, [method], cfg, args.crop, args.seed, args.workers, work)[0]
                peers.setdefault(method, {})[case] = r["gaps_mean"]["r2"]
        for name in names:
            preset, over = POINTS[name]
            cfg = load_config(preset, {**over, **common}).override({"name": name})
            point_rows = []
            for case in cases:
                r = run_case(case, ["dip"], cfg, args.crop, args.seed, args.workers, work, report_out=True)[0]
                report = r.pop("report")
                r["point"] = name
                r["flops"] = run_flops(cfg, report, len(r["gaps"]))
                its = [t.iterations for t in report.tiles if t.status == "filled" and t.iterations]
                r["mean_iterations"] = float(np.mean(its)) if its else 0.0
                point_rows.append(r)
            rows += point_rows
            summary.append(summarise_point(name, point_rows, cfg))
            p = summary[-1]
            print(f"== {name}: mean gap r2 {p['r2']:.3f}, {p['pflop']:.2f} PFLOP per scene, "
                  f"{p['flops_per_gap_mpx'] / 1e12:.1f} TFLOP per gap Mpx", flush=True)
            front = pareto(summary)
            prefix.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": summary, "front": front,
                                                               "peers": peers, "rows": rows}, indent=1, default=str))
    front = pareto(summary)
    table = markdown(summary, front, peers)
    prefix.with_suffix(".md").write_text(f"# Quality against compute\n\n```\n{json.dumps(meta, indent=1)}\n```\n\n{table}")
    made = plot(summary, front, peers, prefix.with_name(prefix.name + ".png"))
    print(table)
    print("wrote", prefix.with_suffix(".json"), prefix.with_suffix(".md"), made or "")


if __name__ == "__main__":
    main()
