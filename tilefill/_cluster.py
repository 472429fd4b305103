"""Cluster lifecycle: start a local Dask cluster (CPU workers, or one worker per GPU), connect to an
existing one, check its workers, and stop it (how the command and its workers take signals:
``tilefill._signals``).

The client never imports torch or touches CUDA: only the workers do, after each has been
started with its own ``CUDA_VISIBLE_DEVICES``, so every worker owns one GPU (a CUDA context
made in the client first would pin them all to GPU 0). GPU workers advertise the resource
``GPU=1`` and tile tasks ask for it: on a cluster tilefill did not start, as soon as one worker
advertises it. How tiles are sent to these workers is ``tilefill._schedule``.

Security: everything tilefill starts listens on 127.0.0.1 only, and the dashboard only when asked
for. A cluster the user brings is reached with Dask's own security settings
(``distributed.comm.tls.*``), for the probe as for the client.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from tilefill._clusterspec import ClusterSpec
from tilefill._errors import TilefillError
from tilefill._signals import WORKER_LOG_ENV, signals_held
from tilefill._version import __version__

# Everything tilefill starts listens on loopback only: a Dask scheduler runs any pickled code it is sent
LOOPBACK = "127.0.0.1"
# the scheduler's HTTP server (health, metrics; the dashboard only when asked for): loopback, a free port
_HTTP = f"{LOOPBACK}:0"
# What glibc's allocator gets in the worker processes tilefill starts. Dask's nanny sets
# MALLOC_TRIM_THRESHOLD_=65536, which also freezes glibc's mmap threshold at 128 KiB: every tensor
# buffer of a fit is then mmapped and unmapped each iteration and faulted in again (measured: a
# third of a CPU fit's time in the kernel). Buffers up to 1 GiB stay in the heap instead.
# Set either variable in your environment to override it (Dask takes yours first).
WORKER_MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": str(2**30), "MALLOC_MMAP_THRESHOLD_": str(2**30)}
CONNECT_TIMEOUT = 10.0  # seconds to wait for an existing scheduler to answer
# seconds to wait for a worker: a cluster's first one, and new ones after all were lost (batch systems
# start and restart them late); then the run stops, its finished tiles kept
WORKER_WAIT = 180.0

log = logging.getLogger("tilefill")


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


def gpu_worker_memory_limit(gpus: int, total: int | None = None) -> int:
    """Host memory (bytes) each of ``gpus`` GPU workers may take: the machine's, shared among them.

    ``total`` defaults to Dask's reading of this machine's memory (cgroup and rlimit bounds
    included). Without it a nanny takes Dask's CPU-worker share, memory x threads / cores: 8 GiB
    on a 16-core, 128 GiB GPU machine, which torch, CUDA, cuDNN and Inductor fill before Dask
    pauses (80%) and restarts (95%) the worker.

    >>> gpu_worker_memory_limit(2, total=128 * 2**30) // 2**30
    64
    """
    if total is None:
        from distributed.system import MEMORY_LIMIT as total
    return int(total) // max(1, gpus)


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


def scheduler_workers(client) -> dict:
    """The scheduler's workers now (address -> identity), asked of the scheduler itself.

    Not ``client.scheduler_info()``, which returns the client's cached identity: the client's own
    refresh (every ``distributed.client.scheduler-info-interval``) rewrites that cache with one that
    lists no worker, and a call whose read lands after it sees a healthy cluster as empty.
    """
    return client.sync(client.scheduler.identity, n_workers=-1, callback_timeout=CONNECT_TIMEOUT)["workers"]


def _check_cuda_workers(client, what: str) -> None:
    """Refuse a cluster whose tile workers (those advertising GPU=1, if any) see no CUDA device."""
    workers = scheduler_workers(client)
    gpu = [a for a, w in workers.items() if w.get("resources", {}).get("GPU", 0) >= 1]
    for addr, probe in client.run(_worker_probe, workers=gpu or None).items():
        if not probe["cuda"]:
            raise TilefillError(f"{what}: a worker sees no CUDA device ({addr}, CUDA_VISIBLE_DEVICES="
                                f"{probe['visible']}); use --workers for CPU")


def _worker_probe() -> dict:
    import torch

    ok = torch.cuda.is_available()
    return {"cuda": ok, "name": torch.cuda.get_device_name(0) if ok else None,
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}


@dataclass
class Cluster:
    """A client plus what kind of workers it has; ``client`` is None for in-process runs.

    ``local``: tilefill started the workers (they log to its worker log themselves).
    ``worker_wait``: seconds a run waits for workers to come back when the cluster has none.
    ``dashboard``: the dashboard's address, when asked for.
    """

    client: object | None
    gpu: bool = False
    description: str = "in-process"
    local: bool = False
    worker_wait: float = WORKER_WAIT
    dashboard: str | None = None

    @property
    def resources(self) -> dict | None:
        return {"GPU": 1} if self.gpu else None

    def usable_workers(self) -> int | None:
        """Workers that can run tile tasks now (with a GPU, when tasks ask for one); None if the scheduler
        does not answer within ``CONNECT_TIMEOUT`` (gone, or too busy)."""
        if self.client is None:
            return 1
        try:
            workers = scheduler_workers(self.client).values()
        except Exception:  # noqa: BLE001 - a scheduler that does not answer has no worker for us either
            return None
        return sum(1 for w in workers if not self.gpu or w.get("resources", {}).get("GPU", 0) >= 1)

    def check_workers(self, path: str | Path, *, torch: bool = True) -> None:
        """Refuse, in one line, workers that cannot run tiles, before any tile is sent.

        Each worker must import tilefill (this version) and, for DIP (``torch``), torch, and see
        the work store at ``path`` (it must be on a filesystem they all share), or reach it where it is a
        URL on object storage (with the credentials and endpoint in its own environment).
        """
        if self.client is None:
            return

        def ready(path, modules):  # nested: pickled by value, so it runs where tilefill is missing too
            import importlib
            import os

            if "://" in path:  # object storage: one HEAD of the store's root, as the worker's environment allows
                try:
                    from tilefill._objstore import ObjectLocation

                    why = ObjectLocation.parse(path).unreachable("zarr.json")
                except Exception as exc:  # noqa: BLE001 - tilefill or obstore missing: reported as such
                    why = f"{type(exc).__name__}: {exc}"
                out = {"sees": why is None, "sees:why": why}
            else:
                out = {"sees": os.path.isdir(path)}
            for name in modules:
                try:
                    out[name] = str(getattr(importlib.import_module(name), "__version__", "?"))
                except Exception as exc:  # noqa: BLE001 - whatever breaks the import is reported
                    out[name], out[name + ":error"] = None, f"{type(exc).__name__}: {exc}"
            return out

        modules = ("tilefill", "torch") if torch else ("tilefill",)
        seen = self.client.run(ready, str(path), modules)

        def refuse(bad: list[str], what: str, detail: Callable[[dict], str], fix: str) -> None:
            if bad:
                raise TilefillError(f"{len(bad)} of {len(seen)} Dask worker(s) {what} (e.g. {bad[0]}"
                                    f"{detail(seen[bad[0]])}); {fix}")

        for name in modules:
            refuse(sorted(a for a, r in seen.items() if r[name] is None), f"cannot import {name}",
                   lambda r: f": {r[name + ':error']}", "install tilefill and torch on every worker")
        refuse(sorted(a for a, r in seen.items() if r["tilefill"] != __version__),
               f"run another tilefill than this command's {__version__}", lambda r: f": tilefill {r['tilefill']}",
               "install the same tilefill on every worker")
        if "://" in str(path):
            refuse(sorted(a for a, r in seen.items() if not r["sees"]), f"cannot reach the work store {path}",
                   lambda r: f": {r['sees:why']}", "give every worker the bucket's credentials and endpoint in its "
                   "environment (AWS_*, see docs/remote.md)")
        refuse(sorted(a for a, r in seen.items() if not r["sees"]), f"cannot see the work store {path}",
               lambda r: "", "put --workdir (or the output) on a filesystem every worker shares")


def _security():
    """The client's TLS settings from Dask's configuration (``distributed.comm.tls.*``), as a ``Client`` reads them."""
    from distributed.security import Security

    return Security()


def _probe(address: str, security=None) -> None:
    """Fail fast, in one line, unless a Dask scheduler answers at ``address``.

    A refused TCP connection fails at once, an unreachable host after CONNECT_TIMEOUT, and a
    service that is not a Dask scheduler on its reply. Asked over a bare comm rather than with a
    ``distributed.Client``, because a Client whose first connection failed hangs the
    interpreter's exit while it tries to close itself. ``security`` (a
    ``distributed.security.Security``; default: Dask's configuration) gives the TLS credentials
    a ``tls://`` scheduler needs.
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from distributed.comm import connect
    from distributed.comm.addressing import parse_address, parse_host_port

    security = security or _security()
    try:
        scheme, loc = parse_address(address)
        host, port = parse_host_port(loc)
    except ValueError as exc:
        raise TilefillError(f"{address!r} is not a Dask scheduler address ({exc}); e.g. tcp://head-node:8786") from None
    args = security.get_connection_args("client")
    if scheme == "tls" and args.get("ssl_context") is None:
        raise TilefillError(f"{address} uses TLS: set Dask's TLS settings for the client (distributed.comm.tls.ca-file, "
                            ".client.cert, .client.key; see README, Running on a Dask cluster)")
    if scheme != "tls" and args.get("require_encryption"):
        raise TilefillError(f"Dask's configuration requires encryption (distributed.comm.require-encryption): "
                            f"give the scheduler as tls://, not {address}")
    try:
        if scheme in ("tcp", "tls"):  # Dask's connect retries a refused port until its timeout
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise TilefillError(f"no Dask scheduler answers at {address} ({why}; waited up to {CONNECT_TIMEOUT:g} s)") from None

    async def identity():
        comm = await connect(address, timeout=CONNECT_TIMEOUT, **args)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await asyncio.wait_for(comm.read(), CONNECT_TIMEOUT)
        finally:
            comm.abort()

    hint = " (a scheduler that uses TLS is reached as tls://)" if scheme == "tcp" else ""
    try:  # in a thread of its own: the caller may already run an event loop (a notebook)
        with ThreadPoolExecutor(1) as pool:
            ident = pool.submit(asyncio.run, identity()).result()
    except (OSError, TimeoutError) as exc:
        raise TilefillError(f"no Dask scheduler answers at {address} ({str(exc)[:200]}){hint}") from None
    except Exception:  # noqa: BLE001 - whatever a foreign service sends back
        ident = None
    if not isinstance(ident, dict) or ident.get("type") != "Scheduler":
        raise TilefillError(f"something answers at {address}, but not a Dask scheduler{hint}")


