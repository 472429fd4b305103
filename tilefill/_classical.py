"""Classical single-image gap fills: the peers of Deep Image Prior and its cheap fallbacks.

Every method follows the tile contract used by the pipeline::

    fill(image, known, **options) -> filled

- ``image``: float32 ``(B, H, W)``, values normalised to about [0, 1]. Gap pixels may hold anything
  (NaN, nodata, garbage): they are never read.
- ``known``: bool ``(B, H, W)``, True where a pixel is known. Masks may differ between bands.
- ``filled``: a new float32 ``(B, H, W)`` array. Known pixels are copied bit for bit; every gap
  pixel holds a finite value, except in a band with no known pixel at all, which is filled with
  NaN (there is nothing to interpolate from; the caller decides what that means).

Methods (keys of :data:`CLASSICAL_METHODS`):

- ``"gdal"``: GDAL FillNodata (inverse distance weighting), via :func:`rasterio.fill.fillnodata`.
- ``"biharmonic"``: scikit-image :func:`skimage.restoration.inpaint_biharmonic`.
- ``"telea"`` / ``"ns"``: OpenCV :func:`cv2.inpaint` (Telea's fast marching / Navier-Stokes).
- ``"kriging"``: ordinary kriging in local windows with pykrige.

``"gdal"`` needs only rasterio and ``"biharmonic"`` scikit-image (both dependencies of tilefill); the
others need the optional extra ``tilefill[peers]`` (opencv-python-headless, pykrige), imported lazily
when the method runs.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Callable

import numpy as np
from scipy import linalg, ndimage
from scipy.spatial.distance import cdist

from tilefill._errors import TilefillError

__all__ = [
    "CLASSICAL_METHODS",
    "fill_classical",
    "fill_gdal",
    "fill_biharmonic",
    "fill_telea",
    "fill_ns",
    "fill_kriging",
]

# Which pip package provides each optional module (for the error message).
_PIP_NAMES = {
    "skimage": "scikit-image",
    "cv2": "opencv-python-headless",
    "pykrige": "pykrige",
}


_METHOD_MODULES = {"biharmonic": "skimage.restoration", "telea": "cv2", "ns": "cv2", "kriging": "pykrige.ok"}


def check_available(method: str) -> None:
    """Fail early, in the client, when ``method`` needs an optional package that is missing."""
    if method in _METHOD_MODULES:
        _require(_METHOD_MODULES[method], method)


def _require(module: str, method: str):
    """Import an optional dependency, or fail with a one-line hint naming the extra."""
    try:
        importlib.import_module(module.split(".")[0])  # the package itself, even if a submodule is cached
        return importlib.import_module(module)
    except ImportError as exc:  # ModuleNotFoundError, or a broken binary wheel
        raise TilefillError(
            f"method {method!r} needs {_PIP_NAMES[module.split('.')[0]]}: "
            + ("pip install scikit-image (a dependency of tilefill: its install is broken)" if module.startswith("skimage")
               else "pip install 'tilefill[peers]'")
        ) from exc


def _check(image: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate the contract and return (float32 image, bool known)."""
    image = np.asarray(image)
    known = np.asarray(known)
    if image.ndim != 3:
        raise ValueError(f"image must be (B, H, W), got shape {image.shape}")
    if known.shape != image.shape:
        raise ValueError(f"known must have the image's shape {image.shape}, got {known.shape}")
    if known.dtype != np.bool_:
        raise TypeError(f"known must be a bool array, got {known.dtype}")
    image = image.astype(np.float32, copy=False)
    # A non-finite "known" pixel would poison every interpolator; say so rather than spread NaN.
    if not np.isfinite(image[known]).all():
        raise ValueError("image has non-finite values at known pixels")
    return image, known


