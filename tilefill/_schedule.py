"""Schedule: one Dask future per tile (or per ``engine.tiles_per_task`` tiles), on a local cluster
(CPU or one worker per GPU), an existing Dask cluster, or in-process.

The client never imports torch or touches CUDA: only the workers do, after each has been
started with its own ``CUDA_VISIBLE_DEVICES``, so every worker owns one GPU (a CUDA context
made in the client first would pin them all to GPU 0). GPU workers advertise the resource
``GPU=1`` and tile tasks ask for it: on a cluster tilefill did not start, as soon as one worker
advertises it. Tiles are submitted as plain futures, not as a dask.array graph, because graph
optimisation can drop resource annotations.

Faults: a worker that dies mid-tile takes its tiles with it, and Dask's scheduler runs them
again on another worker (up to ``distributed.scheduler.allowed-failures`` deaths per tile,
then the tile fails with ``KilledWorker``); a tile that raises is tried once more, then fails.
Either way the other tiles go on. A tile task first checks the store, so a tile that a lost
worker had already finished is not fitted twice.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tilefill import TilefillError
from tilefill._fill import TileResult, fill_tile, fill_tiles

# Everything tilefill starts listens on loopback only: a Dask scheduler runs any pickled code it is sent
LOOPBACK = "127.0.0.1"
# What glibc's allocator gets in the worker processes tilefill starts. Dask's nanny sets
# MALLOC_TRIM_THRESHOLD_=65536, which also freezes glibc's mmap threshold at 128 KiB: every tensor
# buffer of a fit is then mmapped and unmapped each iteration and faulted in again (measured: a
# third of a CPU fit's time in the kernel). Buffers up to 1 GiB stay in the heap instead.
# Set either variable in your environment to override it (Dask takes yours first).
WORKER_MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": str(2**30), "MALLOC_MMAP_THRESHOLD_": str(2**30)}
CONNECT_TIMEOUT = 10.0  # seconds to wait for an existing scheduler to answer
WORKER_TIMEOUT = 60.0  # seconds to wait for a connected cluster's first worker (batch systems start them late)
RETRIES = 1  # extra tries for a tile that raised (a worker that died is Dask's allowed-failures business)


def default_workers() -> int:
    """CPU worker processes when the user gives none: one per core, at most 8."""
    return max(1, min(os.cpu_count() or 1, 8))


def _visible_gpus(n: int) -> list[str]:
    # Respect a CUDA_VISIBLE_DEVICES the user already set (e.g. a SLURM allocation): take its first n.
    # Set but empty means no GPU, as CUDA reads it
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    pool = [str(i) for i in range(n)] if visible is None else [d.strip() for d in visible.split(",") if d.strip()]
    if len(pool) < n:
        raise TilefillError(f"--gpus {n} but CUDA_VISIBLE_DEVICES lists only {len(pool)} device(s): {visible!r}")
    return pool[:n]


def _cuda_device_count() -> int:
    """CUDA devices a fresh process with this environment sees: asked in a child, so this one never touches CUDA."""
    try:
        out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                             capture_output=True, text=True, timeout=300, check=True)
        return int(out.stdout.split()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        raise TilefillError(f"could not ask torch how many CUDA devices are visible ({type(exc).__name__})") from None


def check_devices(*, device: str = "auto", workers: int | None = None, gpus: int | None = None,
                  external: bool = False) -> None:
    """Refuse, before any work, a device this machine cannot give: ``--gpus N`` beyond the GPUs it has,
    ``fit.device=cuda`` where no worker would see one. An existing cluster's workers are asked on connect.
    """
    if external:
        return
    if gpus:
        _visible_gpus(gpus)
        have = _cuda_device_count()
        if have < gpus:
            raise TilefillError(f"--gpus {gpus} but {have or 'no'} CUDA device(s) are visible here"
                                + (f"; use --gpus {have}" if have else "; use --workers for CPU workers"))
    elif device == "cuda":
        if workers != 0:
            raise TilefillError("fit.device=cuda but the CPU workers tilefill starts see no GPU: use --gpus N "
                                "(one worker per GPU), or --workers 0 to fit in this process")
        if not _cuda_device_count():
            raise TilefillError("fit.device=cuda but no CUDA device is visible here; use fit.device=auto or cpu")


def _check_cuda_workers(client, what: str) -> None:
    """Refuse a cluster whose tile workers (those advertising GPU=1, if any) see no CUDA device."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    gpu = [a for a, w in workers.items() if w.get("resources", {}).get("GPU", 0) >= 1]
    for addr, probe in client.run(_worker_probe, workers=gpu or None).items():
        if not probe["cuda"]:
            raise TilefillError(f"{what}: a worker sees no CUDA device ({addr}, CUDA_VISIBLE_DEVICES="
                                f"{probe['visible']}); use --workers for CPU")


