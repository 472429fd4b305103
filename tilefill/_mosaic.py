"""Mosaic and write: the tile predictions into the restored scene, a strip at a time.

Where DIP is blended with classical partners, each tile's DIP and partner fills are averaged
first, with the tile's own weight (``blend.weights: fixed``) or with weights fitted on the hidden
pixels of the whole scene per band and distance to known data (``blend.weights: distance``, see
``tilefill._distance_blend``). Overlapping predictions are then averaged with the grid's smooth
weights (1 in a tile's core, raised-cosine ramps across overlaps, none at the scene border),
normalised by the summed weight. Known pixels are copied from the input itself, so they stay exact bit for bit; only
gap pixels (or, with ``keep_known=False``, every footprint pixel a fitted tile covers) take
the prediction, mapped back to the input's units and dtype. The GeoTIFF is written under a
temporary name in the output's folder and renamed into place when complete.

With distance weights the same pass can write the estimated error of every filled pixel
(``OUT.quality.tif``, float32, the input's units, NaN elsewhere): the blend's RMSE on the hidden
pixels of the scene at that pixel's band and distance, scaled by how the tile's own hidden
pixels erred against that curve (shrunk toward 1 where the tile hid few pixels).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import rasterio
import rasterio.errors
import rasterio.shutil

from tilefill._distance_blend import (HALO, N_BINS, BlendStats, BlendWeights, GuidedStats, GuidedWeights, distance_bins,
                                      fit_guided_weights, fit_weights, histogram_match)
from tilefill._errors import TilefillError
from tilefill._grid import Tile
from tilefill._scene import Scene, SceneInfo
from tilefill._store import STRIP, TILE_INFO_FIELDS, TileStore


@dataclass(frozen=True)
class WriteStats:
    filled_pixels: int  # band-pixels that took a prediction
    unfilled_pixels: int  # gap band-pixels no tile could fill (left nodata)
    # with distance weights: tile -> estimated gap RMSE ([0, 1] units, mean of bands), and the fitted blend
    tile_estimates: dict = field(default_factory=dict)
    blend: dict | None = None
    # with distance weights: per band, the RMS estimated error of the filled pixels, in the input's units
    estimated_rmse: tuple[float, ...] = ()
    # with guides: per band, the filled pixels whose value took a weight from a guide
    guided_pixels: tuple[int, ...] = ()


@dataclass(frozen=True)
class _Mosaic:
    """What the mosaic needs beside the tiles: the scene's blend weights and each tile's error ratio."""

    scene: BlendWeights | None = None
    ratio: dict = field(default_factory=dict)  # tile -> (bands,) its hidden pixels' error over the scene curve's
    thin: frozenset = frozenset()  # tiles filled by the classical partner alone
    stats: BlendStats | None = None  # the mosaic's own, on the scene's hidden pixels (those no guide covers)
    guided: GuidedWeights | None = None  # where a guide covers: DIP, partner and the guide's fill
    guided_stats: GuidedStats | None = None  # the mosaic's own, on the hidden pixels a guide covers


class _TileCache:
    """The fitted tiles over a pass of strips from the top: each tile read once, dropped after its last strip.

    ``load(tile)`` gives what a tile contributes (see :func:`_tile_entry`), or None where it has no
    prediction; :meth:`covering` yields it with the rows it overlaps.
    """

    def __init__(self, store: TileStore, load: Callable[[Tile], tuple | None]):
        self.grid, self.load = store.grid, load
        self.fitted = set(store.tiles_to_fit)
        self.entries: dict[int, tuple | None] = {}

    def covering(self, y: int, h: int) -> Iterator[tuple[Tile, tuple, slice, slice]]:
        """``(tile, entry, rows of the tile, the same rows of the strip)`` for each fitted tile over rows [y, y+h)."""
        for tile in self.grid.tiles_in_rows(y, y + h):
            if tile.index not in self.fitted:
                continue
            if tile.index not in self.entries:
                self.entries[tile.index] = self.load(tile)
            entry = self.entries[tile.index]
            if entry is not None:
                r0, r1 = max(y, tile.y), min(y + h, tile.y + tile.size)
                yield tile, entry, slice(r0 - tile.y, r1 - tile.y), slice(r0 - y, r1 - y)
            if tile.y + tile.size <= y + h:  # this tile reaches no later strip
                self.entries.pop(tile.index, None)


def _tile_entry(store: TileStore, tile: Tile, pred: np.ndarray, partner: np.ndarray | None,
                guide: np.ndarray | None = None) -> tuple | None:
    """``(prediction, partner, weights, guide)`` of a tile, NaN set to 0 but in the guide's fill (NaN: no guide
    speaks there); its grid weights are 0 on a band without a prediction (NaN: nothing known in reach), and
    the tile adds nothing where no band has one (None)."""
    has = np.isfinite(pred[:, 0, 0])
    if not has.any():
        return None
    return (np.nan_to_num(pred), None if partner is None else np.nan_to_num(partner),
            store.grid.weights(tile)[None] * has[:, None, None], guide)


def mosaic_stats(store: TileStore, thin: frozenset, strip: int = 256, *, truth: np.ndarray | None = None,
                 mix: np.ndarray | None = None) -> BlendStats:
    """The blend's statistics on the scene's hidden pixels, measured on the mosaic itself.

    At a hidden pixel the mosaic at weight ``w`` is ``A + w * B``, with ``A`` and ``B`` the grid-weighted
    means over the tiles covering it of DIP's fill (a thin-gap tile's: its partner's) and of the partner's
    fill minus DIP's (a thin-gap tile's: 0): overlapping fits averaged exactly as at the real gaps. Distance
    bins of hidden pixels are taken to the pixels the fits saw; the gap counts to all known pixels.

    ``truth`` (bands, H, W), in the store's [0, 1] units: score the real gap pixels against it
    instead, where a benchmark knows what lies under the gaps (``benchmarks/blend_study.py``).
    ``mix`` (partners out, partners stored): score linear mixes of the stored partners' fills as the
    partners instead (a row ``[0.5, 0.5]``: the mean of two classical fills).
    """
    return _mosaic_statistics(store, thin, strip, truth=truth, mix=mix)[0]


def _mosaic_statistics(store: TileStore, thin: frozenset, strip: int = 256, *, truth: np.ndarray | None = None,
                       mix: np.ndarray | None = None) -> tuple[BlendStats, GuidedStats | None]:
    """:func:`mosaic_stats`, and where the store keeps a guide's fill, the same pixels split: those a guide covers
    (the guide's fill, grid-weighted over the tiles where it speaks, is finite there) scored for the three-way
    blend (:class:`GuidedStats`), the others as without a guide."""
    # the store's width: the scene's, or one tile's where the scene is narrower (its padding is collar)
    bands, width, height = store.info.count, store.grid.extent[1], store.info.height
    guided = store.guided
    classical = len(store.config.fit.blend_methods)
    partners = classical if mix is None else len(mix)
    out = BlendStats.zeros(partners, bands)
    out_guided = GuidedStats.zeros(bands) if guided else None

    def load(tile: Tile) -> tuple | None:
        stored = store.read_partners(tile.index)
        fills = stored[:classical]
        if mix is not None:
            fills = np.tensordot(np.asarray(mix, dtype=np.float32), np.nan_to_num(fills), axes=1)
        return _tile_entry(store, tile, store.read_tile(tile.index), fills, stored[-1] if guided else None)

    cache = _TileCache(store, load)
    for y in range(0, height, strip):
        h = min(strip, height - y)
        y0, y1 = max(0, y - HALO), min(height, y + h + HALO)
        gaps = np.asarray(store.group["gaps"][:, y0:y1, :])
        known = ~gaps & np.asarray(store.group["footprint"][y0:y1, :])[None]
        core = slice(y - y0, y - y0 + h)
        gap_bins = distance_bins(known)[:, core]
        if truth is None:  # the hidden pixels, binned by their distance to what the fits saw
            hidden = np.asarray(store.group["hidden"][:, y0:y1, :])
            scored = hidden[:, core]
            scored_bins = distance_bins(known & ~hidden)[:, core] if scored.any() else None
        else:  # the real gaps
            scored, scored_bins = gaps[:, core], gap_bins
        a = np.zeros((partners, bands, h, width), dtype=np.float32)
        d = np.zeros_like(a)
        wsum = np.zeros((bands, h, width), dtype=np.float32)
        g_acc = np.zeros((bands, h, width), dtype=np.float32) if guided else None
        g_sum = np.zeros_like(g_acc) if guided else None
        if scored.any() or guided:
            for tile, (pred, fills, w, guide), src, rows in cache.covering(y, h):
                dst = (slice(None), slice(None), rows, slice(tile.x, tile.x + tile.size))
                if tile.index in thin:
                    a[dst] += w[:, src] * fills[:, :, src]
                else:
                    a[dst] += w[:, src] * pred[:, src]
                    d[dst] += w[:, src] * (fills[:, :, src] - pred[:, src])
                wsum[dst[1:]] += w[:, src]
                if guided:
                    speaks = np.isfinite(guide[:, src])
                    g_acc[dst[1:]] += w[:, src] * np.where(speaks, guide[:, src], 0)
                    g_sum[dst[1:]] += w[:, src] * speaks
        covered = g_sum > 0 if guided else np.zeros((bands, h, width), bool)
        real = gaps[:, core]
        for b in range(bands):
            out.gaps[b] += np.bincount(gap_bins[b][real[b] & ~covered[b]], minlength=N_BINS)[:N_BINS]
            if guided:
                out_guided.gaps[b] += np.bincount(gap_bins[b][real[b] & covered[b]], minlength=N_BINS)[:N_BINS]
        if not scored.any():
            continue
        actual = np.asarray(store.group["scene"][:, y:y + h, :]) if truth is None else truth[:, y:y + h, :]
        norm = np.where(wsum > 0, wsum, 1)
        if guided:  # the three sources at the hidden pixels a guide covers
            for b in range(bands):
                sel = scored[b] & (wsum[b] > 0) & covered[b]
                if sel.any():
                    dip = a[0, b][sel] / norm[b][sel]
                    sources = np.stack([dip, dip + d[0, b][sel] / norm[b][sel], g_acc[b][sel] / g_sum[b][sel]])
                    out_guided.add(b, scored_bins[b][sel], sources - actual[b][sel])
        where = scored & (wsum > 0) & ~covered
        for b in range(bands):
            sel = where[b]
            if not sel.any():
                continue
            k = scored_bins[b][sel]
            for p in range(partners):
                err = a[p, b][sel] / norm[b][sel] - actual[b][sel]
                diff = d[p, b][sel] / norm[b][sel]
                out.n[p, b] += np.bincount(k, minlength=N_BINS)[:N_BINS]
                out.saa[p, b] += np.bincount(k, err * err, minlength=N_BINS)[:N_BINS]
                out.sab[p, b] += np.bincount(k, err * diff, minlength=N_BINS)[:N_BINS]
                out.sbb[p, b] += np.bincount(k, diff * diff, minlength=N_BINS)[:N_BINS]
    return out, out_guided


def thin_tiles(store: TileStore) -> frozenset:
    """Tiles filled by their classical partner alone (no fit: ``fit.thin_gap_px``)."""
    iterations = np.asarray(store.group["tile_info"][:, TILE_INFO_FIELDS.index("iterations")])
    return frozenset(int(i) for i in np.flatnonzero(iterations == 0))


def _plan(store: TileStore, blend, choose_partner: bool = False) -> _Mosaic:
    """Fit the scene's blend weights on the mosaic's hidden pixels, and each tile's error ratio.

    ``blend``: this run's :class:`~tilefill._config.BlendConfig` and ``choose_partner`` its
    ``experimental.choose_partner`` (a resumed store may have been fitted under others: they are not part
    of the run key). A tile's ratio is its own fit's error on its hidden
    pixels over what the scene's tiles err there on average, at the same distances (shrunk toward 1
    by ``blend.prior_pixels``): where a tile is harder than the scene, its error map is higher.
    """
    if not store.has_partners:
        return _Mosaic()
    thin = thin_tiles(store)
    cfg = store.config
    if blend.weights != "distance" or "hidden" not in store.group:
        return _Mosaic(thin=thin)
    stats, guided_stats = _mosaic_statistics(store, thin)
    if not choose_partner:
        stats = stats.first_partner()
    scene = fit_weights(stats, prior=cfg.fit.classical_blend, prior_pixels=blend.prior_pixels,
                        curve=blend.curve(stats.partners))
    guided = fit_guided_weights(guided_stats, scene, prior_pixels=blend.prior_pixels) if guided_stats else None
    arrays = store.blend_stats()
    done = [int(i) for i in np.flatnonzero(np.isfinite(arrays[:, 0, 0, 0, 0])) if int(i) not in thin]
    per_tile = {i: BlendStats.from_array(arrays[i]) for i in done}
    if not choose_partner:
        per_tile = {i: st.first_partner() for i, st in per_tile.items()}
    single = sum(per_tile.values(), BlendStats.zeros(stats.partners, stats.bands))
    rows = np.arange(stats.bands)
    n_all = single.n[scene.partner, rows]
    curve = np.divide(single.sse(scene.weights, scene.partner), n_all, out=np.zeros_like(n_all), where=n_all > 0)
    per_tile_guided, guided_curve = {}, None
    if guided is not None:  # the same for the hidden pixels a guide covers, at the three-way weights
        garrays = store.guided_stats()
        per_tile_guided = {i: GuidedStats.from_array(garrays[i]) for i in done}
        pooled = sum(per_tile_guided.values(), GuidedStats.zeros(stats.bands))
        guided_curve = np.divide(pooled.sse(guided.weights), pooled.n, out=np.zeros_like(pooled.n),
                                 where=pooled.n > 0)
    ratio = {}
    for i, st in per_tile.items():
        n = st.n[scene.partner, rows]
        sse = st.sse(scene.weights, scene.partner).sum(axis=1)
        expected = (n * curve).sum(axis=1)
        hidden = n.sum(axis=1)
        if i in per_tile_guided:
            gst = per_tile_guided[i]
            sse = sse + gst.sse(guided.weights).sum(axis=1)
            expected = expected + (gst.n * guided_curve).sum(axis=1)
            hidden = hidden + gst.n.sum(axis=1)
        raw = np.divide(sse, expected, out=np.ones_like(sse), where=expected > 0)
        ratio[i] = (hidden * raw + blend.prior_pixels) / (hidden + blend.prior_pixels)
    return _Mosaic(scene, ratio, thin, stats, guided, guided_stats)


def _tile_estimates(plan: _Mosaic, store: TileStore) -> dict:
    """Each fitted tile's estimated gap RMSE: the scene's curve at its gap pixels' distances, scaled by its ratio."""
    if plan.scene is None:
        return {}
    arrays = store.blend_stats()
    garrays = store.guided_stats() if plan.guided is not None else None
    out = {}
    for i, ratio in plan.ratio.items():
        gaps = BlendStats.from_array(arrays[i]).gaps
        mse_sum = np.nansum(gaps * plan.scene.mse, axis=1)
        count = gaps.sum(axis=1)
        if garrays is not None:  # the gap pixels a guide covers err as the three-way blend does
            covered = GuidedStats.from_array(garrays[i]).gaps
            mse_sum = mse_sum + np.nansum(covered * plan.guided.mse, axis=1)
            count = count + covered.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            rmse = np.sqrt(mse_sum / count) * np.sqrt(ratio)
        if np.isfinite(rmse).any():
            out[i] = float(np.nanmean(rmse))
    return out


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


