"""Signals: how the ``tilefill`` command and the worker processes it starts take Ctrl-C and SIGTERM, and
where those workers' stderr goes.

The command alone stops a run: SIGTERM (a batch system's notice) becomes :class:`Terminated`, which
every cleanup written for Ctrl-C handles; the workers tilefill starts ignore both (:func:`dask_setup`,
their preload), and a local cluster that is starting holds them until it can be closed in order.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

WORKER_LOG_ENV = "TILEFILL_WORKER_LOG"  # where the workers tilefill starts write their stderr


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is (see :func:`sigterm_as_interrupt`): it stops as Ctrl-C does."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM (what SLURM, Kubernetes and systemd send before they kill) into :class:`Terminated`.

    Every cleanup written for Ctrl-C then runs: tiles cancelled, workers stopped, the store kept, a
    batch's claims released and its log summarised. A second SIGTERM is ignored so that it cannot
    cut that cleanup short. Only in the main thread (signals are delivered there).

    Examples
    --------
    >>> with sigterm_as_interrupt():  # doctest: +SKIP
    ...     fill_scene("scene.tif", "restored.tif")
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@contextmanager
def signals_held(held: list[int]) -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while a local cluster starts: appended to ``held`` for the caller to raise again.

    Interrupted mid-start, Dask leaves a half-started nanny behind, and its exit hook prints a
    traceback when the command ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def dask_setup(worker) -> None:
    """Preload of the workers tilefill starts: signals are the command's, their output goes to its log.

    They ignore Ctrl-C, which the terminal sends them too, and SIGTERM, which a batch system may
    send the whole process group: the command alone stops a run (cancel the tiles, close the
    workers, then the scheduler); a worker that stopped itself at the same moment raced the
    scheduler's shutdown and printed a heartbeat traceback. Their stderr (Dask's log, with a
    traceback per failed task) goes to the file ``TILEFILL_WORKER_LOG`` names, not the terminal.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    path = os.environ.get(WORKER_LOG_ENV)
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
