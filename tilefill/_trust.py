"""The trust map: each filled pixel's expected error, fitted on the scene's own hidden pixels.

The blend's error curve by distance to known data (``tilefill._distance_blend``) says how much a kind
of gap errs on average, not where: over 32 px blocks of one scene it followed the true error at a
Pearson of 0.21-0.27. What varies within a scene is at hand at every filled pixel, and at every hidden
pixel alike (hidden from the fits, so scored as the gaps are):

- ``curve``: the blend's mean squared error at the pixel's distance bin (and guide class), times its
  tile's own error ratio: the estimate as it was;
- ``disagreement``: (DIP - its classical partner)^2 at the pixel: where two fills that err differently
  disagree, at least one of them is far off;
- ``guide``: (the guide's fill - the blend)^2 where a guide speaks (0 elsewhere);
- ``texture``: the variance of the known pixels around the pixel (a 15 px window): busy land errs more.

The expected squared error is a non-negative mix of the four, per band, fitted by least squares on the
hidden pixels (:class:`TrustStats`, summed strip by strip as the mosaic is made); a band with too few
hidden pixels keeps the curve alone. The map is ``sqrt`` of it, in the input's units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import nnls

FEATURES = ("curve", "disagreement", "guide", "texture")
TEXTURE_SIDE = 15  # px: the window of known pixels whose variance is the texture feature
MIN_HIDDEN = 200  # hidden pixels a band needs for its own mix; fewer: the curve alone


def local_variance(values: np.ndarray, known: np.ndarray, side: int = TEXTURE_SIDE) -> np.ndarray:
    """Per band, the variance of the known pixels in a ``side`` px window around each pixel (0 where none).

    Examples
    --------
    >>> v = np.zeros((1, 9, 9)); v[0, :, 4:] = 1.0
    >>> k = np.ones((1, 9, 9), bool)
    >>> local_variance(v, k, side=3)[0, 4, [0, 4, 8]].round(3).tolist()
    [0.0, 0.222, 0.0]
    """
    out = np.zeros(values.shape, dtype=np.float64)
    for b in range(values.shape[0]):
        k = known[b].astype(np.float64)
        v = np.where(known[b], values[b], 0.0).astype(np.float64)
        n = ndimage.uniform_filter(k, side, mode="constant")
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = ndimage.uniform_filter(v, side, mode="constant") / n
            var = ndimage.uniform_filter(v * v, side, mode="constant") / n - mean * mean
        out[b] = np.where(n > 0, np.maximum(np.nan_to_num(var), 0.0), 0.0)
    return out


def features(curve: np.ndarray, disagreement: np.ndarray, guide: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """The model's inputs for ``m`` pixels of one band, (m, 4), in :data:`FEATURES` order (each a squared error
    or a variance, in the band scaling's units)."""
    return np.stack([curve, disagreement, guide, texture], axis=-1).astype(np.float64)


@dataclass
class TrustStats:
    """Least-squares sums per band over the hidden pixels: ``xtx`` (bands, 4, 4), ``xty`` (bands, 4), ``n``."""

    xtx: np.ndarray
    xty: np.ndarray
    n: np.ndarray

    @classmethod
    def zeros(cls, bands: int) -> "TrustStats":
        k = len(FEATURES)
        return cls(np.zeros((bands, k, k)), np.zeros((bands, k)), np.zeros(bands))

    def add(self, band: int, x: np.ndarray, squared_error: np.ndarray) -> None:
        """Add hidden pixels of ``band``: their features ``x`` (m, 4) and squared errors (m,); in place."""
        ok = np.isfinite(x).all(axis=1) & np.isfinite(squared_error)
        x, y = x[ok], squared_error[ok].astype(np.float64)
        self.xtx[band] += x.T @ x
        self.xty[band] += x.T @ y
        self.n[band] += len(y)

    def fit(self) -> "ErrorModel":
        """Each band's non-negative mix; the curve alone (coefficient 1) where a band has too few hidden pixels."""
        k = len(FEATURES)
        coef = ErrorModel.curve_alone(len(self.n)).coef
        for b in range(len(self.n)):
            if self.n[b] < MIN_HIDDEN:
                continue
            scale = np.sqrt(np.maximum(np.diag(self.xtx[b]), 1e-30))  # features of very different sizes
            gram = self.xtx[b] / np.outer(scale, scale) + 1e-9 * np.eye(k)
            rhs = self.xty[b] / scale
            # min ||X a - y|| over a >= 0, from the normal equations: with R'R = X'X, ||R a - R^-T X'y||
            r = np.linalg.cholesky(gram).T
            coef[b] = nnls(r, np.linalg.solve(r.T, rhs))[0] / scale
        return ErrorModel(coef)


@dataclass(frozen=True)
class ErrorModel:
    """Per band, the coefficients (bands, 4) of the expected squared error on :data:`FEATURES`.

    Examples
    --------
    >>> stats = TrustStats.zeros(1)
    >>> rng = np.random.default_rng(0)
    >>> x = features(np.full(1000, 0.01), rng.random(1000) * 0.02, np.zeros(1000), np.zeros(1000))
    >>> stats.add(0, x, 0.5 * x[:, 0] + 2.0 * x[:, 1])
    >>> stats.fit().coef.round(3).tolist()
    [[0.5, 2.0, 0.0, 0.0]]
    """

    coef: np.ndarray

    @classmethod
    def curve_alone(cls, bands: int) -> "ErrorModel":
        """The distance curve as it is (``blend.trust_features: false``)."""
        coef = np.zeros((bands, len(FEATURES)))
        coef[:, 0] = 1.0
        return cls(coef)

    def mse(self, band: int, x: np.ndarray) -> np.ndarray:
        """Expected squared error of pixels of ``band`` with features ``x`` (..., 4)."""
        return np.maximum(x @ self.coef[band], 0.0)

    def to_dict(self) -> dict:
        return {"features": list(FEATURES), "coefficients": np.round(self.coef, 5).tolist()}
