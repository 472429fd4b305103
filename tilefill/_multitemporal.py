"""Classical fills from a second date (a *guide*): local linear regression and similar pixels.

They follow the tile contract of :mod:`tilefill._classical`, with the guides beside the image::

    fill(image, known, guides, guides_known) -> prediction

- ``image``, ``known``: the target window, float32 and bool ``(B, H, W)``, values scaled to about [0, 1].
- ``guides``, ``guides_known``: float32 and bool ``(G, B, H, W)``: G other dates of the same place on the
  same pixel grid, band for band, each scaled by its own known pixels; a guide is striped or cloudy
  too, and ``guides_known`` says where it has data.
- The prediction is float32 ``(B, H, W)``: known pixels copied bit for bit, gap pixels predicted
  where a guide speaks, NaN where none does (the caller fills those from the target alone).

Methods:

- :func:`fill_llhm`: a local linear fit of the target on the guide in a moving window (15 px, widened
  to 31 and 63 px where fewer than :data:`LLHM_MIN_PIXELS` pixels are known in both), after the local
  linear histogram matching of the USGS SLC-off gap-filled products (Scaramuzza, Storey et al.
  2004). USGS matched the two dates' local means and standard deviations (gain = sd ratio); the
  least-squares gain (covariance over the guide's variance) is used here, because it shrinks toward
  the target's local mean where the dates disagree. With several guides each gap pixel takes the
  guide whose window fits the target best (highest local r2).
- :func:`fill_nspi`: the neighbourhood similar pixel interpolator (NSPI; Chen, Zhu et al. 2011):
  for each gap pixel, up to 20 pixels of a 31 px window that are known in the target and whose
  guide spectra are close to the pixel's own (every band within 2/m of the band's standard
  deviation, m = 4 classes); a spatial prediction (their target values) and a temporal one (the
  pixel's guide value plus their change between the dates), each weighted by spectral and spatial
  distance, combined by how similar and how changed the neighbours are. Pixels with too few
  similar pixels take :func:`fill_llhm`'s prediction.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Windows of the local fit, narrowest first, and the pixels known in both dates that one needs.
LLHM_WINDOWS = (15, 31, 63)
LLHM_MIN_PIXELS = 40
LLHM_MAX_GAIN = 3.0  # |gain| beyond this is a window whose guide hardly varies, not a relation

NSPI_RADIUS = 15
NSPI_SIMILAR = 20
NSPI_MIN_SIMILAR = 5
NSPI_CLASSES = 4
_NSPI_CHUNK = 2048  # gap pixels gathered at a time: (chunk, 31^2, bands) floats


def _check(image, known, guides, guides_known):
    image = np.asarray(image, dtype=np.float32)
    known = np.asarray(known, dtype=bool)
    guides = np.asarray(guides, dtype=np.float32)
    guides_known = np.asarray(guides_known, dtype=bool)
    if image.ndim != 3 or known.shape != image.shape:
        raise ValueError(f"image and known must both be (B, H, W), got {image.shape} and {known.shape}")
    if guides.ndim != 4 or guides.shape[1:] != image.shape or guides_known.shape != guides.shape:
        raise ValueError(f"guides and guides_known must be (G, B, H, W) with (B, H, W) = {image.shape}, "
                         f"got {guides.shape} and {guides_known.shape}")
    return image, known, guides, guides_known


def _box(a: np.ndarray, size: int) -> np.ndarray:
    """Sums over a ``size`` px square around each pixel (zero beyond the border)."""
    return ndimage.uniform_filter(a, size=size, mode="constant") * float(size * size)


def local_regression(target: np.ndarray, target_known: np.ndarray, guide: np.ndarray, guide_known: np.ndarray,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """One band's local linear fit of the target on the guide: (prediction, local r2) at every pixel.

    The window around a pixel is the narrowest of :data:`LLHM_WINDOWS` holding at least
    :data:`LLHM_MIN_PIXELS` pixels known in both; NaN where none does or the guide has no data.
    ``target``, ``guide``: float (H, W); the known masks bool (H, W).

    Examples
    --------
    >>> g = np.random.default_rng(0).random((40, 40))
    >>> t = 0.5 * g + 0.2
    >>> known = np.ones((40, 40), bool); known[10:14] = False
    >>> pred, r2 = local_regression(t, known, g, np.ones((40, 40), bool))
    >>> bool(np.allclose(pred[10:14], t[10:14], atol=1e-6)), round(float(np.nanmin(r2)), 6)
    (True, 1.0)
    """
    both = (target_known & guide_known).astype(np.float64)
    t = np.where(both > 0, target, 0.0).astype(np.float64)
    g = np.where(both > 0, guide, 0.0).astype(np.float64)
    pred = np.full(target.shape, np.nan)
    fit = np.full(target.shape, np.nan)
    todo = guide_known.copy()
    for size in LLHM_WINDOWS:
        if not todo.any():
            break
        n = _box(both, size)
        ok = todo & (n >= LLHM_MIN_PIXELS)
        if not ok.any():
            continue
        nn = np.maximum(n, 1.0)
        mt, mg = _box(t, size) / nn, _box(g, size) / nn
        vt = np.maximum(_box(t * t, size) / nn - mt * mt, 0.0)
        vg = np.maximum(_box(g * g, size) / nn - mg * mg, 0.0)
        cov = _box(t * g, size) / nn - mt * mg
        flat = vg < 1e-10  # a guide constant over the window says nothing: the target's local mean
        gain = np.where(flat, 0.0, np.clip(cov / np.where(flat, 1.0, vg), -LLHM_MAX_GAIN, LLHM_MAX_GAIN))
        r2 = np.where(flat | (vt < 1e-10), 0.0, cov * cov / np.maximum(vt * vg, 1e-20))
        value = mt + gain * (np.where(guide_known, guide, 0.0) - mg)
        pred[ok], fit[ok] = value[ok], r2[ok]
        todo &= ~ok
    return pred, fit


def guide_agreement(image: np.ndarray, known: np.ndarray, guides: np.ndarray, guides_known: np.ndarray) -> np.ndarray:
    """How well the best guide explains the scene around each pixel: the local regression's r2 (bands, H, W),
    the highest over the guides that have data at the pixel; NaN where none has.

    Where the land changed between the dates the scene stops following the guide there, and the r2 falls.
    """
    image, known, guides, guides_known = _check(image, known, guides, guides_known)
    out = np.full(image.shape, np.nan)
    for b in range(image.shape[0]):
        for g in range(guides.shape[0]):
            _pred, fit = local_regression(image[b], known[b], guides[g, b], guides_known[g, b])
            better = np.isfinite(fit) & ~(fit <= out[b])  # NaN compares False: the first finite fit wins
            out[b][better] = fit[better]
    return out


def fill_llhm(image: np.ndarray, known: np.ndarray, guides: np.ndarray, guides_known: np.ndarray) -> np.ndarray:
    """Gap pixels from a local linear fit on the best-fitting guide; NaN where no guide speaks.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> guide = rng.random((1, 1, 48, 48), dtype=np.float32)
    >>> image = 0.8 * guide[0] + 0.1
    >>> known = np.ones_like(image, bool); known[:, 20:26] = False
    >>> out = fill_llhm(image, known, guide, np.ones_like(guide, bool))
    >>> float(np.abs(out - image).max()) < 1e-5
    True
    """
    image, known, guides, guides_known = _check(image, known, guides, guides_known)
    out = image.copy()
    for b in range(image.shape[0]):
        gap = ~known[b]
        if not gap.any():
            continue
        best = np.full(gap.shape, np.nan)
        best_fit = np.full(gap.shape, -np.inf)
        for g in range(guides.shape[0]):
            pred, fit = local_regression(image[b], known[b], guides[g, b], guides_known[g, b])
            better = np.isfinite(pred) & (fit > best_fit)
            best[better], best_fit[better] = pred[better], fit[better]
        out[b][gap] = best[gap]
    return out


def _offsets(radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    oy, ox = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    oy, ox = oy.ravel(), ox.ravel()
    return oy, ox, np.hypot(oy, ox)


def _nspi_one_guide(image, known, guide, guide_known):
    """NSPI from one guide: (prediction (B, H, W), spectral distance of its similar pixels (H, W)); NaN where none."""
    bands, h, w = image.shape
    r = NSPI_RADIUS
    target_all, guide_all = known.all(0), guide_known.all(0)
    candidate = target_all & guide_all
    ys, xs = np.nonzero(~target_all & guide_all)
    pred = np.full(image.shape, np.nan, np.float32)
    spread = np.full((h, w), np.inf, np.float32)
    if not len(ys) or not candidate.any():
        return pred, spread
    sd = np.array([guide[b][guide_all].std() for b in range(bands)], np.float32)
    threshold = sd * 2.0 / NSPI_CLASSES
    oy, ox, dist = _offsets(r)
    pad = ((0, 0), (r, r), (r, r))
    gp = np.pad(np.where(guide_known, guide, 0), pad)
    tp = np.pad(np.where(known, image, 0), pad)
    cp = np.pad(candidate, r)
    k = min(NSPI_SIMILAR, len(oy))
    for s in range(0, len(ys), _NSPI_CHUNK):
        y, x = ys[s:s + _NSPI_CHUNK], xs[s:s + _NSPI_CHUNK]
        yy, xx = y[:, None] + r + oy[None], x[:, None] + r + ox[None]
        g_near, t_near = gp[:, yy, xx], tp[:, yy, xx]  # (B, P, K)
        g_here = guide[:, y, x][:, :, None]
        diff = g_near - g_here
        similar = cp[yy, xx] & (np.abs(diff) <= threshold[:, None, None]).all(0)
        rmsd = np.sqrt((diff * diff).mean(0))
        score = np.where(similar, rmsd, np.inf)
        pick = np.argpartition(score, k - 1, axis=1)[:, :k]
        chosen = np.take_along_axis(score, pick, 1)
        ok = np.isfinite(chosen)
        enough = ok.sum(1) >= NSPI_MIN_SIMILAR
        # weights: spectrally and spatially near neighbours count more (the paper's combined distance)
        cd = (chosen + 1e-6) * (1 + dist[pick] / r)
        wgt = np.where(ok, 1 / np.where(ok, cd, 1), 0)
        wgt /= np.maximum(wgt.sum(1, keepdims=True), 1e-12)
        t_sel = np.take_along_axis(t_near, pick[None].repeat(bands, 0), 2)
        g_sel = np.take_along_axis(g_near, pick[None].repeat(bands, 0), 2)
        spatial = (wgt[None] * t_sel).sum(2)
        temporal = guide[:, y, x] + (wgt[None] * (t_sel - g_sel)).sum(2)
        # how well the neighbours stand for the pixel (r1) and how much they changed (r2)
        r1 = (wgt * np.where(ok, chosen, 0)).sum(1) + 1e-6
        r2 = (wgt * np.sqrt(((t_sel - g_sel) ** 2).mean(0))).sum(1) + 1e-6
        share = (1 / r1) / (1 / r1 + 1 / r2)
        value = share[None] * spatial + (1 - share[None]) * temporal
        pred[:, y[enough], x[enough]] = value[:, enough]
        spread[y[enough], x[enough]] = r1[enough]
    return pred, spread


def fill_nspi(image: np.ndarray, known: np.ndarray, guides: np.ndarray, guides_known: np.ndarray) -> np.ndarray:
    """Gap pixels from similar pixels (NSPI), else :func:`fill_llhm`; NaN where no guide speaks.

    A gap pixel is predicted where a guide has data in every band (spectral similarity needs
    them all); with several guides, from the guide whose similar pixels are closest to it.
    """
    image, known, guides, guides_known = _check(image, known, guides, guides_known)
    best = np.full(image.shape, np.nan, np.float32)
    best_spread = np.full(image.shape[1:], np.inf, np.float32)
    for g in range(guides.shape[0]):
        pred, spread = _nspi_one_guide(image, known, guides[g], guides_known[g])
        better = spread < best_spread
        best[:, better], best_spread[better] = pred[:, better], spread[better]
    llhm = fill_llhm(image, known, guides, guides_known)
    out = np.where(np.isfinite(best), best, llhm)
    return np.where(known, image, out).astype(np.float32)
