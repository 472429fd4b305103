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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import rasterio
import rasterio.errors
import rasterio.shutil

from tilefill._distance_blend import (HALO, N_AGREEMENT, N_BINS, BlendStats, BlendWeights, GuidedStats, GuidedWeights,
                                      agreement_classes, distance_bins, fit_guided_weights, fit_weights,
                                      histogram_match)
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
    # where a guide covers: DIP, partner and the guide's fill, one blend per agreement class, and one over them all
    guided: tuple[GuidedWeights, ...] | None = None
    guided_stats: tuple[GuidedStats, ...] | None = None  # the mosaic's own, on the hidden pixels a guide covers
    guided_pooled: GuidedWeights | None = None
    trust: object | None = None  # the trust map's error model (tilefill._trust.ErrorModel)


class _TileCache:
    """The fitted tiles over a pass of strips from the top: each tile read once, dropped after its last strip.

    ``load(tile, prediction, stored)`` gives what a tile contributes (see :func:`_tile_entry`) from its stored
    prediction and (where the store keeps them) its partners' fills, or None where it has no prediction;
    :meth:`covering` yields it with the rows it overlaps. A strip's new tiles are read a row of the grid at a
    time, one read per array (not a read per tile).
    """

    def __init__(self, store: TileStore, load: Callable[[Tile, np.ndarray, np.ndarray | None], tuple | None]):
        self.store, self.grid, self.load = store, store.grid, load
        self.fitted = set(store.tiles_to_fit)
        self.entries: dict[int, tuple | None] = {}

    def _read(self, tiles: list[Tile]) -> None:
        by_row: dict[int, list[Tile]] = {}
        for tile in tiles:
            by_row.setdefault(tile.row, []).append(tile)
        for row in by_row.values():
            indices = [t.index for t in row]
            preds = self.store.read_tiles(indices)
            stored = self.store.read_partners_of(indices) if self.store.has_partners else [None] * len(row)
            for k, tile in enumerate(row):  # copies: an entry must not keep the whole row's arrays alive
                self.entries[tile.index] = self.load(tile, preds[k].copy(),
                                                     None if stored[k] is None else stored[k].copy())

    def covering(self, y: int, h: int) -> Iterator[tuple[Tile, tuple, slice, slice]]:
        """``(tile, entry, rows of the tile, the same rows of the strip)`` for each fitted tile over rows [y, y+h)."""
        tiles = [t for t in self.grid.tiles_in_rows(y, y + h) if t.index in self.fitted]
        self._read([t for t in tiles if t.index not in self.entries])
        for tile in tiles:
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


@dataclass
class _HiddenSums:
    """One strip of the mosaic where it is scored: its pixels, and the tiles' fills summed by grid weight.

    ``a`` and ``d`` (partners, bands, h, w): the sums of DIP's fill (a thin-gap tile's: its partner's) and of each
    partner's fill minus DIP's; ``wsum`` their weight; ``g_acc`` / ``g_sum`` the guide's fill and its weight where
    it speaks; ``rmse`` with ``tile_rmse``: the sum of each tile's estimated error by the same weights. ``scored``:
    the pixels scored (the hidden ones, or with a truth the real gaps) and ``scored_bins`` their distance bins
    to what the fits saw; ``gaps``, ``gap_bins`` the real gaps; ``seen`` / ``values`` (bands, h + halo, w) the
    pixels the fits saw and the scene's values, ``core`` the strip's rows among them; ``actual`` the truth there.
    """

    y: int
    h: int
    core: slice
    seen: np.ndarray
    values: np.ndarray
    gaps: np.ndarray
    gap_bins: np.ndarray
    scored: np.ndarray
    scored_bins: np.ndarray | None
    a: np.ndarray
    d: np.ndarray
    wsum: np.ndarray
    g_acc: np.ndarray | None
    g_sum: np.ndarray | None
    rmse: np.ndarray | None
    actual: np.ndarray
    klass: np.ndarray | None = None  # with guides: each pixel's agreement class, from what the fits saw

    @property
    def covered(self) -> np.ndarray:
        """Where a guide speaks (its fill has weight): bool (bands, h, w)."""
        return self.g_sum > 0 if self.g_sum is not None else np.zeros(self.wsum.shape, bool)