def _connect(scheduler: str | None, scheduler_file: str | Path | None, worker_wait: float = WORKER_WAIT):
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
    security = _security()
    _probe(scheduler, security)
    try:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False, security=security)
    except (OSError, TimeoutError) as exc:
        raise TilefillError(f"the Dask scheduler at {scheduler} does not answer ({str(exc)[:160]})") from None
    try:
        gpu, desc = _workers_of(client, scheduler, worker_wait)
    except BaseException:
        client.close()
        raise
    return client, gpu, desc


def _workers_of(client, address: str, worker_wait: float) -> tuple[bool, str]:
    """Whether a cluster's tiles go to GPU workers, and its description; waits ``worker_wait`` s for a worker."""
    try:
        client.wait_for_workers(1, timeout=worker_wait)
    except TimeoutError:
        raise TilefillError(f"the Dask cluster at {address} has no worker after {worker_wait:g} s; start some "
                            "(dask worker ADDRESS --nthreads 1)") from None
    workers = scheduler_workers(client).values()
    gpu = any(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers)
    n_gpu = sum(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers)
    desc = f"Dask cluster at {client.scheduler.address}: {len(workers)} worker(s)" + (
        f", {n_gpu} with a GPU (tiles run there only)" if gpu else "")
    return gpu, desc


