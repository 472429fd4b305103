"""One tile's work, as a Dask task runs it: read its window from the store, fill, write its chunk.

Tiles whose known pixels are too few for a fit (less than ``fit.min_known_fraction`` of the
window, e.g. a tile inside a cloud or a wide stripe) are fitted on a wider window around them
(2x, 4x ... up to ``fit.max_context`` tile sides, clamped to the scene) and cropped back. A
band with no known pixel even then gets no prediction from that tile: where no other tile
covers them, its gap pixels stay nodata and the run reports them as unfilled.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, replace

import numpy as np

from tilefill._store import TileStore, WindowReader

METHODS = ("dip", "gdal", "biharmonic", "telea", "ns", "kriging", "llhm", "nspi")


@dataclass(frozen=True)
class TileResult:
    """What a tile task reports back to the client."""

    index: int
    status: str  # "filled" | "no-context"
    final_loss: float = float("nan")
    iterations: int = 0
    seconds: float = 0.0
    window: int = 0  # side of the window that was fitted
    device: str = ""
    worker: str = ""
    # the self-validation's gap RMSE estimate, in the band scaling's [0, 1] units (NaN: not measured)
    estimated_rmse: float = float("nan")

    @classmethod
    def from_info(cls, index: int, status: str, info: dict, worker: str = "") -> "TileResult":
        """A result rebuilt from the store's ``tile_info`` of a tile finished earlier."""
        return cls(index, status, info["final_loss"], int(info["iterations"]), info["seconds"], int(info["window"]),
                   worker=worker, estimated_rmse=info.get("estimated_rmse", float("nan")))


