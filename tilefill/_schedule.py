"""Schedule: one Dask future per tile, on a local cluster (CPU or one worker per GPU) or in-process.

The client never imports torch or touches CUDA: only the workers do, after each has been
started with its own ``CUDA_VISIBLE_DEVICES``, so every worker owns one GPU (a CUDA context
made in the client first would pin them all to GPU 0). GPU workers advertise the resource
``GPU=1`` and tile tasks ask for it. Tiles are submitted as plain futures, not as a dask.array
graph, because graph optimisation can drop resource annotations.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from tilefill import TilefillError
from tilefill._fill import TileResult, fill_tile


def default_workers() -> int:
    """CPU worker processes when the user gives none: one per core, at most 8."""
    return max(1, min(os.cpu_count() or 1, 8))


def _visible_gpus(n: int) -> list[str]:
    # Respect a CUDA_VISIBLE_DEVICES the user already set (e.g. a SLURM allocation): take its first n.
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    pool = [d.strip() for d in visible.split(",") if d.strip()] if visible else [str(i) for i in range(n)]
    if len(pool) < n:
        raise TilefillError(f"--gpus {n} but CUDA_VISIBLE_DEVICES lists only {len(pool)} device(s): {visible}")
    return pool[:n]


def _worker_probe() -> dict:
    import torch

    ok = torch.cuda.is_available()
    return {"cuda": ok, "name": torch.cuda.get_device_name(0) if ok else None,
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}


@dataclass
class Cluster:
    """A client plus what kind of workers it has; ``client`` is None for in-process runs."""

    client: object | None
    gpu: bool = False
    description: str = "in-process"

    @property
    def resources(self) -> dict | None:
        return {"GPU": 1} if self.gpu else None


@contextmanager
def start_cluster(*, workers: int | None = None, gpus: int | None = None, check_cuda: bool = True) -> Iterator[Cluster]:
    """Start a local Dask cluster for one run and close it afterwards (also on Ctrl-C).

    ``gpus=N``: one worker process per GPU, each pinned with its own ``CUDA_VISIBLE_DEVICES``.
    ``workers=N``: N single-threaded CPU worker processes sharing the cores. ``workers=0``: no
    cluster, tiles run one after another in this process (debugging, notebooks).

    Examples
    --------
    >>> with start_cluster(workers=2) as cluster:  # doctest: +SKIP
    ...     results = run_tiles(cluster, "work/tiles.zarr", [0, 1, 2])
    """
    if workers is not None and gpus is not None:
        raise TilefillError("give either --workers or --gpus, not both")
    if workers is not None and workers < 0 or gpus is not None and gpus < 1:
        raise TilefillError("--workers must be 0 or more and --gpus 1 or more")
    if gpus is None and workers == 0:
        yield Cluster(None)
        return
    from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster

    quiet = dict(silence_logs=logging.ERROR)
    if gpus:
        spec = {
            f"gpu-{dev}": {"cls": Nanny, "options": {
                "nthreads": 1, "resources": {"GPU": 1},
                "env": {"CUDA_VISIBLE_DEVICES": dev, "TILEFILL_THREADS": "1"}}}
            for dev in _visible_gpus(gpus)
        }
        cluster = SpecCluster(workers=spec, scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}},
                              **quiet)
        desc = f"{gpus} GPU worker(s)"
    else:
        n = workers or default_workers()
        threads = max(1, (os.cpu_count() or 1) // n)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                               env={"TILEFILL_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}, **quiet)
        desc = f"{n} CPU worker(s) x {threads} thread(s)"
    client = Client(cluster)
    try:
        if gpus and check_cuda:
            for addr, probe in client.run(_worker_probe).items():
                if not probe["cuda"]:
                    raise TilefillError(
                        f"--gpus {gpus}: a worker sees no CUDA device (CUDA_VISIBLE_DEVICES={probe['visible']}); "
                        "use --workers for CPU")
        yield Cluster(client, gpu=bool(gpus), description=desc)
    finally:
        client.close()
        cluster.close()


class Progress:
    """Tiles done / total with elapsed time and ETA, on one line of stderr (a line per 5% when not a tty)."""

    def __init__(self, total: int, stream=None, label: str = "tiles"):
        self.total, self.done, self.label = total, 0, label
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self._step = max(1, total // 20)

    @staticmethod
    def _fmt(seconds: float) -> str:
        m, s = divmod(int(seconds), 60)
        h, m = divmod(m, 60)
        return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"

    def update(self, n: int = 1) -> None:
        self.done += n
        if not (self.tty or self.done % self._step == 0 or self.done == self.total):
            return
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        line = (f"{self.label} {self.done}/{self.total} [{100 * self.done // max(self.total, 1)}%] "
                f"elapsed {self._fmt(elapsed)} ETA {self._fmt(eta)}")
        self.stream.write(("\r" + line + ("\n" if self.done == self.total else "")) if self.tty else line + "\n")
        self.stream.flush()


@dataclass
class TileRun:
    """Results of a batch of tile tasks: what finished and what failed (with its cause)."""

    results: list[TileResult] = field(default_factory=list)
    failures: dict[int, str] = field(default_factory=dict)


def run_tiles(cluster: Cluster, store_path: str, indices: Sequence[int], *,
              on_done: Callable[[TileResult | None], None] | None = None) -> TileRun:
    """Fill the given tiles: one future per tile; every tile is tried even if some fail."""
    run = TileRun()
    if cluster.client is None:
        for i in indices:
            try:
                run.results.append(fill_tile(store_path, i))
            except Exception as exc:  # noqa: BLE001 - a tile's failure is reported, the rest go on
                run.failures[i] = f"{type(exc).__name__}: {exc}"
            if on_done:
                on_done(run.results[-1] if run.results and run.results[-1].index == i else None)
        return run
    from distributed import as_completed

    client = cluster.client
    futures = {client.submit(fill_tile, store_path, i, key=f"tilefill-tile-{i}-{os.path.basename(store_path)}-{time.time_ns()}",
                             resources=cluster.resources, pure=False): i for i in indices}
    try:
        for fut in as_completed(list(futures)):
            i = futures[fut]
            if fut.status == "finished":
                run.results.append(fut.result())
            else:
                exc = fut.exception()
                run.failures[i] = f"{type(exc).__name__}: {exc}"
            if on_done:
                on_done(run.results[-1] if i not in run.failures else None)
    except BaseException:  # Ctrl-C: stop the remaining tiles before the cluster closes
        client.cancel(list(futures), force=True)
        raise
    return run
