"""Blend and write: mosaic the tile predictions into the restored scene, a strip at a time.

Overlapping predictions are averaged with the grid's smooth weights (1 in a tile's core,
raised-cosine ramps across overlaps, none at the scene border), normalised by the summed
weight. Known pixels are copied from the input itself, so they stay exact bit for bit; only
gap pixels (or, with ``keep_known=False``, every footprint pixel a fitted tile covers) take
the prediction, mapped back to the input's units and dtype. The GeoTIFF is written under a
temporary name in the output's folder and renamed into place when complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from tilefill import TilefillError
from tilefill._scene import Scene, SceneInfo
from tilefill._store import STRIP, TileStore


@dataclass(frozen=True)
class WriteStats:
    filled_pixels: int  # band-pixels that took a prediction
    unfilled_pixels: int  # gap band-pixels no tile could fill (left nodata)


def to_dtype(values: np.ndarray, info: SceneInfo) -> np.ndarray:
    """Round and clip predictions into the input's dtype, never landing on the nodata value."""
    dtype = np.dtype(info.dtype)
    if dtype.kind == "f":
        return values.astype(dtype)
    lim = np.iinfo(dtype)
    out = np.clip(np.rint(values), lim.min, lim.max)
    if info.nodata is not None:
        # a filled pixel must not read as nodata: step one unit into the valid range
        nd = float(info.nodata)
        out[out == nd] = nd + 1 if nd < lim.max else nd - 1
    return out.astype(dtype)


def check_output_path(path: str | Path, overwrite: bool) -> Path:
    """Refuse an existing output (unless ``overwrite``) or a folder we cannot write, before any work."""
    path = Path(path)
    if path.is_dir():
        raise TilefillError(f"output {path} is a folder; give a file name, e.g. {path / 'restored.tif'}")
    if path.exists() and not overwrite:
        raise TilefillError(f"output {path} exists; pass --overwrite to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise TilefillError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TilefillError(f"output folder {parent} is not writable")
    return path


def _profile(info: SceneInfo, compress: str, blocksize: int, size: tuple[int, int]) -> dict:
    kind = np.dtype(info.dtype).kind
    profile = dict(driver="GTiff", dtype=info.dtype, count=info.count, height=info.height, width=info.width,
                   crs=info.crs, transform=info.affine, nodata=info.nodata, compress=compress, BIGTIFF="IF_SAFER",
                   NUM_THREADS="ALL_CPUS")  # compression is most of the writing time: all cores share it
    if min(size) >= blocksize:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    if compress.lower() in ("deflate", "lzw", "zstd"):
        profile["predictor"] = 3 if kind == "f" else 2
    return profile


def _blend_strip(store: TileStore, y: int, h: int, cache: dict) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sum of the predictions over rows [y, y+h) and the summed weight, per band.

    A tile band without a prediction (NaN: nothing known in reach) adds no weight there.
    """
    grid, bands, width = store.grid, store.info.count, store.info.width
    acc = np.zeros((bands, h, width), dtype=np.float32)
    wsum = np.zeros((bands, h, width), dtype=np.float32)
    fitted = cache.setdefault("fitted", set(store.tiles_to_fit))
    for tile in grid.tiles_in_rows(y, y + h):
        if tile.index not in fitted:
            continue
        if tile.index not in cache:
            pred = store.read_tile(tile.index)
            has = np.isfinite(pred[:, 0, 0])
            cache[tile.index] = (np.nan_to_num(pred), grid.weights(tile)[None] * has[:, None, None]) if has.any() else None
        entry = cache[tile.index]
        if entry is not None:
            pred, w = entry
            r0, r1 = max(y, tile.y), min(y + h, tile.y + tile.size)
            src = slice(r0 - tile.y, r1 - tile.y)
            dst = (slice(None), slice(r0 - y, r1 - y), slice(tile.x, tile.x + tile.size))
            acc[dst] += w[:, src] * pred[:, src]
            wsum[dst] += w[:, src]
        if tile.y + tile.size <= y + h:  # this tile reaches no later strip
            cache.pop(tile.index, None)
    return acc, wsum


def write_output(store: TileStore, scene: Scene, out_path: str | Path, *, cog: bool = False,
                 overwrite: bool = False) -> WriteStats:
    """Blend the store's tiles with the input and write the restored GeoTIFF atomically.

    Examples
    --------
    >>> stats = write_output(store, scene, "restored.tif", cog=True)  # doctest: +SKIP
    """
    out = check_output_path(out_path, overwrite)
    info, cfg = store.info, store.config
    keep_known = cfg.fit.keep_known
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial.tif")
    tmp_cog = out.with_name(f".{out.name}.{os.getpid()}.partial-cog.tif")
    nodata = info.nodata
    float_out = np.dtype(info.dtype).kind == "f"
    filled = unfilled = 0
    cache: dict = {}
    try:
        profile = _profile(info, cfg.output.compress, cfg.output.blocksize, (info.height, info.width))
        needs_mask = nodata is None and not float_out and not store.meta["footprint_is_full"]
        with rasterio.open(tmp, "w", **profile) as dst:
            for i, name in enumerate(info.band_names, start=1):
                dst.set_band_description(i, name)
                if i - 1 < len(info.band_tags) and info.band_tags[i - 1]:
                    dst.update_tags(i, **info.band_tags[i - 1])
            if info.tags:
                dst.update_tags(**info.tags)
            for win in scene.strips(STRIP):
                y, h = win.row_off, win.height
                values = scene.read(win)
                gaps = np.asarray(store.group["gaps"][:, y:y + h, :])
                inside = np.asarray(store.group["footprint"][y:y + h, :])
                acc, wsum = _blend_strip(store, y, h, cache)
                covered = wsum > 0
                target = (gaps if keep_known else inside[None]) & covered
                if target.any():
                    pred = acc / np.where(covered, wsum, 1)
                    values[target] = to_dtype(store.scaling.inverse_at(pred, target), info)
                    filled += int(target.sum())
                missing = gaps & ~covered
                unfilled += int(missing.sum())
                if nodata is not None:
                    values[missing] = nodata
                    values[:, ~inside] = nodata
                elif float_out:
                    values[missing] = np.nan
                    values[:, ~inside] = np.nan
                dst.write(values, window=win)
                if needs_mask:
                    dst.write_mask(np.where(inside, 255, 0).astype(np.uint8), window=win)
        final = tmp
        if cog:
            rasterio.shutil.copy(tmp, tmp_cog, driver="COG", compress=cfg.output.compress,
                                 blocksize=cfg.output.blocksize, BIGTIFF="IF_SAFER",
                                 NUM_THREADS="ALL_CPUS")
            tmp.unlink()
            final = tmp_cog
        os.replace(final, out)
    except BaseException:
        for p in (tmp, tmp_cog):
            p.unlink(missing_ok=True)
        raise
    return WriteStats(filled, unfilled)