def _per_band(
    image: np.ndarray,
    known: np.ndarray,
    fill_band: Callable[[np.ndarray, np.ndarray, int], np.ndarray],
) -> np.ndarray:
    """Apply ``fill_band(band, known_band, b) -> filled band`` to each band that has gaps.

    ``band`` is float64 with its gap pixels zeroed, so no method can read (or be poisoned by) them.
    Only the gap pixels of the result are copied into the output, so known pixels stay bit-exact.
    """
    image, known = _check(image, known)
    out = image.copy()
    for b in range(image.shape[0]):
        kb = known[b]
        gap = ~kb
        if not gap.any():
            continue
        if not kb.any():
            out[b] = np.nan  # nothing to interpolate from: documented NaN
            continue
        band = np.where(kb, image[b], 0.0).astype(np.float64)
        filled = fill_band(band, kb, b)
        out[b][gap] = filled[gap].astype(np.float32)
    return out


def _nearest_fill(band: np.ndarray, kb: np.ndarray, todo: np.ndarray) -> np.ndarray:
    """Give the ``todo`` pixels the value of their nearest known pixel (Euclidean)."""
    idx = ndimage.distance_transform_edt(~kb, return_distances=False, return_indices=True)
    res = band.copy()
    res[todo] = band[idx[0][todo], idx[1][todo]]
    return res


# --------------------------------------------------------------------------------------------
# GDAL FillNodata
# --------------------------------------------------------------------------------------------


def fill_gdal(
    image: np.ndarray,
    known: np.ndarray,
    *,
    max_search_distance: float = 100.0,
    smoothing_iterations: int = 0,
) -> np.ndarray:
    """Fill gaps with GDAL FillNodata (inverse distance weighting), band by band.

    GDAL searches in four directions (conic search) up to ``max_search_distance`` pixels for
    known values and interpolates them with inverse distance weights; this is what QGIS and
    ``gdal_fillnodata.py`` do. Gap pixels GDAL leaves unfilled (farther than the search distance
    from any known pixel) take the value of their nearest known pixel, so every gap is filled.

    Parameters
    ----------
    image : numpy.ndarray
        float32 ``(B, H, W)``; gap pixels are never read.
    known : numpy.ndarray
        bool ``(B, H, W)``, True where the pixel is known.
    max_search_distance : float, default 100
        GDAL's search radius in pixels.
    smoothing_iterations : int, default 0
        3x3 smoothing passes GDAL applies to the filled pixels afterwards.

    Returns
    -------
    numpy.ndarray
        float32 ``(B, H, W)``: known pixels unchanged, gaps filled; a band without any known
        pixel is all NaN.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.linspace(0, 1, 64, dtype=np.float32)[None, None, :].repeat(64, axis=1)
    >>> known = np.ones_like(img, dtype=bool)
    >>> known[:, 20:26, :] = False
    >>> out = fill_gdal(img, known)
    >>> bool(np.isfinite(out).all()), float(np.abs(out - img)[~known].mean()) < 0.01
    (True, True)
    """
    from rasterio.fill import fillnodata

    def band_fill(band: np.ndarray, kb: np.ndarray, b: int) -> np.ndarray:
        # NaN in the gaps marks what GDAL did not reach (it only reads pixels where mask > 0).
        src = np.where(kb, band, np.nan).astype(np.float32)
        res = fillnodata(
            src,
            mask=kb.astype(np.uint8),
            max_search_distance=float(max_search_distance),
            smoothing_iterations=int(smoothing_iterations),
        ).astype(np.float64)
        left = ~np.isfinite(res)
        if left.any():
            res[left] = _nearest_fill(band, kb, left)[left]
        return res

    return _per_band(image, known, band_fill)


# --------------------------------------------------------------------------------------------
# scikit-image biharmonic
# --------------------------------------------------------------------------------------------