def _agreement(store: TileStore, values: np.ndarray, known: np.ndarray, y0: int, y1: int) -> np.ndarray:
    """The agreement class (:func:`~tilefill._distance_blend.agreement_classes`) of rows [y0, y1): how well the
    guides explain the scene's ``known`` pixels around each pixel."""
    from tilefill._multitemporal import guide_agreement

    guides = np.asarray(store.group["guides"][:, :, y0:y1, :])
    has = np.asarray(store.group["guides_known"][:, :, y0:y1, :])
    return agreement_classes(guide_agreement(values, known, guides, has))


def _hidden_strips(store: TileStore, thin: frozenset, strip: int = 256, *, truth: np.ndarray | None = None,
                   mix: np.ndarray | None = None, tile_rmse: Callable | None = None) -> Iterator[_HiddenSums]:
    """The mosaic's sums strip by strip from the top (:class:`_HiddenSums`), each tile read once.

    ``tile_rmse(tile, bins, speaks)`` (see :func:`_tile_rmse`): also sum each tile's estimated error.
    """
    # the store's width: the scene's, or one tile's where the scene is narrower (its padding is collar)
    bands, width, height = store.info.count, store.grid.extent[1], store.info.height
    guided = store.guided
    classical = len(store.config.fit.blend_methods)
    partners = classical if mix is None else len(mix)

    def load(tile: Tile, pred: np.ndarray, stored: np.ndarray) -> tuple | None:
        fills = stored[:classical]
        if mix is not None:
            fills = np.tensordot(np.asarray(mix, dtype=np.float32), np.nan_to_num(fills), axes=1)
        return _tile_entry(store, tile, pred, fills, stored[-1] if guided else None)

    cache = _TileCache(store, load)
    for y in range(0, height, strip):
        h = min(strip, height - y)
        y0, y1 = max(0, y - HALO), min(height, y + h + HALO)
        gaps = np.asarray(store.group["gaps"][:, y0:y1, :])
        known = ~gaps & np.asarray(store.group["footprint"][y0:y1, :])[None]
        core = slice(y - y0, y - y0 + h)
        gap_bins = distance_bins(known)[:, core]
        seen = known
        if truth is None:  # the hidden pixels, binned by their distance to what the fits saw
            hidden = np.asarray(store.group["hidden"][:, y0:y1, :])
            scored = hidden[:, core]
            seen = known & ~hidden
            scored_bins = distance_bins(seen)[:, core] if scored.any() else None
        else:  # the real gaps
            scored, scored_bins = gaps[:, core], gap_bins
        a = np.zeros((partners, bands, h, width), dtype=np.float32)
        d = np.zeros_like(a)
        wsum = np.zeros((bands, h, width), dtype=np.float32)
        g_acc = np.zeros((bands, h, width), dtype=np.float32) if guided else None
        g_sum = np.zeros_like(g_acc) if guided else None
        rmse = np.zeros((bands, h, width), dtype=np.float32) if tile_rmse is not None else None
        values = np.asarray(store.group["scene"][:, y0:y1, :])
        klass = _agreement(store, values, seen, y0, y1)[:, core] if guided else None
        if scored.any() or guided:
            for tile, (pred, fills, w, guide), src, rows in cache.covering(y, h):
                dst = (slice(None), slice(None), rows, slice(tile.x, tile.x + tile.size))
                if tile.index in thin:
                    a[dst] += w[:, src] * fills[:, :, src]
                else:
                    a[dst] += w[:, src] * pred[:, src]
                    d[dst] += w[:, src] * (fills[:, :, src] - pred[:, src])
                wsum[dst[1:]] += w[:, src]
                speaks = None
                if guided:
                    speaks = np.isfinite(guide[:, src])
                    g_acc[dst[1:]] += w[:, src] * np.where(speaks, guide[:, src], 0)
                    g_sum[dst[1:]] += w[:, src] * speaks
                if rmse is not None and scored_bins is not None:
                    rmse[dst[1:]] += w[:, src] * tile_rmse(tile, scored_bins[dst[1:]], speaks,
                                                           klass[dst[1:]] if klass is not None else None)
        actual = values[:, core] if truth is None else truth[:, y:y + h, :]
        yield _HiddenSums(y, h, core, seen, values, gaps[:, core], gap_bins, scored, scored_bins, a, d, wsum,
                          g_acc, g_sum, rmse, actual, klass)