def given_client(client=None, cluster=None):
    """The client a run uses when the caller made the cluster: ``client``, else (no ``cluster`` spec given either)
    Dask's current default client, as dask-aware libraries do; None when tilefill is to start or connect itself.

    A client made in Python (dask-jobqueue, dask-gateway, dask-kubernetes, Coiled) holds the cluster's
    address and TLS credentials itself; tilefill uses it as it is and leaves it open.
    """
    if client is not None:
        if cluster is not None:
            raise TilefillError("give a run either client= (a cluster made in Python) or cluster= (a ClusterSpec), "
                                "not both")
        return client
    if cluster is not None:
        return None
    try:
        from distributed import default_client

        current = default_client()
    except (ImportError, ValueError):  # no client has been made in this process
        return None
    return current if current.status == "running" else None


@contextmanager
def _attached(client, worker_wait: float) -> Iterator[Cluster]:
    """A cluster the caller made: used as it is, left open afterwards."""
    if getattr(client, "status", "running") != "running":
        raise TilefillError(f"the Dask client given to tilefill is {client.status}; make a new one")
    address = getattr(client.scheduler, "address", None) or "the given client's scheduler"
    gpu, desc = _workers_of(client, address, worker_wait)
    yield Cluster(client, gpu=gpu, description=desc + " (the caller's client)", worker_wait=worker_wait)


