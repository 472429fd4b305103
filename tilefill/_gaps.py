"""Gap masks: simulated Landsat-7 SLC-off stripes, exact-fraction stripes, and the paper's masks.

Every mask is a boolean ``(H, W)`` array with ``True`` marking a gap (a pixel to fill).
Files on disk follow the paper's data: single-band uint8, ``1`` = gap, ``0`` = known.

Geometry conventions shared by the simulators
---------------------------------------------
* Rows grow downwards, columns eastwards. A positive ``angle_deg`` tilts the stripes down
  to the east (row increases by ``tan(angle)`` per column), as in the paper's image and in
  descending Landsat-7 scenes (about 1 px down per 6-12 px across).
* ``period`` and stripe widths are measured vertically (along a column), which is how a
  gap looks to anyone inspecting a column of pixels and how the USGS describes them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = [
    "PAPER_MASKS",
    "load_paper_image",
    "load_paper_mask",
    "paper_data_dir",
    "slc_off_mask",
    "stripe_mask_with_fraction",
    "write_mask",
]

# Landsat-7 leaves the middle ~22 km of a ~185 km swath gap-free: there the gap between
# scans is narrower than a pixel and ground processing fills it. As a fraction of the width:
_GAP_FREE_FRACTION = 22.0 / 185.0
# Forward and reverse scans do not meet symmetrically, so the gap after a forward scan sits
# a little off the gap after a reverse scan: odd stripes are shifted down by this many rows.
_SCAN_SHIFT = 2.0
# Scene tilt drawn when the caller gives none (degrees), the range seen in Landsat-7 scenes.
_ANGLE_RANGE = (8.0, 15.0)
# Rows per block when building a mask: bounds the float64 temporaries (~4M pixels each).
_BLOCK_PIXELS = 1 << 22


def _check_shape(shape) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (height, width), got {shape!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"shape must be positive, got {shape!r}")
    return h, w


def _draw_angle(rng: np.random.Generator, angle_deg: float | None) -> float:
    # Always consume the draw so that the rest of the random stream (phase, jitter) does not
    # depend on whether the caller fixed the angle.
    drawn = float(rng.uniform(*_ANGLE_RANGE))
    if angle_deg is None:
        return drawn
    angle = float(angle_deg)
    if not -45.0 < angle < 45.0:
        raise ValueError(f"angle_deg must be within (-45, 45) degrees, got {angle_deg!r}")
    return angle


def slc_off_mask(
    shape,
    *,
    seed: int = 0,
    period: float = 33.0,
    angle_deg: float | None = None,
    max_width: float = 14.0,
    scene_width: int | None = None,
    x_offset: int = 0,
    jitter: int = 1,
) -> np.ndarray:
    """Simulate Landsat-7 SLC-off gaps (scan-line-corrector failure stripes).

    Stripes run across the image along the scan, tilted by ``angle_deg`` and repeating every
    ``period`` rows. Their height (measured along a column) grows linearly from 0 at the
    scene's centre line to ``max_width`` at the east and west edges; the middle ~12 % of the
    scene width (~22 km of a 185 km swath) has no gaps at all. Over a full scene with the
    defaults about 21 % of the pixels are gaps (the USGS quotes ~22 %). Odd and even stripes
    (gaps after forward and reverse scans) are offset by 2 rows, and each stripe's top and
    bottom edges are moved by a random whole number of pixels in ``[-jitter, jitter]``.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` of the mask.
    seed : int, default 0
        Seed of ``numpy.random.default_rng``; the same arguments always give the same mask.
    period : float, default 33.0
        Rows from one stripe to the next (one forward + reverse scan pair, 32-35 rows).
    angle_deg : float, optional
        Tilt of the stripes in degrees, positive = down to the east, within (-45, 45).
        Drawn uniformly from [8, 15] with the seeded generator when omitted.
    max_width : float, default 14.0
        Stripe height in rows at the east/west edges of the full scene.
    scene_width : int, optional
        Width in pixels of the full scene the mask is cut from (default: ``W``, the mask is
        the whole scene). With ``x_offset`` this simulates a crop: a crop's mask equals the
        same columns of the full-scene mask made with the same seed, angle and height.
    x_offset : int, default 0
        Column of the full scene where the mask's first column sits.
    jitter : int, default 1
        Largest random shift, in pixels, of each stripe's edges (0 for clean stripes).

    Returns
    -------
    numpy.ndarray of bool, shape (H, W)
        ``True`` where a pixel is a gap.

    Examples
    --------
    >>> m = slc_off_mask((2000, 2000), seed=1)
    >>> round(float(m.mean()), 2)  # the USGS quotes ~22 % for a full scene
    0.21
    >>> crop = slc_off_mask((256, 256), seed=1, scene_width=7000, x_offset=6000)
    >>> crop.shape
    (256, 256)
    """
    h, w = _check_shape(shape)
    period = float(period)
    if not period > 0:
        raise ValueError(f"period must be positive, got {period!r}")
    if max_width < 0:
        raise ValueError(f"max_width must be >= 0, got {max_width!r}")
    if jitter < 0 or int(jitter) != jitter:
        raise ValueError(f"jitter must be a whole number >= 0, got {jitter!r}")
    jitter = int(jitter)
    scene_w = w if scene_width is None else int(scene_width)
    x_offset = int(x_offset)
    if x_offset < 0 or x_offset + w > scene_w:
        raise ValueError(
            f"a crop {w} px wide at column {x_offset} does not fit in a scene {scene_w} px wide"
        )

    rng = np.random.default_rng(seed)
    slope = np.tan(np.deg2rad(_draw_angle(rng, angle_deg)))
    phase = float(rng.uniform(0.0, period))

    # Stripe k's centre line in column xs is row k*period + slope*xs + phase (+ scan shift).
    # The jitter table covers every stripe that touches the full scene, so a crop draws the
    # same numbers as the full scene and stays consistent with it.
    xs_scene_max = scene_w - 1
    lows = (-period - max(slope * xs_scene_max, 0.0) - phase) / period
    highs = (h + period - min(slope * xs_scene_max, 0.0) - phase) / period
    k_min = int(np.floor(lows)) - 1
    n_k = int(np.ceil(highs)) + 1 - k_min + 1
    edges = rng.integers(-jitter, jitter + 1, size=(n_k, 2)) if jitter else np.zeros((n_k, 2), int)
    top_jit = edges[:, 0].astype(np.float64)
    bot_jit = edges[:, 1].astype(np.float64)

    xs = np.arange(x_offset, x_offset + w, dtype=np.float64)
    centre_col = (scene_w - 1) / 2.0
    dist = np.abs(xs - centre_col) / (scene_w / 2.0)  # 0 at the centre line, ~1 at the edges
    half = 0.5 * max_width * dist
    visible = dist >= _GAP_FREE_FRACTION  # sub-pixel gaps near the centre are filled on the ground
    half = np.where(visible, half, 0.0)
    line = slope * xs + phase  # row of stripe 0's centre in each column

    out = np.empty((h, w), dtype=bool)
    rows_per_block = max(1, _BLOCK_PIXELS // w)
    for r0 in range(0, h, rows_per_block):
        r1 = min(h, r0 + rows_per_block)
        y = np.arange(r0, r1, dtype=np.float64)[:, None]
        rel = y - line  # rows below stripe 0's centre line
        # Nearest stripe, allowing for the odd-stripe shift so each pixel meets its own stripe.
        k = np.rint((rel - 0.5 * _SCAN_SHIFT) / period).astype(np.int64)
        centre = k * period + (k & 1) * _SCAN_SHIFT
        off = rel - centre  # rows from the (shifted) centre line of stripe k
        idx = k - k_min
        top = -half - np.where(visible, top_jit[idx], 0.0)
        bot = half + np.where(visible, bot_jit[idx], 0.0)
        # Half-open interval so a stripe of height w covers w rows (not w + 1).
        np.logical_and(off >= top, off < bot, out=out[r0:r1])
    return out


def stripe_mask_with_fraction(
    shape,
    fraction: float,
    *,
    seed: int = 0,
    period: float = 33.0,
    angle_deg: float | None = None,
) -> np.ndarray:
    """Tilted stripes of constant width hiding exactly ``fraction`` of the pixels.

    This is the kind of mask behind the paper's experiment ("x % hidden"), made so that the
    gap fraction is what its name says: the mask has exactly ``round(fraction * H * W)`` gap
    pixels. Each pixel gets its distance from the nearest stripe's centre line (measured
    along the column); the pixels closest to a centre line become gaps, with ties broken by
    position (row-major order), so the count is exact and the result deterministic.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` of the mask.
    fraction : float
        Share of pixels to hide, strictly between 0 and 1 (e.g. 0.03, 0.06, 0.15, 0.35, 0.55).
    seed : int, default 0
        Seed for the stripes' vertical position (and the tilt when ``angle_deg`` is None).
    period : float, default 33.0
        Rows from one stripe to the next; stripes are about ``fraction * period`` rows tall.
    angle_deg : float, optional
        Tilt in degrees, positive = down to the east; drawn from [8, 15] when omitted.

    Returns
    -------
    numpy.ndarray of bool, shape (H, W)
        ``True`` where a pixel is a gap.

    Raises
    ------
    ValueError
        If ``fraction`` is not strictly between 0 and 1.

    Examples
    --------
    >>> m = stripe_mask_with_fraction((128, 128), 0.15, seed=3)
    >>> int(m.sum()) == round(0.15 * 128 * 128)
    True
    """
    h, w = _check_shape(shape)
    fraction = float(fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be strictly between 0 and 1, got {fraction!r}")
    period = float(period)
    if not period > 0:
        raise ValueError(f"period must be positive, got {period!r}")

    rng = np.random.default_rng(seed)
    slope = np.tan(np.deg2rad(_draw_angle(rng, angle_deg)))
    phase = float(rng.uniform(0.0, period))

    # Position in stripe periods; in-place steps keep a full scene to one 8-byte temporary.
    y = np.arange(h, dtype=np.float64)[:, None] / period
    x = (slope * np.arange(w, dtype=np.float64)[None, :] + phase) / period
    dist = np.subtract(y, x)
    dist -= np.rint(dist)
    np.abs(dist, out=dist)  # 0 on a centre line, 0.5 half-way between two
    dist = dist.ravel()

    n_gap = int(round(fraction * h * w))
    out = np.zeros(h * w, dtype=bool)
    if n_gap >= h * w:
        out[:] = True
    elif n_gap > 0:
        # Exact quantile: everything strictly below the n-th smallest distance is a gap, and
        # pixels tied with it are taken in row-major order until the count is met.
        cut = np.partition(dist, n_gap - 1)[n_gap - 1]
        below = dist < cut
        out[below] = True
        tied = np.flatnonzero(dist == cut)
        out[tied[: n_gap - int(below.sum())]] = True
    return out.reshape(h, w)


# ---------------------------------------------------------------------------------------------
# The paper's data (Landsat-7 bands 1-4 and the masks digitised from its figures)

#: The paper's masks by the gap fraction they really have (6.0 %, 12.6 %, 26.3 %); the file
#: names carry the paper's labels (3 %, 15 %, 55 % "hidden").
PAPER_MASKS = {
    "paper6": "mask_3hid_digitized_gap1.tif",
    "paper13": "mask_15hid_digitized_gap1.tif",
    "paper26": "mask_55hid_digitized_gap1.tif",
}
PAPER_IMAGE = "fields_1-4_bands.tif"


def paper_data_dir() -> Path:
    """Folder holding the paper's image and masks.

    ``$TILEFILL_PAPER_DATA`` when set, else ``shared/data/paper`` beside the repository
    (``<repo>/../shared/data/paper``).

    Returns
    -------
    pathlib.Path
        An existing folder.

    Raises
    ------
    FileNotFoundError
        If the folder does not exist.

    Examples
    --------
    >>> sorted(p.name for p in paper_data_dir().glob("*.tif"))  # doctest: +SKIP
    ['fields_1-4_bands.tif', 'mask_15hid_digitized_gap1.tif', ...]
    """
    env = os.environ.get("TILEFILL_PAPER_DATA")
    folder = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "paper"
    if not folder.is_dir():
        how = "TILEFILL_PAPER_DATA" if env else "the default location"
        raise FileNotFoundError(
            f"paper data folder {folder} ({how}) does not exist; "
            "set TILEFILL_PAPER_DATA to the folder holding fields_1-4_bands.tif"
        )
    return folder


def load_paper_mask(name: str) -> np.ndarray:
    """Read one of the paper's gap masks.

    Parameters
    ----------
    name : {"paper6", "paper13", "paper26"}
        Key of :data:`PAPER_MASKS`; the number is the mask's true gap percentage.

    Returns
    -------
    numpy.ndarray of bool, shape (397, 396)
        ``True`` where a pixel is a gap (the file stores 1 = gap).

    Examples
    --------
    >>> m = load_paper_mask("paper26")  # doctest: +SKIP
    >>> round(float(m.mean()), 3)  # doctest: +SKIP
    0.263
    """
    import rasterio

    if name not in PAPER_MASKS:
        raise ValueError(f"unknown paper mask {name!r}; choose one of {sorted(PAPER_MASKS)}")
    with rasterio.open(paper_data_dir() / PAPER_MASKS[name]) as src:
        return src.read(1) == 1


def load_paper_image() -> tuple[np.ndarray, dict]:
    """Read the paper's image: Landsat-7 ETM+ bands 1-4 (blue, green, red, NIR), uint8 DN.

    Returns
    -------
    image : numpy.ndarray of uint8, shape (4, 397, 396)
    profile : dict
        The raster's rasterio profile (crs, transform, ...), for writing results beside it.

    Examples
    --------
    >>> img, profile = load_paper_image()  # doctest: +SKIP
    >>> img.shape, str(profile["crs"])  # doctest: +SKIP
    ((4, 397, 396), 'EPSG:32610')
    """
    import rasterio

    with rasterio.open(paper_data_dir() / PAPER_IMAGE) as src:
        return src.read(), dict(src.profile)


def write_mask(path, mask, *, like=None) -> Path:
    """Write a gap mask as a single-band uint8 GeoTIFF (1 = gap, 0 = known).

    The file is written under a temporary name in the same folder and renamed into place,
    so ``path`` is either the previous file or the complete new one, never half-written.

    Parameters
    ----------
    path : str or os.PathLike
        Output file.
    mask : array_like of bool, shape (H, W)
        ``True`` (or non-zero) where a pixel is a gap.
    like : str or os.PathLike, optional
        A raster on the same grid whose CRS and transform the mask takes. Its height and
        width must equal the mask's.

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> write_mask("mask.tif", slc_off_mask((256, 256)), like="scene.tif")  # doctest: +SKIP
    PosixPath('mask.tif')
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    import warnings

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    h, w = mask.shape
    path = Path(path)
    profile = {
        "driver": "GTiff",
        "dtype": "uint8",
        "count": 1,
        "height": h,
        "width": w,
        "compress": "deflate",  # stripes compress to almost nothing
    }
    if h >= 256 and w >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    if like is not None:
        with rasterio.open(like) as ref:
            if (ref.height, ref.width) != (h, w):
                raise ValueError(
                    f"mask is {h}x{w} but {like} is {ref.height}x{ref.width}; "
                    "a mask can only take the grid of a raster of the same size"
                )
            profile.update(crs=ref.crs, transform=ref.transform)

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # A mask without `like` has no georeferencing on purpose.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write((mask != 0).astype(np.uint8), 1)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def simulate_mask_like(like, output, *, fraction: float | None = None, seed: int = 0, angle_deg: float | None = None,
                       scene_width: int | None = None, x_offset: int = 0, overwrite: bool = False) -> np.ndarray:
    """Write a simulated gap mask on the grid of the raster ``like`` (the ``simulate-gaps`` command).

    SLC-off stripes by default; with ``fraction``, tilted stripes hiding exactly that share.

    Examples
    --------
    >>> mask = simulate_mask_like("scene.tif", "gaps.tif", fraction=0.15, seed=1)  # doctest: +SKIP
    """
    import rasterio
    from rasterio.errors import RasterioIOError

    from tilefill._errors import TilefillError

    like, output = Path(like), Path(output)
    if output.exists() and not overwrite:
        raise TilefillError(f"output {output} exists; pass --overwrite to replace it")
    try:
        with rasterio.open(like) as ds:
            shape = (ds.height, ds.width)
    except RasterioIOError:
        raise TilefillError(f"not a raster GDAL can read: {like}") from None
    try:
        if fraction is not None:
            mask = stripe_mask_with_fraction(shape, fraction, seed=seed, angle_deg=angle_deg)
        else:
            mask = slc_off_mask(shape, seed=seed, angle_deg=angle_deg, scene_width=scene_width, x_offset=x_offset)
    except ValueError as exc:
        raise TilefillError(str(exc)) from None
    write_mask(output, mask, like=like)
    return mask