def _mosaic_statistics(store: TileStore, thin: frozenset, strip: int = 256, *, truth: np.ndarray | None = None,
                       mix: np.ndarray | None = None) -> tuple[BlendStats, GuidedStats | None]:
    """:func:`mosaic_stats`, and where the store keeps a guide's fill, the same pixels split: those a guide covers
    (the guide's fill, grid-weighted over the tiles where it speaks, is finite there) scored for the three-way
    blend (:class:`GuidedStats`), the others as without a guide."""
    bands = store.info.count
    partners = len(store.config.fit.blend_methods) if mix is None else len(mix)
    out = BlendStats.zeros(partners, bands)
    out_guided = [GuidedStats.zeros(bands) for _ in range(N_AGREEMENT)] if store.guided else None
    for s in _hidden_strips(store, thin, strip, truth=truth, mix=mix):
        covered = s.covered
        for b in range(bands):
            out.gaps[b] += np.bincount(s.gap_bins[b][s.gaps[b] & ~covered[b]], minlength=N_BINS)[:N_BINS]
            for k, st in enumerate(out_guided or ()):
                where = s.gaps[b] & covered[b] & (s.klass[b] == k)
                st.gaps[b] += np.bincount(s.gap_bins[b][where], minlength=N_BINS)[:N_BINS]
        if not s.scored.any():
            continue
        norm = np.where(s.wsum > 0, s.wsum, 1)
        for k, st in enumerate(out_guided or ()):  # the three sources at the hidden pixels a guide covers
            for b in range(bands):
                sel = s.scored[b] & (s.wsum[b] > 0) & covered[b] & (s.klass[b] == k)
                if sel.any():
                    dip = s.a[0, b][sel] / norm[b][sel]
                    sources = np.stack([dip, dip + s.d[0, b][sel] / norm[b][sel], s.g_acc[b][sel] / s.g_sum[b][sel]])
                    st.add(b, s.scored_bins[b][sel], sources - s.actual[b][sel])
        where = s.scored & (s.wsum > 0) & ~covered
        for b in range(bands):
            sel = where[b]
            if not sel.any():
                continue
            k = s.scored_bins[b][sel]
            for p in range(partners):
                err = s.a[p, b][sel] / norm[b][sel] - s.actual[b][sel]
                diff = s.d[p, b][sel] / norm[b][sel]
                out.n[p, b] += np.bincount(k, minlength=N_BINS)[:N_BINS]
                out.saa[p, b] += np.bincount(k, err * err, minlength=N_BINS)[:N_BINS]
                out.sab[p, b] += np.bincount(k, err * diff, minlength=N_BINS)[:N_BINS]
                out.sbb[p, b] += np.bincount(k, diff * diff, minlength=N_BINS)[:N_BINS]
    return out, tuple(out_guided) if out_guided is not None else None


def _by_class(per_class: list[np.ndarray], klass: np.ndarray) -> np.ndarray:
    """Each pixel's value from the array of its agreement class (arrays of one shape, ``klass`` broadcast to it)."""
    out = per_class[0]
    for k in range(1, len(per_class)):
        out = np.where(klass == k, per_class[k], out)
    return out


def _guided_weights_at(plan: "_Mosaic", bins: np.ndarray, klass: np.ndarray) -> np.ndarray:
    """The three-way weights (3, bands, r, c) at pixels of distance ``bins`` and agreement class ``klass``."""
    return _by_class([w.at(bins) for w in plan.guided], klass[None])


def _tile_rmse(plan: "_Mosaic", tile: Tile, bins: np.ndarray, speaks: np.ndarray | None,
               klass: np.ndarray | None = None) -> np.ndarray:
    """A tile's estimated error at pixels of distance ``bins`` (bands, r, c), as the curves give it: a thin-gap tile
    is its partner alone; a fitted one the blend's curve (the three-way blend's of the pixel's agreement class where
    a guide ``speaks`` and one was measured), times the tile's own error ratio. NaN where no curve reaches."""
    bands = bins.shape[0]
    at = (np.arange(bands)[:, None, None], np.minimum(bins, N_BINS - 1))
    if tile.index in plan.thin:
        return np.sqrt(plan.scene.alone_mse[at])
    mse = plan.scene.mse[at]
    if speaks is not None and plan.guided is not None:
        gmse = _by_class([w.mse[at] for w in plan.guided], klass)
        mse = np.where(speaks & np.isfinite(gmse), gmse, mse)
    return np.sqrt(mse * plan.ratio.get(tile.index, np.ones(bands))[:, None, None])


