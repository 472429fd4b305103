"""Where the tiles are fitted: one value for the cluster choice of the API and the CLI.

Kept apart from ``tilefill._cluster`` (which starts and connects to clusters) so that it imports
nothing heavy: ``import tilefill`` and ``tilefill --help`` stay quick.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tilefill._errors import TilefillError


@dataclass(frozen=True)
class ClusterSpec:
    """Where a run fits its tiles: a local cluster it starts, or an existing Dask cluster.

    Parameters
    ----------
    workers : int, optional
        CPU worker processes started here (default: one per core, at most 8; 0 = no cluster, tiles
        run one after another in this process).
    gpus : int, optional
        One worker process per GPU started here, each pinned to its device.
    scheduler : str, optional
        An existing cluster's address (``tcp://host:8786``, or ``tls://`` with Dask's TLS settings);
        its workers must see the work store. Left running afterwards.
    scheduler_file : str or Path, optional
        The file ``dask scheduler --scheduler-file`` wrote, instead of ``scheduler``.
    dashboard : bool
        Serve the Dask dashboard of a cluster started here (on 127.0.0.1; the link is logged).
    worker_wait : float, optional
        Seconds to wait for workers when the cluster has none (at the start, or all lost) before
        the run stops with its finished tiles kept (default ``tilefill._cluster.WORKER_WAIT``).

    Examples
    --------
    >>> ClusterSpec(workers=2).external
    False
    >>> ClusterSpec(scheduler="tcp://head:8786").external
    True
    >>> ClusterSpec(workers=2, gpus=1)
    Traceback (most recent call last):
    ...
    tilefill._errors.TilefillError: give either --workers or --gpus, not both
    """

    workers: int | None = None
    gpus: int | None = None
    scheduler: str | None = None
    scheduler_file: str | Path | None = None
    dashboard: bool = False
    worker_wait: float | None = None

    def __post_init__(self):
        if self.scheduler is not None and self.scheduler_file is not None:
            raise TilefillError("give either --scheduler or --scheduler-file, not both")
        if self.external and (self.workers is not None or self.gpus is not None):
            raise TilefillError("--workers and --gpus start a local cluster; an existing one (--scheduler) brings "
                                "its own")
        if self.workers is not None and self.gpus is not None:
            raise TilefillError("give either --workers or --gpus, not both")
        if self.workers is not None and self.workers < 0 or self.gpus is not None and self.gpus < 1:
            raise TilefillError("--workers must be 0 or more and --gpus 1 or more")
        if self.worker_wait is not None and self.worker_wait < 0:
            raise TilefillError("--worker-wait must be 0 or more seconds")

    @property
    def external(self) -> bool:
        """True when it names an existing cluster (``scheduler`` or ``scheduler_file``)."""
        return self.scheduler is not None or self.scheduler_file is not None

    @property
    def in_process(self) -> bool:
        """True for ``workers=0``: no cluster, the tiles run in this process."""
        return self.workers == 0 and self.gpus is None