def _strip_bins(store: TileStore, y: int, h: int) -> np.ndarray:
    """Distance bins of rows [y, y+h), from the known pixels within ``HALO`` rows around them (exact bins)."""
    y0, y1 = max(0, y - HALO), min(store.info.height, y + h + HALO)
    gaps = np.asarray(store.group["gaps"][:, y0:y1, :])
    inside = np.asarray(store.group["footprint"][y0:y1, :])
    return distance_bins(~gaps & inside[None])[:, y - y0:y - y0 + h]


def _tile_fill(store: TileStore, plan: _Mosaic, index: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A tile's DIP fill, the partner it is averaged with (per band: the scene's choice) and the guide's fill
    (NaN where no guide speaks; None without guides), [0, 1] units."""
    pred = store.read_tile(index)
    if not store.has_partners:
        return pred, None, None
    stored = store.read_partners(index)
    guide = stored[-1] if store.guided else None
    partners = stored[:len(store.config.fit.blend_methods)]
    weights = plan.scene
    if weights is None:
        return pred, partners[0], guide
    return pred, partners[weights.partner, np.arange(partners.shape[1])], guide


class _StripMosaic:
    """The mosaic of the store's tiles, strip by strip from the top, blended as ``plan`` says."""

    def __init__(self, store: TileStore, plan: _Mosaic):
        self.store, self.plan = store, plan
        self.cache = _TileCache(store, lambda tile: _tile_entry(store, tile, *_tile_fill(store, plan, tile.index)))
        self.tile_weights = store.tile_weights() if store.has_partners else None

    def strip(self, y: int, h: int, *, estimate: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None,
                                                                         np.ndarray | None]:
        """Weighted sum of the predictions over rows [y, y+h), the summed weight, with ``estimate`` the weighted
        sum of the estimated error with the weight behind it (2, bands, h, width), and with a guide the weighted
        sum of the weight the guide's fill took (bands, h, width), per band.

        A tile band without a prediction (NaN: nothing known in reach) adds no weight there. Where a guide
        speaks, a fitted tile's value is the three-way blend of DIP, its partner and the guide's fill.
        """
        store, plan = self.store, self.plan
        bands, width = store.info.count, store.grid.extent[1]
        acc = np.zeros((bands, h, width), dtype=np.float32)
        wsum = np.zeros((bands, h, width), dtype=np.float32)
        # the weighted sum of the estimates and the weight behind them (no hidden pixel in reach: no estimate)
        err = np.zeros((2, bands, h, width), dtype=np.float32) if estimate else None
        guide_share = np.zeros((bands, h, width), dtype=np.float32) if plan.guided is not None else None
        bins = _strip_bins(store, y, h) if plan.scene is not None else None
        for tile, (pred, partner, w, guide), src, rows in self.cache.covering(y, h):
            dst = (slice(None), rows, slice(tile.x, tile.x + tile.size))
            value = pred[:, src]
            speaks = None
            if partner is not None:
                if tile.index in plan.thin:
                    mix = np.ones((bands, 1, 1), dtype=np.float32)
                elif plan.scene is not None:
                    mix = plan.scene.at(bins[dst]).astype(np.float32)
                else:
                    mix = self.tile_weights[tile.index].astype(np.float32)[:, None, None]
                value = value + mix * (partner[:, src] - value)
                if plan.guided is not None and tile.index not in plan.thin:
                    speaks = np.isfinite(guide[:, src])
                    if speaks.any():
                        a = plan.guided.at(bins[dst]).astype(np.float32)
                        three = a[0] * pred[:, src] + a[1] * partner[:, src] + a[2] * np.nan_to_num(guide[:, src])
                        value = np.where(speaks, three, value)
                        guide_share[dst] += w[:, src] * np.where(speaks, a[2], 0)
            acc[dst] += w[:, src] * value
            wsum[dst] += w[:, src]
            if estimate:
                # a thin-gap tile is its partner alone: that curve; a fitted tile: the blend's, times its ratio
                at = (np.arange(bands)[:, None, None], np.minimum(bins[dst], N_BINS - 1))
                if tile.index in plan.thin:
                    mse = plan.scene.alone_mse[at]
                else:
                    mse = plan.scene.mse[at]
                    if speaks is not None:  # the three-way blend's error, where any covered hidden pixel gave one
                        gmse = plan.guided.mse[at]
                        mse = np.where(speaks & np.isfinite(gmse), gmse, mse)
                    mse = mse * plan.ratio.get(tile.index, np.ones(bands))[:, None, None]
                has_estimate = np.isfinite(mse)
                err[(0, *dst)] += w[:, src] * np.where(has_estimate, np.sqrt(np.where(has_estimate, mse, 0)), 0)
                err[(1, *dst)] += w[:, src] * has_estimate
        return acc, wsum, err, guide_share


