"""Read and mask: open a scene, read it in windows, and decide which pixels are gaps.

A scene is a multi-band GeoTIFF or a Landsat product folder (``*_B1.TIF``, ``*_B2.TIF``, ...,
with optional ``gap_mask/*_GM_B*.TIF``). It is only ever read window by window.

What is a gap, and what is the footprint
----------------------------------------
* A pixel *carries data* in a band unless it is nodata there (the nodata value, the internal
  or external GDAL mask, NaN). Landsat product folders whose bands declare no nodata use 0,
  the USGS L1 fill value.
* The *footprint* is the convex hull of the pixels that carry data in any band (or that an
  explicit ``--mask`` flags as gaps, which lie inside the scene by definition). A rotated L1
  scene is a convex parallelogram inside a nodata collar; SLC-off stripes run across it and
  touch the collar, so a flood fill from the border would leak into them, while the hull
  spans them. Pixels outside the footprint are collar: never fitted, nodata in the output.
  ``footprint="full"`` takes the whole raster instead. One case no data can settle: where a
  stripe runs along the footprint's top or bottom edge, the stripe's sliver beyond the last
  data pixels is taken as collar; an explicit ``--mask`` that flags it settles it.
* A *gap* is a pixel inside the footprint that carries no data, or that an explicit mask
  raster (nonzero = gap) or a Landsat gap mask (0 = gap) flags.
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from tilefill import TilefillError

# GDAL's block cache while a scene is open (default: 5% of RAM). Strips are read and written once,
# so a larger cache only grows memory with the scene: 1.2 GB peak instead of 0.6 on 8000 x 7000 x 4
GDAL_CACHE_BYTES = 256 * 2**20
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
_BAND_FILE = re.compile(r"^(?P<stem>.+)_B(?P<band>\d+)\.tiff?$", re.IGNORECASE)
_GM_FILE = re.compile(r"^(?P<stem>.+)_GM_B(?P<band>\d+)\.tiff?(?P<gz>\.gz)?$", re.IGNORECASE)


@dataclass(frozen=True)
class SceneInfo:
    """What the output must keep of the input: size, dtype, nodata and georeferencing."""

    height: int
    width: int
    dtype: str
    nodata: float | None
    crs_wkt: str | None
    transform: tuple[float, ...]
    band_names: tuple[str, ...]
    tags: dict = field(default_factory=dict, hash=False)
    band_tags: tuple[dict, ...] = field(default=(), hash=False)
    sources: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        return len(self.band_names)

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform[:6])

    @property
    def crs(self):
        return rasterio.crs.CRS.from_wkt(self.crs_wkt) if self.crs_wkt else None

    def to_attrs(self) -> dict:
        return {
            "height": self.height, "width": self.width, "dtype": self.dtype,
            "nodata": None if self.nodata is None or np.isnan(self.nodata) else self.nodata,
            "nodata_is_nan": self.nodata is not None and bool(np.isnan(self.nodata)),
            "crs_wkt": self.crs_wkt, "transform": list(self.transform), "band_names": list(self.band_names),
            "tags": self.tags, "band_tags": list(self.band_tags), "sources": list(self.sources),
        }

    @classmethod
    def from_attrs(cls, a: dict) -> "SceneInfo":
        nodata = float("nan") if a.get("nodata_is_nan") else a["nodata"]
        return cls(a["height"], a["width"], a["dtype"], nodata, a["crs_wkt"], tuple(a["transform"]),
                   tuple(a["band_names"]), dict(a["tags"]), tuple(a["band_tags"]), tuple(a["sources"]))


@dataclass(frozen=True)
class _BandSource:
    path: str
    index: int  # 1-based band index inside that file
    name: str


class Scene:
    """An open scene: windowed reads of its bands, their data masks and gap flags.

    Use :func:`open_scene`; close it (or use it as a context manager) when done.
    """

    def __init__(self, bands: Sequence[_BandSource], info: SceneInfo, *, gap_flags: Sequence[_BandSource] = (),
                 flags_nonzero_is_gap: bool = True, zero_is_nodata: bool = False):
        self.bands = tuple(bands)
        self.info = info
        self._flags = tuple(gap_flags)
        self._flags_nonzero_is_gap = flags_nonzero_is_gap
        self._zero_is_nodata = zero_is_nodata
        # an explicit --mask marks gaps inside the scene; Landsat GM files do not say what the collar is
        self.flags_mark_footprint = flags_nonzero_is_gap
        self._stack = ExitStack()
        # the output is written while the scene is open, so this covers writing too
        self._stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES))
        self._open: dict[str, rasterio.DatasetReader] = {}

    def _ds(self, path: str) -> rasterio.DatasetReader:
        if path not in self._open:
            self._open[path] = self._stack.enter_context(rasterio.open(path))
        return self._open[path]

    def close(self) -> None:
        self._stack.close()
        self._open.clear()

    def __enter__(self) -> "Scene":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.info.count, self.info.height, self.info.width

    def read(self, window: Window) -> np.ndarray:
        """Pixel values of every band in ``window``, in the input's dtype: (bands, h, w)."""
        return np.stack([self._ds(b.path).read(b.index, window=window) for b in self.bands])

    def has_data(self, window: Window, values: np.ndarray) -> np.ndarray:
        """Where each band carries data (not nodata, not masked, not NaN): bool (bands, h, w)."""
        out = np.empty(values.shape, dtype=bool)
        for i, b in enumerate(self.bands):
            ds = self._ds(b.path)
            # GDAL's mask covers the nodata value, internal/external masks and alpha bands
            out[i] = ds.read_masks(b.index, window=window) > 0
        if values.dtype.kind == "f":
            out &= np.isfinite(values)
        if self._zero_is_nodata:
            out &= values != 0
        return out

    def flagged(self, window: Window) -> np.ndarray | None:
        """Gaps flagged by a mask raster or Landsat gap masks: bool (bands or 1, h, w), or None."""
        if not self._flags:
            return None
        raw = np.stack([self._ds(f.path).read(f.index, window=window) for f in self._flags])
        return raw != 0 if self._flags_nonzero_is_gap else raw == 0

    def strips(self, height: int) -> Iterator[Window]:
        """Full-width windows of ``height`` rows, top to bottom."""
        for y in range(0, self.info.height, height):
            yield Window(0, y, self.info.width, min(height, self.info.height - y))


