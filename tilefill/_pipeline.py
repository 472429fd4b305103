"""The whole job: read and mask -> tile store -> fill on Dask -> mosaic and write.

Resuming. Every run has a key (``tilefill._runkey``: the input's content, the parameters,
tilefill's version) that the tile store keeps. The store stays until the output is written: a
run that fails or is interrupted leaves it, and running the same command again picks it up,
skips the tiles it already holds and fits only the others; the scene it writes equals the one
an uninterrupted run writes (fits are seeded per tile). A store of another key is refused.

Failures. Tiles that keep failing do not stop the others, which are kept in the store. No
output is written then; ``OUT.failed.json`` beside it names each failed tile with its cause
(:func:`failure_path`), and is removed by the next run that succeeds. The same error in
several tasks in a row is a fault of the setup, not of tiles: the run stops there, in one line
(``tilefill._schedule.SYSTEMATIC``). Tracebacks go to the worker log beside the store
(:func:`worker_log_path`), not the terminal. An output that cannot be written (disk full, a
folder turned read-only) leaves nothing under its name and keeps the store.

Stages. :func:`run_fill` is :func:`prepare_fill` (read, scale, build or resume the store),
:func:`start_fit` (send the tiles to the cluster) and :func:`finish_fill` (write the output);
``tilefill batch`` runs them overlapped across scenes.
"""

from __future__ import annotations

import errno
import logging
import math
import shutil
import time
import warnings
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import rasterio
from rasterio.windows import Window

from tilefill._cluster import LazyCluster, given_client
from tilefill._remote import is_url
from tilefill._clusterspec import ClusterSpec
from tilefill._config import Config, load_config, with_shortcuts
from tilefill._errors import InputReadError, TilefillError
from tilefill._fill import TileResult
from tilefill._grid import TileGrid
from tilefill._mosaic import check_output_path, write_output
from tilefill._records import failure_path, quality_path, write_failure, write_json
from tilefill._runkey import RunKey, run_key
from tilefill._guide import open_guide
from tilefill._scene import open_scene
from tilefill._schedule import SYSTEMATIC, Progress, TileJob, TileRun, tiles_per_task
from tilefill._store import TileStore, build_store, remove_store, resumable_store, store_location
from tilefill._version import __version__

log = logging.getLogger("tilefill")