def _check_complete(path: Path) -> None:
    """Read a written GeoTIFF back before it takes the output's name.

    GDAL only logs a write that fails for a full disk or a folder turned read-only, and closes
    the file anyway, short of blocks or of its directory. Reading every block back costs about a
    tenth of the write and catches it.
    """
    try:
        with rasterio.open(path) as ds:
            for _, window in ds.block_windows(1):
                ds.read(window=window)
    except rasterio.errors.RasterioError as exc:
        full = shutil.disk_usage(path.parent).free < 2**20
        code = errno.ENOSPC if full else errno.EROFS if not os.access(path.parent, os.W_OK) else errno.EIO
        raise OSError(code, f"{os.strerror(code)}: {path.name} is incomplete ({exc})") from None


@dataclass(frozen=True)
class _Partials:
    """The files a write makes under temporary names in the output's folder, renamed into place at the end."""

    tif: Path
    cog: Path
    error_map: Path | None  # OUT.quality.tif's partial, when it is written
    quality_map: Path | None

    @classmethod
    def beside(cls, out: Path, quality_map: Path | None) -> "_Partials":
        pid = os.getpid()
        part = quality_map.with_name(f".{quality_map.name}.{pid}.partial.tif") if quality_map else None
        return cls(out.with_name(f".{out.name}.{pid}.partial.tif"), out.with_name(f".{out.name}.{pid}.partial-cog.tif"),
                   part, quality_map)

    def remove(self) -> None:
        for p in (self.tif, self.cog, self.error_map):
            if p is not None:
                p.unlink(missing_ok=True)