def _open_checked(path: Path) -> rasterio.DatasetReader:
    try:
        return rasterio.open(path)
    except RasterioIOError:
        raise TilefillError(f"not a raster GDAL can read: {path}") from None


def _parse_bands(bands: Sequence[int] | str | None) -> list[int] | None:
    if bands is None or bands == "":
        return None
    if isinstance(bands, str):
        try:
            bands = [int(b) for b in bands.replace(" ", "").split(",") if b]
        except ValueError:
            raise TilefillError(f"--bands takes band numbers separated by commas, e.g. 1,2,3,4; not {bands!r}") from None
    bands = [int(b) for b in bands]
    if len(set(bands)) != len(bands):
        raise TilefillError(f"a band is selected twice in {bands}")
    return bands


def _geotiff_bands(path: Path, bands: list[int] | None):
    with _open_checked(path) as ds:
        indexes = bands or list(ds.indexes)
        bad = [b for b in indexes if not 1 <= b <= ds.count]
        if bad:
            raise TilefillError(f"{path.name} has bands 1-{ds.count}; cannot select {bad}")
        dtypes = {ds.dtypes[i - 1] for i in indexes}
        # NaN != NaN: compare nodata values by their text so NaN matches NaN
        nodatas = {repr(ds.nodatavals[i - 1]): ds.nodatavals[i - 1] for i in indexes}
        names = [ds.descriptions[i - 1] or f"band_{i}" for i in indexes]
        info = dict(height=ds.height, width=ds.width, dtype=dtypes.pop() if len(dtypes) == 1 else None,
                    nodata=next(iter(nodatas.values())) if len(nodatas) == 1 else "mixed", crs=ds.crs,
                    transform=ds.transform, tags=ds.tags(), band_tags=[ds.tags(i) for i in indexes])
    if info["dtype"] is None:
        raise TilefillError(f"{path.name}: the selected bands have different data types")
    if info["nodata"] == "mixed":
        raise TilefillError(f"{path.name}: the selected bands have different nodata values")
    return [_BandSource(str(path), i, n) for i, n in zip(indexes, names)], info, [str(path)]