def dask_setup(worker) -> None:
    """Preload of the workers tilefill starts: they ignore Ctrl-C, which the terminal sends them too.

    The command alone stops a run (cancel the tiles, close the workers, then the scheduler); a
    worker that stopped itself at the same moment raced the scheduler's shutdown and printed a
    heartbeat traceback.
    """
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


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

    def check_sees(self, path: str | Path) -> None:
        """Refuse a cluster whose workers cannot see the work store (it must be on a shared filesystem)."""
        if self.client is None:
            return
        seen = self.client.run(os.path.isdir, str(path))
        blind = sorted(addr for addr, ok in seen.items() if not ok)
        if blind:
            raise TilefillError(
                f"{len(blind)} of {len(seen)} Dask worker(s) cannot see the work store {path} (e.g. {blind[0]}); "
                "put --workdir (or the output) on a filesystem every worker shares")


def _probe(address: str) -> None:
    """Fail fast, in one line, unless a Dask scheduler answers at ``address``.

    A refused TCP connection fails at once, an unreachable host after CONNECT_TIMEOUT, and a
    service that is not a Dask scheduler on its reply. Asked over a bare comm rather than with a
    ``distributed.Client``, because a Client whose first connection failed hangs the
    interpreter's exit while it tries to close itself.
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from distributed.comm import connect
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, loc = parse_address(address)
        host, port = parse_host_port(loc)
    except ValueError as exc:
        raise TilefillError(f"{address!r} is not a Dask scheduler address ({exc}); e.g. tcp://head-node:8786") from None
    try:
        if scheme == "tcp":  # Dask's connect retries a refused port until its timeout
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise TilefillError(f"no Dask scheduler answers at {address} ({why}; waited up to {CONNECT_TIMEOUT:g} s)") from None

    async def identity():
        comm = await connect(address, timeout=CONNECT_TIMEOUT)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await asyncio.wait_for(comm.read(), CONNECT_TIMEOUT)
        finally:
            comm.abort()

    try:  # in a thread of its own: the caller may already run an event loop (a notebook)
        with ThreadPoolExecutor(1) as pool:
            ident = pool.submit(asyncio.run, identity()).result()
    except (OSError, TimeoutError) as exc:
        raise TilefillError(f"no Dask scheduler answers at {address} ({str(exc)[:160]})") from None
    except Exception:  # noqa: BLE001 - whatever a foreign service sends back
        ident = None
    if not isinstance(ident, dict) or ident.get("type") != "Scheduler":
        raise TilefillError(f"something answers at {address}, but not a Dask scheduler")


def _connect(scheduler: str | None, scheduler_file: str | Path | None):
    """A client of an existing cluster, or one clear line when it does not answer within CONNECT_TIMEOUT."""
    import json

    from distributed import Client

    if scheduler_file is not None:
        try:
            scheduler = json.loads(Path(scheduler_file).read_text())["address"]
        except FileNotFoundError:
            raise TilefillError(f"scheduler file {scheduler_file} not found (dask scheduler --scheduler-file writes it)") from None
        except (OSError, ValueError, KeyError, TypeError):
            raise TilefillError(f"{scheduler_file} is not a Dask scheduler file (JSON with an \"address\")") from None
    _probe(scheduler)
    try:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise TilefillError(f"the Dask scheduler at {scheduler} does not answer ({str(exc)[:160]})") from None
    try:
        client.wait_for_workers(1, timeout=WORKER_TIMEOUT)
    except TimeoutError:
        client.close()
        raise TilefillError(f"the Dask cluster at {scheduler} has no worker after {WORKER_TIMEOUT:g} s; start some "
                            "(dask worker ADDRESS --nthreads 1)") from None
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    gpu = any(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers)
    n_gpu = sum(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers)
    desc = f"Dask cluster at {client.scheduler.address}: {len(workers)} worker(s)" + (
        f", {n_gpu} with a GPU (tiles run there only)" if gpu else "")
    return client, gpu, desc


def check_cluster_args(*, workers: int | None = None, gpus: int | None = None, scheduler: str | None = None,
                       scheduler_file: str | Path | None = None) -> bool:
    """Refuse contradictory cluster options; True when they name an existing cluster."""
    if scheduler is not None and scheduler_file is not None:
        raise TilefillError("give either --scheduler or --scheduler-file, not both")
    external = scheduler is not None or scheduler_file is not None
    if external and (workers is not None or gpus is not None):
        raise TilefillError("--workers and --gpus start a local cluster; an existing one (--scheduler) brings its own")
    if workers is not None and gpus is not None:
        raise TilefillError("give either --workers or --gpus, not both")
    if workers is not None and workers < 0 or gpus is not None and gpus < 1:
        raise TilefillError("--workers must be 0 or more and --gpus 1 or more")
    return external


@contextmanager
def start_cluster(*, workers: int | None = None, gpus: int | None = None, scheduler: str | None = None,
                  scheduler_file: str | Path | None = None, check_cuda: bool = True) -> Iterator[Cluster]:
    """Start a local Dask cluster for one run and close it afterwards (also on Ctrl-C), or connect to one.

    ``gpus=N``: one worker process per GPU, each pinned with its own ``CUDA_VISIBLE_DEVICES``.
    ``workers=N``: N single-threaded CPU worker processes sharing the cores (a ``TILEFILL_THREADS``
    in the environment sets each one's torch threads). ``workers=0``: no cluster, tiles run one
    after another in this process (debugging, notebooks). ``scheduler="tcp://host:8786"`` or
    ``scheduler_file``: an existing cluster, left running afterwards; tiles ask for ``GPU=1`` if
    any of its workers advertises it.

    Examples
    --------
    >>> with start_cluster(workers=2) as cluster:  # doctest: +SKIP
    ...     results = run_tiles(cluster, "work/tiles.zarr", [0, 1, 2])
    >>> with start_cluster(scheduler="tcp://head:8786") as cluster:  # doctest: +SKIP
    ...     cluster.description
    'Dask cluster at tcp://10.0.0.5:8786: 8 worker(s), 8 with a GPU (tiles run there only)'
    """
    if check_cluster_args(workers=workers, gpus=gpus, scheduler=scheduler, scheduler_file=scheduler_file):
        client, gpu, desc = _connect(scheduler, scheduler_file)
        try:
            yield Cluster(client, gpu=gpu, description=desc)
        finally:
            client.close()
        return
    if gpus is None and workers == 0:
        yield Cluster(None)
        return
    from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster

    import dask

    quiet = dict(silence_logs=logging.ERROR)
    preload = ["tilefill._schedule"]  # dask_setup above: Ctrl-C is the command's to handle
    dashboard = f"{LOOPBACK}:0"
    # read by each nanny when it is made, before it spawns (and respawns) its worker process
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_MALLOC_ENV}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        if gpus:
            spec = {
                f"gpu-{dev}": {"cls": Nanny, "options": {
                    "nthreads": 1, "resources": {"GPU": 1}, "preload": preload, "host": LOOPBACK,
                    "env": {"CUDA_VISIBLE_DEVICES": dev, "TILEFILL_THREADS": "1"}}}
                for dev in _visible_gpus(gpus)
            }
            cluster = SpecCluster(workers=spec, scheduler={"cls": Scheduler, "options": {
                "host": LOOPBACK, "dashboard_address": dashboard}}, **quiet)
            desc = f"{gpus} GPU worker(s)"
        else:
            n = workers or default_workers()
            threads = int(os.environ.get("TILEFILL_THREADS") or max(1, (os.cpu_count() or 1) // n))
            # CPU workers see no GPU: on a GPU host they would each open a CUDA context on GPU 0
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host=LOOPBACK,
                                   dashboard_address=dashboard, preload=preload, **quiet,
                                   env={"TILEFILL_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
                                        "CUDA_VISIBLE_DEVICES": ""})
            desc = f"{n} CPU worker(s) x {threads} thread(s)"
    client = Client(cluster)
    try:
        if gpus and check_cuda:
            _check_cuda_workers(client, f"--gpus {gpus}")
        yield Cluster(client, gpu=bool(gpus), description=desc)
    finally:
        client.close()
        cluster.close()


class LazyCluster:
    """One cluster for many scenes, started when a scene first has tiles to fit.

    A local cluster is started on first use (a run with nothing to fit starts none); an
    existing one is connected to at once, so a scheduler that does not answer fails the run
    before any work. Use it as a context manager; it closes what it started.

    Examples
    --------
    >>> with LazyCluster(workers=2) as clusters:  # doctest: +SKIP
    ...     run_tiles(clusters.get(), "a/tiles.zarr", [0, 1])
    ...     run_tiles(clusters.get(), "b/tiles.zarr", [3])   # the same workers
    """

    def __init__(self, *, device: str = "auto", **kwargs):
        self._external = check_cluster_args(**{k: v for k, v in kwargs.items() if k != "check_cuda"})
        if kwargs.get("check_cuda", True):  # device: fit.device, refused here if no worker could use it
            check_devices(device=device, workers=kwargs.get("workers"), gpus=kwargs.get("gpus"),
                          external=self._external)
        self._device = device
        self._kwargs = kwargs
        self._stack = ExitStack()
        self._cluster: Cluster | None = None

    def __enter__(self) -> "LazyCluster":
        if self._external:
            cluster = self.get()
            if self._device == "cuda" and self._kwargs.get("check_cuda", True):
                try:
                    _check_cuda_workers(cluster.client, "fit.device=cuda")
                except BaseException:
                    self._stack.close()
                    raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @property
    def started(self) -> Cluster | None:
        return self._cluster

    def get(self) -> Cluster:
        if self._cluster is None:
            self._cluster = self._stack.enter_context(start_cluster(**self._kwargs))
        return self._cluster


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
    """Results of a batch of tile tasks: what finished, what failed (with its cause), what ran again.

    ``retried`` maps a tile to its extra tries: after its worker died, or after it raised.
    """

    results: list[TileResult] = field(default_factory=list)
    failures: dict[int, str] = field(default_factory=dict)
    retried: dict[int, int] = field(default_factory=dict)


def _run_tile_group(store_path: str, indices: Sequence[int]) -> list[TileResult]:
    """The tile task: skip tiles already in the store (a lost worker may have finished them), fill the rest.

    A group of one is :func:`fill_tile`; a larger one is fitted together by :func:`fill_tiles`.
    """
    from tilefill._store import TileStore

    store = TileStore.open(store_path)
    here = f"{socket.gethostname()}:{os.getpid()}"
    done = {i: TileResult.from_info(i, "filled", store.tile_info(i), here) for i in indices
            if 0 <= i < len(store.grid) and store.tile_done(i)}
    todo = [i for i in indices if i not in done]
    fresh = [fill_tile(store_path, todo[0])] if len(todo) == 1 else fill_tiles(store_path, todo) if todo else []
    done.update((r.index, r) for r in fresh)
    return [done[i] for i in indices]


def _cause(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def tile_groups(indices: Sequence[int], per_task: int) -> list[tuple[int, ...]]:
    """Consecutive tiles in tasks of ``per_task`` (neighbours share a window size, so they batch).

    >>> tile_groups([0, 1, 2, 5, 6], 2)
    [(0, 1), (2, 5), (6,)]
    """
    if per_task < 1:
        raise ValueError("per_task must be at least 1")
    ordered = list(indices)
    return [tuple(ordered[k:k + per_task]) for k in range(0, len(ordered), per_task)]


def run_tiles(cluster: Cluster, store_path: str, indices: Sequence[int], *, per_task: int = 1,
              on_done: Callable[[TileResult | None], None] | None = None, retries: int = RETRIES) -> TileRun:
    """Fill the given tiles, ``per_task`` tiles per task; every task is tried even if some fail.

    A task that raises is tried ``retries`` more times; one whose worker dies is rescheduled by
    Dask. A failed task fails each of its tiles. ``on_done`` is called once per tile with its
    result, or None if it failed.

    Examples
    --------
    >>> with start_cluster(workers=2) as cluster:  # doctest: +SKIP
    ...     run = run_tiles(cluster, "work/tiles.zarr", [0, 1, 2])
    >>> run.failures, run.retried  # doctest: +SKIP
    ({}, {})
    """
    run = TileRun()
    groups = tile_groups(indices, per_task)

    def finish(group, results, cause=None, tries=0):
        for k, i in enumerate(group):
            if tries:
                run.retried[i] = tries
            if cause is None:
                run.results.append(results[k])
            else:
                run.failures[i] = cause
            if on_done:
                on_done(None if cause is not None else results[k])

    if cluster.client is None:
        for group in groups:
            cause, tries = None, 0
            for attempt in range(retries + 1):
                try:
                    results = _run_tile_group(store_path, group)
                    cause = None
                    break
                except Exception as exc:  # noqa: BLE001 - a tile's failure is reported, the rest go on
                    cause, results = _cause(exc), []
                    tries = attempt + 1 if attempt < retries else tries
            finish(group, results, cause, tries)
        return run
    from distributed import as_completed

    client = cluster.client
    # a fresh key per submission: a rerun after a crash must not attach to the old run's tasks
    tag = f"{os.path.basename(store_path)}-{time.time_ns()}"
    futures = {client.submit(_run_tile_group, store_path, group, key=f"tilefill-tile-{group[0]}-{tag}",
                             resources=cluster.resources, retries=retries, pure=False): group for group in groups}
    try:
        for fut in as_completed(list(futures), loop=client.loop):
            group = futures[fut]
            if fut.status == "finished":
                finish(group, fut.result())
            else:
                finish(group, [], _cause(fut.exception()))
        for group, n in _extra_tries(client, futures, retries).items():
            run.retried.update({i: n for i in group})
    except BaseException:  # Ctrl-C: stop the remaining tiles before the cluster closes
        client.cancel(list(futures), force=True)
        raise
    return run


def _extra_tries(client, futures: dict, retries: int) -> dict:
    """Extra tries per task (keyed like ``futures``' values), from the scheduler.

    Counts worker deaths while the task ran, plus retries after it raised.
    """
    keys = {f.key: i for f, i in futures.items()}

    def count(dask_scheduler=None, keys=()):  # nested: pickled by value, the scheduler needs no tilefill
        out = {}
        for k in keys:
            ts = dask_scheduler.tasks.get(k)
            if ts is not None:
                out[k] = ts.suspicious + max(0, retries - ts.retries)
        return out

    try:
        tries = client.run_on_scheduler(count, keys=list(keys))
    except Exception:  # noqa: BLE001 - a figure for the report, never a reason to fail the run
        return {}
    return {keys[k]: n for k, n in tries.items() if n}