def _open_output(stack: ExitStack, path: Path, profile: dict, info: SceneInfo, tags: dict | None = None):
    """The restored GeoTIFF, open for writing, with the input's band names and tags, and ``tags`` of the run."""
    dst = stack.enter_context(rasterio.open(path, "w", **profile))
    for i, name in enumerate(info.band_names, start=1):
        dst.set_band_description(i, name)
        if i - 1 < len(info.band_tags) and info.band_tags[i - 1]:
            dst.update_tags(i, **info.band_tags[i - 1])
    if info.tags or tags:
        dst.update_tags(**{**info.tags, **(tags or {})})
    return dst


def run_tags(store: TileStore) -> dict:
    """What the output's tags say of the run beyond the input's own: the guides it was filled with
    (``TILEFILL_GUIDES``: a JSON list of each guide's path, acquisition date and matched bands)."""
    guides = store.meta.get("guides") or []
    if not guides:
        return {}
    return {"TILEFILL_GUIDES": json.dumps([{"path": g["path"], "acquired": g.get("acquired"), "bands": g["bands"]}
                                          for g in guides])}


def _open_error_map(stack: ExitStack, path: Path, profile: dict, info: SceneInfo, guided: bool = False):
    """``OUT.quality.tif``, open for writing: float32, NaN where nothing was filled; with guides, a second band per
    band holds the weight the guides took in each filled value (0: filled from the scene alone)."""
    bands = info.count
    err_profile = {**profile, "dtype": "float32", "nodata": np.nan, "count": 2 * bands if guided else bands}
    if "predictor" in profile:
        err_profile["predictor"] = 3
    dst = stack.enter_context(rasterio.open(path, "w", **err_profile))
    for i, name in enumerate(info.band_names, start=1):
        dst.set_band_description(i, f"{name}: estimated error of the filled value")
        if guided:
            dst.set_band_description(bands + i, f"{name}: weight of the guides in the filled value")
    dst.update_tags(units="the input band's units; NaN where no pixel was filled",
                    method="blend RMSE on hidden pixels at the pixel's distance to known data (and whether a guide "
                           "covers it), scaled by its tile's own hidden-pixel error",
                    **({"guide_weight": f"bands {bands + 1}-{2 * bands}: 0 where the value comes from the scene "
                                        "alone, up to 1 where it comes from the guides' fill alone"} if guided else {}))
    return dst