@dataclass(frozen=True)
class FillReport:
    """What a run did, for people (``str(report)``) and programs (the fields).

    ``tiles`` holds a :class:`~tilefill._fill.TileResult` per tile this run fitted, and one with
    status ``"skipped"`` per tile an earlier run of the same key had finished. A failed run
    (``failures``: tile -> cause) wrote no output.
    """

    output: Path
    tiles_total: int
    tiles_fitted: int
    tiles_without_context: int
    gap_pixels: int
    filled_pixels: int
    unfilled_pixels: int
    seconds: float
    cluster: str
    workdir: Path | str | None  # a URL where the work store is on object storage
    tiles_skipped: int = 0
    run_key: RunKey | None = field(default=None, repr=False)  # str() gives its short form
    scene: str = ""
    tiles: tuple[TileResult, ...] = field(default=(), repr=False)
    failures: dict[int, str] = field(default_factory=dict, repr=False)
    retried: dict[int, int] = field(default_factory=dict, repr=False)  # tile -> extra tries
    stages: dict[str, float] = field(default_factory=dict)  # seconds: prepare (read, tile into Zarr), fill, write
    stopped: str = ""  # the error that stopped the run: SYSTEMATIC tasks in a row failed with it
    not_tried: tuple[int, ...] = field(default=(), repr=False)  # tiles cancelled when it stopped
    worker_log: Path | None = field(default=None, repr=False)  # tracebacks of failed tiles
    # the gap RMSE estimated without the truth (fit.validation), mean of the bands, in estimate_units
    # (see gap_estimate); NaN without hidden pixels
    estimated_gap_rmse: float = float("nan")
    estimate_units: str = ""
    guides: tuple[str, ...] = ()  # the other dates the scene was filled with (--guide)
    # with guides and distance weights: per band, the filled pixels whose value took a weight from a guide
    guided_pixels: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether every tile succeeded and the output was written."""
        return not self.failures

    @property
    def tiles_retried(self) -> int:
        """Tiles that ran more than once (their worker died, or they raised)."""
        return len(self.retried)

    @property
    def message(self) -> str:
        """One line: what failed (empty when the run succeeded)."""
        if self.ok:
            return ""
        to_fit = (len(self.failures) + self.tiles_fitted + self.tiles_without_context + self.tiles_skipped
                  + len(self.not_tried))
        if self.stopped:
            what = (f"stopped: {SYSTEMATIC} tile tasks in a row failed with the same error ({self.stopped[:300]}), "
                    f"{len(self.not_tried)} of {to_fit} tiles not tried")
        else:
            first = "; ".join(f"tile {i}: {why}" for i, why in sorted(self.failures.items())[:3])
            what = f"{len(self.failures)} of {to_fit} tiles failed ({first})"
        logs = f" and the tracebacks in {self.worker_log}" if self.worker_log else ""
        return (f"{what}; no output written, see {failure_path(self.output)}{logs}; finished tiles are kept for "
                "the next run")

    def __str__(self) -> str:
        lines = [f"wrote {self.output}" if self.ok else f"FAILED: {self.message}",
                 f"tiles: {self.tiles_total} in the grid, {self.tiles_fitted} fitted, "
                 f"{self.tiles_total - self.tiles_fitted - self.tiles_without_context - self.tiles_skipped - len(self.failures) - len(self.not_tried)}"
                 " without gaps (not fitted)"
                 + (f", {self.tiles_skipped} done by an earlier run (skipped)" if self.tiles_skipped else "")
                 + (f", {self.tiles_without_context} with no known pixel in reach" if self.tiles_without_context else "")
                 + (f", {len(self.failures)} failed" if self.failures else "")
                 + (f", {len(self.not_tried)} not tried" if self.not_tried else "")]
        if self.retried:
            lines.append(f"retried: {self.tiles_retried} tile(s) ran again after their worker died or they raised")
        if self.ok:
            lines.append(f"gap band-pixels: {self.gap_pixels} found, {self.filled_pixels} filled, "
                         f"{self.unfilled_pixels} left nodata")
        if self.guides and self.ok:
            took = (f": its weight is in {sum(self.guided_pixels)} of the {self.filled_pixels} filled band-pixels"
                    if self.guided_pixels else "")
            lines.append(f"guides: {', '.join(Path(g).name for g in self.guides)}{took}")
        if math.isfinite(self.estimated_gap_rmse):
            lines.append(f"estimated gap RMSE (self-validation, without the truth): {self.estimated_gap_rmse:.4g} "
                         f"{self.estimate_units}, mean of the bands")
        lines.append(f"time: {self.seconds:.1f} s on {self.cluster}"
                     + ("; " + ", ".join(f"stage {k}: {v:.1f} s" for k, v in self.stages.items()) if self.stages else ""))
        if self.workdir:
            lines.append(f"work store kept at {self.workdir}")
        return "\n".join(lines)


INPUT_UNITS = "in the input's units"


def gap_estimate(estimated_rmse: Sequence[float], tiles: Sequence[TileResult], store) -> tuple[float, str]:
    """The run's estimated gap RMSE, mean of the bands, and its units: ``(NaN, "")`` without estimates.

    ``estimated_rmse``: each band's RMS estimated error of its filled pixels in the input's units (the
    mosaic's, with distance weights: what ``OUT.quality.tif`` holds); without it, the tiles' self-validation
    estimates (each a mean over bands on the [0, 1] band scale) are averaged and mapped to each band's range.
    Where every band declares a ``SCALE`` and one ``UNITS`` (a Landsat product's bands do), the figure is in
    those units, as the bands' values are read (e.g. reflectance); else in the input's own (e.g. DN).
    """
    per_band = np.asarray(estimated_rmse, dtype=np.float64)
    if not np.isfinite(per_band).any():
        est = [t.estimated_rmse for t in tiles if math.isfinite(t.estimated_rmse)]
        if not est:
            return float("nan"), ""
        per_band = float(np.mean(est)) * (np.asarray(store.scaling.hi) - np.asarray(store.scaling.lo))
    info = store.info
    tags = [dict(t) for t in info.band_tags] + [{}] * (info.count - len(info.band_tags))
    units = {t.get("UNITS") for t in tags}
    try:
        scale = np.abs([float(t["SCALE"]) for t in tags])
    except (KeyError, TypeError, ValueError):
        scale = None
    if scale is not None and len(units) == 1 and None not in units:
        return float(np.nanmean(per_band * scale)), units.pop()
    return float(np.nanmean(per_band)), INPUT_UNITS


class FillFailed(TilefillError):
    """Tiles kept failing: no output was written. ``report`` says what did finish and what failed."""

    def __init__(self, report: FillReport):
        super().__init__(report.message)
        self.report = report


def write_quality(out: Path, scene: str | Path, grid: TileGrid, store, tiles: Sequence[TileResult],
                  blend: dict | None = None, error_map: Path | None = None) -> Path | None:
    """Write ``OUT.quality.json`` (each tile's bounds and estimated gap RMSE); None if no tile has an estimate.

    The estimate comes from the self-validation (``fit.validation``): the fill's error on known pixels
    hidden in gap-shaped stripes, in the band scaling's units (each band's known range mapped to
    [0, 1]; ``scaling`` gives the ranges). With distance weights it is the scene's error curve at
    the tile's gap distances, scaled by the tile's own hidden error; ``blend`` then records the
    fitted weights, partners and curves. ``error_map``: the ``OUT.quality.tif`` just written; each tile
    then also gets ``map_rmse``, per band the RMS of the map over the tile's filled pixels, in the
    input's units (null where it filled none), and with guides ``guide_weight``, the guides' mean weight there.
    """
    est = [t for t in tiles if math.isfinite(t.estimated_rmse)]
    path = quality_path(out)
    if not est:
        path.unlink(missing_ok=True)  # an earlier run's sidecar would describe another fill
        return None
    rows = []
    bands = store.info.count
    with rasterio.open(error_map) if error_map is not None else nullcontext() as emap:
        for t in sorted(est, key=lambda r: r.index):
            tile = grid[t.index]
            row = {"tile": t.index, "row_off": tile.y, "col_off": tile.x, "size": tile.size,
                   "bounds": list(tile.bounds), "estimated_gap_rmse": t.estimated_rmse, "iterations": t.iterations}
            if emap is not None:
                window = emap.read(window=Window(tile.x, tile.y, tile.size, tile.size)).astype(np.float64)
                with np.errstate(invalid="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # a band with no filled pixel: NaN
                    rms = np.sqrt(np.nanmean(window[:bands] ** 2, axis=(1, 2)))
                    row["map_rmse"] = [None if not math.isfinite(v) else round(float(v), 6) for v in rms]
                    if emap.count > bands:
                        share = np.nanmean(window[bands:], axis=(1, 2))
                        row["guide_weight"] = [None if not math.isfinite(v) else round(float(v), 4) for v in share]
            rows.append(row)
    write_json(path, {"scene": str(scene), "output": str(out), "tilefill": __version__,
                      "units": "band scaling: each band's known range mapped to [0, 1]",
                      "bands": list(store.info.band_names),
                      "scaling": {"lo": list(store.scaling.lo), "hi": list(store.scaling.hi)},
                      "crs_wkt": store.info.crs_wkt, "blend": blend, "tiles": rows})
    return path


def resolve_config(config: str | Path | Config = "default", overrides: Mapping[str, Any] | None = None) -> Config:
    cfg = config if isinstance(config, Config) else load_config(config)
    return cfg.override(overrides or {})


def fill_scene(
    scene: str | Path,
    output: str | Path,
    *,
    mask: str | Path | None = None,
    bands: Sequence[int | str] | str | None = None,
    mask_qa: Sequence[str] | str | None = None,
    config: str | Path | Config = "default",
    iterations: int | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    seed: int | None = None,
    keep_known: bool | None = None,
    per_band: bool | None = None,
    method: str | None = None,
    cog: bool | None = None,
    overrides: Mapping[str, Any] | None = None,
    cluster: ClusterSpec | None = None,
    workdir: str | Path | None = None,
    footprint: str = "hull",
    overwrite: bool = False,
    progress: bool = True,
    restart: bool = False,
    guides: Sequence[str | Path] = (),
    client=None,
) -> FillReport:
    """Restore the gaps of a scene and write it as a georeferenced GeoTIFF.

    Parameters
    ----------
    scene : str or Path
        A GeoTIFF (or any raster GDAL reads), a Landsat product folder or its MTL file, or a STAC
        item (``.json``); a path or a URL (``s3://``, ``gs://``, ``az://``, ``https://``; see
        :mod:`tilefill._remote`).
    output : str or Path
        The restored GeoTIFF; refused if it exists unless ``overwrite``. A URL (``s3://bucket/key.tif``,
        ``gs://``, ``az://``) is filled into a local staging folder (``workdir``, else
        ``.tilefill-staging/`` in the working directory, where a rerun resumes) and uploaded when done,
        sidecars beside it; no object appears under the key before it is whole.
    mask : str or Path, optional
        Gap mask raster on the scene's grid (its size, CRS and transform), nonzero = gap.
    bands : str or list, optional
        1-based bands to restore (default: all); in a Landsat product folder also names
        (``"blue,green,red,nir"``; default: its reflective bands).
    mask_qa : str or list, optional
        Landsat Collection 2 folders: QA_PIXEL conditions filled as gaps too (``"cloud,shadow"``;
        also ``dilated_cloud``, ``cirrus``, ``snow``).
    config : str, Path or Config
        A preset name (``"default"``, ``"paper"``, ``"fast"``), a YAML file or a :class:`~tilefill.Config`.
    iterations, tile_size, overlap, seed, keep_known, per_band, method, cog
        Shortcuts for the most used settings; ``overrides`` takes any dotted key.
    cluster : ClusterSpec, optional
        Where the tiles are fitted: CPU workers (``ClusterSpec(workers=2)``; 0 = in this process),
        one worker per GPU (``gpus=4``) or an existing Dask cluster (``scheduler="tcp://head:8786"``),
        with its dashboard and how long to wait for workers. Default: Dask's current default
        client where one is running (below), else one CPU worker per core.
    client : distributed.Client, optional
        Run on the cluster of a client made in Python (dask-jobqueue, dask-gateway, dask-kubernetes,
        Coiled: its address and TLS credentials live in that object); it is used as it is and left
        open. Without ``client`` and ``cluster``, Dask's current default client is used when there is
        one (``distributed.default_client()``), as dask-aware libraries do. Not with ``cluster``.
    workdir : str or Path, optional
        Folder for the Zarr tile store (kept after the run). Default: a hidden folder beside
        the output, removed after a successful run and kept otherwise, so that running the same
        command again resumes it. A URL (``s3://bucket/prefix``, ``gs://``, ``az://``; obstore,
        ``pip install 'tilefill[cloud]'``) puts the store on object storage, where workers that share
        nothing but the bucket fill its tiles and a rerun resumes it; the bucket is reached once
        before anything else is done (no such bucket, no credentials, no answer: one line).
    footprint : {"hull", "full"}
        How the scene's footprint is found (see ``tilefill._scene``).
    restart : bool
        Discard the work store instead of resuming it (needed when it holds another run).
    guides : list of str or Path
        Other acquisitions of the same place (GeoTIFFs or Landsat product folders), each possibly
        striped or cloudy: read on the scene's grid (reprojected where it differs), bands matched by
        name or position (:mod:`tilefill._guide`). DIP and the blend take them where they have data
        (``guide.*``); ``method="llhm"`` or ``"nspi"`` fill from them alone.

    Workers' tracebacks go to the worker log beside the store (:func:`worker_log_path`), kept with
    it after a failure.

    Returns
    -------
    FillReport

    Raises
    ------
    TilefillError
        Bad input, an output that cannot be written, or a cluster left without workers, in one
        line; :class:`FillFailed` when tiles kept failing or one error stopped the run (no output
        is written, ``OUT.failed.json`` is).

    Examples
    --------
    >>> from tilefill import ClusterSpec, fill_scene
    >>> report = fill_scene("scene.tif", "restored.tif", config="fast",  # doctest: +SKIP
    ...                     cluster=ClusterSpec(workers=2))
    >>> print(report)  # doctest: +SKIP
    """
    start = time.perf_counter()
    cfg = checked_config(config, with_shortcuts(overrides, iterations=iterations, tile_size=tile_size, overlap=overlap,
                                                seed=seed, keep_known=keep_known, per_band=per_band, method=method,
                                                cog=cog))
    if workdir is not None and is_url(workdir):
        from tilefill._objstore import check_location

        workdir = check_location(str(workdir)).url  # before anything is read or written
    if is_url(output):
        return _fill_to_url(str(output), workdir, overwrite, dict(
            scene=scene, mask=mask, bands=bands, mask_qa=mask_qa, config=cfg, cluster=cluster, footprint=footprint,
            progress=progress, restart=restart, guides=guides, client=client))
    out = check_output_path(output, overwrite)
    keep_store = workdir is not None
    store_path = work_store(workdir, out)
    client = given_client(client, cluster)
    # a store on object storage: the workers' log stays here, beside the output, as without --workdir
    log_path = worker_log_path(default_store(out) if is_url(store_path) else store_path)
    with LazyCluster(cluster or ClusterSpec(), device=cfg.fit.device, worker_log=log_path,
                     client=client) as clusters:
        report = run_fill(scene, out, cfg, clusters, store_path=store_path, keep_store=keep_store, mask=mask,
                          bands=bands, mask_qa=mask_qa, footprint=footprint, restart=restart, overwrite=overwrite,
                          progress=progress, start=start, guides=guides)
    if not report.ok:
        raise FillFailed(report)
    return report


def _fill_to_url(url: str, workdir, overwrite: bool, kwargs: dict) -> FillReport:
    """``-o s3://bucket/key.tif``: fill into a local staging folder, then upload the finished output and its
    sidecars beside ``url``, each whole (:func:`tilefill._remote.upload`). The staging folder (``workdir``, else
    ``.tilefill-staging/<hash of url>`` in the working directory) keeps the work store, so the same command
    resumes; it is removed after the upload unless it is ``workdir``. A ``workdir`` on object storage keeps the
    store there: the staging folder then holds the output only, until its upload."""
    import hashlib
    import shutil

    from tilefill._remote import RemotePath, exists, upload

    target = RemotePath(url)
    if not target.name.lower().endswith((".tif", ".tiff")):
        raise TilefillError(f"output {url}: give the key of a GeoTIFF (.tif)")
    if not overwrite and exists(url):
        raise TilefillError(f"output {url} exists; pass --overwrite to replace it")
    local_workdir = workdir is not None and not is_url(workdir)
    staging = Path(workdir) if local_workdir else (
        Path(".tilefill-staging") / hashlib.blake2b(url.encode(), digest_size=8).hexdigest())
    staging.mkdir(parents=True, exist_ok=True)
    local = staging / target.name
    report = fill_scene(output=local, workdir=workdir, overwrite=True, **kwargs)
    sidecars = sorted(p for p in staging.glob(target.name + ".*") if p.is_file())
    upload(local, url)
    for p in sidecars:
        upload(p, f"{url}{p.name[len(target.name):]}")
    if not local_workdir:
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.parent.rmdir()  # .tilefill-staging, when no other output is staged there
        except OSError:
            pass
    return report


def checked_config(config: str | Path | Config, overrides: Mapping[str, Any] | None) -> Config:
    """The run's config, with its method checked to be known and installed."""
    cfg = resolve_config(config, overrides)
    from tilefill._fill import METHODS

    if cfg.method not in METHODS:
        raise TilefillError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    from tilefill._classical import check_available

    if cfg.method not in ("dip", "llhm", "nspi"):
        check_available(cfg.method)
    elif cfg.method == "dip" and (cfg.fit.blends or cfg.fit.thin_gap_px):
        for partner in cfg.fit.blend_methods:
            check_available(partner)
    return cfg


def _check_guides(cfg: Config, guides: Sequence) -> None:
    """Guides go with dip, llhm and nspi; llhm and nspi need one."""
    if cfg.method in ("llhm", "nspi") and not guides:
        raise TilefillError(f"method {cfg.method} fills from another date of the place: give it with --guide")
    if guides and cfg.method not in ("dip", "llhm", "nspi"):
        raise TilefillError(f"method {cfg.method} fills a scene from itself; --guide goes with dip, llhm or nspi")
    if guides and cfg.method == "dip" and "context" in cfg.experimental.inputs:
        raise TilefillError("experimental.input: context does not take a guide; use the noise input with --guide")


def default_store(out: Path) -> Path:
    """The work store when no --workdir is given: a hidden folder beside the output."""
    return out.with_name(f".{out.name}.tilefill.zarr")


def work_store(workdir: str | Path | None, out: Path) -> Path | str:
    """Where a run keeps its tile store: ``tiles.zarr`` in ``workdir`` (a folder, or a URL on object storage),
    else :func:`default_store`; a path absolute, a URL as it is."""
    if workdir is None:
        return store_location(default_store(out))
    if is_url(workdir):
        return f"{str(workdir).rstrip('/')}/tiles.zarr"
    return store_location(Path(workdir) / "tiles.zarr")


def worker_log_path(store_path: Path) -> Path:
    """Where a single run's workers write their log and the tracebacks of failed tiles: beside its store."""
    return Path(store_path).with_suffix(".log")


def run_fill(scene: str | Path, out: Path, cfg: Config, clusters: LazyCluster, *, store_path: Path | str,
             keep_store: bool, mask: str | Path | None = None, bands: Sequence[int | str] | str | None = None,
             mask_qa: Sequence[str] | str | None = None, footprint: str = "hull",
             restart: bool = False, overwrite: bool = False, progress: bool = True,
             start: float | None = None, guides: Sequence[str | Path] = ()) -> FillReport:
    """One scene on a cluster that may serve many (``tilefill batch``): resume or build, fit, write.

    Returns the report also when tiles failed (then no output is written and ``OUT.failed.json``
    is); :func:`fill_scene` raises :class:`FillFailed` for it. The work store is removed after
    success unless ``keep_store``. The three stages are :func:`prepare_fill`, :func:`start_fit`
    and :func:`finish_fill`.

    Examples
    --------
    >>> with LazyCluster(ClusterSpec(workers=2)) as clusters:  # doctest: +SKIP
    ...     report = run_fill("a.tif", Path("out/a.tif"), load_config("fast"), clusters,
    ...                       store_path=Path("out/.a.tif.tilefill.zarr"), keep_store=False)
    """
    prep = prepare_fill(scene, out, cfg, store_path=store_path, keep_store=keep_store, mask=mask, bands=bands,
                        mask_qa=mask_qa, footprint=footprint, restart=restart, overwrite=overwrite, start=start,
                        guides=guides)
    job = start_fit(prep, clusters, progress=progress)
    return finish_fill(prep, job.wait() if job else None, clusters)


@dataclass
class PreparedFill:
    """A scene read into its work store, with the tiles left to fit: what :func:`run_fill`'s stages hand on."""

    scene: str | Path
    out: Path
    cfg: Config
    store: TileStore
    store_path: Path | str  # a URL on object storage
    keep_store: bool
    key: RunKey
    grid: TileGrid
    to_fit: list[int]
    skipped: tuple[TileResult, ...]  # tiles an earlier run of the same key finished
    todo: list[int]
    reopen: dict  # how finish_fill opens the scene again: bands, mask and mask_qa
    overwrite: bool
    start: float
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def gap_pixels(self) -> int:
        return self.store.meta["gap_pixels"]

    @property
    def needs_fit(self) -> bool:
        return bool(self.todo) and bool(self.gap_pixels or not self.cfg.fit.keep_known)


def prepare_fill(scene: str | Path, out: Path, cfg: Config, *, store_path: Path | str, keep_store: bool,
                 mask: str | Path | None = None, bands: Sequence[int] | str | None = None,
                 mask_qa: Sequence[str] | str | None = None, footprint: str = "hull", restart: bool = False,
                 overwrite: bool = False, start: float | None = None, guides: Sequence[str | Path] = ()
                 ) -> PreparedFill:
    """Stage 1: read the scene and its guides, key the run, and build its work store (or resume the one there).

    Examples
    --------
    >>> prep = prepare_fill("a.tif", Path("a-filled.tif"), load_config("fast"),  # doctest: +SKIP
    ...                     store_path=Path(".a-filled.tif.tilefill.zarr"), keep_store=False)
    >>> len(prep.todo), len(prep.skipped)  # doctest: +SKIP
    (16, 0)
    """
    start = time.perf_counter() if start is None else start
    out = check_output_path(out, overwrite)
    # absolute: workers of an existing cluster have working directories of their own (a URL stays a URL)
    store_path = store_location(store_path)
    _check_guides(cfg, guides)
    with open_scene(scene, bands=bands, mask=mask, mask_qa=mask_qa) as src, ExitStack() as stack:
        info = src.info
        if src.product is not None:
            log.info("%s", src.product.describe())
        for note in src.notes:
            log.info("%s", note)
        opened = []
        for path in guides:
            guide, source = open_guide(path, src, mask_qa=mask_qa)
            opened.append((stack.enter_context(guide), source))
            log.info("%s", source.describe())
        grid = TileGrid.from_scene(info, cfg)
        log.info("scene %d x %d px, %d band(s) %s, %s; %d tiles of %d px%s", info.width, info.height, info.count,
                 ",".join(info.band_names), info.dtype, len(grid), grid.size,
                 " (smaller than a tile: padded, the padding is not data)" if grid.padded else "")
        key = run_key(src, cfg, grid, footprint=footprint, guides=opened)
        try:
            store = resumable_store(store_path, key.digest, restart=restart, config=cfg)
            if store is None:
                store = build_store(src, grid, cfg, store_path, footprint=footprint, run_key=key.digest,
                                    guides=opened)
        except Exception as exc:
            why = _store_error(exc, store_path)
            if why is None:
                raise
            raise TilefillError(f"cannot write the work store {store_path} ({why})") from None
    for g in store.meta.get("guides") or []:
        share = g["gap_pixels_covered"] / max(store.meta["gap_pixels"], 1)
        log.info("guide %s has data at %.0f%% of the scene's gap band-pixels", Path(g["path"]).name, 100 * share)
    to_fit = store.tiles_to_fit
    infos = store.done_infos(to_fit)  # one listing of the done tiles, one read of their statistics
    done = list(infos)
    if done:
        log.info("resuming run %s: %d of %d tiles are already done in %s and are skipped", key, len(done),
                 len(to_fit), store_path)
    prep = PreparedFill(scene, out, cfg, store, store_path, keep_store, key, grid, to_fit,
                        tuple(TileResult.from_info(i, "skipped", infos[i]) for i in done),
                        sorted(set(to_fit) - set(done)),
                        {"bands": bands, "mask": mask, "mask_qa": mask_qa}, overwrite, start)
    prep.stages["prepare"] = time.perf_counter() - start
    return prep


def start_fit(prep: PreparedFill, clusters: LazyCluster, *, progress: bool = True) -> TileJob | None:
    """Stage 2: check the workers and send the scene's tiles to them; None when there is nothing to fit.

    The cluster is started here if this is the first scene that needs one. The returned job runs
    on the cluster while the caller goes on: :meth:`TileJob.wait` (or ``poll``) takes its results.
    """
    if not prep.needs_fit:
        if not prep.gap_pixels and prep.cfg.fit.keep_known:
            log.info("no gap pixel in the scene: writing an unchanged copy")
        return None
    cfg = prep.cfg
    log.info("%d gap band-pixels; fitting %d of %d tiles with %s (%s preset)", prep.gap_pixels, len(prep.todo),
             len(prep.grid), cfg.method, cfg.name)
    cluster = clusters.get()
    cluster.check_workers(prep.store_path, torch=cfg.method == "dip")
    bar = Progress(len(prep.todo)) if progress else None
    return TileJob(cluster, str(prep.store_path), prep.todo, per_task=tiles_per_task(cfg),
                   on_done=(lambda _r: bar.update()) if bar else None, log=clusters.worker_log).submit()


def finish_fill(prep: PreparedFill, run: TileRun | None, clusters: LazyCluster) -> FillReport:
    """Stage 3: write the output (or, when tiles failed, ``OUT.failed.json``) and report.

    An output that cannot be written (a full disk, a folder turned read-only) raises
    :class:`~tilefill.TilefillError` in one line and leaves nothing under its name; the store
    is kept, so the same command writes it later without fitting again.
    """
    cfg, out, store_path = prep.cfg, prep.out, prep.store_path
    results = run.results if run else []
    thin = sum(r.status == "filled" and r.iterations == 0 for r in results) if cfg.method == "dip" else 0
    if thin:
        log.info("%d tile(s) had only gaps within %g px of known pixels and were filled by %s alone "
                 "(fit.thin_gap_px)", thin, cfg.fit.thin_gap_px, cfg.fit.blend_method)
    stages = dict(prep.stages)
    stages["fill"] = time.perf_counter() - prep.start - stages["prepare"]
    worker_log = clusters.worker_log
    common = dict(
        output=out, tiles_total=len(prep.grid), tiles_fitted=sum(r.status == "filled" for r in results),
        tiles_without_context=sum(r.status == "no-context" for r in results), gap_pixels=prep.gap_pixels,
        cluster=clusters.started.description if clusters.started else "no cluster (nothing to fit)",
        workdir=store_path if prep.keep_store else None,
        tiles_skipped=len(prep.skipped), run_key=prep.key, scene=str(prep.scene), tiles=prep.skipped + tuple(results),
        failures=dict(run.failures) if run else {}, retried=dict(run.retried) if run else {}, stages=stages,
        stopped=run.stopped if run else "", not_tried=tuple(run.not_tried) if run else (),
        worker_log=worker_log if worker_log and worker_log.is_file() and worker_log.stat().st_size else None)
    if run and run.failures:
        failed = FillReport(**common, filled_pixels=0, unfilled_pixels=0, seconds=time.perf_counter() - prep.start)
        write_failure(out, prep.scene, failed.message, run_key=prep.key.digest, work_store=str(store_path),
                      failed_tiles=[{"tile": i, "cause": why} for i, why in sorted(run.failures.items())],
                      tiles={"in_grid": len(prep.grid), "to_fit": len(prep.to_fit), "skipped": len(prep.skipped),
                             "fitted": failed.tiles_fitted + failed.tiles_without_context,
                             "failed": len(run.failures), "not_tried": len(run.not_tried)},
                      retried={str(i): n for i, n in sorted(run.retried.items())},
                      **({"stopped": run.stopped, "not_tried": list(run.not_tried)} if run.stopped else {}),
                      worker_log=str(failed.worker_log) if failed.worker_log else None,
                      resume="fix the cause and run the same command again: finished tiles are kept and skipped")
        return failed
    stats, common["tiles"] = _write_stage(prep, common["tiles"])
    stages["write"] = time.perf_counter() - prep.start - stages["prepare"] - stages["fill"]
    failure_path(out).unlink(missing_ok=True)  # an earlier failure of this output is settled
    if not prep.keep_store:
        try:
            remove_store(store_path)
        except OSError:
            pass  # scratch: a store left behind costs space, not the run
    if worker_log == worker_log_path(default_store(out)):  # the run's own, beside the output
        worker_log.unlink(missing_ok=True)  # nothing failed: nothing in it to keep
    estimate, units = gap_estimate(stats.estimated_rmse, common["tiles"], prep.store)
    return FillReport(**common, filled_pixels=stats.filled_pixels, unfilled_pixels=stats.unfilled_pixels,
                      seconds=time.perf_counter() - prep.start, estimated_gap_rmse=estimate, estimate_units=units,
                      guides=tuple(g["path"] for g in prep.store.meta.get("guides") or []),
                      guided_pixels=stats.guided_pixels)


def _write_stage(prep: PreparedFill, tiles: Sequence[TileResult]):
    """The output and its quality sidecars, as one: if any cannot be written, none stays.

    With distance weights the mosaic's own estimates (the weights it fitted) replace the tiles'.
    """
    cfg, out = prep.cfg, prep.out
    qmap = quality_path(out, ".quality.tif")
    try:
        with open_scene(prep.scene, **prep.reopen) as src:
            stats = write_output(prep.store, src, out, cog=cfg.output.cog, overwrite=prep.overwrite, config=cfg,
                                 quality_map=qmap if cfg.output.quality_sidecar else None)
        if stats.tile_estimates:
            tiles = tuple(replace(t, estimated_rmse=stats.tile_estimates.get(t.index, t.estimated_rmse))
                          for t in tiles)
        if cfg.output.quality_sidecar:
            write_quality(out, prep.scene, prep.grid, prep.store, tiles, stats.blend,
                          qmap if stats.blend and qmap.exists() else None)
        else:
            quality_path(out).unlink(missing_ok=True)
        if not (cfg.output.quality_sidecar and stats.blend):
            qmap.unlink(missing_ok=True)  # an earlier run's map would describe another fill
    except InputReadError as exc:  # the input, read again, fails: not the output's fault (write_output left nothing)
        raise InputReadError(f"{exc}: no output written; the work store {prep.store_path} keeps every tile, run the "
                             "same command again once the input reads") from None
    except (OSError, TilefillError) as exc:  # TilefillError: check_output_path found the folder unwritable
        for path in (out, quality_path(out), qmap):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass  # a read-only folder: what it holds stays, the line below says why
        why = _why(exc, out.parent) if isinstance(exc, OSError) else str(exc)
        raise TilefillError(f"cannot write {out} ({why}): no output written; the work store {prep.store_path} "
                            "keeps every tile, run the same command again to write it without fitting") from None
    return stats, tiles


def _store_error(exc: BaseException, store_path: Path | str) -> str | None:
    """A failed write of the work store in a few words: a folder's OSError, an object store's error
    (:func:`tilefill._objstore.reason`); None for anything else (a bug, to be raised as it is)."""
    if not is_url(store_path):
        return _why(exc, store_path.parent) if isinstance(exc, OSError) else None
    if isinstance(exc, OSError) or type(exc).__module__.startswith("obstore"):
        from tilefill._objstore import reason

        return reason(exc)
    return None


def _why(exc: OSError, folder: Path) -> str:
    """An OSError in a few words: a full disk and a read-only folder named as such."""
    code = exc.errno
    if code is None:  # GDAL's errors carry no errno: look at the folder
        try:
            code = errno.ENOSPC if shutil.disk_usage(folder).free < 2**20 else None
        except OSError:
            pass
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device"
    if code == errno.EROFS:
        return "the folder is on a read-only file system"
    return exc.strerror or str(exc)[:200]

