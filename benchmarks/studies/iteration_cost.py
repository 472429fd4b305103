"""CPU time of one fit iteration: `default`'s flat network against `fast`'s slim pyramid, with and without fused
Adam and NHWC memory (``engine.channels_last``).

One real Landsat-8 tile with SLC-off stripes, one thread, tilefill's engine (``fit_problems``), timed
like the throughput benchmark (warm-up iterations out, median of repeats). "per-parameter Adam" runs
the same fit with ``torch.optim.Adam(fused=False)``, the loop tilefill used before fusing.

Usage
-----
    python benchmarks/studies/iteration_cost.py --tile-size 128 --iterations 60 --repeats 3 --out benchmarks/reports
    python benchmarks/studies/iteration_cost.py --tile-size 192 --iterations 30 --repeats 3 --bf16   # + bf16 autocast
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: _shared, beside the product scripts
from _shared import machine_meta, real_tiles, time_engine  # noqa: E402

from tilefill import load_config  # noqa: E402
from tilefill._config import EngineConfig  # noqa: E402
from tilefill._dip import Problem  # noqa: E402
from tilefill._runtime import Runtime  # noqa: E402

SLIM = {"network.channels_down": [8, 16, 32, 64, 64], "network.channels_up": [8, 16, 32, 64, 64],
        "network.channels_skip": [4] * 5}


@contextmanager
def adam(fused: bool):
    """``torch.optim.Adam`` as tilefill calls it (fused), or with the per-parameter loop."""
    original = torch.optim.Adam
    if not fused:
        torch.optim.Adam = lambda params, **kw: original(params, **{**kw, "fused": False})
    try:
        yield
    finally:
        torch.optim.Adam = original


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tile-size", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=60, help="timed iterations per repeat (5 warm-up before)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bf16", action="store_true",
                    help="also time bf16 autocast (engine.precision) with fused Adam and NHWC memory")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device("cpu")
    image, known = real_tiles(args.tile_size, 1)[0]
    rows = []
    # default's settings with or without the slim network (fast is that network on 192 px tiles)
    for net_name, over in (("default (flat 32)", {}), ("slim 8/16/32/64/64, skip 4", SLIM)):
        cfg = load_config("default", over)
        variants = [(False, False, "fp32"), (True, False, "fp32"), (True, True, "fp32")]
        for fused, nhwc, precision in variants + ([(True, True, "bf16")] if args.bf16 else []):
            rt = Runtime(EngineConfig(channels_last=nhwc, precision=precision), device)
            times = []
            with adam(fused):
                for r in range(args.repeats):
                    sec, _ = time_engine([Problem(image, known, r)], cfg.network, cfg.fit, rt, 5, args.iterations)
                    times.append(sec)
            row = {"network": net_name, "adam": "fused" if fused else "per-parameter", "channels_last": nhwc,
                   "precision": precision, "ms_per_iteration": 1000 * float(np.median(times)),
                   "repeats_ms": [1000 * t for t in times]}
            rows.append(row)
            print(f"{net_name:<28} Adam {row['adam']:<14} channels_last {str(nhwc):<5} {precision} "
                  f"{row['ms_per_iteration']:.1f} ms/iteration", flush=True)
    meta = {**machine_meta(device), "tile_size": args.tile_size, "timed_iterations": args.iterations,
            "warmup_iterations": 5, "repeats": args.repeats, "tile": "real Landsat-8, SLC-off stripes, seed 7"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"iteration-cost-cpu-{args.tile_size}-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