def fill_biharmonic(
    image: np.ndarray,
    known: np.ndarray,
    *,
    split_into_regions: bool = True,
) -> np.ndarray:
    """Fill gaps by biharmonic inpainting (scikit-image), band by band.

    Solves the biharmonic equation over the gap pixels with the known pixels as boundary
    values: a smooth (thin-plate-like) continuation of the surroundings.

    Parameters
    ----------
    image : numpy.ndarray
        float32 ``(B, H, W)``; gap pixels are never read.
    known : numpy.ndarray
        bool ``(B, H, W)``, True where the pixel is known.
    split_into_regions : bool, default True
        Solve each connected gap region as its own sparse system. Same result, and several
        times faster on stripe masks (many small systems instead of one large one).

    Returns
    -------
    numpy.ndarray
        float32 ``(B, H, W)``: known pixels unchanged, gaps filled; a band without any known
        pixel is all NaN.

    Raises
    ------
    TilefillError
        If scikit-image is not installed.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.linspace(0, 1, 64, dtype=np.float32)[None, None, :].repeat(64, axis=1)
    >>> known = np.ones_like(img, dtype=bool)
    >>> known[:, 20:26, :] = False
    >>> out = fill_biharmonic(img, known)
    >>> float(np.abs(out - img)[~known].mean()) < 0.01  # mean error on the gap pixels
    True
    """
    restoration = _require("skimage.restoration", "biharmonic")

    def band_fill(band: np.ndarray, kb: np.ndarray, b: int) -> np.ndarray:
        return restoration.inpaint_biharmonic(band, ~kb, split_into_regions=split_into_regions)

    return _per_band(image, known, band_fill)


# --------------------------------------------------------------------------------------------
# OpenCV inpaint (Telea, Navier-Stokes)
# --------------------------------------------------------------------------------------------


def _fill_cv2(image, known, *, radius: float, flag_name: str, method: str) -> np.ndarray:
    cv2 = _require("cv2", method)
    flag = getattr(cv2, flag_name)

    def band_fill(band: np.ndarray, kb: np.ndarray, b: int) -> np.ndarray:
        lo, hi = float(band[kb].min()), float(band[kb].max())
        if hi <= lo:  # constant band: the only sensible fill, and avoids dividing by zero
            return np.full_like(band, lo)
        # cv2.inpaint wants integers here: quantise over the band's known range to 16 bits
        # (a step of (hi - lo) / 65535, far below sensor noise) and map back afterwards.
        scale = 65535.0 / (hi - lo)
        q = np.clip(np.rint((band - lo) * scale), 0, 65535).astype(np.uint16)
        q[~kb] = 0
        res = cv2.inpaint(q, (~kb).astype(np.uint8), float(radius), flag)
        return res.astype(np.float64) / scale + lo

    return _per_band(image, known, band_fill)


def fill_telea(image: np.ndarray, known: np.ndarray, *, radius: float = 5.0) -> np.ndarray:
    """Fill gaps with OpenCV's Telea inpainting (fast marching), band by band.

    Each band is quantised to uint16 over its known min..max, inpainted with
    ``cv2.inpaint(..., cv2.INPAINT_TELEA)`` and mapped back to floats.

    Parameters
    ----------
    image : numpy.ndarray
        float32 ``(B, H, W)``; gap pixels are never read.
    known : numpy.ndarray
        bool ``(B, H, W)``, True where the pixel is known.
    radius : float, default 5
        ``inpaintRadius``: neighbourhood (pixels) each filled pixel is estimated from.

    Returns
    -------
    numpy.ndarray
        float32 ``(B, H, W)``: known pixels unchanged, gaps filled (within the band's known
        range); a band without any known pixel is all NaN.

    Raises
    ------
    TilefillError
        If opencv-python-headless is not installed.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.linspace(0, 1, 64, dtype=np.float32)[None, None, :].repeat(64, axis=1)
    >>> known = np.ones_like(img, dtype=bool)
    >>> known[:, 20:26, :] = False
    >>> out = fill_telea(img, known)
    >>> float(np.abs(out - img)[~known].mean()) < 0.01  # mean error on the gap pixels
    True
    """
    return _fill_cv2(image, known, radius=radius, flag_name="INPAINT_TELEA", method="telea")


