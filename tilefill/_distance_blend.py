"""The DIP / classical blend, weighted by each pixel's distance to known data.

A smooth interpolator (biharmonic inpainting, GDAL FillNodata) is nearly exact one pixel from
known data and degrades fast with distance; DIP's error grows slowly. So the weight of the
classical partner in ``(1 - w) * dip + w * classical`` is a function of the distance from a gap
pixel to the nearest known pixel of its band, in bins (1, 2, 3, 4-5, 6-8, 9-16, 17-32, 33+ px).

The weights are fitted on the self-validation pixels (``fit.validation``: known pixels hidden
from both fills in gap-shaped stripes). A hidden pixel's bin is its distance to the nearest
pixel the fills did see. Each tile task records, per partner, band and bin, the sufficient
statistics of the blend's squared error on its hidden pixels (:class:`BlendStats`); with
``a = dip - truth`` and ``b = classical - dip`` the error of weight ``w`` is ``a + w * b``, so

    SSE(w) = Saa + 2 w Sab + w^2 Sbb,   best w = -Sab / Sbb (clipped to [0, 1]).

The hidden pixels are drawn once for the scene (:class:`SceneHoldout`), so no tile sees them, and
the mosaic measures the statistics on itself (overlapping tiles averaged, as at the real gaps; a
single tile's fit errs more than the average of two, which biased weights fitted per tile toward
the classical fill by 0.1-0.4 on the paper's image). It fits one weight per band and bin over the
whole scene (:func:`fit_weights`: far more pixels than one tile sees), shrunk toward the previous
bin's weight where few hidden pixels fall in a bin (``blend.prior_pixels``). Weight 1.0 (the
classical fill alone) is a possible answer. Where several classical partners were
computed (``fit.blend_method: [biharmonic, gdal]``), each band takes the partner whose blend
has the lowest error expected on the real gaps: each bin's mean error on the hidden pixels,
weighted by the share of the real gap pixels in that bin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Upper edges of the distance bins (Euclidean px to the nearest known pixel of the band).
DISTANCE_EDGES = (1.5, 2.5, 3.5, 5.5, 8.5, 16.5, 32.5)
BIN_LABELS = ("1", "2", "3", "4-5", "6-8", "9-16", "17-32", "33+")
N_BINS = len(BIN_LABELS)
# Rows and columns of context that make a pixel's bin exact: beyond the last edge all bins are one.
HALO = 34
KNOWN = 255  # bin code of a known pixel


HOLDOUT_SHIFT = 16  # rows the gaps' shapes move to make the hidden stripes: half an SLC scan period
HOLDOUT_CELL = 32  # the hidden shapes are kept in random cells of this side


class SceneHoldout:
    """Known pixels hidden from every fit of a scene, drawn once for the whole scene.

    The gaps' own shapes (in any band), moved :data:`HOLDOUT_SHIFT` rows down onto known pixels, kept
    in :data:`HOLDOUT_CELL` px cells taken in a seeded random order until ``share`` of the known
    pixels are hidden: stripes as wide as the real ones (thin hidden lines would flatter every
    smooth interpolator). The share is met, not only expected, so a small scene has hidden
    pixels too. One mask for the scene, not one per tile, so that no tile sees them and the
    mosaic's prediction there, overlaps averaged as at the real gaps, is scored as the output is made.

    Drawn strip by strip (:meth:`strip`), given the gap rows just above each strip.

    Parameters
    ----------
    shape : (int, int)
        The scene's height and width.
    share : float
        Share of the known pixels to hide.
    cell_candidates : ndarray of int, (ceil(H / HOLDOUT_CELL), ceil(W / HOLDOUT_CELL))
        Pixels of each cell that the moved gap shapes cover (:meth:`count`).
    known : int
        Pixels known in every band.
    seed : int
        Seed of the cells' order.

    Examples
    --------
    >>> gaps = np.zeros((64, 64), bool); gaps[4:8] = gaps[36:40] = True
    >>> counts = SceneHoldout.count(SceneHoldout.shapes(gaps, np.zeros((16, 64), bool)), 0)
    >>> holdout = SceneHoldout((64, 64), share=1.0, cell_candidates=counts, known=int((~gaps).sum()), seed=0)
    >>> hidden = holdout.strip(0, gaps, np.zeros((16, 64), bool))
    >>> np.flatnonzero(hidden.any(axis=1)).tolist()  # the stripes moved 16 rows down
    [20, 21, 22, 23, 52, 53, 54, 55]
    """

    def __init__(self, shape: tuple[int, int], *, share: float, cell_candidates: np.ndarray, known: int, seed: int):
        h, w = shape
        grid = (-(-h // HOLDOUT_CELL), -(-w // HOLDOUT_CELL))
        order = np.argsort(np.random.default_rng(seed).random(grid), axis=None, kind="stable")
        counts = np.asarray(cell_candidates).ravel()[order]
        # the cells in their random order, up to the first one that brings the hidden share to ``share``
        taken = int(np.searchsorted(np.cumsum(counts), share * known)) + 1 if counts.any() and share > 0 else 0
        cells = np.zeros(grid[0] * grid[1], bool)
        cells[order[:taken]] = True
        self.cells = cells.reshape(grid)

    @staticmethod
    def count(shapes: np.ndarray, y: int, counts: np.ndarray | None = None) -> np.ndarray:
        """Add the candidate pixels ``shapes`` (h, w) of the strip starting at row ``y`` to ``counts`` per cell."""
        h, w = shapes.shape
        if counts is None:
            counts = np.zeros((-(-(y + h) // HOLDOUT_CELL), -(-w // HOLDOUT_CELL)), np.int64)
        per_col = np.add.reduceat(shapes, np.arange(0, w, HOLDOUT_CELL), axis=1).astype(np.int64)
        np.add.at(counts, np.arange(y, y + h) // HOLDOUT_CELL, per_col)
        return counts

    @staticmethod
    def shapes(gaps: np.ndarray, above: np.ndarray) -> np.ndarray:
        """Where the gaps' shapes land in a strip: ``gaps`` (h, w) of the strip, ``above`` the
        :data:`HOLDOUT_SHIFT` gap rows above it (zeros at the top of the scene)."""
        moved = np.concatenate([above, gaps])[:gaps.shape[0]]
        return moved & ~gaps

    def strip(self, y: int, gaps: np.ndarray, above: np.ndarray) -> np.ndarray:
        """The hidden pixels (h, w) of the strip starting at row ``y`` (to be and-ed with each band's known pixels)."""
        h, w = gaps.shape
        rows = (np.arange(y, y + h) // HOLDOUT_CELL)[:, None]
        cols = (np.arange(w) // HOLDOUT_CELL)[None, :]
        return self.shapes(gaps, above) & self.cells[rows, cols]


def distance_bins(known: np.ndarray) -> np.ndarray:
    """The distance bin of every pixel not in ``known``, per band; :data:`KNOWN` where known.

    Parameters
    ----------
    known : ndarray of bool, (bands, H, W)
        Pixels that carry data (that a fill saw). A band with no known pixel is all bin 33+.

    Returns
    -------
    ndarray of uint8, (bands, H, W)

    Examples
    --------
    >>> known = np.ones((1, 1, 9), bool)
    >>> known[0, 0, 2:7] = False
    >>> distance_bins(known)[0, 0].tolist()
    [255, 255, 0, 1, 2, 1, 0, 255, 255]
    """
    from scipy.ndimage import distance_transform_edt

    out = np.full(known.shape, KNOWN, dtype=np.uint8)
    for b in range(known.shape[0]):
        unknown = ~known[b]
        if not unknown.any():
            continue
        if unknown.all():
            out[b] = N_BINS - 1
            continue
        dist = distance_transform_edt(unknown)
        out[b][unknown] = np.searchsorted(DISTANCE_EDGES, dist[unknown]).astype(np.uint8)
    return out


@dataclass(frozen=True)
class BlendStats:
    """Sums over hidden pixels, per partner, band and distance bin, that fix every blend's error.

    ``n``, ``saa``, ``sab``, ``sbb``: float64 (partners, bands, bins) — pixel count and the sums of
    ``a * a``, ``a * b``, ``b * b`` with ``a = dip - truth`` and ``b = classical - dip``.
    ``gaps``: float64 (bands, bins), the real gap pixels of the tile in each bin.
    Stored in the work store as one float64 array (:meth:`to_array`), summed over tiles with ``+``.
    """

    n: np.ndarray
    saa: np.ndarray
    sab: np.ndarray
    sbb: np.ndarray
    gaps: np.ndarray

    @classmethod
    def zeros(cls, partners: int, bands: int) -> "BlendStats":
        z = np.zeros((partners, bands, N_BINS))
        return cls(z, z.copy(), z.copy(), z.copy(), np.zeros((bands, N_BINS)))

    @classmethod
    def without_hidden(cls, partners: int, known: np.ndarray, gaps: np.ndarray) -> "BlendStats":
        """No hidden pixel (a window with no room for them, a thin-gap tile): the gap counts alone."""
        out = cls.zeros(partners, known.shape[0])
        bins = distance_bins(known)
        for b in range(known.shape[0]):
            out.gaps[b] = np.bincount(bins[b][gaps[b]], minlength=N_BINS)[:N_BINS]
        return out

    @classmethod
    def measure(cls, dip: np.ndarray, partners: list[np.ndarray], truth: np.ndarray, seen: np.ndarray,
                hidden: np.ndarray, gaps: np.ndarray, scored: np.ndarray | None = None) -> "BlendStats":
        """Statistics of one window.

        ``dip``, each of ``partners`` (fills made from the ``seen`` pixels only) and ``truth``:
        float (bands, H, W); ``hidden``: the pixels hidden from the fills, all of them scored unless
        ``scored`` says which (those no guide covers); ``gaps``: the real gap pixels whose bins are counted
        (bins taken from ``seen | hidden``, what the final fill sees).
        """
        bands = truth.shape[0]
        out = cls.without_hidden(len(partners), seen | hidden, gaps)
        held_bins = distance_bins(seen)
        scored = hidden if scored is None else scored
        for b in range(bands):
            where = scored[b]
            if not where.any():
                continue
            k = held_bins[b][where]
            a = dip[b][where].astype(np.float64) - truth[b][where]
            for p, fill in enumerate(partners):
                d = fill[b][where].astype(np.float64) - dip[b][where]
                out.n[p, b] += np.bincount(k, minlength=N_BINS)[:N_BINS]
                out.saa[p, b] += np.bincount(k, a * a, minlength=N_BINS)[:N_BINS]
                out.sab[p, b] += np.bincount(k, a * d, minlength=N_BINS)[:N_BINS]
                out.sbb[p, b] += np.bincount(k, d * d, minlength=N_BINS)[:N_BINS]
        return out

    def __add__(self, other: "BlendStats") -> "BlendStats":
        return BlendStats(self.n + other.n, self.saa + other.saa, self.sab + other.sab, self.sbb + other.sbb,
                          self.gaps + other.gaps)

    def first_partner(self) -> "BlendStats":
        """The same sums for the first partner alone (no choice of partner per band)."""
        return BlendStats(self.n[:1], self.saa[:1], self.sab[:1], self.sbb[:1], self.gaps)

    @property
    def partners(self) -> int:
        return self.n.shape[0]

    @property
    def bands(self) -> int:
        return self.n.shape[1]

    def to_array(self) -> np.ndarray:
        """(partners + 1, bands, bins, 4): the four sums per partner, then the gap counts in slot 0."""
        sums = np.stack([self.n, self.saa, self.sab, self.sbb], axis=-1)
        gaps = np.zeros((1,) + sums.shape[1:])
        gaps[0, :, :, 0] = self.gaps
        return np.concatenate([sums, gaps])

    @classmethod
    def from_array(cls, arr: np.ndarray) -> "BlendStats":
        arr = np.nan_to_num(np.asarray(arr, dtype=np.float64))
        sums = arr[:-1]
        return cls(sums[..., 0], sums[..., 1], sums[..., 2], sums[..., 3], arr[-1, :, :, 0])

    def sse(self, weights: np.ndarray, partner: np.ndarray | None = None) -> np.ndarray:
        """Squared error summed per band and bin (bands, bins) at ``weights`` (bands, bins), for each band's
        partner (bands,), or each band's and bin's (bands, bins)."""
        p = np.zeros(self.bands, dtype=int) if partner is None else np.asarray(partner)
        rows = np.arange(self.bands)
        at = (p, rows[:, None], np.arange(N_BINS)[None]) if p.ndim == 2 else (p, rows)
        saa, sab, sbb = self.saa[at], self.sab[at], self.sbb[at]
        return np.maximum(saa + 2 * weights * sab + weights ** 2 * sbb, 0.0)


@dataclass(frozen=True)
class BlendWeights:
    """Classical weight per band and distance bin, the partner of each band, and the error expected.

    ``weights``: (bands, bins) in [0, 1]; ``partner``: (bands,) index into ``fit.blend_method``;
    ``mse``: (bands, bins) mean squared error of the blend on the hidden pixels of each bin (in the
    band scaling's [0, 1] units), carried into bins without hidden pixels from the nearest bin
    below; ``hidden``: (bands, bins) hidden pixels behind each bin; ``alone_mse``: (bands, bins) the
    same for the band's partner alone (weight 1: what a thin-gap tile's pixels err).
    """

    weights: np.ndarray
    partner: np.ndarray
    mse: np.ndarray
    hidden: np.ndarray
    alone_mse: np.ndarray

    def at(self, bins: np.ndarray) -> np.ndarray:
        """Per-pixel weight for a (bands, H, W) array of bin codes (0 where known)."""
        rows = np.arange(bins.shape[0])[:, None, None]
        return np.where(bins == KNOWN, 0.0, self.weights[rows, np.minimum(bins, N_BINS - 1)])

    def expected_rmse(self, gaps: np.ndarray) -> np.ndarray:
        """Per band: the RMSE expected on gaps with these bin counts (bands, bins); NaN without gaps."""
        total = gaps.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt((gaps * self.mse).sum(axis=1) / total)

    def to_dict(self, names: list[str] | None = None) -> dict:
        return {"bins": list(BIN_LABELS), "weights": np.round(self.weights, 4).tolist(),
                "partner": [int(p) if names is None else names[int(p)] for p in self.partner],
                "rmse": np.round(np.sqrt(self.mse), 5).tolist(), "hidden_pixels": self.hidden.astype(int).tolist()}


def _shrunk_weights(stats: BlendStats, p: int, prior: np.ndarray, prior_pixels: float,
                    curve: np.ndarray | None = None) -> np.ndarray:
    """Each band's weight per bin, from bin 1 outwards: the bin's best weight, shrunk by
    ``prior_pixels`` pseudo-pixels toward ``curve``'s weight for the bin or, without a curve, toward
    the last bin's (bin 1: toward ``prior``)."""
    bands = stats.bands
    out = np.zeros((bands, N_BINS))
    for b in range(bands):
        last = float(prior[b])
        for k in range(N_BINS):
            target = last if curve is None else float(curve[k])
            n, sab, sbb = stats.n[p, b, k], stats.sab[p, b, k], stats.sbb[p, b, k]
            best = float(np.clip(-sab / sbb, 0.0, 1.0)) if sbb > 0 else target
            w = (n * best + prior_pixels * target) / (n + prior_pixels) if n + prior_pixels > 0 else target
            out[b, k] = last = w
    return out


def _carried_mse(stats: BlendStats, p: int, weights: np.ndarray) -> np.ndarray:
    """Mean squared error per band and bin at ``weights``; a bin without hidden pixels takes the
    nearest populated bin below it (or above, for leading empty bins)."""
    sse = stats.sse(weights, np.full(stats.bands, p))
    n = stats.n[p]
    out = np.full(n.shape, np.nan)
    np.divide(sse, n, out=out, where=n > 0)
    for b in range(stats.bands):
        have = np.flatnonzero(n[b] > 0)
        if not have.size:
            continue
        idx = np.searchsorted(have, np.arange(N_BINS), side="right") - 1
        out[b] = out[b][have[np.maximum(idx, 0)]]
    return out


def fit_weights(stats: BlendStats, *, prior: float | np.ndarray = 0.5, prior_pixels: float = 200.0,
                curve: np.ndarray | None = None) -> BlendWeights:
    """The blend weights that minimise the error on the hidden pixels, per band and distance bin.

    Parameters
    ----------
    stats : BlendStats
        Measured on the scene's hidden pixels.
    prior : float or (bands,) array
        Weight of bin 1 when it has no hidden pixel (``fit.classical_blend``).
    prior_pixels : float
        Pseudo-pixels of the prior: a bin with that many hidden pixels is half its own estimate.
    curve : (bins,) or (partners, bins) array, optional
        Weights measured on other scenes (``blend.prior_curve``): each bin shrinks toward the curve's
        weight for it instead of toward the bin before.

    Examples
    --------
    >>> s = BlendStats.zeros(1, 1)
    >>> s.n[0, 0, 0], s.saa[0, 0, 0], s.sab[0, 0, 0], s.sbb[0, 0, 0] = 1000, 4.0, -3.0, 4.0
    >>> fit_weights(s).weights[0, :2].round(3).tolist()   # best 0.75 in bin 1, carried outward
    [0.708, 0.708]
    """
    bands = stats.bands
    prior = np.broadcast_to(np.asarray(prior, dtype=np.float64), (bands,))
    curves = [None] * stats.partners if curve is None else np.broadcast_to(np.asarray(curve, np.float64),
                                                                             (stats.partners, N_BINS))
    candidates = [_shrunk_weights(stats, p, prior, prior_pixels, curves[p]) for p in range(stats.partners)]
    mses = [_carried_mse(stats, p, w) for p, w in enumerate(candidates)]
    # the partner whose blend errs least where the real gaps are (bins weighted by gap pixels)
    gap_share = stats.gaps / np.maximum(stats.gaps.sum(axis=1, keepdims=True), 1)
    expected = np.stack([np.nansum(gap_share * m, axis=1) for m in mses])  # (partners, bands)
    partner = np.argmin(np.where(np.isfinite(expected), expected, np.inf), axis=0)
    rows = np.arange(bands)
    weights = np.stack(candidates)[partner, rows]
    mse = np.stack(mses)[partner, rows]
    alone = np.stack([_carried_mse(stats, p, np.ones((bands, N_BINS))) for p in range(stats.partners)])[partner, rows]
    return BlendWeights(weights, partner, mse, stats.n[partner, rows], alone)


def histogram_match(stats: BlendStats) -> np.ndarray:
    """Per band, how well the hidden pixels' distance histogram matches the gaps': 1 - total variation
    distance (1 = the same shares in every bin, 0 = disjoint)."""
    hidden = stats.n[0]
    h = hidden / np.maximum(hidden.sum(axis=1, keepdims=True), 1)
    g = stats.gaps / np.maximum(stats.gaps.sum(axis=1, keepdims=True), 1)
    return 1 - 0.5 * np.abs(h - g).sum(axis=1)


# --- where a second date (a guide) speaks: DIP, the classical partner and the guide's own fill ---------------

GUIDED_SOURCES = ("dip", "partner", "guide")
# Classes of the scene's agreement with its guide around a pixel (tilefill._multitemporal.guide_agreement, a local
# r2): below 0.3 and above. Each class's three-way weights are fitted apart, so where the land changed (the scene
# stops following the guide) its hidden pixels, not the scene's average, say how far to trust the guide. Measured
# on the real pairs: two classes kept the whole gaps' r2 where three (0.25, 0.5) lost 0.01 on Taizhou, and took
# back most of what the guide cost on changed land (docs/quality.md, "A second date as guide")
AGREEMENT_EDGES = (0.3,)
N_AGREEMENT = len(AGREEMENT_EDGES) + 1


def agreement_classes(agreement: np.ndarray) -> np.ndarray:
    """The agreement class (0 .. N_AGREEMENT - 1) of each pixel's local r2; class 0 where it is NaN.

    Examples
    --------
    >>> agreement_classes(np.array([0.1, 0.3, 0.9, np.nan])).tolist()
    [0, 1, 1, 0]
    """
    return np.digitize(np.nan_to_num(agreement, nan=0.0), AGREEMENT_EDGES).astype(np.int8)


@dataclass(frozen=True)
class GuidedStats:
    """Sums over the hidden pixels a guide covers, per band and distance bin, that fix every three-way blend's error.

    The sources are DIP's fill, the classical partner's (``fit.blend_method``'s first) and the guide's
    classical fill (``guide.partner``). ``n``: float64 (bands, bins), the pixels; ``gram``: (bands,
    bins, 3, 3), the sums of ``e_i * e_j`` with ``e_i`` source ``i`` minus the truth, so that a blend
    with weights ``a`` errs ``a @ gram @ a`` in all; ``gaps``: (bands, bins), the real gap pixels a
    guide covers. Summed over tiles with ``+``; stored as one array (:meth:`to_array`).
    """

    n: np.ndarray
    gram: np.ndarray
    gaps: np.ndarray

    @classmethod
    def zeros(cls, bands: int) -> "GuidedStats":
        return cls(np.zeros((bands, N_BINS)), np.zeros((bands, N_BINS, 3, 3)), np.zeros((bands, N_BINS)))

    @classmethod
    def measure(cls, sources: np.ndarray, truth: np.ndarray, seen: np.ndarray, hidden: np.ndarray, gaps: np.ndarray,
                covered: np.ndarray) -> "GuidedStats":
        """Statistics of one window: ``sources`` (3, bands, H, W) made from the ``seen`` pixels only, scored at
        the ``hidden`` pixels the guide ``covered`` (bool (bands, H, W)); ``gaps``: the real gaps, counted where
        covered (bins taken from ``seen | hidden``, what the final fill sees)."""
        bands = truth.shape[0]
        out = cls.zeros(bands)
        gap_bins = distance_bins(seen | hidden)
        held_bins = distance_bins(seen)
        for b in range(bands):
            g = gaps[b] & covered[b]
            out.gaps[b] += np.bincount(gap_bins[b][g], minlength=N_BINS)[:N_BINS]
            where = hidden[b] & covered[b]
            if where.any():
                out.add(b, held_bins[b][where], sources[:, b][:, where] - truth[b][where])
        return out

    def add(self, band: int, bins: np.ndarray, errors: np.ndarray) -> None:
        """Add pixels of ``band`` in distance ``bins`` (m,) whose sources err ``errors`` (3, m); in place."""
        errors = errors.astype(np.float64)
        self.n[band] += np.bincount(bins, minlength=N_BINS)[:N_BINS]
        for i in range(3):
            for j in range(i, 3):
                s = np.bincount(bins, errors[i] * errors[j], minlength=N_BINS)[:N_BINS]
                self.gram[band, :, i, j] += s
                if i != j:
                    self.gram[band, :, j, i] += s

    def __add__(self, other: "GuidedStats") -> "GuidedStats":
        return GuidedStats(self.n + other.n, self.gram + other.gram, self.gaps + other.gaps)

    @property
    def bands(self) -> int:
        return self.n.shape[0]

    def to_array(self) -> np.ndarray:
        """(bands, bins, 11): the pixels, the gram's nine sums, the covered gap pixels."""
        b = self.bands
        return np.concatenate([self.n[..., None], self.gram.reshape(b, N_BINS, 9), self.gaps[..., None]], axis=-1)

    @classmethod
    def from_array(cls, arr: np.ndarray) -> "GuidedStats":
        arr = np.nan_to_num(np.asarray(arr, dtype=np.float64))
        b = arr.shape[0]
        return cls(arr[..., 0], arr[..., 1:10].reshape(b, N_BINS, 3, 3), arr[..., 10])

    def sse(self, weights: np.ndarray) -> np.ndarray:
        """Squared error summed per band and bin (bands, bins) of the blends ``weights`` (bands, bins, 3)."""
        return np.maximum(np.einsum("bki,bkij,bkj->bk", weights, self.gram, weights), 0.0)


def simplex_weights(gram: np.ndarray) -> np.ndarray:
    """The weights (3,), >= 0 and summing to 1, whose blend errs least: ``argmin a @ gram @ a``.

    Every support is tried (a source alone, a pair, all three) and the best feasible one kept: the
    least-squares mean of correlated fills, which may leave one of them out.

    Examples
    --------
    >>> e = np.array([[1.0, -1.0, 0.0], [0.0, 0.0, 2.0]])   # two fills err oppositely, a third is unrelated
    >>> simplex_weights(e.T @ e).round(3).tolist()
    [0.5, 0.5, 0.0]
    """
    k = gram.shape[0]
    scale = max(float(np.trace(gram)) / k, 1e-30)
    g = gram / scale + 1e-9 * np.eye(k)  # a ridge: exactly collinear fills keep a finite answer
    best, best_err = np.full(k, 1.0 / k), np.inf
    for mask in range(1, 2 ** k):
        s = [i for i in range(k) if mask >> i & 1]
        sub = g[np.ix_(s, s)]
        try:
            x = np.linalg.solve(sub, np.ones(len(s)))
        except np.linalg.LinAlgError:
            continue
        if x.sum() <= 0:
            continue
        a = np.zeros(k)
        a[s] = x / x.sum()
        if (a < -1e-12).any():
            continue
        a = np.clip(a, 0, None)
        err = float(a @ g @ a)
        if err < best_err:
            best, best_err = a / a.sum(), err
    return best


@dataclass(frozen=True)
class GuidedWeights:
    """Weights of DIP, the classical partner and the guide's fill, per band and distance bin, where a guide covers.

    ``weights``: (bands, bins, 3), each row on the simplex; ``mse``: (bands, bins) the blend's mean squared
    error on the covered hidden pixels (band scaling units), carried into empty bins from the nearest below;
    ``hidden``: (bands, bins) the hidden pixels behind each bin.
    """

    weights: np.ndarray
    mse: np.ndarray
    hidden: np.ndarray

    def at(self, bins: np.ndarray) -> np.ndarray:
        """Per-pixel weights (3, bands, H, W) for a (bands, H, W) array of bin codes (0 where known)."""
        rows = np.arange(bins.shape[0])[:, None, None]
        w = self.weights[rows, np.minimum(bins, N_BINS - 1)]  # (bands, H, W, 3)
        w = np.where((bins == KNOWN)[..., None], np.array([1.0, 0.0, 0.0]), w)
        return np.moveaxis(w, -1, 0)

    def expected_rmse(self, gaps: np.ndarray) -> np.ndarray:
        """Per band: the RMSE expected on covered gaps with these bin counts (bands, bins); NaN without any."""
        total = gaps.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(np.nansum(gaps * self.mse, axis=1) / total)

    def to_dict(self) -> dict:
        return {"bins": list(BIN_LABELS), "sources": list(GUIDED_SOURCES),
                "weights": np.round(self.weights, 4).tolist(), "rmse": np.round(np.sqrt(self.mse), 5).tolist(),
                "hidden_pixels": self.hidden.astype(int).tolist()}


def fit_guided_weights(stats: GuidedStats, unguided: BlendWeights, *, prior_pixels: float = 200.0) -> GuidedWeights:
    """The three-way weights that minimise the error on the covered hidden pixels, per band and distance bin.

    Each bin's best weights (:func:`simplex_weights`) are shrunk by ``prior_pixels`` pseudo-pixels toward
    the band's best over all its bins, which is itself shrunk toward the blend without a guide
    (``unguided``'s weights of its first bin, the guide's at 0): a scene whose hidden pixels say the
    guide misleads (another season, changed land) leans on DIP and its partner, one whose hidden pixels
    are few keeps what the scene without the guide would do.

    Examples
    --------
    >>> s = GuidedStats.zeros(1)
    >>> e = np.stack([np.full(500, 0.10), np.full(500, 0.08), np.full(500, 0.01)])  # the guide errs least
    >>> s.add(0, np.zeros(500, int), e)
    >>> base = BlendWeights(np.full((1, N_BINS), 0.5), np.zeros(1, int), np.ones((1, N_BINS)), np.zeros((1, N_BINS)),
    ...                     np.ones((1, N_BINS)))
    >>> fit_guided_weights(s, base, prior_pixels=0).weights[0, 0].round(3).tolist()
    [0.0, 0.0, 1.0]
    """
    bands = stats.bands
    weights = np.zeros((bands, N_BINS, 3))
    for b in range(bands):
        w0 = float(unguided.weights[b, 0])
        base = np.array([1 - w0, w0, 0.0])
        n_all = stats.n[b].sum()
        pooled = simplex_weights(stats.gram[b].sum(axis=0)) if n_all > 0 else base
        pooled = (n_all * pooled + prior_pixels * base) / (n_all + prior_pixels) if n_all + prior_pixels > 0 else base
        for k in range(N_BINS):
            n = stats.n[b, k]
            best = simplex_weights(stats.gram[b, k]) if n > 0 else pooled
            weights[b, k] = (n * best + prior_pixels * pooled) / (n + prior_pixels) if n + prior_pixels > 0 else pooled
    sse = stats.sse(weights)
    mse = np.full(stats.n.shape, np.nan)
    np.divide(sse, stats.n, out=mse, where=stats.n > 0)
    for b in range(bands):
        have = np.flatnonzero(stats.n[b] > 0)
        if have.size:
            mse[b] = mse[b][have[np.maximum(np.searchsorted(have, np.arange(N_BINS), side="right") - 1, 0)]]
    return GuidedWeights(weights, mse, stats.n.copy())