@dataclass
class _Written:
    """What the strip loop wrote: band-pixels filled and left nodata, and per band the sum of squares and the
    count of the estimated errors of the filled pixels (input units)."""

    filled: int = 0
    unfilled: int = 0
    err_sq: np.ndarray | None = None
    err_n: np.ndarray | None = None
    guided: np.ndarray | None = None  # per band, the filled pixels a guide took a weight in

    def estimated_rmse(self) -> tuple[float, ...]:
        """Per band, the RMS estimated error of the filled pixels (input units); empty without estimates."""
        if self.err_n is None:
            return ()
        with np.errstate(invalid="ignore", divide="ignore"):
            return tuple(float(v) for v in np.sqrt(self.err_sq / self.err_n))


def _write_strips(store: TileStore, scene: Scene, plan: _Mosaic, dst, err_dst, keep_known: bool) -> _Written:
    """The restored scene, strip by strip: gap pixels (with ``keep_known=False``, every footprint pixel a
    fitted tile covers) take the mosaic, mapped back to the input's units and dtype; known pixels are the
    input's own. With distance weights, each filled pixel's estimated error too (into ``err_dst``, if open)."""
    info = store.info
    mosaic = _StripMosaic(store, plan)
    estimate = plan.scene is not None
    nodata, float_out = info.nodata, np.dtype(info.dtype).kind == "f"
    needs_mask = nodata is None and not float_out and not store.meta["footprint_is_full"]
    span = (np.asarray(store.scaling.hi) - np.asarray(store.scaling.lo)).astype(np.float32)[:, None, None]
    out = _Written(err_sq=np.zeros(info.count), err_n=np.zeros(info.count)) if estimate else _Written()
    if plan.guided is not None:
        out.guided = np.zeros(info.count, dtype=np.int64)
    for win in scene.strips(STRIP):
        y, h = win.row_off, win.height
        values = scene.read(win)
        cols = slice(0, info.width)  # the scene's columns: a store padded to one tile holds more
        gaps = np.asarray(store.group["gaps"][:, y:y + h, cols])
        inside = np.asarray(store.group["footprint"][y:y + h, cols])
        acc, wsum, err, guide_share = (None if a is None else a[..., cols]
                                       for a in mosaic.strip(y, h, estimate=estimate))
        covered = wsum > 0
        target = (gaps if keep_known else inside[None]) & covered
        if target.any():
            pred = acc / np.where(covered, wsum, 1)
            values[target] = to_dtype(store.scaling.inverse_at(pred, target), info)
            out.filled += int(target.sum())
        missing = gaps & ~covered
        out.unfilled += int(missing.sum())
        if nodata is not None:
            values[missing] = nodata
            values[:, ~inside] = nodata
        elif float_out:
            values[missing] = np.nan
            values[:, ~inside] = np.nan
        dst.write(values, window=win)
        if needs_mask:
            dst.write_mask(np.where(inside, 255, 0).astype(np.uint8), window=win)
        if estimate:
            est = np.full(values.shape, np.nan, dtype=np.float32)
            with np.errstate(invalid="ignore", divide="ignore"):
                est[target] = (err[0] / err[1] * span)[target]  # NaN where no estimate reached
            finite = np.isfinite(est)
            known_err = np.where(finite, est, 0).astype(np.float64)
            out.err_sq += (known_err * known_err).sum(axis=(1, 2))
            out.err_n += finite.sum(axis=(1, 2))
            share = None
            if guide_share is not None:
                share = np.full(values.shape, np.nan, dtype=np.float32)
                share[target] = (guide_share / np.where(covered, wsum, 1))[target]
                out.guided += ((share > 0) & target).sum(axis=(1, 2))
            if err_dst is not None:
                err_dst.write(est if share is None else np.concatenate([est, share]), window=win)
    return out