def _show_dashboard(link: str) -> str:
    try:
        import bokeh  # noqa: F401 - the dashboard's plots need it
    except ImportError:
        return f"{link} (its plots need bokeh: pip install 'bokeh>=3.1')"
    return link


def _gpu_cluster(gpus: int, *, dashboard: bool, preload: list[str], env: dict):
    """(cluster, description): one single-threaded worker process per GPU, each pinned to its device with
    ``CUDA_VISIBLE_DEVICES``, advertising ``GPU=1`` and allowed its share of the host's memory; on loopback."""
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {
        f"gpu-{dev}": {"cls": Nanny, "options": {
            "nthreads": 1, "resources": {"GPU": 1}, "preload": preload, "host": LOOPBACK,
            "memory_limit": gpu_worker_memory_limit(gpus),
            "env": {"CUDA_VISIBLE_DEVICES": dev, "TILEFILL_THREADS": "1", **env}}}
        for dev in _visible_gpus(gpus)
    }
    cluster = SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {
        "host": LOOPBACK, "dashboard_address": _HTTP, "dashboard": dashboard}}, silence_logs=logging.ERROR)
    return cluster, f"{gpus} GPU worker(s)"


def _cpu_cluster(workers: int | None, *, dashboard: bool, preload: list[str], env: dict):
    """(cluster, description): ``workers`` single-threaded CPU worker processes sharing the cores; on loopback."""
    from distributed import LocalCluster

    n = workers or default_workers()
    threads = int(os.environ.get("TILEFILL_THREADS") or max(1, (os.cpu_count() or 1) // n))
    # CPU workers see no GPU: on a GPU host they would each open a CUDA context on GPU 0
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host=LOOPBACK,
                           dashboard_address=_HTTP, scheduler_kwargs={"dashboard": dashboard}, preload=preload,
                           silence_logs=logging.ERROR,
                           env={"TILEFILL_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
                                "CUDA_VISIBLE_DEVICES": "", **env})
    return cluster, f"{n} CPU worker(s) x {threads} thread(s)"


@contextmanager
def start_cluster(spec: ClusterSpec = ClusterSpec(), *, check_cuda: bool = True,
                  worker_log: str | Path | None = None) -> Iterator[Cluster]:
    """Start a local Dask cluster for one run and close it afterwards (also on Ctrl-C), or connect to one.

    ``spec`` (a :class:`~tilefill.ClusterSpec`) says which. ``gpus=N``: one worker process per GPU,
    each pinned with its own ``CUDA_VISIBLE_DEVICES``.
    ``workers=N``: N single-threaded CPU worker processes sharing the cores (a ``TILEFILL_THREADS``
    in the environment sets each one's torch threads). ``workers=0``: no cluster, tiles run one
    after another in this process (debugging, notebooks). ``scheduler="tcp://host:8786"`` (or
    ``tls://``, with Dask's TLS settings) or ``scheduler_file``: an existing cluster, left running
    afterwards; tiles ask for ``GPU=1`` if any of its workers advertises it.

    A local cluster listens on 127.0.0.1 only; its dashboard is served only with ``dashboard``
    (the link is logged). Its workers write their stderr to ``worker_log`` (Dask's log, with a
    traceback per failed task), not the terminal. ``worker_wait`` (default :data:`WORKER_WAIT`): seconds to wait for a worker
    when an existing cluster has none, at the start and during the run.

    Examples
    --------
    >>> with start_cluster(ClusterSpec(workers=2)) as cluster:  # doctest: +SKIP
    ...     results = run_tiles(cluster, "work/tiles.zarr", [0, 1, 2])
    >>> with start_cluster(ClusterSpec(scheduler="tcp://head:8786")) as cluster:  # doctest: +SKIP
    ...     cluster.description
    'Dask cluster at tcp://10.0.0.5:8786: 8 worker(s), 8 with a GPU (tiles run there only)'
    """
    workers, gpus, dashboard = spec.workers, spec.gpus, spec.dashboard
    worker_wait = WORKER_WAIT if spec.worker_wait is None else spec.worker_wait
    if spec.external:
        client, gpu, desc = _connect(spec.scheduler, spec.scheduler_file, worker_wait)
        try:
            link = client.dashboard_link if dashboard else None
            if dashboard:
                log.info("dashboard: %s", link or "the cluster's scheduler serves none")
            yield Cluster(client, gpu=gpu, description=desc, worker_wait=worker_wait, dashboard=link or None)
        finally:
            client.close()
        return
    if spec.in_process:
        yield Cluster(None)
        return
    import dask
    from distributed import Client

    # _signals.dask_setup: signals are the command's, stderr goes to the worker log; the user's own preloads too
    preload = ["tilefill._signals", *(dask.config.get("distributed.worker.preload", None) or [])]
    logs = {WORKER_LOG_ENV: str(Path(worker_log).resolve())} if worker_log else {}
    # read by each nanny when it is made, before it spawns (and respawns) its worker process
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_MALLOC_ENV}
    # without the dashboard, Dask's HTTP servers answer health checks only: no pages of tasks and paths
    routes = {} if dashboard else {f"distributed.{role}.http.routes": ["distributed.http.health"]
                                   for role in ("scheduler", "worker")}
    held: list[int] = []  # Ctrl-C or SIGTERM while it starts
    with signals_held(held), dask.config.set({"distributed.nanny.pre-spawn-environ": environ, **routes}):
        if gpus:
            cluster, desc = _gpu_cluster(gpus, dashboard=dashboard, preload=preload, env=logs)
        else:
            cluster, desc = _cpu_cluster(workers, dashboard=dashboard, preload=preload, env=logs)
        client = Client(cluster)
    try:
        if held:  # Ctrl-C or SIGTERM came while the cluster started: act on it now that it can be closed in order
            signal.raise_signal(held[0])
        if gpus and check_cuda:
            _check_cuda_workers(client, f"--gpus {gpus}")
        link = _show_dashboard(cluster.dashboard_link) if dashboard else None
        if link:
            log.info("dashboard: %s", link)
        yield Cluster(client, gpu=bool(gpus), description=desc, local=True, worker_wait=worker_wait, dashboard=link)
    finally:
        client.close()
        cluster.close()