def fill_ns(image: np.ndarray, known: np.ndarray, *, radius: float = 5.0) -> np.ndarray:
    """Fill gaps with OpenCV's Navier-Stokes inpainting, band by band.

    Exactly :func:`fill_telea` (parameters, quantisation, result, errors) with ``cv2.INPAINT_NS``.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.linspace(0, 1, 64, dtype=np.float32)[None, None, :].repeat(64, axis=1)
    >>> known = np.ones_like(img, dtype=bool)
    >>> known[:, 20:26, :] = False
    >>> float(np.abs(fill_ns(img, known) - img)[~known].mean()) < 0.01
    True
    """
    return _fill_cv2(image, known, radius=radius, flag_name="INPAINT_NS", method="ns")


# --------------------------------------------------------------------------------------------
# Ordinary kriging in local windows
# --------------------------------------------------------------------------------------------


def _idw(px: np.ndarray, py: np.ndarray, pz: np.ndarray, qx: np.ndarray, qy: np.ndarray,
         power: float = 2.0) -> np.ndarray:
    """Inverse distance weighting of points (px, py, pz) at queries (qx, qy)."""
    d2 = (qx[:, None] - px[None, :]) ** 2 + (qy[:, None] - py[None, :]) ** 2
    w = 1.0 / np.maximum(d2, 1e-12) ** (power / 2.0)
    return (w @ pz) / w.sum(axis=1)


_VARIOGRAM_MODELS = ("spherical", "exponential", "gaussian", "linear", "power")


