"""Read and mask: open a scene, read it in windows, and decide which pixels are gaps.

A scene is a multi-band GeoTIFF or a Landsat product folder, known by its metadata (see
``tilefill._landsat``: which band files, their names, gap masks, QA_PIXEL). It is only ever
read window by window.

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
  raster (nonzero = gap), a Landsat gap mask (0 = gap) or, with ``mask_qa``, a QA_PIXEL bit
  flags. An explicit mask replaces the product's gap masks; QA bits add to either.
* In a Landsat Level-2 product, QA_PIXEL's fill bit (bit 0) is nodata in every band.

What must line up
-----------------
A mask, a Landsat gap mask and a QA band are read pixel for pixel against the bands, so each must
be on the scene's grid: its size, its CRS and its transform, each corner within
``GRID_TOLERANCE_PX`` of the scene's; else it is refused in one line that gives both. One that
carries no georeferencing at all (or a scene that carries none) is matched by its size alone,
and :attr:`Scene.notes` says so. A read that fails (a truncated or damaged file) raises
:class:`~tilefill._errors.InputReadError` naming the file, the band and the window.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from tilefill._errors import InputReadError, TilefillError
from tilefill._landsat import MTL_FILE, QA_FILL_BIT, LandsatBand, LandsatProduct, read_product, split_tokens
from tilefill._remote import RemotePath, as_path, gdal_path, is_url, unreadable

# GDAL's block cache while a scene is open (default: 5% of RAM). Strips are read and written once,
# so a larger cache only grows memory with the scene: 1.2 GB peak instead of 0.6 on 8000 x 7000 x 4
GDAL_CACHE_BYTES = 256 * 2**20
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
_VSIGZIP = "/vsigzip/"
# how far a mask's, gap mask's or QA band's corners may lie from the scene's and still be read pixel for pixel
GRID_TOLERANCE_PX = 0.01


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


@dataclass(frozen=True)
class _FlagSet:
    """Rasters that flag pixels, one for every band or one per band, and the value that flags.

    ``rule``: ``"nonzero"`` (an explicit mask), ``"zero"`` (Landsat gap masks) or ``"bits"``
    (any of ``bits`` set: QA_PIXEL).
    """

    sources: tuple[_BandSource, ...]
    rule: str
    bits: int = 0

    def evaluate(self, raw: np.ndarray) -> np.ndarray:
        if self.rule == "nonzero":
            return raw != 0
        if self.rule == "zero":
            return raw == 0
        return (raw & self.bits) != 0

    def describe(self) -> str:
        bits = f"={self.bits:#x}" if self.rule == "bits" else ""
        return f"{','.join(s.name for s in self.sources)}:{self.rule}{bits}"


class Scene:
    """An open scene: windowed reads of its bands, their data masks and gap flags.

    Use :func:`open_scene`; close it (or use it as a context manager) when done. ``product`` is
    the Landsat product it was read from, or None.
    """

    def __init__(self, bands: Sequence[_BandSource], info: SceneInfo, *, gap_flags: Sequence[_FlagSet] = (),
                 nodata_flags: Sequence[_FlagSet] = (), zero_is_nodata: bool = False,
                 flags_mark_footprint: bool = False, product: LandsatProduct | None = None,
                 warp_to: SceneInfo | None = None, notes: Sequence[str] = ()):
        self.bands = tuple(bands)
        self.info = info
        # another scene's grid that every raster is read on (a guide of another grid or CRS), else None
        self.warp_to = warp_to
        self._flags = tuple(gap_flags)
        self._nodata_flags = tuple(nodata_flags)
        self._zero_is_nodata = zero_is_nodata
        # an explicit --mask marks gaps inside the scene; Landsat GM files do not say what the collar is
        self.flags_mark_footprint = flags_mark_footprint
        self.product = product
        # one line each on how an input was matched to the scene (a mask without georeferencing), for the log
        self.notes = tuple(notes)
        self._stack = ExitStack()
        # the output is written while the scene is open, so this covers writing too
        self._stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES))
        self._open: dict[str, rasterio.DatasetReader] = {}

    def _ds(self, path: str) -> rasterio.DatasetReader:
        if path not in self._open:
            with _reading(path, "opening it"):  # opened again after the scene was checked: it may have changed
                ds = self._stack.enter_context(rasterio.open(gdal_path(path)))
                if self.warp_to is not None:
                    grid = self.warp_to
                    # pixel values are interpolated, flags (gap masks, QA bits) are taken as they are; the alpha
                    # band marks what lies beyond the raster, which a source without nodata would not
                    values = any(b.path == path for b in self.bands)
                    ds = self._stack.enter_context(WarpedVRT(
                        ds, crs=grid.crs, transform=grid.affine, width=grid.width, height=grid.height,
                        add_alpha=True, resampling=Resampling.bilinear if values else Resampling.nearest))
            self._open[path] = ds
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

    @property
    def input_files(self) -> list[str]:
        """Every file the scene's pixels and gaps come from: bands, masks, QA, then the product metadata.

        Plain paths (``/vsigzip/`` removed), each once, in that order: what a run key hashes.
        """
        paths = [b.path for b in self.bands]
        paths += [s.path for f in self._flags + self._nodata_flags for s in f.sources]
        paths += [str(p) for p in (self.product.metadata_files if self.product else ())]
        return list(dict.fromkeys(_plain(p) for p in paths))

    @property
    def gap_rules(self) -> list[str]:
        """How each flag raster decides gaps and nodata, as text (for the run key)."""
        return [f.describe() for f in self._flags] + [f"nodata:{f.describe()}" for f in self._nodata_flags]

    def _read(self, source: _BandSource, window: Window, *, masks: bool = False) -> np.ndarray:
        """One band's values (or GDAL's mask of it) in ``window``; a failed read names the file and the window."""
        ds = self._ds(source.path)
        with _reading(source.path, f"band {source.index}{' mask' if masks else ''}", window):
            return ds.read_masks(source.index, window=window) if masks else ds.read(source.index, window=window)

    def _flag(self, flags: _FlagSet, window: Window) -> np.ndarray:
        raw = np.stack([self._read(s, window) for s in flags.sources])
        return flags.evaluate(raw)

    def read(self, window: Window) -> np.ndarray:
        """Pixel values of every band in ``window``, in the input's dtype: (bands, h, w).

        Raises :class:`~tilefill._errors.InputReadError` (the file, the band and the window) where a read fails.
        """
        return np.stack([self._read(b, window) for b in self.bands])

    def has_data(self, window: Window, values: np.ndarray) -> np.ndarray:
        """Where each band carries data (not nodata, not masked, not NaN): bool (bands, h, w)."""
        out = np.empty(values.shape, dtype=bool)
        beyond: dict[str, np.ndarray] = {}  # a warped view's alpha: what lies beyond the raster read
        for i, b in enumerate(self.bands):
            # GDAL's mask covers the nodata value, internal/external masks and alpha bands
            out[i] = self._read(b, window, masks=True) > 0
            if self.warp_to is not None:
                # a warped multi-band raster's band masks ignore the alpha GDAL adds: read it
                if b.path not in beyond:
                    alpha = _BandSource(b.path, self._ds(b.path).count, "alpha")
                    beyond[b.path] = self._read(alpha, window) == 0
                out[i] &= ~beyond[b.path]
        if values.dtype.kind == "f":
            out &= np.isfinite(values)
        if self._zero_is_nodata:
            out &= values != 0
        for flags in self._nodata_flags:  # QA_PIXEL fill: nodata in every band
            out &= ~self._flag(flags, window)
        return out

    def flagged(self, window: Window) -> np.ndarray | None:
        """Gaps flagged by a mask raster, Landsat gap masks or QA bits: bool (bands or 1, h, w), or None."""
        out = None
        for flags in self._flags:
            f = self._flag(flags, window)
            out = f if out is None else out | f
        return out

    def strips(self, height: int) -> Iterator[Window]:
        """Full-width windows of ``height`` rows, top to bottom."""
        for y in range(0, self.info.height, height):
            yield Window(0, y, self.info.width, min(height, self.info.height - y))


def _plain(path: str) -> str:
    return path[len(_VSIGZIP):] if path.startswith(_VSIGZIP) else path


def _gdal_reason(exc: Exception) -> str:
    """What GDAL said went wrong (rasterio's own message only points at it), in one line."""
    cause = exc.__cause__ or exc.__context__
    text = str(cause if isinstance(cause, CPLE_BaseError) else exc) or type(exc).__name__
    return " ".join(text.split())[:300]


@contextmanager
def _reading(path: str, what: str, window: Window | None = None):
    """Turn a failed read of an input file into one line: the file, what of it, and the window."""
    try:
        yield
    except (RasterioError, CPLE_BaseError) as exc:
        where = "" if window is None else (
            f" in rows {window.row_off}-{window.row_off + window.height - 1}, "
            f"columns {window.col_off}-{window.col_off + window.width - 1}")
        raise InputReadError(f"cannot read {_plain(path)}: {what}{where} ({_gdal_reason(exc)}); the file is "
                             "truncated, damaged or gone") from None


def _open_checked(path: Path | RemotePath | str, what: str = "") -> rasterio.DatasetReader:
    try:
        return rasterio.open(gdal_path(path))
    except (RasterioError, CPLE_BaseError):
        # by URL, say why: not found, access denied, no credentials, no answer from the endpoint
        why = unreadable(_plain(str(path))) if is_url(path) else None
        if why:
            raise TilefillError(f"cannot read {what + ' ' if what else ''}{_plain(str(path))} ({why})") from None
        raise TilefillError(f"not a raster GDAL can read: {what + ' ' if what else ''}{_plain(str(path))}") from None


def _parse_bands(bands: Sequence[int | str] | str | None) -> list[int] | None:
    tokens = split_tokens(bands)
    if tokens is None:
        return None
    try:
        numbers = [int(b) for b in tokens]
    except ValueError:
        raise TilefillError(f"--bands takes band numbers separated by commas, e.g. 1,2,3,4; not {','.join(tokens)!r} "
                            "(names such as blue select bands of a Landsat product folder)") from None
    if len(set(numbers)) != len(numbers):
        raise TilefillError(f"a band is selected twice in {numbers}")
    return numbers


def _geotiff_bands(path: Path | RemotePath, bands: list[int] | None):
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


def _has_georeferencing(crs, transform: Affine, gcps: bool = False) -> bool:
    # GDAL gives a raster without a geotransform the identity transform
    return crs is not None or not transform.is_identity or gcps


def _corner_offset(transform: Affine, height: int, width: int, scene: Affine) -> float:
    """The largest distance, in the scene's pixels, from a raster's corner to the scene's same corner."""
    try:
        to_scene = ~scene * transform
    except Exception:  # a degenerate scene transform (zero pixel size): nothing lines up with it
        return float("inf")
    corners = np.array([(0, 0), (width, 0), (0, height), (width, height)], dtype=np.float64)
    mapped = np.array([to_scene * (c, r) for c, r in corners])
    return float(np.max(np.abs(mapped - corners)))  # NaN where the transform holds one


def _describe_grid(crs, transform: Affine) -> str:
    name = crs.to_string()[:120] if crs is not None else "no CRS"
    return f"{name}, transform ({', '.join(f'{v:.10g}' for v in tuple(transform)[:6])})"


def _check_on_grid(ds, name: str, what: str, scene: dict, notes: list[str]) -> None:
    """A raster read pixel for pixel against the bands must be on their grid: its size, CRS and transform.

    One that carries no georeferencing (or a scene that carries none) is matched by its size alone,
    which ``notes`` records.
    """
    height, width = scene["height"], scene["width"]
    if (ds.height, ds.width) != (height, width):
        raise TilefillError(f"{what} {name} is {ds.height}x{ds.width} px but the scene is {height}x{width}")
    scene_crs, scene_tr = scene["crs"], Affine(*tuple(scene["transform"])[:6])
    gcps = bool(ds.gcps[0])
    if not _has_georeferencing(ds.crs, ds.transform, gcps):
        notes.append(f"{what} {name} carries no georeferencing: taken as on the scene's grid, its size "
                     f"({height}x{width} px) matching the scene's")
        return
    if not _has_georeferencing(scene_crs, scene_tr):
        notes.append(f"the scene carries no georeferencing: {what} {name} is taken as on its grid by its size "
                     f"({height}x{width} px) alone")
        return
    if gcps and ds.transform.is_identity:
        raise TilefillError(f"{what} {name} is georeferenced by ground control points only: warp it onto the "
                            f"scene's grid first (gdalwarp), so that its pixels line up with the scene's")
    offset = _corner_offset(ds.transform, height, width, scene_tr)
    if ds.crs != scene_crs or not offset <= GRID_TOLERANCE_PX:
        apart = f"; corners {offset:.4g} px apart" if ds.crs == scene_crs else ""
        raise TilefillError(
            f"{what} {name} is not on the scene's grid: it has {_describe_grid(ds.crs, ds.transform)}, the scene "
            f"{_describe_grid(scene_crs, scene_tr)}{apart} (it must share the scene's CRS and lie within "
            f"{GRID_TOLERANCE_PX} px of its corners)")


def _check_file_on_grid(path: str, what: str, scene: dict, notes: list[str]) -> None:
    name = Path(_plain(path)).name
    with _open_checked(path, what) as ds:
        _check_on_grid(ds, name, what, scene, notes)


def _product_bands(product: LandsatProduct, chosen: list[LandsatBand]):
    """Sources, metadata and files of the chosen bands, which must share one grid and dtype."""
    grids = {}
    for b in chosen:
        with _open_checked(b.path) as ds:
            grids[b.label] = (ds.height, ds.width, ds.crs, ds.transform, ds.dtypes[0], ds.nodata)
    first_label = chosen[0].label
    first = grids[first_label]
    for label, (h, w, crs, tr, dt, nd) in grids.items():
        if (h, w) != first[:2]:
            raise TilefillError(f"bands of different shape in {product.folder}: {first_label} is "
                                f"{first[0]}x{first[1]}, {label} is {h}x{w}")
        if crs != first[2] or tr != first[3]:
            raise TilefillError(f"bands on different grids in {product.folder}: {first_label} has "
                                f"{_describe_grid(first[2], first[3])}, {label} {_describe_grid(crs, tr)}")
        if dt != first[4]:
            raise TilefillError(f"bands of different data types in {product.folder}: {first_label} is {first[4]}, "
                                f"{label} is {dt}")
    with rasterio.open(gdal_path(chosen[0].path)) as ds:
        tags = ds.tags()
    info = dict(height=first[0], width=first[1], dtype=first[4], nodata=first[5], crs=first[2], transform=first[3],
                tags={**tags, **product.tags()}, band_tags=[{"LANDSAT_BAND": b.label, **b.tags} for b in chosen])
    sources = [_BandSource(str(b.path), 1, b.name) for b in chosen]
    return sources, info, [str(b.path) for b in chosen]


def _product_flags(product: LandsatProduct, chosen: list[LandsatBand], scene: dict,
                   mask_qa: list[str] | None, notes: list[str]) -> tuple[list[_FlagSet], list[_FlagSet]]:
    """(gap flag sets, nodata flag sets) of a product: gap masks, QA_PIXEL's chosen bits, QA_PIXEL fill."""
    gap, nodata = [], []
    gm = [product.gap_mask(b.key) for b in chosen]
    if any(gm):
        if not all(gm):
            have = ", ".join(b.label for b, g in zip(chosen, gm) if g)
            raise TilefillError(f"{product.folder} has gap masks for some selected bands but not all (only {have})")
        for g in gm:
            _check_file_on_grid(g, "gap mask", scene, notes)
        gap.append(_FlagSet(tuple(_BandSource(g, 1, f"GM_{b.label}") for g, b in zip(gm, chosen)), "zero"))
    bits = product.qa_bits(mask_qa)
    qa = product.qa_pixel
    if qa is not None and (bits or product.level2):
        _check_file_on_grid(str(qa), "QA band", scene, notes)
        source = (_BandSource(str(qa), 1, "QA_PIXEL"),)
        if bits:
            gap.append(_FlagSet(source, "bits", bits))
        if product.level2:
            nodata.append(_FlagSet(source, "bits", 1 << QA_FILL_BIT))
    return gap, nodata


def open_scene(path: str | Path, *, bands: Sequence[int | str] | str | None = None, mask: str | Path | None = None,
               mask_qa: Sequence[str] | str | None = None, grid: SceneInfo | None = None) -> Scene:
    """Open a GeoTIFF or a Landsat product folder for windowed reading.

    Parameters
    ----------
    path : str or Path
        A raster GDAL reads (GeoTIFF, JPEG2000, ...), or a Landsat product folder (Collection 1
        or 2, Level-1 or Level-2, with its ``*_MTL.txt`` / ``.xml`` / ``.json``).
    bands : list or str, optional
        1-based band numbers (``"1,2,3,4"``); in a Landsat folder also common names or file labels
        (``"blue,green,red,nir"``, ``"SR_B4"``, ``"thermal"``), see ``tilefill._landsat``.
    mask : str or Path, optional
        A raster on the scene's grid (its size, CRS and transform; see ``GRID_TOLERANCE_PX``),
        nonzero = gap; one band for all bands or one per band. It replaces a Landsat product's gap
        masks. One without georeferencing is taken by its size, and ``notes`` says so.
    mask_qa : list or str, optional
        Landsat Collection 2 only: QA_PIXEL conditions that are gaps too (``"cloud,shadow"``).
    grid : SceneInfo, optional
        Read the scene on another scene's pixel grid (a second date of the same place): where its
        CRS, transform or size differ, every raster is read through a warped view of that grid
        (bilinear for values, nearest for masks) and pixels beyond the raster carry no data.
        ``info`` then describes that grid.

    Examples
    --------
    >>> with open_scene("scene.tif", bands="1,2,3") as scene:  # doctest: +SKIP
    ...     scene.shape
    (3, 7001, 8121)
    >>> with open_scene("LC08_L2SP_044034_20200801_20200908_02_T1/", bands="red,nir",
    ...                 mask_qa="cloud,shadow") as scene:  # doctest: +SKIP
    ...     scene.info.band_names
    ('red', 'nir')
    """
    path, item = locate_scene(path)
    qa_names = split_tokens(mask_qa)
    product = None
    gap_flags: list[_FlagSet] = []
    nodata_flags: list[_FlagSet] = []
    zero_is_nodata = False
    notes: list[str] = []
    if item is not None or path.is_dir() or MTL_FILE.match(path.name):
        product = item.product() if item is not None else read_product(path)
        chosen = product.select(bands)
        sources, meta, files = _product_bands(product, chosen)
        gap_flags, nodata_flags = _product_flags(product, chosen, meta, qa_names, notes)
        if qa_names:  # the output says which clouds (etc.) it filled
            meta["tags"]["TILEFILL_MASK_QA"] = ",".join(t.lower() for t in qa_names)
        zero_is_nodata = meta["nodata"] is None
        if zero_is_nodata:
            meta["nodata"] = 0
    else:
        if qa_names:
            raise TilefillError(f"--mask-qa reads the QA_PIXEL band of a Landsat Collection 2 product folder; "
                                f"{path.name} is a single raster: give its gaps as --mask")
        sources, meta, files = _geotiff_bands(path, _parse_bands(bands))
    if str(meta["dtype"]) not in SUPPORTED_DTYPES:
        raise TilefillError(f"{path.name}: unsupported data type {meta['dtype']}; supported: "
                            f"{', '.join(SUPPORTED_DTYPES)}")
    if mask is not None:
        mask = as_path(mask)
        if not mask.exists():
            raise TilefillError(f"mask not found: {mask}" + (f" ({unreadable(str(mask))})" if is_url(mask) else ""))
        with _open_checked(mask, "mask") as ds:
            _check_on_grid(ds, mask.name, "mask", meta, notes)
            if ds.count not in (1, len(sources)):
                raise TilefillError(f"mask {mask.name} has {ds.count} bands; give 1, or one per selected band ({len(sources)})")
            explicit = _FlagSet(tuple(_BandSource(str(mask), i, f"mask_{i}") for i in ds.indexes), "nonzero")
        # it replaces the product's gap masks (their zeros cover the collar too); QA bits lie inside the data
        gap_flags = [explicit] + [f for f in gap_flags if f.rule != "zero"]
    crs = meta["crs"]
    if not _has_georeferencing(crs, Affine(*tuple(meta["transform"])[:6])):
        notes.insert(0, f"{path.name} carries no georeferencing: neither will the output")
    info = SceneInfo(
        height=meta["height"], width=meta["width"], dtype=str(meta["dtype"]), nodata=meta["nodata"],
        crs_wkt=crs.to_wkt() if crs else None, transform=tuple(meta["transform"])[:6],
        band_names=tuple(s.name for s in sources), tags=dict(meta["tags"]),
        band_tags=tuple(dict(t) for t in meta["band_tags"]), sources=tuple(files),
    )
    warp_to = None
    if grid is not None and not same_grid(info, grid):
        warp_to = grid
        info = replace(info, height=grid.height, width=grid.width, crs_wkt=grid.crs_wkt, transform=grid.transform)
    return Scene(sources, info, gap_flags=gap_flags, nodata_flags=nodata_flags, zero_is_nodata=zero_is_nodata,
                 flags_mark_footprint=mask is not None, product=product, warp_to=warp_to, notes=notes)


def locate_scene(path, what: str = "scene"):
    """``(path, STAC item or None)``: what a scene argument names, refused in one line when it is not there.

    A URL is a raster, a product folder (a prefix holding an MTL), an MTL file or a STAC item
    (``.json``); so is a local path.
    """
    from tilefill._stac import StacItem, is_stac_item, read_item

    if isinstance(path, StacItem):
        return path, path
    path = as_path(path)
    if is_stac_item(path):
        item = read_item(path)
        return item, item
    if not is_url(path):
        if not path.exists():
            raise TilefillError(f"{what} not found: {path}")
        return path, None
    if path.is_dir():  # a prefix with objects under it: a product folder (one listing)
        return RemotePath(str(path).rstrip("/"), "folder"), None
    why = unreadable(str(path))
    if why:
        raise TilefillError(f"cannot read the {what} {path}: {why}")
    return RemotePath(str(path), "file"), None


def same_grid(a: SceneInfo, b: SceneInfo) -> bool:
    """Whether two scenes share one pixel grid: size, transform (to 1e-6 px) and CRS."""
    if (a.height, a.width) != (b.height, b.width) or (a.crs is None) != (b.crs is None):
        return False
    if a.crs is not None and a.crs != b.crs:
        return False
    ta, tb = a.affine, b.affine
    px = max(abs(ta.a), abs(ta.e), 1e-12)
    return all(abs(x - y) <= 1e-6 * px for x, y in zip(ta[:6], tb[:6]))


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