def _landsat_bands(folder: Path, bands: list[int] | None):
    found = {}
    for f in sorted(folder.iterdir()):
        m = _BAND_FILE.match(f.name)
        if m and f.is_file():
            found.setdefault(int(m["band"]), f)
    if not found:
        raise TilefillError(f"{folder} holds no Landsat band files (*_B1.TIF, *_B2.TIF, ...)")
    shapes = {}
    for n, f in found.items():
        with _open_checked(f) as ds:
            shapes[n] = (ds.height, ds.width, ds.crs, ds.transform, ds.dtypes[0], ds.nodata)
    if bands is None:
        # Default: every band on the grid of the lowest band (B8 pan and odd-sized bands are left out)
        ref = shapes[min(shapes)]
        bands = [n for n in sorted(found) if shapes[n][:4] == ref[:4]]
    missing = [b for b in bands if b not in found]
    if missing:
        raise TilefillError(f"{folder} has no band file for band(s) {missing}; it has {sorted(found)}")
    first = shapes[bands[0]]
    for b in bands[1:]:
        h, w, crs, tr, dt, nd = shapes[b]
        if (h, w) != first[:2]:
            raise TilefillError(f"bands of different shape: B{bands[0]} is {first[0]}x{first[1]}, B{b} is {h}x{w}")
        if crs != first[2] or tr != first[3]:
            raise TilefillError(f"bands on different grids: B{b} has another CRS or transform than B{bands[0]}")
        if dt != first[4]:
            raise TilefillError(f"bands of different data types: B{bands[0]} is {first[4]}, B{b} is {dt}")
    with rasterio.open(found[bands[0]]) as ds:
        tags = ds.tags()
    info = dict(height=first[0], width=first[1], dtype=first[4], nodata=first[5], crs=first[2], transform=first[3],
                tags=tags, band_tags=[{} for _ in bands])
    sources = [_BandSource(str(found[b]), 1, f"B{b}") for b in bands]
    gm_dir = folder / "gap_mask"
    gm = {}
    if gm_dir.is_dir():
        for f in gm_dir.iterdir():
            m = _GM_FILE.match(f.name)
            if m:  # USGS ships them gzipped: GDAL reads them in place through /vsigzip/
                gm[int(m["band"])] = f"/vsigzip/{f}" if m["gz"] else str(f)
    flags = [_BandSource(gm[b], 1, f"GM_B{b}") for b in bands if b in gm]
    if flags and len(flags) != len(bands):
        raise TilefillError(f"{gm_dir} has gap masks for some selected bands but not all")
    return sources, info, [str(found[b]) for b in bands], flags