def _to_cog(partials: _Partials, output) -> Path:
    """The written GeoTIFF copied as a Cloud Optimized GeoTIFF (``output``: the run's OutputConfig)."""
    rasterio.shutil.copy(partials.tif, partials.cog, driver="COG", compress=output.compress,
                         blocksize=output.blocksize, BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS")
    partials.tif.unlink()
    return partials.cog


def _blend_record(plan: _Mosaic, cfg) -> dict | None:
    """The fitted distance blend, as the quality sidecar records it; None without one. With guides, ``guided``
    holds the three-way blend where a guide covers (and ``gap_pixels`` there), the rest the pixels it does not."""
    if plan.scene is None:
        return None
    record = {**plan.scene.to_dict(list(cfg.fit.blend_methods)),
              "gap_pixels": plan.stats.gaps.astype(int).tolist(),
              "histogram_match": np.round(histogram_match(plan.stats), 3).tolist(),
              "estimated_rmse": np.round(plan.scene.expected_rmse(plan.stats.gaps), 5).tolist()}
    if plan.guided is not None:
        gaps = plan.guided_stats.gaps
        record["guided"] = {**plan.guided.to_dict(), "partner": cfg.guide.partner,
                            "gap_pixels": gaps.astype(int).tolist(),
                            "estimated_rmse": np.round(plan.guided.expected_rmse(gaps), 5).tolist()}
    return record


def write_output(store: TileStore, scene: Scene, out_path: str | Path, *, cog: bool = False,
                 overwrite: bool = False, quality_map: str | Path | None = None, config=None) -> WriteStats:
    """Blend the store's tiles with the input and write the restored GeoTIFF atomically.

    ``quality_map``: also write the estimated error of each filled pixel there (with distance
    weights only; float32, the input's units, NaN where nothing was filled), atomically too.
    ``config``: this run's settings for what is decided after the fits (``blend``, ``output``,
    ``experimental.choose_partner``); by default the store's own.

    Examples
    --------
    >>> stats = write_output(store, scene, "restored.tif", cog=True)  # doctest: +SKIP
    >>> stats.blend["weights"]  # doctest: +SKIP
    [[1.0, 0.93, 0.62, 0.41, 0.35, 0.35, 0.35, 0.35], ...]
    """
    out = check_output_path(out_path, overwrite)
    info, cfg = store.info, store.config
    run = config or cfg
    plan = _plan(store, run.blend, run.experimental.choose_partner)
    partials = _Partials.beside(out, Path(quality_map) if quality_map is not None and plan.scene is not None else None)
    try:
        profile = _profile(info, run.output.compress, run.output.blocksize, (info.height, info.width))
        with ExitStack() as stack:
            dst = _open_output(stack, partials.tif, profile, info, run_tags(store))
            err_dst = _open_error_map(stack, partials.error_map, profile, info, plan.guided is not None) \
                if partials.error_map else None
            written = _write_strips(store, scene, plan, dst, err_dst, cfg.fit.keep_known)
        final = _to_cog(partials, run.output) if cog else partials.tif
        _check_complete(final)
        if partials.error_map:
            os.replace(partials.error_map, partials.quality_map)
        os.replace(final, out)
    except BaseException:
        partials.remove()
        raise
    return WriteStats(written.filled, written.unfilled, _tile_estimates(plan, store), _blend_record(plan, cfg),
                      written.estimated_rmse(), tuple(int(v) for v in written.guided) if written.guided is not None
                      else ())
