"""The whole job: read and mask -> tile store -> fill on Dask -> blend and write."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from tilefill import TilefillError
from tilefill._blend import check_output_path, write_output
from tilefill._config import Config, load_config
from tilefill._grid import TileGrid
from tilefill._scene import open_scene
from tilefill._schedule import Progress, run_tiles, start_cluster
from tilefill._store import build_store

log = logging.getLogger("tilefill")


@dataclass(frozen=True)
class FillReport:
    """What a run did, for people (``str(report)``) and programs (the fields)."""

    output: Path
    tiles_total: int
    tiles_fitted: int
    tiles_without_context: int
    gap_pixels: int
    filled_pixels: int
    unfilled_pixels: int
    seconds: float
    cluster: str
    workdir: Path | None
    tile_seconds: list[float] = field(default_factory=list, repr=False)

    def __str__(self) -> str:
        lines = [
            f"wrote {self.output}",
            f"tiles: {self.tiles_total} in the grid, {self.tiles_fitted} fitted, "
            f"{self.tiles_total - self.tiles_fitted - self.tiles_without_context} without gaps (not fitted)"
            + (f", {self.tiles_without_context} with no known pixel in reach" if self.tiles_without_context else ""),
            f"gap band-pixels: {self.gap_pixels} found, {self.filled_pixels} filled, {self.unfilled_pixels} left nodata",
            f"time: {self.seconds:.1f} s on {self.cluster}",
        ]
        if self.workdir:
            lines.append(f"work store kept at {self.workdir}")
        return "\n".join(lines)


def resolve_config(config: str | Path | Config = "paper", overrides: Mapping[str, Any] | None = None) -> Config:
    cfg = config if isinstance(config, Config) else load_config(config)
    return cfg.override(overrides or {})


def fill_scene(
    scene: str | Path,
    output: str | Path,
    *,
    mask: str | Path | None = None,
    bands: Sequence[int] | str | None = None,
    config: str | Path | Config = "paper",
    iterations: int | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    seed: int | None = None,
    keep_known: bool | None = None,
    per_band: bool | None = None,
    method: str | None = None,
    cog: bool | None = None,
    overrides: Mapping[str, Any] | None = None,
    workers: int | None = None,
    gpus: int | None = None,
    workdir: str | Path | None = None,
    footprint: str = "hull",
    overwrite: bool = False,
    progress: bool = True,
) -> FillReport:
    """Restore the gaps of a scene and write it as a georeferenced GeoTIFF.

    Parameters
    ----------
    scene : str or Path
        A GeoTIFF (or any raster GDAL reads) or a Landsat product folder.
    output : str or Path
        The restored GeoTIFF; refused if it exists unless ``overwrite``.
    mask : str or Path, optional
        Gap mask raster of the scene's size, nonzero = gap.
    bands : str or list of int, optional
        1-based bands to restore (default: all).
    config : str, Path or Config
        A preset name (``"paper"``, ``"fast"``), a YAML file or a :class:`~tilefill.Config`.
    iterations, tile_size, overlap, seed, keep_known, per_band, method, cog
        Shortcuts for the most used settings; ``overrides`` takes any dotted key.
    workers, gpus : int, optional
        CPU worker processes (0 = in this process), or one worker per GPU.
    workdir : str or Path, optional
        Folder for the Zarr tile store (kept after the run). Default: a hidden folder beside
        the output, removed after a successful run.
    footprint : {"hull", "full"}
        How the scene's footprint is found (see ``tilefill._scene``).

    Returns
    -------
    FillReport

    Examples
    --------
    >>> from tilefill import fill_scene
    >>> report = fill_scene("scene.tif", "restored.tif", config="fast", workers=2)  # doctest: +SKIP
    >>> print(report)  # doctest: +SKIP
    """
    start = time.perf_counter()
    shortcuts = {"fit.iterations": iterations, "tiles.size": tile_size, "tiles.overlap": overlap, "fit.seed": seed,
                 "fit.keep_known": keep_known, "fit.per_band": per_band, "method": method, "output.cog": cog}
    cfg = resolve_config(config, {**shortcuts, **(overrides or {})})
    from tilefill._fill import METHODS

    if cfg.method not in METHODS:
        raise TilefillError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    if cfg.method != "dip":
        from tilefill._classical import check_available

        check_available(cfg.method)
    out = check_output_path(output, overwrite)
    keep_store = workdir is not None
    store_path = (Path(workdir) / "tiles.zarr") if keep_store else out.with_name(f".{out.name}.tilefill.zarr")
    with open_scene(scene, bands=bands, mask=mask) as src:
        info = src.info
        grid = TileGrid(info.height, info.width, cfg.tiles.size, cfg.tiles.overlap, info.affine)
        log.info("scene %d x %d px, %d band(s) %s, %s; %d tiles of %d px", info.width, info.height, info.count,
                 ",".join(info.band_names), info.dtype, len(grid), grid.size)
        store = build_store(src, grid, cfg, store_path, footprint=footprint)
        to_fit = store.tiles_to_fit
        gap_pixels = store.meta["gap_pixels"]
        results, cluster_desc = [], "no cluster (nothing to fit)"
        if not gap_pixels and cfg.fit.keep_known:
            log.info("no gap pixel in the scene: writing an unchanged copy")
        elif to_fit:
            log.info("%d gap band-pixels; fitting %d of %d tiles with %s (%s preset)", gap_pixels, len(to_fit),
                     len(grid), cfg.method, cfg.name)
            with start_cluster(workers=workers, gpus=gpus) as cluster:
                cluster_desc = cluster.description
                bar = Progress(len(to_fit)) if progress else None
                run = run_tiles(cluster, str(store_path), to_fit, on_done=(lambda _r: bar.update()) if bar else None)
            if run.failures:
                first = sorted(run.failures.items())[:3]
                detail = "; ".join(f"tile {i}: {why}" for i, why in first)
                raise TilefillError(
                    f"{len(run.failures)} of {len(to_fit)} tiles failed ({detail}); no output written, "
                    f"finished tiles kept in {store_path}")
            results = run.results
        stats = write_output(store, src, out, cog=cfg.output.cog, overwrite=overwrite)
    if not keep_store:
        shutil.rmtree(store_path, ignore_errors=True)
    return FillReport(
        output=out, tiles_total=len(grid), tiles_fitted=sum(r.status == "filled" for r in results),
        tiles_without_context=sum(r.status == "no-context" for r in results), gap_pixels=gap_pixels,
        filled_pixels=stats.filled_pixels, unfilled_pixels=stats.unfilled_pixels,
        seconds=time.perf_counter() - start, cluster=cluster_desc, workdir=store_path if keep_store else None,
        tile_seconds=[r.seconds for r in results],
    )
