"""What each preset costs on a full scene, counted, not timed: tiles, fits and PFLOP.

The scene is the one ``benchmarks/frontier.py`` extrapolates to: 8000 x 7000 px, 4 bands, simulated
Landsat-7 SLC-off stripes (``frontier.scene_flops``: the grid's tiles that have gaps, less those the
thin-gap rule fills by biharmonic alone, each at ``fit.iterations``). No fit runs: seconds here.
With ``--iteration-cost`` (a ``benchmarks/studies/iteration_cost.py`` report) each preset whose network it
timed gets an estimate of its CPU time per scene: fits x iterations x one iteration's time on one thread.

Usage
-----
    python benchmarks/scene_cost.py --presets paper,default,fast --out benchmarks/reports/scene-cost-presets \\
        --iteration-cost fast=benchmarks/reports/iteration-cost-cpu-192-20261203-193703.json \\
        --iteration-cost default=benchmarks/reports/iteration-cost-cpu-128-20261203-193858.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # frontier, _shared: beside this script
from _shared import machine_meta  # noqa: E402
from frontier import SCENE, scene_flops  # noqa: E402

from tilefill import load_config  # noqa: E402

# the network names iteration_cost.py gives its rows, by the channels of a preset's network
_NETWORKS = {(32, 32, 32, 32, 32): "default (flat 32)", (8, 16, 32, 64, 64): "slim 8/16/32/64/64, skip 4"}


def iteration_seconds(report: dict, cfg) -> float | None:
    """One fp32 iteration of ``cfg``'s network in ``report`` (fused Adam, ``cfg``'s memory layout), or None."""
    name = _NETWORKS.get(tuple(cfg.network.channels_down))
    for row in report["rows"]:
        if (row["network"] == name and row["adam"] == "fused" and row.get("precision", "fp32") == "fp32"
                and row["channels_last"] == cfg.engine.channels_last):
            return row["ms_per_iteration"] / 1000
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="paper,default,fast", help="comma-separated preset names or YAML files")
    ap.add_argument("--iteration-cost", action="append", default=[], metavar="PRESET=JSON",
                    help="an iteration_cost.py report timing PRESET's network at its tile size (repeatable)")
    ap.add_argument("--out", default="benchmarks/results/scene-cost", help="prefix of the .json and .md written")
    args = ap.parse_args(argv)
    timings = dict(item.split("=", 1) for item in args.iteration_cost)
    rows = []
    for name in args.presets.split(","):
        cfg = load_config(name)
        row = {"preset": name, "network": list(cfg.network.channels_down), "tile_size": cfg.tiles.size,
               "iterations": cfg.fit.iterations, **scene_flops(cfg)}
        if name in timings:
            seconds = iteration_seconds(json.loads(Path(timings[name]).read_text()), cfg)
            if seconds is None:
                raise SystemExit(f"{timings[name]} has no fp32 fused-Adam row of {name}'s network")
            row.update(iteration_cost_report=timings[name], seconds_per_iteration=seconds,
                       cpu_hours_one_thread=row["tiles_fitted"] * cfg.fit.iterations * seconds / 3600)
        rows.append(row)
        print(f"{name}: {row['tiles_fitted']} fits, {row['pflop']:.2f} PFLOP per scene", flush=True)
    meta = {**machine_meta(torch.device("cpu")), "scene": {"rows": SCENE[0], "columns": SCENE[1], "bands": 4,
                                            "gaps": "simulated SLC-off stripes, seed 0"}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["| preset | tiles | with gaps | fitted | iterations | PFLOP per scene | CPU hours, one thread (est.) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        hours = f"{r['cpu_hours_one_thread']:.0f}" if "cpu_hours_one_thread" in r else "not timed"
        lines.append(f"| {r['preset']} | {r['tiles']} | {r['tiles_with_gaps']} | {r['tiles_fitted']} | "
                     f"{r['iterations']} | {r['pflop']:.2f} | {hours} |")
    out.with_suffix(".md").write_text(f"# Cost of a full scene per preset\n\n```\n{json.dumps(meta, indent=1)}\n```\n\n"
                                      + "\n".join(lines) + "\n")
    print("\n".join(lines))
    print("wrote", out.with_suffix(".json"), out.with_suffix(".md"))


if __name__ == "__main__":
    main()