def open_scene(path: str | Path, *, bands: Sequence[int] | str | None = None, mask: str | Path | None = None) -> Scene:
    """Open a GeoTIFF or a Landsat product folder for windowed reading.

    Parameters
    ----------
    path : str or Path
        A raster GDAL reads (GeoTIFF, JPEG2000, ...), or a folder of ``*_B<n>.TIF`` files.
    bands : list of int or str, optional
        1-based band numbers (``"1,2,3,4"``); in a Landsat folder the numbers of the files.
    mask : str or Path, optional
        A raster of the scene's size, nonzero = gap; one band for all bands or one per band.

    Examples
    --------
    >>> with open_scene("scene.tif", bands="1,2,3") as scene:  # doctest: +SKIP
    ...     scene.shape
    (3, 7001, 8121)
    """
    path = Path(path)
    band_list = _parse_bands(bands)
    if not path.exists():
        raise TilefillError(f"scene not found: {path}")
    flags: list[_BandSource] = []
    zero_is_nodata = False
    if path.is_dir():
        sources, meta, files, flags = _landsat_bands(path, band_list)
        zero_is_nodata = meta["nodata"] is None
        if zero_is_nodata:
            meta["nodata"] = 0
        nonzero_is_gap = False  # Landsat gap masks: 0 = gap
    else:
        sources, meta, files = _geotiff_bands(path, band_list)
        nonzero_is_gap = True
    if str(meta["dtype"]) not in SUPPORTED_DTYPES:
        raise TilefillError(f"unsupported data type {meta['dtype']}; supported: {', '.join(SUPPORTED_DTYPES)}")
    if mask is not None:
        mask = Path(mask)
        if not mask.exists():
            raise TilefillError(f"mask not found: {mask}")
        with _open_checked(mask) as ds:
            if (ds.height, ds.width) != (meta["height"], meta["width"]):
                raise TilefillError(
                    f"mask {mask.name} is {ds.height}x{ds.width} px but the scene is {meta['height']}x{meta['width']}")
            if ds.count not in (1, len(sources)):
                raise TilefillError(f"mask {mask.name} has {ds.count} bands; give 1, or one per selected band ({len(sources)})")
            flags = [_BandSource(str(mask), i, f"mask_{i}") for i in ds.indexes]
        nonzero_is_gap = True
    crs = meta["crs"]
    info = SceneInfo(
        height=meta["height"], width=meta["width"], dtype=str(meta["dtype"]), nodata=meta["nodata"],
        crs_wkt=crs.to_wkt() if crs else None, transform=tuple(meta["transform"])[:6],
        band_names=tuple(s.name for s in sources), tags=dict(meta["tags"]),
        band_tags=tuple(dict(t) for t in meta["band_tags"]), sources=tuple(files),
    )
    return Scene(sources, info, gap_flags=flags, flags_nonzero_is_gap=nonzero_is_gap, zero_is_nodata=zero_is_nodata)


# --- footprint -------------------------------------------------------------------------------------

def _hull(points: np.ndarray) -> np.ndarray:
    """Convex hull of (x, y) points, counter-clockwise (Andrew's monotone chain)."""
    pts = np.unique(points, axis=0)
    if len(pts) < 3:
        return pts
    def cross(o, a, b) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def half(seq):
        out: list = []
        for p in seq:
            while len(out) >= 2 and cross(out[-2], out[-1], p) <= 0:
                out.pop()
            out.append(p)
        return out
    lower, upper = half(pts), half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def footprint_extents(first: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row column range ``[left, right]`` of the convex hull of the data pixels.

    ``first``/``last`` give, for each row, the first and last column carrying data (-1 where
    a row carries none). Rows outside the hull get ``left > right``.
    """
    rows = np.flatnonzero(first >= 0)
    height = len(first)
    left = np.full(height, np.iinfo(np.int64).max, dtype=np.int64)
    right = np.full(height, -1, dtype=np.int64)
    if not len(rows):
        return left, right
    pts = np.concatenate([np.stack([first[rows], rows], 1), np.stack([last[rows], rows], 1)]).astype(np.float64)
    hull = _hull(pts)
    if len(hull) < 3:  # a line or a point: the data rows themselves
        left[rows], right[rows] = first[rows], last[rows]
        return left, right
    lo = np.full(height, np.inf)
    hi = np.full(height, -np.inf)
    for (x0, y0), (x1, y1) in zip(hull, np.roll(hull, -1, axis=0)):
        ya, yb = int(np.ceil(min(y0, y1))), int(np.floor(max(y0, y1)))
        ys = np.arange(ya, yb + 1)
        xs = np.full(len(ys), x0, dtype=np.float64) if y1 == y0 else x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
        np.minimum.at(lo, ys, xs)
        np.maximum.at(hi, ys, xs)
    inside = np.isfinite(lo)
    # a hair of tolerance so hull edges through pixel centres include those pixels
    left[inside] = np.ceil(lo[inside] - 1e-6).astype(np.int64)
    right[inside] = np.floor(hi[inside] + 1e-6).astype(np.int64)
    return left, right


def footprint_window(left: np.ndarray, right: np.ndarray, y0: int, height: int, width: int) -> np.ndarray:
    """The footprint of rows ``[y0, y0+height)`` as a bool (height, width) array."""
    cols = np.arange(width)
    l, r = left[y0:y0 + height, None], right[y0:y0 + height, None]
    return (cols >= l) & (cols <= r)
