"""Archives: fill many scenes on one Dask cluster, nightly, safely twice at once.

Which scenes, where their outputs go, which are done and which another batch holds is
``tilefill._archive``. This module runs them: a pipeline that overlaps the scenes (one read
ahead, one written behind, while the cluster fits the current one), the JSON-lines log and the
report. Done scenes are skipped; any other output there is stale and is removed before the scene
is redone, so nothing left in the tree claims a success it did not have. With ``guide="auto"``
each scene's guides are chosen among the batch's other inputs (``tilefill._guide_choice``) in the
prepare stage, before its done check (other guides: not done).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from tilefill._archive import (CLAIM_TTL, LOCAL, BatchScene, Claim, ClaimLost, LocalOutputs, check_output_root,
                               done_state, find_scenes, new_done_record, record_guide_choice)
from tilefill._cluster import LazyCluster, given_client
from tilefill._clusterspec import ClusterSpec
from tilefill._config import Config
from tilefill._errors import TilefillError
from tilefill._guide_choice import DEFAULT_COUNT, DEFAULT_WINDOW, GuideChoice, GuideChooser
from tilefill._objstore import reason
from tilefill._pipeline import (FillReport, PreparedFill, checked_config, default_store, finish_fill, prepare_fill,
                                start_fit)
from tilefill._records import json_safe, utc_now, write_failure
from tilefill._remote import RemotePath, is_url
from tilefill._schedule import POLL, ClusterLost, TileJob, error_signature
from tilefill._signals import Terminated

logger = logging.getLogger("tilefill")

# --- the log ----------------------------------------------------------------------------------------------

class JsonLines:
    """Append-only JSON-lines log; one ``write`` per call, so concurrent batches interleave whole lines (and a
    scene's records stay together)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            except OSError as exc:
                raise TilefillError(f"log file {path} cannot be written ({exc.strerror or exc})") from None

    def write(self, *records: dict) -> None:
        if self.path is None:
            return
        now = utc_now()
        lines = "".join(json.dumps(json_safe({"time": now, **r})) + "\n" for r in records)
        with self._lock:
            os.write(self._fd, lines.encode())

    def close(self) -> None:
        if self.path is not None:
            os.close(self._fd)


class _Logs:
    """The local log and the one on object storage (:class:`tilefill._bucket.ObjectLog`), written alike."""

    def __init__(self, *logs):
        self.logs = logs

    def write(self, *records: dict) -> None:
        for log in self.logs:
            log.write(*records)

    def close(self) -> None:
        for log in self.logs:
            log.close()


def _tile_records(scene: str, report: FillReport) -> Iterator[dict]:
    for r in report.tiles:
        yield {"type": "tile", "scene": scene, "tile": r.index, "worker": r.worker or None, "device": r.device or None,
               "iterations": r.iterations, "final_loss": r.final_loss, "seconds": round(r.seconds, 3),
               "status": r.status, "window": r.window, "tries": 1 + report.retried.get(r.index, 0)}
    for i, why in sorted(report.failures.items()):
        yield {"type": "tile", "scene": scene, "tile": i, "worker": None, "device": None, "iterations": None,
               "final_loss": None, "seconds": None, "status": "failed", "error": why,
               "tries": 1 + report.retried.get(i, 0)}


# --- the batch --------------------------------------------------------------------------------------------

STATUSES = ("done", "skipped", "claimed", "failed", "duplicate", "interrupted")


@dataclass(frozen=True)
class SceneOutcome:
    """What became of one scene: ``done`` (filled now), ``skipped`` (done before), ``claimed`` (another
    batch works on it), ``failed``, ``duplicate`` (named twice, filled once) or ``interrupted`` (the
    batch stopped while it was under way: its finished tiles are kept for the next run).

    ``verified``: a skipped scene's output was hashed again and matched its record (``--verify``);
    ``damaged``: how a recorded output differed from its record, so the scene was filled again.
    ``guides``: with ``--guide auto``, the other dates it was filled with (best first; empty: from itself).
    """

    scene: str
    output: Path | RemotePath | None  # a URL where the batch writes to object storage
    status: str
    seconds: float = 0.0
    error: str = ""
    tiles_fitted: int = 0
    tiles_skipped: int = 0
    tiles_retried: int = 0
    tiles_failed: int = 0
    verified: bool = False
    damaged: str = ""
    guides: tuple[str, ...] = ()

    def record(self) -> dict:
        return {"type": "scene", "scene": self.scene, "tile": None, "worker": None, "device": None,
                "iterations": None, "final_loss": None, "seconds": round(self.seconds, 3), "status": self.status,
                "output": self.output, "error": self.error or None, "tiles_fitted": self.tiles_fitted,
                "tiles_skipped": self.tiles_skipped, "tiles_retried": self.tiles_retried,
                "tiles_failed": self.tiles_failed, "verified": self.verified, "damaged": self.damaged or None,
                "guides": list(self.guides)}


@dataclass(frozen=True)
class BatchReport:
    """A batch's outcome per scene, for people (``str(report)``) and programs."""

    scenes: tuple[SceneOutcome, ...]
    seconds: float
    cluster: str
    log: Path | RemotePath | None = None  # the local log, else the log in the bucket

    def _with(self, status: str) -> list[SceneOutcome]:
        return [s for s in self.scenes if s.status == status]

    @property
    def done(self) -> list[SceneOutcome]:
        """Scenes filled by this batch."""
        return self._with("done")

    @property
    def skipped(self) -> list[SceneOutcome]:
        """Scenes done before, left as they were."""
        return self._with("skipped")

    @property
    def claimed(self) -> list[SceneOutcome]:
        """Scenes another live batch was working on."""
        return self._with("claimed")

    @property
    def failed(self) -> list[SceneOutcome]:
        """Scenes that failed (their error in ``error``)."""
        return self._with("failed")

    @property
    def damaged(self) -> list[SceneOutcome]:
        """Scenes whose recorded output no longer matched its record, and were filled again."""
        return [s for s in self.scenes if s.damaged]

    def summary(self) -> dict:
        """The counts of scenes by status and of tiles, as the log's summary record."""
        count = {s: len(self._with(s)) for s in STATUSES}
        return {"type": "summary", "scenes": len(self.scenes) - count["duplicate"], **count,
                **{f"tiles_{k}": sum(getattr(s, f"tiles_{k}") for s in self.scenes)
                   for k in ("fitted", "skipped", "retried", "failed")},
                "verified": sum(s.verified for s in self.scenes), "damaged": len(self.damaged),
                "guided": sum(bool(s.guides) and s.status in ("done", "skipped") for s in self.scenes),
                "seconds": round(self.seconds, 3), "cluster": self.cluster}

    def __str__(self) -> str:
        s = self.summary()
        lines = [f"batch: {s['scenes']} scene(s): {s['done']} filled, {s['skipped']} already done (skipped), "
                 f"{s['claimed']} claimed by another batch, {s['failed']} failed"
                 + (f", {s['interrupted']} interrupted" if s["interrupted"] else ""),
                 f"tiles: {s['tiles_fitted']} fitted, {s['tiles_skipped']} resumed from earlier runs, "
                 f"{s['tiles_retried']} retried, {s['tiles_failed']} failed",
                 f"time: {self.seconds:.1f} s on {self.cluster}"]
        if s["guided"]:
            lines.append(f"guides: {s['guided']} scene(s) filled with other dates (--guide auto), the others from "
                         "themselves (the log says why)")
        if s["verified"] or s["damaged"]:
            lines.append(f"verified: {s['verified']} output(s) match their record, {s['damaged']} damaged "
                         "(filled again)")
        lines += [f"damaged: {o.output}: {o.damaged}" for o in self.damaged]
        lines += [f"failed: {o.error}" for o in self.failed]
        if self.log:
            lines.append(f"log: {self.log}")
        return "\n".join(lines)


def batch_worker_log(output_dir: str | Path, log: str | Path | None) -> Path:
    """Where a batch's workers write their log and the tracebacks of failed tiles: beside ``--log``, or
    hidden in the output root."""
    return Path(log).with_suffix(".workers.log") if log else Path(output_dir) / ".tilefill-workers.log"


def fill_batch(
    sources: Sequence[str | Path],
    output_dir: str | Path,
    *,
    manifest: str | Path | None = None,
    log: str | Path | None = None,
    input_root: str | Path | None = None,
    config: str | Path | Config = "default",
    overrides: Mapping[str, Any] | None = None,
    bands: Sequence[int | str] | str | None = None,
    mask_qa: Sequence[str] | str | None = None,
    footprint: str = "hull",
    cluster: ClusterSpec | None = None,
    restart: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    claim_ttl: float = CLAIM_TTL,
    verify: bool = False,
    guide: str | None = None,
    guide_window: float = DEFAULT_WINDOW,
    guide_count: int = DEFAULT_COUNT,
    stac_search: Mapping[str, Any] | None = None,
    client=None,
) -> BatchReport:
    """Fill every scene that ``sources`` and ``manifest`` name, on one Dask cluster, into a mirrored tree.

    Scenes overlap: while the tiles of one fit, the next is read into its store (its tiles queued
    behind) and the one before is written, so the workers never wait between scenes.

    Parameters
    ----------
    sources : list of str, Path or StacItem
        Globs (``"archive/**/*.tif"``), GeoTIFFs, Landsat folders, or folders searched for both;
        URLs of these (``s3://bucket/prefix/``: :mod:`tilefill._remote`); STAC item collections or
        items (``.json`` files or URLs). A scene by URL or STAC item is written to
        ``output_dir/NAME.tif``: its item ID, product ID or file name.
    output_dir : str or Path
        Root of the output tree (created if missing); or a bucket prefix (``s3://bucket/prefix``,
        ``gs://``, ``az://``; :mod:`tilefill._bucket`): each scene is filled in a local staging folder and
        its output uploaded whole, its done record, claim and log records kept under the prefix.
    manifest : str or Path, optional
        A file naming one scene per line.
    log : str or Path, optional
        JSON-lines file to append a record per tile, per scene and a summary to. The workers'
        own log (tracebacks) goes beside it (:func:`batch_worker_log`). A local file; with an
        ``output_dir`` on object storage the log is kept there too (:func:`tilefill._bucket.read_log`).
    input_root : str or Path, optional
        The folder the output tree mirrors (default: the common folder of the sources).
    config, overrides, bands, footprint, cluster, restart
        As for :func:`~tilefill.fill_scene`, for every scene.
    mask_qa : str or list, optional
        As for :func:`~tilefill.fill_scene`, for the Landsat product folders; GeoTIFF scenes are
        filled without it (they have no QA_PIXEL band).
    overwrite : bool
        Fill scenes again even when they are done.
    claim_ttl : float
        Seconds after which another host's unrefreshed claim is taken as stale.
    verify : bool
        Hash the outputs of done scenes again; one that no longer matches its record is reported
        (``damaged``) and filled again.
    guide : {None, "auto"}
        ``"auto"``: fill each scene with up to ``guide_count`` other dates of its footprint among the
        batch's inputs, acquired within ``guide_window`` days, ranked by the share of its gap pixels
        they have data at and by time apart (``tilefill._guide_choice``). A scene without a date or
        a candidate is filled from itself; the log's ``guides`` record says which and why.

    stac_search : dict, optional
        Also fill the items of a STAC API search: ``{"url": ..., "collections": [...], "bbox": [...],
        "datetime": ..., "query": [...], "max_items": ...}`` (:func:`tilefill._stac.search_items`,
        pystac-client). Each item's ID names its output and its records in the log.
    client : distributed.Client, optional
        As for :func:`~tilefill.fill_scene`: run on this client's cluster.

    Returns
    -------
    BatchReport
        ``report.failed`` is empty when every scene is done (or done by another batch).

    Raises
    ------
    TilefillError
        Before any work (bad sources, a scheduler that does not answer), or when the batch
        stops: the cluster lost its workers, or one error stopped two scenes in a row. Claims
        are released and the log gets its summary, also on Ctrl-C and SIGTERM.

    Examples
    --------
    >>> from tilefill import fill_batch
    >>> report = fill_batch(["archive/"], "restored/", config="fast", log="nightly.jsonl")  # doctest: +SKIP
    >>> print(report)  # doctest: +SKIP
    batch: 12 scene(s): 3 filled, 9 already done (skipped), 0 claimed by another batch, 0 failed
    """
    start = time.perf_counter()
    if not sources and manifest is None and not stac_search:
        raise TilefillError("name the scenes: SOURCES (globs, files, folders, URLs, STAC JSON), --manifest FILE or "
                            "--stac URL")
    cfg = checked_config(config, overrides)
    if guide not in (None, "auto"):
        raise TilefillError(f"--guide in a batch takes 'auto' (each scene's guides chosen from the archive), not "
                            f"{guide!r}; to give one scene its guides, fill it with tilefill SCENE --guide PATH")
    if guide and cfg.method not in ("dip", "llhm", "nspi"):
        raise TilefillError(f"method {cfg.method} fills a scene from itself; --guide auto goes with dip, llhm or nspi")
    if log is not None and is_url(log):
        raise TilefillError(f"--log {log}: give a local file; a batch into a bucket keeps its log there too, under "
                            "OUTPUT/.tilefill-log/")
    outputs: LocalOutputs = LOCAL
    if is_url(output_dir):  # a bucket: checked before any work, one line and nothing written if it cannot be used
        from tilefill._bucket import BucketOutputs

        outputs = BucketOutputs.open(str(output_dir))
        output_dir = outputs.staging  # each scene is filled here, then published
    else:
        check_output_root(output_dir)
    if stac_search:
        from tilefill._stac import search_items

        found = search_items(**stac_search)
        if not found:
            raise TilefillError(f"the STAC search of {stac_search['url']} found no item")
        sources = [*sources, *found]
    scenes, problems = find_scenes(sources, output_dir, manifest=manifest, input_root=input_root)
    scenes = outputs.staged(scenes)
    if not scenes and not any(p.failure for p in problems):
        raise TilefillError("no scene found in the sources")
    chooser = GuideChooser([s.path for s in scenes], window=guide_window, count=guide_count, bands=bands,
                           footprint=footprint) if guide else None
    jlog = JsonLines(Path(log) if log else None)
    log_at = Path(log) if log else None
    if outputs is not LOCAL:
        bucket_log = outputs.log()
        jlog, log_at = _Logs(jlog, bucket_log), log_at or RemotePath(bucket_log.url)
    outcomes: list[SceneOutcome] = []
    described = "no cluster (nothing to fit)"
    try:
        with LazyCluster(cluster or ClusterSpec(), device=cfg.fit.device, worker_log=batch_worker_log(output_dir, log),
                         client=given_client(client, cluster)) as clusters:
            for p in problems:
                if p.failure:
                    logger.warning("%s", p.message)
                else:
                    logger.info("%s", p.message)
                outcomes.append(SceneOutcome(p.source, None, "failed" if p.failure else "duplicate", error=p.message))
                jlog.write(outcomes[-1].record())
            batch = _Pipeline(scenes, cfg, clusters, jlog, bands=bands, mask_qa=mask_qa, footprint=footprint,
                              restart=restart, overwrite=overwrite, verify=verify, claim_ttl=claim_ttl,
                              chooser=chooser, outputs=outputs)
            try:
                batch.run()
            finally:
                outcomes += batch.outcomes()
                described = clusters.started.description if clusters.started else described
        report = BatchReport(tuple(outcomes), time.perf_counter() - start, described, log_at)
        jlog.write(report.summary())
    except BaseException as exc:  # the log says why the batch ended early, and what it had done by then
        status = ("terminated" if isinstance(exc, Terminated) else "interrupted" if isinstance(exc, KeyboardInterrupt)
                  else "error")
        summary = BatchReport(tuple(outcomes), time.perf_counter() - start, described).summary()
        jlog.write({**summary, "status": status, "error": str(exc) or status})
        raise
    finally:
        jlog.close()
        outputs.close()
    return report


@dataclass
class _InFlight:
    """A scene this batch has claimed and read into its store, until its outcome is settled."""

    k: int
    scene: BatchScene
    claim: Claim  # or tilefill._bucket.ObjectClaim
    prep: PreparedFill | None  # None: it failed before its store was ready
    start: float
    damaged: str = ""
    job: TileJob | None = None
    choice: GuideChoice | None = None


class _Pipeline:
    """The scenes of a batch, overlapped so that the cluster's workers never wait between scenes.

    Three stages, each in its own thread: *prepare* (the done check, the claim, reading the scene
    into its store; one scene ahead), *fit* (the tiles on the cluster, taken in by the calling
    thread, which also submits a prepared scene's tiles at once, queued behind the current
    scene's) and *write* (the output, its done record, the claim's release; one scene behind).
    Signals reach the calling thread: on Ctrl-C, SIGTERM or an error it cancels the tiles, waits
    for the stage threads' current step, and releases every claim it holds.
    """

    def __init__(self, scenes: Sequence[BatchScene], cfg: Config, clusters: LazyCluster, jlog: JsonLines, *, bands,
                 mask_qa, footprint: str, restart: bool, overwrite: bool, verify: bool, claim_ttl: float,
                 chooser: GuideChooser | None = None, outputs: LocalOutputs = LOCAL):
        self.scenes, self.cfg, self.clusters, self.jlog = list(scenes), cfg, clusters, jlog
        self.bands, self.footprint, self.restart, self.overwrite = bands, footprint, restart, overwrite
        self.verify, self.claim_ttl, self._mask_qa, self.chooser = verify, claim_ttl, mask_qa, chooser
        self.outputs = outputs
        self._guides: dict[int, tuple[str, ...]] = {}  # scene -> its guides (--guide auto)
        self._settled: list[tuple[int, SceneOutcome]] = []
        self._claimed: dict[int, _InFlight] = {}  # claimed and not yet settled
        self._lock = threading.Lock()
        self._last_stop = ""  # the error signature that stopped the scene before, if one did

    def outcomes(self) -> list[SceneOutcome]:
        with self._lock:
            return [o for _, o in sorted(self._settled, key=lambda ko: ko[0])]

    def run(self) -> None:
        queue = deque(enumerate(self.scenes, start=1))
        fitting: deque[_InFlight] = deque()
        writes: list[Future] = []
        preparing: Future | None = None
        with ThreadPoolExecutor(1, thread_name_prefix="tilefill-prepare") as prep_pool, \
                ThreadPoolExecutor(1, thread_name_prefix="tilefill-write") as write_pool:
            try:
                while queue or preparing is not None or fitting:
                    busy = False
                    if preparing is not None and preparing.done():
                        flight, preparing, busy = preparing.result(), None, True
                        if flight is not None:
                            self._start_fit(flight, fitting, writes, write_pool)
                    writes = [w for w in writes if not w.done()]
                    # one scene ahead of the one fitting, and not ahead of a writer that lags
                    if preparing is None and queue and len(fitting) <= 1 and len(writes) <= 1:
                        preparing = prep_pool.submit(self._prepare, *queue.popleft())
                    if fitting and fitting[0].job.poll():
                        head, busy = fitting.popleft(), True
                        writes.append(write_pool.submit(self._write, head))
                        self._check_stop(head)
                    if not busy:
                        time.sleep(POLL)
                for w in writes:
                    w.result()
            except BaseException as exc:
                self._abort(exc, preparing, fitting, writes)
                raise

    # -- the stages ----------------------------------------------------------------------------------------

    def _prepare(self, k: int, scene: BatchScene) -> _InFlight | None:
        """Prepare thread: done check, claim, store. None when the scene is settled here (skipped, failed ...)."""
        start = time.perf_counter()
        logger.info("[%d/%d] %s", k, len(self.scenes), scene.path)
        choice = self._choose(k, scene)
        guides = choice.guides if choice else ()
        damaged = ""
        try:
            done, damaged = self._done(scene, guides)
            if done:  # the nightly common case: no claim, no cluster
                if choice is not None and choice.signature and not choice.reused:  # chosen anew: keep it
                    record_guide_choice(scene.output, choice.to_dict(), self.outputs)
                self._settle(k, SceneOutcome(str(scene.path), scene.output, "skipped", time.perf_counter() - start,
                                             verified=self.verify))
                return None
        except Exception:  # noqa: BLE001 - a scene that cannot be read is reported under its claim, below
            pass
        if damaged:
            logger.warning("%s: %s: filled again", self.outputs.where(scene.output), damaged)
        out = scene.output
        try:
            claim = self.outputs.claim(out, self.claim_ttl)
        except Exception as exc:  # noqa: BLE001 - a folder or a bucket that cannot be written: this scene fails
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else reason(exc)
            self._settle(k, SceneOutcome(str(scene.path), out, "failed", time.perf_counter() - start,
                                         f"{scene.path}: cannot write beside {self.outputs.where(out)} ({why})"))
            return None
        if claim is None:
            self._settle(k, SceneOutcome(str(scene.path), out, "claimed", time.perf_counter() - start,
                                         f"claimed by {self.outputs.holder(out)}"))
            return None
        try:
            if self._done(scene, guides)[0]:  # another batch may have finished it between our look and our claim
                claim.release()
                self._settle(k, SceneOutcome(str(scene.path), out, "skipped", time.perf_counter() - start))
                return None
            self.outputs.remove_stale(out)
            prep = prepare_fill(scene.path, out, self._config(guides), store_path=default_store(out), keep_store=True,
                                bands=self.bands, mask_qa=self.mask_qa(scene), footprint=self.footprint,
                                restart=self.restart, overwrite=True,
                                start=start, guides=guides)
        except Exception as exc:  # noqa: BLE001 - one scene's failure never stops the others
            self._fail(_InFlight(k, scene, claim, None, start, damaged, choice=choice), exc)
            return None
        flight = _InFlight(k, scene, claim, prep, start, damaged, choice=choice)
        with self._lock:
            self._claimed[k] = flight
        return flight

    def _start_fit(self, flight: _InFlight, fitting: deque, writes: list, write_pool: ThreadPoolExecutor) -> None:
        """Calling thread: send a prepared scene's tiles to the cluster, or pass it on to the writer."""
        try:
            flight.job = start_fit(flight.prep, self.clusters, progress=False)
        except ClusterLost:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. workers that cannot see this scene's store
            self._fail(flight, exc)
            return
        if flight.job is None:  # nothing to fit: straight to the writer
            writes.append(write_pool.submit(self._write, flight))
        else:
            fitting.append(flight)

    def _write(self, flight: _InFlight) -> None:
        """Write thread: the output (or OUT.failed.json), the done record, the claim's release."""
        scene, out = flight.scene, flight.scene.output
        try:
            report = finish_fill(flight.prep, flight.job.run if flight.job else None, self.clusters)
            if not report.ok:  # finish_fill wrote OUT.failed.json and kept the store
                self.outputs.publish_failure(out)
                self._finish(flight, "failed", f"{scene.path}: {report.message}", report)
                return
            record = new_done_record(scene, report, flight.choice.to_dict() if flight.choice else None,
                                     output=str(self.outputs.where(out)))
            self.outputs.publish(out, record, flight.claim)
            shutil.rmtree(default_store(out), ignore_errors=True)  # only now: a crash before the record resumes
            self.outputs.tidy(out)
            self._finish(flight, "done", report=report)
        except ClaimLost as exc:  # another batch took the scene over: it is theirs to finish
            self._finish(flight, "claimed", str(exc))
        except Exception as exc:  # noqa: BLE001 - one scene's failure never stops the others
            self._fail(flight, exc)

    def _check_stop(self, flight: _InFlight) -> None:
        """The same error stopped this scene and the one before: the setup is at fault, stop the batch."""
        stopped = flight.job.run.stopped
        sig = error_signature(stopped) if stopped else ""
        if sig and sig == self._last_stop:
            raise TilefillError(f"the same error stopped 2 scenes in a row ({stopped[:300]}): batch stopped; the "
                                "scenes not reached are tried by the next run")
        self._last_stop = sig

    def _choose(self, k: int, scene: BatchScene) -> GuideChoice | None:
        """Prepare thread: the scene's guides (``--guide auto``), logged; None without ``--guide auto``.

        Choosing never fails a scene: where it cannot be done the scene is filled from itself, and the log says why.
        """
        if self.chooser is None:
            return None
        recorded = (self.outputs.record(scene.output) or {}).get("guide_choice")
        try:
            choice = self.chooser.choose(scene.path, mask_qa=self.mask_qa(scene), recorded=recorded)
        except Exception as exc:  # noqa: BLE001 - e.g. a candidate that cannot be read midway
            choice = GuideChoice(str(scene.path), (), f"filled from itself: its guides could not be chosen "
                                                      f"({type(exc).__name__}: {exc})")
        with self._lock:
            self._guides[k] = choice.guides
        self.jlog.write({"type": "guides", "scene": str(scene.path), **choice.to_dict(),
                         "seconds": round(choice.seconds, 4)})
        if choice.guides:
            logger.info("[%d/%d] guides: %s (%s%s)", k, len(self.scenes),
                        ", ".join(Path(g).name for g in choice.guides), choice.note,
                        ", as recorded" if choice.reused else "")
        else:
            alone = f" (method {self.cfg.method} without a guide: biharmonic)" if self._config(()) is not self.cfg \
                else ""
            logger.info("[%d/%d] %s%s", k, len(self.scenes), choice.note, alone)
        return choice

    # -- outcomes ------------------------------------------------------------------------------------------

    def _config(self, guides: Sequence[str]) -> Config:
        """A scene's config: the batch's, but llhm and nspi without a guide are what they fill where no guide
        speaks, biharmonic inpainting (``--guide auto`` found none: the scene is filled from itself)."""
        if self.chooser is not None and not guides and self.cfg.method in ("llhm", "nspi"):
            return self.cfg.override({"method": "biharmonic"})
        return self.cfg

    def _done(self, scene: BatchScene, guides: Sequence[str] = ()) -> tuple[bool, str]:
        if self.overwrite:
            return False, ""
        return done_state(scene, self._config(guides), self.bands, self.footprint, verify=self.verify,
                           mask_qa=self.mask_qa(scene), guides=guides, outputs=self.outputs)

    def mask_qa(self, scene: BatchScene):
        """The QA_PIXEL conditions for this scene: product folders only (a GeoTIFF has no QA_PIXEL band)."""
        return self._mask_qa if scene.is_product else None

    def _fail(self, flight: _InFlight, exc: BaseException) -> None:
        scene, out = flight.scene, flight.scene.output
        if isinstance(exc, TilefillError):
            error = str(exc) if str(scene.path) in str(exc) else f"{scene.path}: {exc}"
        else:
            error = f"{scene.path}: {type(exc).__name__}: {exc}"
        try:
            if not self.outputs.done_record_exists(out):
                out.unlink(missing_ok=True)  # e.g. written, then its input changed: not a success
            write_failure(out, scene.path, error)
            self.outputs.publish_failure(out)
        except Exception:  # noqa: BLE001 - the outcome and the log still say it
            pass
        self._finish(flight, "failed", error)

    def _finish(self, flight: _InFlight, status: str, error: str = "", report: FillReport | None = None) -> None:
        flight.claim.release()
        counts = dict(tiles_fitted=report.tiles_fitted, tiles_skipped=report.tiles_skipped,
                      tiles_retried=report.tiles_retried, tiles_failed=len(report.failures)) if report else {}
        outcome = SceneOutcome(str(flight.scene.path), flight.scene.output, status,
                               time.perf_counter() - flight.start, error, damaged=flight.damaged, **counts)
        with self._lock:
            self._claimed.pop(flight.k, None)
        self._settle(flight.k, outcome, report)

    def _settle(self, k: int, outcome: SceneOutcome, report: FillReport | None = None) -> None:
        output = self.outputs.where(outcome.output) if outcome.output is not None else None
        with self._lock:
            outcome = replace(outcome, guides=self._guides.get(k, ()), output=output)
            self._settled.append((k, outcome))
        self.jlog.write(*(_tile_records(outcome.scene, report) if report else ()), outcome.record())
        logger.info("[%d/%d] %s: %s in %.1f s%s", k, len(self.scenes), Path(outcome.scene).name, outcome.status,
                    outcome.seconds, f" ({outcome.error})" if outcome.error else "")

    def _abort(self, exc: BaseException, preparing: Future | None, fitting: deque, writes: list) -> None:
        """Stop early: cancel the tiles, let the stage threads finish their step, release every claim."""
        interrupt = isinstance(exc, KeyboardInterrupt)
        for flight in fitting:
            if flight.job is not None:
                flight.job.cancel()
        if preparing is not None:
            wait([preparing])  # reading a scene cannot be cut short; its claim is released below
        for w in writes:
            if interrupt:
                w.cancel()  # not started yet: its tiles are all done, the next run writes it at once
        wait([w for w in writes if not w.cancelled()])
        why = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)" if interrupt else str(exc)
        with self._lock:
            left = list(self._claimed.values())
        for flight in left:
            self._finish(flight, "interrupted", f"{flight.scene.path}: {why}; finished tiles are kept for the next run")