def _trust_features(plan: "_Mosaic", dip: np.ndarray, partner: np.ndarray, guide: np.ndarray | None,
                    value: np.ndarray, rmse: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """The trust map's features (:data:`tilefill._trust.FEATURES`) at ``m`` pixels of one band, (m, 4)."""
    from tilefill._trust import features

    spoken = np.zeros_like(value) if guide is None else np.where(np.isfinite(guide), np.nan_to_num(guide) - value, 0)
    return features(rmse ** 2, (dip - partner) ** 2, spoken ** 2, texture)


def _trust_stats(store: TileStore, plan: "_Mosaic", strip: int = 256):
    """Fit the trust map (:class:`tilefill._trust.ErrorModel`) on the hidden pixels: each one's features against
    the squared error of the mosaic there, as the blend ``plan`` makes it."""
    from tilefill._trust import TrustStats, local_variance

    bands = store.info.count
    stats = TrustStats.zeros(bands)
    rows = np.arange(bands)
    for s in _hidden_strips(store, plan.thin, strip, tile_rmse=lambda t, k, sp, kl: _tile_rmse(plan, t, k, sp, kl)):
        where = s.scored & (s.wsum > 0)
        if not where.any():
            continue
        norm = np.where(s.wsum > 0, s.wsum, 1)
        dip, partner = s.a[0] / norm, (s.a[0] + s.d[0]) / norm
        if plan.scene is not None:
            partner = (s.a[plan.scene.partner, rows] + s.d[plan.scene.partner, rows]) / norm
            m = plan.scene.at(s.scored_bins)
            value = dip + m * (partner - dip)
        else:
            value = dip
        guide = None
        if s.g_sum is not None and plan.guided is not None:
            covered = s.covered
            guide = np.where(covered, s.g_acc / np.where(covered, s.g_sum, 1), np.nan)
            w3 = _guided_weights_at(plan, s.scored_bins, s.klass)
            value = np.where(covered, w3[0] * dip + w3[1] * partner + w3[2] * np.nan_to_num(guide), value)
        texture = local_variance(s.values, s.seen)[:, s.core]
        rmse = s.rmse / norm
        for b in range(bands):
            sel = where[b]
            if sel.any():
                x = _trust_features(plan, dip[b][sel], partner[b][sel], None if guide is None else guide[b][sel],
                                    value[b][sel], rmse[b][sel], texture[b][sel])
                stats.add(b, x, (value[b][sel] - s.actual[b][sel]) ** 2)
    return stats


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
    guided = pooled_guided = None
    if guided_stats:
        guided = tuple(fit_guided_weights(st, scene, prior_pixels=blend.prior_pixels) for st in guided_stats)
        # over every agreement class at once: what a tile's own hidden pixels (not split by class) are held against
        pooled_guided = fit_guided_weights(sum(guided_stats, GuidedStats.zeros(stats.bands)), scene,
                                           prior_pixels=blend.prior_pixels)
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
        guided_curve = np.divide(pooled.sse(pooled_guided.weights), pooled.n, out=np.zeros_like(pooled.n),
                                 where=pooled.n > 0)
    ratio = {}
    for i, st in per_tile.items():
        n = st.n[scene.partner, rows]
        sse = st.sse(scene.weights, scene.partner).sum(axis=1)
        expected = (n * curve).sum(axis=1)
        hidden = n.sum(axis=1)
        if i in per_tile_guided:
            gst = per_tile_guided[i]
            sse = sse + gst.sse(pooled_guided.weights).sum(axis=1)
            expected = expected + (gst.n * guided_curve).sum(axis=1)
            hidden = hidden + gst.n.sum(axis=1)
        raw = np.divide(sse, expected, out=np.ones_like(sse), where=expected > 0)
        ratio[i] = (hidden * raw + blend.prior_pixels) / (hidden + blend.prior_pixels)
    plan = _Mosaic(scene, ratio, thin, stats, guided, guided_stats, pooled_guided)
    if not blend.trust_features:
        from tilefill._trust import ErrorModel

        return replace(plan, trust=ErrorModel.curve_alone(stats.bands))
    return replace(plan, trust=_trust_stats(store, plan).fit())


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
            mse_sum = mse_sum + np.nansum(covered * plan.guided_pooled.mse, axis=1)
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


def _tile_fill(store: TileStore, plan: _Mosaic, pred: np.ndarray, stored: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A tile's DIP fill (``pred``), the partner it is averaged with (per band: the scene's choice, from the
    partners' fills ``stored``) and the guide's fill (NaN where no guide speaks; None without guides), [0, 1]
    units."""
    if stored is None:
        return pred, None, None
    guide = stored[-1] if store.guided else None
    partners = stored[:len(store.config.fit.blend_methods)]
    weights = plan.scene
    if weights is None:
        return pred, partners[0], guide
    return pred, partners[weights.partner, np.arange(partners.shape[1])], guide


@dataclass
class _StripSums:
    """One strip of the mosaic, per band, summed over the tiles by grid weight: the blended value (``acc``) and
    the weight (``wsum``); with ``estimate``, each tile's estimated error and the weight behind it (``err``, 2,
    bands, h, w) and, for the trust map, DIP's fill, its partner's and the guide's (``dip``, ``partner``,
    ``g_acc`` with ``g_sum``); with a guide, the weight its fill took (``guide_share``)."""

    acc: np.ndarray
    wsum: np.ndarray
    err: np.ndarray | None = None
    dip: np.ndarray | None = None
    partner: np.ndarray | None = None
    g_acc: np.ndarray | None = None
    g_sum: np.ndarray | None = None
    guide_share: np.ndarray | None = None


class _StripMosaic:
    """The mosaic of the store's tiles, strip by strip from the top, blended as ``plan`` says."""

    def __init__(self, store: TileStore, plan: _Mosaic):
        self.store, self.plan = store, plan
        self.cache = _TileCache(store, lambda tile, pred, stored: _tile_entry(store, tile,
                                                                               *_tile_fill(store, plan, pred, stored)))
        self.tile_weights = store.tile_weights() if store.has_partners else None

    def strip(self, y: int, h: int, *, estimate: bool = False) -> _StripSums:
        """The sums of rows [y, y+h) (:class:`_StripSums`).

        A tile band without a prediction (NaN: nothing known in reach) adds no weight there. Where a guide
        speaks, a fitted tile's value is the three-way blend of DIP, its partner and the guide's fill.
        """
        store, plan = self.store, self.plan
        bands, width = store.info.count, store.grid.extent[1]
        shape = (bands, h, width)
        out = _StripSums(np.zeros(shape, np.float32), np.zeros(shape, np.float32))
        if estimate:  # no hidden pixel in reach: no estimate
            out.err, out.dip, out.partner = np.zeros((2, *shape), np.float32), np.zeros(shape, np.float32), \
                np.zeros(shape, np.float32)
        klass = None
        if plan.guided is not None:
            out.guide_share, out.g_acc, out.g_sum = (np.zeros(shape, np.float32) for _ in range(3))
            y0, y1 = max(0, y - HALO), min(store.info.height, y + h + HALO)
            known = ~np.asarray(store.group["gaps"][:, y0:y1, :]) & np.asarray(store.group["footprint"][y0:y1, :])[None]
            klass = _agreement(store, np.asarray(store.group["scene"][:, y0:y1, :]), known, y0, y1)[:, y - y0:y - y0 + h]
        bins = _strip_bins(store, y, h) if plan.scene is not None else None
        for tile, (pred, partner, w, guide), src, rows in self.cache.covering(y, h):
            dst = (slice(None), rows, slice(tile.x, tile.x + tile.size))
            ws = w[:, src]
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
                    out.g_acc[dst] += ws * np.where(speaks, guide[:, src], 0)
                    out.g_sum[dst] += ws * speaks
                    if speaks.any():
                        a = _guided_weights_at(plan, bins[dst], klass[dst]).astype(np.float32)
                        three = a[0] * pred[:, src] + a[1] * partner[:, src] + a[2] * np.nan_to_num(guide[:, src])
                        value = np.where(speaks, three, value)
                        out.guide_share[dst] += ws * np.where(speaks, a[2], 0)
            out.acc[dst] += ws * value
            out.wsum[dst] += ws
            if estimate:
                thin = tile.index in plan.thin  # as the hidden pixels' sums take it: a thin-gap tile's DIP is its partner
                out.dip[dst] += ws * (partner[:, src] if thin else pred[:, src])
                out.partner[dst] += ws * partner[:, src]
                rmse = _tile_rmse(plan, tile, bins[dst], speaks, klass[dst] if klass is not None else None)
                has_estimate = np.isfinite(rmse)
                out.err[(0, *dst)] += ws * np.where(has_estimate, rmse, 0)
                out.err[(1, *dst)] += ws * has_estimate
        return out


