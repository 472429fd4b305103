"""Schedule: one Dask future per tile (or per ``engine.tiles_per_task`` tiles), on a cluster of
``tilefill._cluster`` (local, GPU, existing) or in-process; progress, retries, and when to stop.

Tiles are submitted as plain futures, not as a dask.array graph, because graph optimisation can
drop resource annotations (GPU workers advertise ``GPU=1`` and tile tasks ask for it).

Faults: a worker that dies mid-tile takes its tiles with it, and Dask's scheduler runs them
again on another worker (up to ``distributed.scheduler.allowed-failures`` deaths per tile,
then the tile fails with ``KilledWorker``); a tile that raises is tried once more, then fails.
Either way the other tiles go on. A tile task first checks the store, so a tile that a lost
worker had already finished is not fitted twice. Tasks that fail in a row with the same error
(``SYSTEMATIC``) stop the run instead: a fault of the setup, not of tiles. A cluster left without
workers is waited for (``worker_wait`` seconds), then the run stops with :class:`ClusterLost`.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tilefill._cluster import Cluster
from tilefill._errors import TilefillError
from tilefill._fill import TileResult, fill_tile, fill_tiles

RETRIES = 1  # extra tries for a tile that raised (a worker that died is Dask's allowed-failures business)
SYSTEMATIC = 3  # tasks failing in a row with the same error: the setup is at fault, not the tiles
POLL = 0.1  # seconds between looks at running tasks

log = logging.getLogger("tilefill")


class ClusterLost(TilefillError):
    """The cluster had no worker for longer than the run would wait: stopped, finished tiles kept."""


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
    ``stopped`` is the error that stopped the run early (``SYSTEMATIC`` tasks in a row failed with
    it), and ``not_tried`` the tiles it cancelled then.
    """

    results: list[TileResult] = field(default_factory=list)
    failures: dict[int, str] = field(default_factory=dict)
    retried: dict[int, int] = field(default_factory=dict)
    stopped: str = ""
    not_tried: list[int] = field(default_factory=list)


def _run_tile_group(store_path: str, indices: Sequence[int]) -> list[TileResult]:
    """The tile task: skip tiles already in the store (a lost worker may have finished them), fill the rest.

    A group of one is :func:`fill_tile`; a larger one is fitted together by :func:`fill_tiles`.
    """
    from tilefill._store import TileStore

    store = TileStore.open(store_path)
    here = f"{socket.gethostname()}:{os.getpid()}"
    inside = [i for i in indices if 0 <= i < len(store.grid)]
    done = {i: TileResult.from_info(i, "filled", info, here) for i, info in store.tile_infos(inside).items()}
    todo = [i for i in indices if i not in done]
    fresh = [fill_tile(store_path, todo[0])] if len(todo) == 1 else fill_tiles(store_path, todo) if todo else []
    done.update((r.index, r) for r in fresh)
    return [done[i] for i in indices]


def _cause(exc: BaseException) -> str:
    text = str(exc)
    if type(exc).__module__.startswith("obstore") or "Debug source:" in text:
        from tilefill._objstore import reason  # a work store on object storage: its error in a few words

        text = reason(exc)
    return f"{type(exc).__name__}: {text}"


def error_signature(cause: str) -> str:
    """A failure's cause with its numbers blanked out: one fault met by many tiles reads the same.

    >>> error_signature("OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (tile 17)")
    'OutOfMemoryError: CUDA out of memory. Tried to allocate #.# GiB (tile #)'
    """
    return re.sub(r"0x[0-9a-fA-F]+|\d+", "#", cause)


# Tiles per task for the classical fills (a few ms a tile): opening the store, reading the windows, writing the
# chunks and Dask's own work are paid once per task, not per tile; tiles are fitted alone whatever the task
CHEAP_TILES_PER_TASK = 16


def tiles_per_task(config) -> int:
    """The tiles a task fills: ``engine.tiles_per_task``, at least :data:`CHEAP_TILES_PER_TASK` for a classical
    method (each tile is filled alone, so the grouping changes no result).

    >>> from tilefill import load_config
    >>> tiles_per_task(load_config("fast")), tiles_per_task(load_config("fast").override({"method": "gdal"}))
    (1, 16)
    """
    per_task = config.engine.tiles_per_task
    return per_task if config.method == "dip" else max(per_task, CHEAP_TILES_PER_TASK)


