"""Scores of a reconstruction, band by band, on a chosen set of pixels (usually the gaps).

All scores are computed in float64 with plain numpy, on values already in the scoring
scale (see :func:`scale_factor`): RMSE in those units and the coefficient of determination
r2 = 1 - SS_res / SS_tot over the selected pixels (what ``sklearn.metrics.r2_score`` gives
for one band).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["band_scores", "distance_scores", "scale_factor", "summarise", "texture_ratio"]


def scale_factor(dtype_or_image) -> float:
    """Factor that brings raw values to the scoring scale.

    Scores are reported on a 0-1 scale. For 8-bit data (the paper's image is uint8 DN) that
    is DN / 255, as the paper does. Any other type is taken as already scaled:
    callers with reflectance stored as integers (e.g. Sentinel-2 L2A, DN / 10000) apply
    their product's own scaling themselves, because it is not knowable from the dtype.

    Parameters
    ----------
    dtype_or_image : numpy dtype, type, str or array
        The data type, or an array whose dtype is used.

    Returns
    -------
    float
        ``1/255`` for uint8, ``1.0`` otherwise.

    Examples
    --------
    >>> scale_factor(np.uint8) == 1 / 255
    True
    >>> scale_factor(np.zeros(3, dtype=np.float32))
    1.0
    """
    x = dtype_or_image
    # A scalar type such as np.uint8 also has a `dtype` attribute, so test for types first.
    dtype = np.dtype(x) if isinstance(x, (type, str, np.dtype)) else np.asarray(x).dtype
    return 1.0 / 255.0 if np.dtype(dtype) == np.uint8 else 1.0


def _as_bands(a, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 2:  # a single band given as (H, W)
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{name} must be (bands, height, width), got shape {a.shape}")
    return a


def band_scores(truth, pred, where) -> list[dict]:
    """RMSE and r2 of ``pred`` against ``truth`` for each band, over the pixels in ``where``.

    Parameters
    ----------
    truth, pred : array_like, shape (B, H, W)
        Reference and reconstruction, already in the scoring scale. A 2-D ``(H, W)`` array
        is taken as one band.
    where : array_like of bool, shape (B, H, W) or (H, W)
        Pixels to score (e.g. the gap mask); a 2-D mask applies to every band.

    Returns
    -------
    list of dict
        One ``{"band": i, "n": pixels scored, "rmse": float, "r2": float}`` per band.
        ``rmse`` is NaN when no pixel is selected; ``r2`` is NaN with fewer than 2 pixels
        or when the selected truth is constant (SS_tot == 0), where r2 is undefined.
        NaN values inside the selection propagate to that band's scores.

    Examples
    --------
    >>> t = np.array([[[0.0, 1.0], [2.0, 3.0]]])
    >>> p = np.array([[[0.0, 1.0], [2.0, 5.0]]])
    >>> s = band_scores(t, p, np.ones((2, 2), bool))[0]
    >>> s["n"], s["rmse"], round(s["r2"], 6)  # SS_res 4, SS_tot 5
    (4, 1.0, 0.2)
    """
    truth = _as_bands(truth, "truth")
    pred = _as_bands(pred, "pred")
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and pred {pred.shape} differ in shape")
    where = np.asarray(where, dtype=bool)
    if where.ndim == 2:
        where = where[None]
    try:
        where = np.broadcast_to(where, truth.shape)
    except ValueError:
        raise ValueError(
            f"where {where.shape} fits neither (B, H, W) nor (H, W) of {truth.shape}"
        ) from None

    scores = []
    for b in range(truth.shape[0]):
        t = truth[b][where[b]]
        p = pred[b][where[b]]
        n = int(t.size)
        rmse = math.sqrt(float(np.mean((p - t) ** 2))) if n else math.nan
        r2 = math.nan
        if n >= 2:
            ss_res = float(np.sum((t - p) ** 2))
            ss_tot = float(np.sum((t - t.mean()) ** 2))
            # Constant truth leaves r2 undefined; reporting 0 or -inf would mislead an average.
            if ss_tot > 0:
                r2 = 1.0 - ss_res / ss_tot
        scores.append({"band": b, "n": n, "rmse": rmse, "r2": r2})
    return scores


def summarise(scores) -> dict:
    """Average the per-band scores of :func:`band_scores`.

    A plain mean: a band whose score is NaN makes the mean NaN rather than being silently
    dropped, so a summary always speaks for every band.

    Parameters
    ----------
    scores : list of dict
        Output of :func:`band_scores`.

    Returns
    -------
    dict
        ``{"bands": B, "n": pixels scored over all bands, "rmse": mean RMSE,
        "r2": mean r2}``.

    Examples
    --------
    >>> summarise([{"band": 0, "n": 4, "rmse": 0.1, "r2": 0.8},
    ...            {"band": 1, "n": 4, "rmse": 0.3, "r2": 0.6}])
    {'bands': 2, 'n': 8, 'rmse': 0.2, 'r2': 0.7}
    """
    scores = list(scores)
    if not scores:
        return {"bands": 0, "n": 0, "rmse": math.nan, "r2": math.nan}
    return {
        "bands": len(scores),
        "n": int(sum(s["n"] for s in scores)),
        "rmse": float(np.mean([s["rmse"] for s in scores])),
        "r2": float(np.mean([s["r2"] for s in scores])),
    }


def texture_ratio(truth, pred, where, size: int = 5) -> list[float]:
    """How textured a fill is: mean local standard deviation of ``pred`` over that of ``truth``, per band.

    Local standard deviations are taken in ``size`` x ``size`` windows and averaged over the pixels in
    ``where`` (usually the gaps). 1.0: as textured as the scene; below 1: smoother (a smooth
    interpolator across a stripe), above: noisier. RMSE rewards smoothness; this keeps the look in view.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> t = rng.random((1, 32, 32))
    >>> where = np.zeros((32, 32), bool); where[10:20] = True
    >>> texture_ratio(t, t, where)[0], round(texture_ratio(t, np.full_like(t, 0.5), where)[0], 2)
    (1.0, 0.0)
    """
    from scipy.ndimage import uniform_filter

    truth = _as_bands(truth, "truth")
    pred = _as_bands(pred, "pred")
    where = np.broadcast_to(np.asarray(where, dtype=bool), truth.shape)

    def local_std(a: np.ndarray) -> np.ndarray:
        mean = uniform_filter(a, size, mode="reflect")
        return np.sqrt(np.maximum(uniform_filter(a * a, size, mode="reflect") - mean * mean, 0))

    out = []
    for b in range(truth.shape[0]):
        if not where[b].any():
            out.append(math.nan)
            continue
        ref = float(local_std(truth[b])[where[b]].mean())
        out.append(float(local_std(pred[b])[where[b]].mean()) / ref if ref > 0 else math.nan)
    return out


def distance_scores(truth, pred, gap) -> list[dict]:
    """RMSE per band on the gap pixels split by their distance to the nearest known pixel of the band.

    Bins as :data:`tilefill._distance_blend.BIN_LABELS` (1, 2, 3, 4-5, 6-8, 9-16, 17-32, 33+ px).

    Returns
    -------
    list of dict
        One ``{"bin": label, "n": gap band-pixels, "share": of all gap band-pixels, "rmse": [per band]}``
        per bin that holds gap pixels.

    Examples
    --------
    >>> t = np.zeros((1, 1, 7)); p = np.zeros((1, 1, 7)); p[0, 0, 3] = 0.3
    >>> gap = np.zeros((1, 7), bool); gap[0, 2:5] = True
    >>> [(d["bin"], d["n"], d["rmse"]) for d in distance_scores(t, p, gap)]
    [('1', 2, [0.0]), ('2', 1, [0.3])]
    """
    from tilefill._distance_blend import BIN_LABELS, distance_bins

    truth = _as_bands(truth, "truth")
    pred = _as_bands(pred, "pred")
    gap = np.broadcast_to(np.asarray(gap, dtype=bool), truth.shape)
    bins = distance_bins(~gap)
    total = int(gap.sum())
    out = []
    for k, label in enumerate(BIN_LABELS):
        sel = bins == k
        n = int(sel.sum())
        if not n:
            continue
        rmse = [math.sqrt(float(np.mean((pred[b][sel[b]] - truth[b][sel[b]]) ** 2))) if sel[b].any() else math.nan
                for b in range(truth.shape[0])]
        out.append({"bin": label, "n": n, "share": n / total, "rmse": rmse})
    return out