def _trust_map(store: TileStore, plan: _Mosaic, sums: _StripSums, value: np.ndarray, y: int, h: int,
               target: np.ndarray) -> np.ndarray:
    """Each filled pixel's expected error (band scaling units; NaN where no curve reached it): the trust model
    (``plan.trust``) on its features, as on the hidden pixels it was fitted on."""
    from tilefill._trust import local_variance

    info = store.info
    y0, y1 = max(0, y - HALO), min(info.height, y + h + HALO)
    known = ~np.asarray(store.group["gaps"][:, y0:y1, :]) & np.asarray(store.group["footprint"][y0:y1, :])[None]
    texture = local_variance(np.asarray(store.group["scene"][:, y0:y1, :]), known)[:, y - y0:y - y0 + h]
    norm = np.where(sums.wsum > 0, sums.wsum, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rmse = sums.err[0] / sums.err[1]
    guide = None
    if sums.g_sum is not None:
        guide = np.where(sums.g_sum > 0, sums.g_acc / np.where(sums.g_sum > 0, sums.g_sum, 1), np.nan)
    out = np.full(value.shape, np.nan, dtype=np.float32)
    for b in range(info.count):
        sel = target[b] & np.isfinite(rmse[b])
        if sel.any():
            x = _trust_features(plan, sums.dip[b][sel] / norm[b][sel], sums.partner[b][sel] / norm[b][sel],
                                None if guide is None else guide[b][sel], value[b][sel], rmse[b][sel], texture[b][sel])
            out[b][sel] = np.sqrt(plan.trust.mse(b, x))
    return out


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
    pad, cols = store.grid.extent[1] - info.width, slice(0, info.width)
    for win in scene.strips(STRIP):
        y, h = win.row_off, win.height
        # a store padded to one tile is wider than the scene: its padding is collar (outside the footprint, never
        # filled), so the strip is worked at the store's width and written at the scene's
        values = scene.read(win)
        if pad:
            values = np.pad(values, ((0, 0), (0, 0), (0, pad)))
        gaps = np.asarray(store.group["gaps"][:, y:y + h, :])
        inside = np.asarray(store.group["footprint"][y:y + h, :])
        sums = mosaic.strip(y, h, estimate=estimate)
        wsum, guide_share = sums.wsum, sums.guide_share
        covered = wsum > 0
        target = (gaps if keep_known else inside[None]) & covered
        if target.any():  # the mosaic's value, acc / wsum, where it is written only
            values[target] = to_dtype(store.scaling.inverse_at(sums.acc, target, wsum), info)
            out.filled += int(target.sum())
        missing = gaps & ~covered
        out.unfilled += int(missing.sum())
        if nodata is not None:
            values[missing] = nodata
            values[:, ~inside] = nodata
        elif float_out:
            values[missing] = np.nan
            values[:, ~inside] = np.nan
        dst.write(values[..., cols], window=win)
        if needs_mask:
            dst.write_mask(np.where(inside[:, cols], 255, 0).astype(np.uint8), window=win)
        if estimate:
            pred = sums.acc / np.where(covered, wsum, 1)
            est = np.full(values.shape, np.nan, dtype=np.float32)
            est[target] = (_trust_map(store, plan, sums, pred, y, h, target) * span)[target]
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
                err_dst.write((est if share is None else np.concatenate([est, share]))[..., cols], window=win)
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
        from tilefill._distance_blend import AGREEMENT_EDGES

        gaps = sum(st.gaps for st in plan.guided_stats)
        record["guided"] = {**plan.guided_pooled.to_dict(), "partner": cfg.guide.partner,
                            "gap_pixels": gaps.astype(int).tolist(),
                            "estimated_rmse": np.round(plan.guided_pooled.expected_rmse(gaps), 5).tolist(),
                            "by_agreement": [{"local_r2": [lo, hi], **w.to_dict(), "gap_pixels": st.gaps.astype(int).tolist()}
                                             for lo, hi, w, st in zip((0.0, *AGREEMENT_EDGES), (*AGREEMENT_EDGES, 1.0),
                                                                      plan.guided, plan.guided_stats)]}
    if plan.trust is not None:
        record["error_model"] = plan.trust.to_dict()
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
