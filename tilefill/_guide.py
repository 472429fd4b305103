"""Read a second date of the same place (a *guide*) on the scene's grid, band for band.

A guide is another acquisition of the scene's footprint: a GeoTIFF or a Landsat product folder,
itself striped or cloudy. Its gaps are its own nodata, its product's fill and gap masks and, with
``mask_qa``, its QA_PIXEL clouds: a guide is never assumed clean. It is read window by window on
the scene's pixel grid (:func:`tilefill._scene.open_scene` with ``grid``): as it is where the grids
agree, through a warped view (bilinear) where the CRS, transform or size differ.

Bands are matched to the scene's by common name (``blue``, ``green``, ``red``, ``nir``, ``swir1``,
``swir2``: a Landsat-5 TM or Landsat-8 OLI guide for a Landsat-7 scene; a GeoTIFF's band
descriptions), or by position when both carry the same number of bands and one of them has no
names. Refused in one line: a guide that does not overlap the scene, whose bands cannot be
matched, or that is the scene itself.

A guide's acquisition date (:func:`acquisition`) comes from its Landsat product's MTL, a
``DATE_ACQUIRED`` tag, or a Landsat scene or product ID in its file or folder name.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Sequence

import rasterio
from rasterio.warp import transform_bounds

from tilefill._errors import TilefillError
from tilefill._landsat import MTL_FILE, is_product_folder, read_product
from tilefill._remote import gdal_path, resolved
from tilefill._scene import Scene, SceneInfo, locate_scene, open_scene, same_grid
from tilefill._stac import StacItem

log = logging.getLogger("tilefill")

_UNNAMED = re.compile(r"^(band_?\d+|b\d+)?$", re.IGNORECASE)
# Landsat IDs in a file or folder name: a scene ID (LE70350322008118EDC00: sensor, satellite, WRS-2 path and
# row, year, day of year, station, version) or a product ID (LE07_L2SP_035032_20080427_20200914_02_T1), also
# cut short to its sensor, path/row and date (LE07_035032_20080427)
_SCENE_ID = re.compile(r"(?<![A-Za-z0-9])L[CEOTM]\d(\d{3})(\d{3})(\d{4})(\d{3})[A-Z]{3}\d{2}(?![0-9])")
_PRODUCT_ID = re.compile(r"(?<![A-Za-z0-9])L[CEOTM]0\d_(?:[A-Z0-9]{4}_)?(\d{3})(\d{3})_(\d{8})(?![0-9])")


def landsat_name(name: str) -> tuple[tuple[int, int], date] | None:
    """The WRS-2 (path, row) and acquisition date a Landsat scene or product ID in ``name`` gives; None without one.

    Examples
    --------
    >>> landsat_name("LE70350322008118EDC00_b3.tif")
    ((35, 32), datetime.date(2008, 4, 27))
    >>> landsat_name("LT05_L2SP_035032_20080505_20200829_02_T1")
    ((35, 32), datetime.date(2008, 5, 5))
    >>> landsat_name("scene_2008.tif") is None
    True
    """
    try:
        if m := _PRODUCT_ID.search(name):
            return (int(m[1]), int(m[2])), datetime.strptime(m[3], "%Y%m%d").date()
        if m := _SCENE_ID.search(name):
            return (int(m[1]), int(m[2])), datetime.strptime(m[3] + m[4], "%Y%j").date()
    except ValueError:  # digits in the right places that are no date
        return None
    return None


def _tag_date(text: str) -> date | None:
    """A ``DATE_ACQUIRED`` value: ISO (2008-04-27, with or without a time), 2008:04:27 or 20080427."""
    text = text.strip()
    for candidate, fmt in ((text[:10].replace(":", "-"), "%Y-%m-%d"), (text[:8], "%Y%m%d")):
        try:
            return datetime.strptime(candidate, fmt).date()
        except ValueError:
            continue
    return None


def acquisition(info: SceneInfo, path: str | Path, *, product: bool = False) -> tuple[date | None, str]:
    """When a scene was acquired, and where that was read: ``(date, "MTL" | "DATE_ACQUIRED tag" | "file name")``.

    ``info``: the scene's (its tags hold a Landsat product's MTL date, or a GeoTIFF's own
    ``DATE_ACQUIRED``); ``product``: it was read from a Landsat product folder. Without either, a
    Landsat scene or product ID in the file or folder name gives it; ``(None, "")`` when nothing does.
    """
    tag = info.tags.get("DATE_ACQUIRED")
    if tag and (when := _tag_date(str(tag))) is not None:
        return when, "MTL" if product else "DATE_ACQUIRED tag"
    named = landsat_name(Path(path).name)
    return (named[1], "file name") if named else (None, "")


@dataclass(frozen=True)
class GuideSource:
    """How one guide was read: what the run key, the logs and the output's tags say of it.

    ``bands``: the guide's band of each scene band (its name, or ``#n`` by position); ``matched``:
    ``"name"`` or ``"position"``; ``reprojected``: read through a warped view of the scene's grid.
    """

    path: str
    bands: tuple[str, ...]
    matched: str
    reprojected: bool
    acquired: str | None

    def describe(self) -> str:
        when = f", acquired {self.acquired}" if self.acquired else ""
        how = "reprojected to the scene's grid" if self.reprojected else "on the scene's grid"
        return f"guide {self.path} ({self.matched}-matched bands {','.join(self.bands)}, {how}{when})"


def _names(names: Sequence[str | None]) -> list[str] | None:
    """Band names in lower case, or None when any is missing or generic (``band_1``, ``B1``)."""
    low = [(n or "").strip().lower() for n in names]
    return None if any(_UNNAMED.match(n) for n in low) else low


def _geotiff_selection(path: Path, scene_names: list[str] | None, count: int) -> tuple[list[int], list[str], str]:
    try:
        with rasterio.open(gdal_path(path)) as ds:
            names, n = list(ds.descriptions), ds.count
    except rasterio.errors.RasterioIOError:
        raise TilefillError(f"guide {path} is not a raster GDAL can read") from None
    theirs = _names(names)
    if scene_names and theirs and all(s in theirs for s in scene_names):
        idx = [theirs.index(s) + 1 for s in scene_names]
        return idx, [theirs[i - 1] for i in idx], "name"
    if n == count and (scene_names is None or theirs is None):
        return list(range(1, n + 1)), [f"#{i}" for i in range(1, n + 1)], "position"
    raise TilefillError(
        f"guide {path.name}: its bands ({', '.join(theirs or [n or f'#{i + 1}' for i, n in enumerate(names)])}) cannot "
        f"be matched to the scene's ({', '.join(scene_names or [f'{count} unnamed'])}): give a guide whose bands carry the "
        "same names, or the same number of bands in the same order")


def _product_selection(path, scene_names: list[str] | None, count: int) -> tuple[list[str], list[str], str]:
    product = path.product() if isinstance(path, StacItem) else read_product(path)
    if scene_names:
        try:
            chosen = product.select(scene_names)
        except TilefillError as exc:
            raise TilefillError(f"guide {path.name}: its bands cannot be matched to the scene's "
                                f"({', '.join(scene_names)}): {exc}") from None
        return [b.name for b in chosen], [b.name for b in chosen], "name"
    chosen = product.select(None)
    if len(chosen) != count:
        raise TilefillError(f"guide {path.name}: the scene's {count} bands carry no names, and the product's "
                            f"{len(chosen)} reflective bands cannot be matched to them by position")
    return [b.name for b in chosen], [b.name for b in chosen], "position"


def _check_overlap(path: Path, guide: SceneInfo, scene: SceneInfo) -> None:
    """A guide must cover some of the scene: compare bounds in the scene's CRS."""
    if guide.crs is None or scene.crs is None:
        if (guide.height, guide.width) != (scene.height, scene.width):
            raise TilefillError(f"guide {path.name} has no georeferencing and another size than the scene "
                                f"({guide.height}x{guide.width} against {scene.height}x{scene.width} px)")
        return
    a = guide.affine
    left, right = sorted((a.c, a.c + a.a * guide.width))
    bottom, top = sorted((a.f, a.f + a.e * guide.height))
    left, bottom, right, top = transform_bounds(guide.crs, scene.crs, left, bottom, right, top)
    s = scene.affine
    s_left, s_right = sorted((s.c, s.c + s.a * scene.width))
    s_bottom, s_top = sorted((s.f, s.f + s.e * scene.height))
    if left >= s_right or right <= s_left or bottom >= s_top or top <= s_bottom:
        raise TilefillError(f"guide {path.name} does not overlap the scene (its bounds {left:.0f}, {bottom:.0f}, "
                            f"{right:.0f}, {top:.0f} against {s_left:.0f}, {s_bottom:.0f}, {s_right:.0f}, {s_top:.0f} "
                            "in the scene's CRS)")