def fill_kriging(
    image: np.ndarray,
    known: np.ndarray,
    *,
    block: int = 32,
    margin: int = 32,
    max_points: int = 256,
    near_fraction: float = 0.6,
    variogram_model: str = "spherical",
    nlags: int = 12,
    min_points: int = 12,
    seed: int = 0,
) -> np.ndarray:
    """Fill gaps by ordinary kriging in local windows (pykrige), band by band.

    Global kriging of a tile needs an (N x N) system over all known pixels and runs out of
    memory, so the tile is cut into ``block`` x ``block`` blocks. For each block with gaps, the
    known pixels of the window around it (the block plus ``margin`` on every side) are sampled
    down to at most ``max_points``: the ``near_fraction`` share closest to the block's gaps
    (they carry most of the prediction) and a seeded random sample of the rest (it spans the
    lags the variogram is fitted on). An ordinary-kriging model with a ``variogram_model``
    variogram is fitted to them and predicts the block's gap pixels.

    Degenerate windows fall back gracefully: a constant window gives that constant; fewer than
    ``min_points`` known pixels, a failed variogram fit or a wild prediction (non-finite, or
    farther than the window's value range outside it) gives inverse distance weighting; a window
    with no known pixel gives the nearest known pixel of the band. Results are deterministic
    for a given ``seed``.

    The slowest method here: about 3 s for a 4-band 400 x 400 tile, 22 s for 4 x 1024 x 1024
    (26% stripes, on a 2-core machine).

    Parameters
    ----------
    image : numpy.ndarray
        float32 ``(B, H, W)``; gap pixels are never read.
    known : numpy.ndarray
        bool ``(B, H, W)``, True where the pixel is known.
    block : int, default 32
        Side of the prediction blocks, in pixels.
    margin : int, default 32
        Context around each block the known pixels are taken from (window 96 x 96 by default).
    max_points : int, default 256
        Most known pixels per kriging system (the solve is cubic in it).
    near_fraction : float, default 0.6
        Share of ``max_points`` taken as the known pixels nearest to the block's gaps.
    variogram_model : {"spherical", "exponential", "gaussian", "linear", "power"}, default "spherical"
        pykrige variogram model, fitted per window. "gaussian" makes ill-conditioned systems
        on dense pixel grids and often ends in the IDW fallback.
    nlags : int, default 12
        Lag bins of the experimental variogram.
    min_points : int, default 12
        Fewer known pixels in a window than this -> IDW instead of kriging.
    seed : int, default 0
        Seed of the random subsample (each block derives its own stream from it).

    Returns
    -------
    numpy.ndarray
        float32 ``(B, H, W)``: known pixels unchanged, gaps filled; a band without any known
        pixel is all NaN.

    Raises
    ------
    TilefillError
        If pykrige is not installed.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[0:64, 0:64] / 64.0
    >>> img = (0.5 + 0.3 * np.sin(3 * xx) * np.cos(2 * yy)).astype(np.float32)[None]
    >>> known = np.ones_like(img, dtype=bool)
    >>> known[:, 20:26, :] = False
    >>> out = fill_kriging(img, known)
    >>> float(np.abs(out - img)[~known].mean()) < 0.01  # mean error on the gap pixels
    True
    """
    ok_module = _require("pykrige.ok", "kriging")
    if block < 1 or margin < 0 or max_points < 3 or not 0.0 <= near_fraction <= 1.0:
        raise ValueError("need block >= 1, margin >= 0, max_points >= 3, 0 <= near_fraction <= 1")
    # Checked here: a bad name would otherwise fail inside every block and silently become IDW.
    if variogram_model not in _VARIOGRAM_MODELS:
        raise ValueError(
            f"unknown variogram_model {variogram_model!r}; valid: {', '.join(_VARIOGRAM_MODELS)}"
        )

    def band_fill(band: np.ndarray, kb: np.ndarray, b: int) -> np.ndarray:
        h, w = band.shape
        res = band.copy()
        gap = ~kb
        nearest = None  # computed only if some window has no known pixel at all
        for r0 in range(0, h, block):
            for c0 in range(0, w, block):
                bgap = gap[r0:r0 + block, c0:c0 + block]
                if not bgap.any():
                    continue
                wr0, wc0 = max(r0 - margin, 0), max(c0 - margin, 0)
                wr1, wc1 = min(r0 + block + margin, h), min(c0 + block + margin, w)
                wk = kb[wr0:wr1, wc0:wc1]
                gr, gc = np.nonzero(bgap)
                gr, gc = gr + r0, gc + c0  # absolute coordinates of the block's gaps
                if not wk.any():
                    if nearest is None:
                        nearest = _nearest_fill(band, kb, gap)
                    res[gr, gc] = nearest[gr, gc]
                    continue
                rng = np.random.default_rng([seed, b, r0, c0])
                pr, pc = _pick_points(wk, gap[wr0:wr1, wc0:wc1], (r0 - wr0, c0 - wc0), block,
                                      max_points, near_fraction, rng)
                pz = band[pr + wr0, pc + wc0]
                res[gr, gc] = _krige_block(
                    ok_module, (pc + wc0).astype(float), (pr + wr0).astype(float), pz,
                    gc.astype(float), gr.astype(float), variogram_model, nlags, min_points,
                )
        return res

    return _per_band(image, known, band_fill)


def _pick_points(wk, wgap, offset, block, max_points, near_fraction, rng):
    """Choose up to ``max_points`` known pixels of a window: the nearest to the block's gaps
    (ties broken deterministically by position) plus a random sample of the rest."""
    kr, kc = np.nonzero(wk)
    n = kr.size
    if n <= max_points:
        return kr, kc
    # Distance of every window pixel to the nearest gap pixel of the block itself.
    target = np.ones_like(wgap)
    br, bc = offset
    target[br:br + block, bc:bc + block] &= ~wgap[br:br + block, bc:bc + block]
    dist = ndimage.distance_transform_edt(target)[kr, kc]
    order = np.argsort(dist, kind="stable")
    n_near = int(round(max_points * near_fraction))
    near, rest = order[:n_near], order[n_near:]
    far = rng.choice(rest, size=max_points - n_near, replace=False)
    sel = np.sort(np.concatenate([near, far]))
    return kr[sel], kc[sel]