class LazyCluster:
    """One cluster for many scenes, started when a scene first has tiles to fit.

    A local cluster is started on first use (a run with nothing to fit starts none); an
    existing one is connected to at once, so a scheduler that does not answer fails the run
    before any work. Use it as a context manager; it closes what it started. ``spec``,
    ``check_cuda`` and ``worker_log`` are :func:`start_cluster`'s; ``worker_log`` is also where runs
    write the tracebacks of failed tiles, and ``device`` (``fit.device``) is refused at once where no
    worker could use it.

    Examples
    --------
    >>> with LazyCluster(ClusterSpec(workers=2)) as clusters:  # doctest: +SKIP
    ...     run_tiles(clusters.get(), "a/tiles.zarr", [0, 1])
    ...     run_tiles(clusters.get(), "b/tiles.zarr", [3])   # the same workers
    """

    def __init__(self, spec: ClusterSpec = ClusterSpec(), *, device: str = "auto", check_cuda: bool = True,
                 worker_log: str | Path | None = None, client=None):
        # client: a distributed.Client the caller made (given_client); its cluster is used and left open
        self._client = client
        if check_cuda:
            check_devices(device=device, workers=spec.workers, gpus=spec.gpus, external=spec.external or bool(client))
        self._device = device
        self._spec = spec
        self._check_cuda = check_cuda
        self.worker_log: Path | None = Path(worker_log) if worker_log else None
        self._stack = ExitStack()
        self._cluster: Cluster | None = None

    def __enter__(self) -> "LazyCluster":
        if self._spec.external or self._client is not None:
            cluster = self.get()
            if self._device == "cuda" and self._check_cuda:
                try:
                    _check_cuda_workers(cluster.client, "fit.device=cuda")
                except BaseException:
                    self._stack.close()
                    raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()
        try:
            if self.worker_log and self.worker_log.stat().st_size == 0:
                self.worker_log.unlink()  # the workers had nothing to say
        except OSError:
            pass

    @property
    def started(self) -> Cluster | None:
        return self._cluster

    def get(self) -> Cluster:
        if self._cluster is None and self._client is not None:
            wait = WORKER_WAIT if self._spec.worker_wait is None else self._spec.worker_wait
            self._cluster = self._stack.enter_context(_attached(self._client, wait))
        if self._cluster is None:
            self._cluster = self._stack.enter_context(start_cluster(self._spec, check_cuda=self._check_cuda,
                                                                     worker_log=self.worker_log))
        return self._cluster