def open_guide(path: str | Path, scene: Scene, *, mask_qa: Sequence[str] | str | None = None
               ) -> tuple[Scene, GuideSource]:
    """Open a guide on ``scene``'s grid with the scene's bands, in its order.

    Parameters
    ----------
    path : str or Path
        A GeoTIFF (any raster GDAL reads) or a Landsat product folder.
    scene : Scene
        The open scene it guides.
    mask_qa : list or str, optional
        For a Landsat Collection 2 guide: its QA_PIXEL conditions that are gaps (the scene's own
        ``--mask-qa``); a GeoTIFF guide has no QA band and takes none.

    Returns
    -------
    (Scene, GuideSource)
        The guide, read on the scene's grid (close it when done), and how it was read.

    Examples
    --------
    >>> with open_scene("LE07_2010_08_15.tif") as scene:  # doctest: +SKIP
    ...     guide, source = open_guide("LT05_2010_08_07.tif", scene)
    >>> source.matched  # doctest: +SKIP
    'name'
    """
    path, item = locate_scene(path, "guide")
    info = scene.info
    scene_names = _names(info.band_names)
    product = item is not None or MTL_FILE.match(path.name) is not None or (path.is_dir() and is_product_folder(path))
    if not product and path.is_dir():
        raise TilefillError(f"guide {path} is a folder but not a Landsat product folder (no *_MTL.txt/.xml/.json)")
    if product:
        selection, labels, matched = _product_selection(item or path, scene_names, info.count)
        guide = open_scene(item or path, bands=selection, mask_qa=mask_qa)
    else:
        selection, labels, matched = _geotiff_selection(path, scene_names, info.count)
        guide = open_scene(path, bands=selection)
    with guide:
        own = guide.info
        _check_overlap(path, own, info)
        band_files = {resolved(b.path) for b in guide.bands}
    if band_files & {resolved(b.path) for b in scene.bands}:
        raise TilefillError(f"guide {path} is the scene itself: a guide is another acquisition of the same place")
    reprojected = not same_grid(own, info)
    if reprojected:
        log.info("guide %s: %s; reprojected to the scene's grid (bilinear)", path.name, _grid_difference(own, info))
    aligned = open_scene(item or path, bands=selection, mask_qa=mask_qa if product else None, grid=info)
    when, _source = acquisition(own, path, product=product)
    acquired = own.tags.get("DATE_ACQUIRED") or (when.isoformat() if when else None)
    return aligned, GuideSource(str(path), tuple(labels), matched, reprojected, acquired)


def _grid_difference(guide: SceneInfo, scene: SceneInfo) -> str:
    if guide.crs != scene.crs:
        name = lambda crs: crs.to_string() if crs is not None else "none"  # noqa: E731
        return f"its CRS {name(guide.crs)} is not the scene's {name(scene.crs)}"
    if (abs(guide.affine.a), abs(guide.affine.e)) != (abs(scene.affine.a), abs(scene.affine.e)):
        return f"its pixels are {abs(guide.affine.a):g} m, the scene's {abs(scene.affine.a):g} m"
    return "its pixel grid is offset from the scene's or of another size"