def _set_threads() -> None:
    threads = os.environ.get("TILEFILL_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))


BLEND_WEIGHTS = np.linspace(0.0, 1.0, 11)


@dataclass(frozen=True)
class WindowFill:
    """One window's fill: the method's prediction and, where DIP is blended, what the mosaic needs.

    ``partners``: (P, bands, H, W) each classical partner's fill (``fit.blend_method``) from all known
    pixels, with guides the guide's fill (``guide.partner``) last, NaN where no guide speaks; ``weights``:
    (bands,) the window's own partner weight (``fit.classical_blend``, or the one ``fit.blend_auto``
    chose); ``stats``: the hidden pixels' :class:`~tilefill._distance_blend.BlendStats` (those no guide
    covers) and ``guided``: :class:`~tilefill._distance_blend.GuidedStats` (those a guide covers).
    """

    prediction: np.ndarray
    info: dict
    partners: np.ndarray | None = None
    weights: np.ndarray | None = None
    stats: object | None = None
    guided: object | None = None

    def blended(self) -> np.ndarray:
        """The prediction with the window's own weight of the first partner averaged in."""
        if self.partners is None or not self.weights.any():
            return self.prediction
        w = self.weights[:, None, None]
        return ((1 - w) * self.prediction + w * self.partners[0]).astype(np.float32)


def guide_fill(method: str, image: np.ndarray, known: np.ndarray, guides: tuple[np.ndarray, np.ndarray]
               ) -> np.ndarray:
    """The window's gaps from its guides (``llhm`` or ``nspi``, :mod:`tilefill._multitemporal`): NaN where none speaks."""
    from tilefill._multitemporal import fill_llhm, fill_nspi

    return (fill_llhm if method == "llhm" else fill_nspi)(image, known, *guides)


def network_guides(guides: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The guides as the network takes them: each guide's own gaps filled from it (biharmonic), and where it had data.

    A guide with holes would tell the network where it has none, and the gain DIP draws would mean
    something else there; filled, it holds a smooth guess (measured: the pixels no guide covers scored
    0.42-0.43 gap r2 against 0.24 with the holes left and 0.44 for DIP without a guide, on a Taizhou crop).
    A guide band with no data in the window holds 0.5 (no gain can use it).
    """
    from tilefill._classical import fill_classical

    values, known = guides
    filled = np.stack([fill_classical("biharmonic", v, k) if (~k).any() else v for v, k in zip(values, known)])
    return np.where(np.isfinite(filled), filled, 0.5).astype(np.float32), known


def run_method_many(method: str, windows: list[tuple[np.ndarray, np.ndarray, int]], config,
                    holdouts: list[np.ndarray | None] | None = None,
                    guides: list[tuple[np.ndarray, np.ndarray] | None] | None = None) -> list[WindowFill]:
    """Fill several same-sized windows ``(image, known, seed)``; one :class:`WindowFill` each.

    DIP and a classical fill (``fit.blend_method``) err in different places, so their weighted
    mean errs less than either: weight ``w`` gives ``(1 - w) * dip + w * classical``, averaged by
    the mosaic (``blend.weights``). With ``fit.validation`` a share of the known pixels is hidden
    from both fills in gap-shaped stripes; their errors there are what the weights are fitted on
    and estimate the gap error without ground truth (``estimated_rmse``). The window's own weight
    is ``fit.classical_blend``, or with ``fit.blend_auto`` each band's best on its hidden pixels
    where the gaps are narrow (``fit.blend_auto_max_reach``) and the hidden stripes stand in fairly
    for them (:func:`holdout_is_representative`).

    DIP fits them all at once, one network each in one grouped network (``engine.tiles_per_task``
    tiles per task fill a GPU that one small tile leaves idle); the seeds are the windows' own,
    so a window gets the fit it would get alone, up to rounding. A classical ``method`` fills
    each window alone. ``holdouts``: each window's hidden pixels (the scene's, from the work store);
    by default drawn per window from ``fit.validation`` and its seed.

    ``guides``: each window's other dates ``(values (G, bands, H, W), known)``, or None. DIP draws a local
    linear map from them (``guide.network``, :class:`tilefill._dip.GuidedInput`) and their classical fill
    (``guide.partner``) joins the partners; ``llhm`` and ``nspi`` fill from them alone, and fill what no
    guide covers with biharmonic inpainting.
    """
    from tilefill._classical import fill_classical

    guides = guides if guides is not None else [None] * len(windows)
    info = {"final_loss": float("nan"), "iterations": 0, "device": "cpu"}
    if method in ("llhm", "nspi"):
        out = []
        for (image, known, _seed), guide in zip(windows, guides):
            fill = guide_fill(method, image, known, guide) if guide is not None else np.full(image.shape, np.nan)
            if np.isnan(fill).any():
                fill = np.where(np.isnan(fill), fill_classical("biharmonic", image, known), fill)
            out.append(WindowFill(fill.astype(np.float32), info))
        return out
    if method != "dip":
        return [WindowFill(fill_classical(method, image, known), info) for image, known, _seed in windows]
    from tilefill._dip import fit_windows, holdout_mask

    _set_threads()
    fit = config.fit
    hidden = holdouts if holdouts is not None else [
        holdout_mask(known, fit.validation, seed + 2) if fit.validation else None for _image, known, seed in windows]
    guided = config.guide.network and all(g is not None for g in guides)
    fits = fit_windows(windows, config.network, fit, experimental=config.experimental, engine=config.engine,
                       holdouts=hidden, guides=[network_guides(g) for g in guides] if guided else None)
    return [_with_classical(image, known, held, res, fit, guide, config.guide.partner)
            for (image, known, _seed), held, res, guide in zip(windows, hidden, fits, guides)]


def _partner_fills(image: np.ndarray, known: np.ndarray, hidden: np.ndarray | None, methods) -> tuple[np.ndarray, list]:
    """Each partner's fill from every known pixel, except at the hidden pixels: there its fill made
    without them (so the mosaic can score it), and those fills themselves."""
    from tilefill._classical import fill_classical

    fills = np.stack([fill_classical(m, image, known) for m in methods])
    if hidden is None or not hidden.any():
        return fills, []
    held = [fill_classical(m, image, known & ~hidden) for m in methods]
    return np.where(hidden[None], np.stack(held), fills), held


def classical_alone(image: np.ndarray, known: np.ndarray, fit, hidden: np.ndarray | None = None,
                    guided: bool = False) -> WindowFill:
    """A thin-gap window (``fit.thin_gap_px``): the first partner alone, no fit; weight 1 on every band.

    ``guided``: the store keeps a guide's fill beside the partners; a thin-gap window has none (NaN).
    """
    partners, _held = _partner_fills(image, known, hidden if fit.blends else None, fit.blend_methods)
    info = {"final_loss": float("nan"), "iterations": 0, "device": "cpu"}
    if not fit.blends:
        return WindowFill(partners[0], info)
    from tilefill._distance_blend import BlendStats, GuidedStats

    stats = BlendStats.without_hidden(len(partners), known, ~known)
    if guided:
        partners = np.concatenate([partners, np.full((1, *image.shape), np.nan, np.float32)])
    return WindowFill(partners[0], info, partners, np.ones(image.shape[0]), stats,
                      GuidedStats.zeros(image.shape[0]) if guided else None)


def _with_classical(image: np.ndarray, known: np.ndarray, hidden: np.ndarray | None, res, fit,
                    guides: tuple[np.ndarray, np.ndarray] | None = None, guide_method: str = "llhm") -> WindowFill:
    """DIP's fit with its classical partners: their fills, the window's own weight and the hidden pixels' statistics.

    With ``guides`` the guide's fill (``guide_method``) is the last partner, and the hidden pixels it covers
    are scored apart, for the three-way blend (:class:`~tilefill._distance_blend.GuidedStats`).
    """
    from tilefill._distance_blend import BlendStats, GuidedStats

    dip = res.prediction
    bands = image.shape[0]
    auto = False
    weights = np.full(bands, fit.classical_blend)
    estimated = np.asarray(res.validation_rmse, dtype=np.float64)
    info = {"final_loss": res.final_loss, "iterations": res.iterations, "device": res.device}
    if not fit.blends:
        finite = estimated[np.isfinite(estimated)] if estimated.size else estimated
        return WindowFill(dip, {**info, "estimated_rmse": float(finite.mean()) if finite.size else float("nan")})
    methods = fit.blend_methods
    stats = BlendStats.without_hidden(len(methods), known, ~known)
    # the classical fills must not see the hidden pixels either, or their score there would be a lie
    partners, held_fills = _partner_fills(image, known, hidden, methods)
    guided = None
    if guides is not None:
        everywhere = guide_fill(guide_method, image, known, guides)
        held_guide = guide_fill(guide_method, image, known & ~hidden, guides) if held_fills else everywhere
        covered = np.isfinite(held_guide)
        partners = np.concatenate([partners, np.where(hidden, held_guide, everywhere)[None]]) if held_fills \
            else np.concatenate([partners, everywhere[None]])
        guided = GuidedStats.zeros(bands)
        stats = BlendStats.without_hidden(len(methods), known, ~known & ~np.isfinite(everywhere))
    if held_fills:
        seen = known & ~hidden
        classical_val = held_fills[0]
        if guides is None:
            stats = BlendStats.measure(dip, held_fills, image, seen, hidden, ~known)
        else:  # the hidden pixels a guide covers are scored for the three-way blend, the others as without one
            stats = BlendStats.measure(dip, held_fills, image, seen, hidden, ~known & ~np.isfinite(everywhere),
                                       scored=hidden & ~covered)
            guided = GuidedStats.measure(np.stack([dip, classical_val, np.nan_to_num(held_guide)]), image, seen,
                                         hidden, ~known & np.isfinite(everywhere), covered)
        errs = np.array([[np.sqrt(np.mean(((1 - w) * dip[b] + w * classical_val[b] - image[b])[hidden[b]] ** 2))
                          if hidden[b].any() else np.nan for b in range(bands)] for w in BLEND_WEIGHTS])
        if fit.blend_auto:
            reach = gap_reach(known)
            auto = reach <= fit.blend_auto_max_reach and holdout_is_representative(known, hidden, reach)
        if auto:
            best = np.nanargmin(np.where(np.isnan(errs), np.inf, errs), axis=0)
            weights = BLEND_WEIGHTS[best]
        estimated = np.array([errs[np.argmin(np.abs(BLEND_WEIGHTS - weights[b])), b] for b in range(bands)])
    finite = estimated[np.isfinite(estimated)] if estimated.size else estimated
    info.update(estimated_rmse=float(finite.mean()) if finite.size else float("nan"),
                blend_weights=weights.tolist(), blend_auto=auto)
    return WindowFill(dip, info, partners, weights, stats, guided)


def _fit_window(store: TileStore, index: int, reader: WindowReader | None = None) -> tuple[int, int, int, dict]:
    """The window a tile is fitted on, ``(y, x, side, arrays)``: the tile, or wider where it knows too little.

    ``arrays``: :meth:`WindowReader.window`'s (``image``, ``known``, and ``hidden`` / ``guides`` where read).
    """
    cfg, grid = store.config, store.grid
    reader = reader or WindowReader(store, [index])
    tile = grid[index]
    factor = 1
    y, x, side = tile.y, tile.x, tile.size
    arrays = reader.window(y, x, side)
    # the band with the fewest known pixels decides: every band needs something to fit
    while arrays["known"].mean(axis=(1, 2)).min() < cfg.fit.min_known_fraction and factor * 2 <= cfg.fit.max_context:
        factor *= 2
        y, x, side = grid.context_window(tile, factor)
        arrays = reader.window(y, x, side)
        if side < tile.size * factor:  # already as wide as the scene allows
            break
    return y, x, side, arrays


def gap_reach(known: np.ndarray) -> float:
    """How far gap pixels lie from a pixel known in every band: the 99th percentile, in px (0: no gap).

    A stripe 1-2 px wide gives 1, 5 px wide 3; pixels beyond the window count as unknown.
    """
    from scipy.ndimage import distance_transform_edt

    unknown = ~known.all(axis=0)
    if not unknown.any():
        return 0.0
    if unknown.all():
        return float("inf")
    return float(np.percentile(distance_transform_edt(unknown)[unknown], 99))


def holdout_is_representative(known: np.ndarray, hidden: np.ndarray, reach: float | None = None) -> bool:
    """Whether the hidden pixels stand in fairly for the gaps: far enough from every real gap.

    A hidden stripe stands in for a gap only where known pixels surround it as they surround a real
    gap: 90% of the hidden pixels must lie at least the gap reach (:func:`gap_reach`) from the
    nearest real gap. Where gaps are wide, the shifted stripes crowd or merge with the real ones. The
    holes they score are then not the gaps' shape, and the weights chosen on them were measured
    worse than the fixed one (35-55% masks, 5 of 6 cases). ``reach``: the gap reach, if known.
    """
    from scipy.ndimage import distance_transform_edt

    gaps = ~known.all(axis=0)
    held = hidden.any(axis=0)
    if not held.any() or not gaps.any():
        return False
    reach = gap_reach(known) if reach is None else reach
    return bool(np.percentile(distance_transform_edt(~gaps)[held], 10) >= reach)


def tile_seed(config, index: int) -> int:
    """A tile's own seed: the same tile gets the same fit whichever worker runs it, alone or with others."""
    return config.fit.seed * 1_000_003 + index


def fill_tile(store_path: str, index: int) -> TileResult:
    """Fill tile ``index`` of the store at ``store_path`` and write its prediction chunk.

    Runs on a Dask worker (or in-process); everything it needs comes from the store, so it can
    run on any machine that sees the store.
    """
    return fill_tiles(store_path, [index])[0]


def _tile_kind(cfg, known: np.ndarray, own_window: bool) -> str:
    """How a DIP run fills a tile, from its gap geometry: ``thin`` (``fit.thin_gap_px``: the classical
    partner alone), ``narrow`` (``fit.narrow_gap_px``: DIP with ``fit.narrow_input_noise``), ``wide``
    (beyond ``experimental.noise_end_max_reach``: DIP with a constant ``fit.input_noise``) or ``dip``.
    Windows widened for context (``own_window`` False: a tile nearly all gap) are ``dip``, or ``wide`` where
    that rule is on; other methods keep their name."""
    fit, exp = cfg.fit, cfg.experimental
    wide_rule = exp.noise_end != 1 and exp.noise_end_max_reach
    if cfg.method != "dip" or not (fit.thin_gap_px or fit.narrow_gap_px or wide_rule):
        return cfg.method
    if not own_window:
        return "wide" if wide_rule else "dip"
    reach = gap_reach(known)
    if fit.thin_gap_px and reach <= fit.thin_gap_px:
        return "thin"  # thin gaps only: the classical fill is the better one here
    if fit.narrow_gap_px and reach <= fit.narrow_gap_px:
        return "narrow"
    if wide_rule and reach > exp.noise_end_max_reach:
        return "wide"
    return "dip"


def _kind_config(cfg, kind: str):
    """The config a tile of ``kind`` (:func:`_tile_kind`) is fitted with: narrow tiles take their own constant
    noise, wide ones a constant ``fit.input_noise``, the others ``cfg`` as it is."""
    constant = replace(cfg.experimental, noise_end=1.0)
    if kind == "narrow":
        return replace(cfg, fit=replace(cfg.fit, input_noise=cfg.fit.narrow_input_noise), experimental=constant)
    if kind == "wide":
        return replace(cfg, experimental=constant)
    return cfg


def fill_tiles(store_path: str, indices: list[int]) -> list[TileResult]:
    """Fill several tiles in one task: those with windows of one size are fitted together.

    With ``fit.thin_gap_px``, a DIP tile whose gaps are all that thin gets ``fit.blend_method``
    alone (its result then reports 0 iterations); with ``fit.narrow_gap_px``, one whose gaps are all
    that narrow is fitted with ``fit.narrow_input_noise``; with ``experimental.noise_end``, one whose gaps
    reach beyond ``experimental.noise_end_max_reach`` keeps a constant input noise.

    A group's chunks are written as soon as it is done, one write per array and every tile's
    ``tile_info`` last (what marks a tile done), so a crash loses at most one group and never leaves
    a tile half written. A task's windows are read a row of tiles at a time (:class:`WindowReader`). A tile's ``seconds`` is its group's time shared equally among the group's tiles.

    Examples
    --------
    >>> [r.status for r in fill_tiles("work/tiles.zarr", [0, 1, 2, 3])]  # doctest: +SKIP
    ['filled', 'filled', 'filled', 'filled']
    """
    start = time.perf_counter()
    store = TileStore.open(store_path, mode="r+")
    cfg, grid = store.config, store.grid
    worker = socket.gethostname() + f":{os.getpid()}"
    # the task's windows, read a row of tiles at a time (with the hidden pixels for DIP, and the guides)
    reader = WindowReader(store, indices, hidden=cfg.method == "dip", guides=bool(store.guide_count))
    fitted = {i: _fit_window(store, i, reader) for i in indices}
    windows = {i: (y, x, side, arrays["image"], arrays["known"]) for i, (y, x, side, arrays) in fitted.items()}
    read_share = (time.perf_counter() - start) / len(indices)
    results: dict[int, TileResult] = {}
    groups: dict[tuple[str, int], list[int]] = {}  # (method, window side) -> tiles fitted together
    for i in indices:
        side, known = windows[i][2], windows[i][4]
        if not known.any():
            results[i] = TileResult(i, "no-context", window=side, worker=worker, seconds=read_share)
            continue
        groups.setdefault((_tile_kind(cfg, known, side == grid.size), side), []).append(i)
    hidden = {i: fitted[i][3].get("hidden") for i in indices} if cfg.method == "dip" else {}
    # each window's guides, where one has data in it (guided windows are fitted apart from the others)
    guides = {i: (a["guides"], a["guides_known"]) for i, (_y, _x, _s, a) in fitted.items()
              if "guides" in a and a["guides_known"].any()}
    for (method, side), group in list(groups.items()):
        if method in ("dip", "narrow", "wide") and any(i in guides for i in group):
            groups[(method, side)] = [i for i in group if i not in guides]
            groups[(method + "+guide", side)] = [i for i in group if i in guides]
    for (method, side), group in groups.items():
        if not group:
            continue
        t0 = time.perf_counter()
        kind = method.removesuffix("+guide")
        if kind in ("dip", "narrow", "wide"):
            holdouts = [hidden[i] for i in group] if all(hidden[i] is not None for i in group) else None
            filled = run_method_many("dip", [(windows[i][3], windows[i][4], tile_seed(cfg, i)) for i in group],
                                     _kind_config(cfg, kind), holdouts,
                                     [guides[i] for i in group] if method.endswith("+guide") else None)
        else:  # a classical method, or the thin-gap tiles of a DIP run (the first partner alone)
            filled = [classical_alone(windows[i][3], windows[i][4], cfg.fit, hidden.get(i), store.guided)
                      if cfg.method == "dip"
                      else run_method_many(method, [(windows[i][3], windows[i][4], 0)], cfg, None,
                                           [guides.get(i)])[0] for i in group]
        seconds = read_share + (time.perf_counter() - t0) / len(group)
        tiles = [_tile_chunks(store, cfg, grid[i], windows[i], fill) for i, fill in zip(group, filled)]
        # the group's chunks in one write per array, each tile's info last: done only once all are written
        store.write_tiles(group, [t[0] for t in tiles],
                          [{**fill.info, "seconds": seconds, "window": side} for fill in filled],
                          **({k: [t[1][k] for t in tiles] for k in tiles[0][1]} if tiles[0][1] else {}))
        for i, fill in zip(group, filled):
            stats = fill.info
            results[i] = TileResult(i, "filled", stats["final_loss"], stats["iterations"], seconds, side,
                                    stats["device"], worker, stats.get("estimated_rmse", float("nan")))
    return [results[i] for i in indices]


def _tile_chunks(store: TileStore, cfg, tile, window, fill: WindowFill) -> tuple[np.ndarray, dict]:
    """What the store keeps of a tile's fill: its prediction cropped from the window (NaN in bands with nothing
    known in reach) and, where DIP is blended, the partners' fills, the weights and the hidden pixels' statistics."""
    y, x, _side, _image, known = window
    oy, ox = tile.y - y, tile.x - x
    crop = (Ellipsis, slice(oy, oy + tile.size), slice(ox, ox + tile.size))
    empty = ~known.any(axis=(1, 2))  # a band with nothing known in reach: no prediction
    prediction = fill.prediction[crop].copy()
    prediction[empty] = np.nan
    extra = {}
    if store.has_partners:
        partners = fill.partners[crop].copy()
        partners[:, empty] = np.nan
        if store.guided and len(partners) == len(cfg.fit.blend_methods):  # no guide in this window
            partners = np.concatenate([partners, np.full_like(partners[:1], np.nan)])
        extra = dict(partners=partners, weights=fill.weights, stats=fill.stats.to_array())
        if store.guided:
            from tilefill._distance_blend import GuidedStats

            extra["guided_stats"] = (fill.guided or GuidedStats.zeros(len(prediction))).to_array()
    return prediction, extra