def tile_groups(indices: Sequence[int], per_task: int) -> list[tuple[int, ...]]:
    """Consecutive tiles in tasks of ``per_task`` (neighbours share a window size, so they batch).

    >>> tile_groups([0, 1, 2, 5, 6], 2)
    [(0, 1), (2, 5), (6,)]
    """
    if per_task < 1:
        raise ValueError("per_task must be at least 1")
    ordered = list(indices)
    return [tuple(ordered[k:k + per_task]) for k in range(0, len(ordered), per_task)]


WATCH_EVERY = 1.0  # seconds between looks at the cluster's workers while no task finishes


class TileJob:
    """The tile tasks of one scene: submitted at once, taken in as they finish.

    :func:`run_tiles` submits and waits. A batch submits the next scene's tasks while this one's
    still run (:meth:`submit`, then :meth:`poll` until it returns True), so that its workers never
    wait between scenes. Every task is tried even if some fail, except that ``stop_after`` tasks
    failing in a row with the same error (:func:`error_signature`) stop the job: the rest are
    cancelled (``run.stopped``, ``run.not_tried``). A cluster without a usable worker for
    ``cluster.worker_wait`` seconds cancels the job and raises :class:`ClusterLost`. The
    tracebacks of failed tasks go to ``log`` (workers tilefill started write their own there).

    Examples
    --------
    >>> job = TileJob(cluster, "a/tiles.zarr", [0, 1, 2]).submit()  # doctest: +SKIP
    >>> while not job.poll():  # doctest: +SKIP
    ...     prepare_the_next_scene()
    >>> job.run.failures  # doctest: +SKIP
    {}
    """

    def __init__(self, cluster: Cluster, store_path: str, indices: Sequence[int], *, per_task: int = 1,
                 on_done: Callable[[TileResult | None], None] | None = None, retries: int = RETRIES,
                 log: str | Path | None = None, stop_after: int = SYSTEMATIC):
        self.cluster, self.store_path = cluster, str(store_path)
        self.groups = tile_groups(indices, per_task)
        self.on_done, self.retries, self.log, self.stop_after = on_done, retries, log, stop_after
        self.run = TileRun()
        self.finished = not self.groups
        self._todo = deque(self.groups)  # in-process: groups not run yet
        self._futures: dict = {}
        self._pending = None  # as_completed over the futures
        self._streak = ("", 0)  # (error signature, tasks in a row that failed with it)
        self._gone_since: float | None = None
        self._next_look = 0.0

    def submit(self) -> "TileJob":
        """Send every task to the cluster (a no-op in-process, where :meth:`poll` runs them)."""
        client = self.cluster.client
        if client is None or self._futures or self.finished:
            return self
        from distributed import as_completed

        # a fresh key per submission: a rerun after a crash must not attach to the old run's tasks
        tag = f"{os.path.basename(self.store_path)}-{time.time_ns()}"
        self._futures = {client.submit(_run_tile_group, self.store_path, group, key=f"tilefill-tile-{group[0]}-{tag}",
                                       resources=self.cluster.resources, retries=self.retries, pure=False): group
                         for group in self.groups}
        self._pending = as_completed(list(self._futures), loop=client.loop)
        return self

    def poll(self) -> bool:
        """Take in the tasks that have finished, without waiting (in-process: run the next one).

        True once every task is accounted for, or the job stopped.
        """
        if self.finished:
            return True
        if self.cluster.client is None:
            self._run_here(self._todo.popleft())
            if not self._todo and not self.finished:
                self._complete()
            return self.finished
        if self._pending is None:
            self.submit()
        ready = self._pending.next_batch(block=False)
        for fut in ready:
            try:
                self._take(self._futures[fut], fut.result())
            except Exception as exc:  # noqa: BLE001 - a task's failure is its tiles', the rest go on
                self._take(self._futures[fut], [], exc)
            if self.finished:  # stopped
                return True
        if not ready:
            self._watch_workers()
        if self._pending.is_empty():
            self._complete()
        return self.finished

    def wait(self) -> TileRun:
        """Poll until every task is accounted for; on Ctrl-C or SIGTERM, cancel what is left and re-raise."""
        try:
            while not self.poll():
                if self.cluster.client is not None:
                    time.sleep(POLL)
        except BaseException:  # Ctrl-C: stop the remaining tiles before the cluster closes
            self.cancel()
            raise
        return self.run

    def cancel(self) -> None:
        """Cancel the tasks still queued or running (their tiles are tried by the next run)."""
        self.finished = True
        if self._futures:
            self.cluster.client.cancel(list(self._futures), force=True)

    def _run_here(self, group: tuple[int, ...]) -> None:
        error, tries = None, 0
        for attempt in range(self.retries + 1):
            try:
                self._take(group, _run_tile_group(self.store_path, group), tries=tries)
                return
            except Exception as exc:  # noqa: BLE001 - a tile's failure is reported, the rest go on
                error, tries = exc, attempt + 1 if attempt < self.retries else tries
        self._take(group, [], error, tries)

    def _take(self, group: tuple[int, ...], results: list[TileResult], error: BaseException | None = None,
              tries: int = 0) -> None:
        cause = _cause(error) if error is not None else None
        for k, i in enumerate(group):
            if tries:
                self.run.retried[i] = tries
            if cause is None:
                self.run.results.append(results[k])
            else:
                self.run.failures[i] = cause
            if self.on_done:
                self.on_done(None if cause is not None else results[k])
        if cause is None:
            self._streak = ("", 0)
            return
        self._write_traceback(group, error)
        sig = error_signature(cause)
        self._streak = (sig, self._streak[1] + 1 if self._streak[0] == sig else 1)
        if self._streak[1] >= self.stop_after:
            self._stop(cause)

    def _stop(self, cause: str) -> None:
        """The same error in ``stop_after`` tasks in a row: a fault of the setup, not of the tiles."""
        over = {r.index for r in self.run.results} | set(self.run.failures)
        self.run.stopped = cause
        self.run.not_tried = [i for g in self.groups for i in g if i not in over]
        self.cancel()

    def _complete(self) -> None:
        if self._futures:
            for group, n in _extra_tries(self.cluster.client, self._futures, self.retries).items():
                self.run.retried.update({i: n for i in group})
        self.finished = True

    def _write_traceback(self, group: tuple[int, ...], error: BaseException) -> None:
        if self.log is None or self.cluster.local:  # the workers tilefill started log their own
            return
        tb = "".join(traceback.format_exception(error))
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            with open(self.log, "a") as f:
                f.write(f"{stamp} tile(s) {', '.join(map(str, group))} of {self.store_path} failed:\n{tb}\n")
        except OSError:
            pass  # the failure itself is reported; its traceback is a help, never a reason to fail

    def _watch_workers(self) -> None:
        """Wait a bounded time for workers when none is left: a batch system may bring them back."""
        now = time.monotonic()
        if now < self._next_look:
            return
        self._next_look = now + WATCH_EVERY
        wait = self.cluster.worker_wait
        usable = self.cluster.usable_workers()
        if usable:
            if self._gone_since is not None:
                log.warning("Dask workers answer again; the run goes on")
            self._gone_since = None
            return
        if self._gone_since is None:
            self._gone_since = now
            what = "the Dask scheduler does not answer" if usable is None else "no Dask worker left to run tiles"
            log.warning("%s; waiting up to %g s for workers to come back", what, wait)
        elif now - self._gone_since >= wait:
            self.cancel()
            done = len(self.run.results)
            total = sum(map(len, self.groups))
            raise ClusterLost(
                f"no Dask worker to run tiles for {wait:g} s: stopped with {done} of {total} tiles of this run done; "
                f"they are kept in {self.store_path}, and the same command resumes once the cluster has workers "
                "(--worker-wait sets the wait)")


def run_tiles(cluster: Cluster, store_path: str, indices: Sequence[int], *, per_task: int = 1,
              on_done: Callable[[TileResult | None], None] | None = None, retries: int = RETRIES,
              log: str | Path | None = None, stop_after: int = SYSTEMATIC) -> TileRun:
    """Fill the given tiles, ``per_task`` tiles per task, and wait for them (see :class:`TileJob`).

    A task that raises is tried ``retries`` more times; one whose worker dies is rescheduled by
    Dask. A failed task fails each of its tiles; ``stop_after`` failing in a row with the same
    error stop the run. ``on_done`` is called once per tile with its result, or None if it failed.

    Examples
    --------
    >>> with start_cluster(ClusterSpec(workers=2)) as cluster:  # doctest: +SKIP
    ...     run = run_tiles(cluster, "work/tiles.zarr", [0, 1, 2])
    >>> run.failures, run.retried  # doctest: +SKIP
    ({}, {})
    """
    return TileJob(cluster, store_path, indices, per_task=per_task, on_done=on_done, retries=retries, log=log,
                   stop_after=stop_after).submit().wait()


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