def _krige_block(ok_module, px, py, pz, qx, qy, variogram_model, nlags, min_points):
    """Ordinary kriging of (px, py, pz) at (qx, qy), with fallbacks for degenerate windows."""
    lo, hi = float(pz.min()), float(pz.max())
    span = hi - lo
    if span <= 1e-12 * max(1.0, abs(hi)):
        return np.full(qx.shape, pz.mean())
    if pz.size < min_points:
        return _idw(px, py, pz, qx, qy)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pykrige/scipy chatter on poor fits
            # pykrige fits the variogram (experimental semivariances + least squares).
            model = ok_module.OrdinaryKriging(
                px, py, pz, variogram_model=variogram_model, nlags=nlags,
                enable_plotting=False, verbose=False,
            )
            vario = model.variogram_function
            params = model.variogram_model_parameters
            # Prediction in the dual form: the same estimate as pykrige's execute() (same
            # kriging matrix, zero diagonal, Lagrange row), but one solve with a single
            # right-hand side instead of inverting the matrix for every query (~5x faster).
            n = pz.size
            pts = np.column_stack([px, py])
            a = np.zeros((n + 1, n + 1))
            a[:n, :n] = -vario(params, cdist(pts, pts))
            np.fill_diagonal(a, 0.0)
            a[n, :n] = a[:n, n] = 1.0
            alpha = linalg.solve(a, np.append(pz, 0.0), assume_a="sym")
            b = -vario(params, cdist(np.column_stack([qx, qy]), pts))
            pred = b @ alpha[:n] + alpha[n]
    except (ValueError, np.linalg.LinAlgError, FloatingPointError, RuntimeError):
        return _idw(px, py, pz, qx, qy)
    # Kriging weights sum to 1 but can be negative, so a little overshoot is legitimate;
    # anything beyond a full value range outside the data means a broken variogram fit.
    if not np.isfinite(pred).all() or pred.min() < lo - span or pred.max() > hi + span:
        return _idw(px, py, pz, qx, qy)
    return pred


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

#: Classical fill methods by name; each follows ``fill(image, known, **options) -> filled``.
CLASSICAL_METHODS: dict[str, Callable[..., np.ndarray]] = {
    "gdal": fill_gdal,
    "biharmonic": fill_biharmonic,
    "telea": fill_telea,
    "ns": fill_ns,
    "kriging": fill_kriging,
}


def fill_classical(method: str, image: np.ndarray, known: np.ndarray, **options) -> np.ndarray:
    """Fill the gaps of a tile with the classical method named ``method``.

    Parameters
    ----------
    method : str
        One of the keys of :data:`CLASSICAL_METHODS`: ``"gdal"``, ``"biharmonic"``,
        ``"telea"``, ``"ns"``, ``"kriging"``.
    image : numpy.ndarray
        float32 ``(B, H, W)``, values about [0, 1]; gap pixels are never read.
    known : numpy.ndarray
        bool ``(B, H, W)``, True where the pixel is known.
    **options
        Keyword options of that method (see each ``fill_*`` function).

    Returns
    -------
    numpy.ndarray
        float32 ``(B, H, W)``: known pixels unchanged, gaps filled; a band without any known
        pixel is all NaN.

    Raises
    ------
    ValueError
        If ``method`` is not a known name (the message lists the valid ones).
    TilefillError
        If the method's optional package is missing.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.random.default_rng(0).random((2, 32, 32), dtype=np.float32)
    >>> known = np.ones_like(img, dtype=bool)
    >>> known[0, 10:14, :] = False
    >>> out = fill_classical("gdal", img, known)
    >>> out.dtype, out.shape, bool(np.array_equal(out[known], img[known]))
    (dtype('float32'), (2, 32, 32), True)
    """
    try:
        fn = CLASSICAL_METHODS[method]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown classical method {method!r}; valid: {', '.join(CLASSICAL_METHODS)}"
        ) from None
    return fn(image, known, **options)
