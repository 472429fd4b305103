"""What glibc's allocator settings cost a CPU fit inside a Dask worker: CPU time, system time, page faults.

Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536``, which also freezes glibc's mmap
threshold at 128 KiB: each tensor buffer of a fit is then mapped and unmapped every iteration and faulted
in again. tilefill's workers get ``tilefill._cluster.WORKER_MALLOC_ENV`` instead. This runs the same fit
(real Landsat-8 pixels, one 128 px tile, the ``default`` network, one thread) in a fresh one-worker
``LocalCluster`` per setting and reads the worker's own resource usage around the fit, so the figures are
the worker's, not the machine's (CPU and system seconds and minor page faults hardly depend on what else
runs; wall time does, and is reported beside them).

Usage
-----
    python benchmarks/studies/allocator.py --iterations 60 --repeats 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

SETTINGS = {
    "dask default (MALLOC_TRIM_THRESHOLD_=65536)": {"MALLOC_TRIM_THRESHOLD_": "65536"},
    "glibc default (no MALLOC_ variable)": {"MALLOC_TRIM_THRESHOLD_": None},
    "tilefill (trim and mmap thresholds 1 GiB)": "tilefill",
}


def _fit_in_worker(preset: str, tile: int, iterations: int) -> dict:
    """Run in the worker: one fit; the worker's CPU, system time and minor faults around it."""
    import resource
    import time

    import torch

    from tilefill import load_config
    from tilefill._demo import load_sample
    from tilefill._dip import fit_dip
    from tilefill._gaps import slc_off_mask

    torch.set_num_threads(1)
    cfg = load_config(preset, {"fit.iterations": iterations, "fit.validation": 0.0, "fit.blend_auto": False})
    data = load_sample("landsat8")[0][:, :tile, :tile].astype(np.float32)
    lo, hi = data.min(axis=(1, 2), keepdims=True), data.max(axis=(1, 2), keepdims=True)
    image = (data - lo) / (hi - lo)
    known = np.broadcast_to(~slc_off_mask((tile, tile), seed=7, scene_width=6167, x_offset=1000), image.shape).copy()
    before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fit_dip(image, known, cfg.network, cfg.fit, seed=0, device="cpu")
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
    return {"wall_s": wall, "user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime,
            "minor_faults": after.ru_minflt - before.ru_minflt, "env": {k: os.environ.get(k) for k in (
                "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")}}


def measure(env, preset: str, tile: int, iterations: int) -> dict:
    import dask
    from distributed import Client, LocalCluster

    from tilefill._cluster import LOOPBACK, WORKER_MALLOC_ENV

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    if env == "tilefill":
        environ.update(WORKER_MALLOC_ENV)
    else:
        for k, v in env.items():
            environ[k] = v  # None: the variable is not set at all
            if v is None:  # the nanny copies its settings into this process's environment: undo an earlier one
                os.environ.pop(k, None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host=LOOPBACK,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            return client.submit(_fit_in_worker, preset, tile, iterations, pure=False).result()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--tile-size", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    rows = []
    for name, env in SETTINGS.items():
        runs = [measure(env, args.preset, args.tile_size, args.iterations) for _ in range(args.repeats)]
        med = {k: statistics.median(r[k] for r in runs) for k in ("wall_s", "user_s", "sys_s", "minor_faults")}
        rows.append({"setting": name, "env": runs[0]["env"], "median": med, "runs": runs})
        print(f"{name:<48} cpu {med['user_s'] + med['sys_s']:6.1f} s (sys {med['sys_s']:5.1f})  "
              f"minor faults {med['minor_faults']:>10.0f}  wall {med['wall_s']:6.1f} s", flush=True)
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
            "python": sys.version.split()[0], "preset": args.preset, "tile": args.tile_size,
            "iterations": args.iterations, "repeats": args.repeats, "threads": 1,
            "note": "worker's own getrusage around one fit; no GPU in this run"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"allocator-{args.preset}-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
