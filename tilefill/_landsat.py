"""Landsat product folders: know a product from its metadata, pick its band files, name them.

A product folder is what USGS delivers for one Landsat scene, unpacked: one GeoTIFF per band,
quality bands, and the metadata file ``<PRODUCT_ID>_MTL.txt`` (Collection 1 and 2), which
Collection 2 also ships as ``_MTL.xml`` and ``_MTL.json``. Everything tilefill needs is read
from the metadata, never guessed from file names: the product ID, spacecraft and sensor
(Landsat 4-5 TM, 7 ETM+, 8-9 OLI/TIRS), the processing level (``L1TP``/``L1GT``/``L1GS``;
``L2SP``/``L2SR``), the acquisition date, the file of each band and its rescaling.

What is read, per level
-----------------------
* **Level-1** (Collection 1 ``GROUP = L1_METADATA_FILE``; Collection 2 ``GROUP =
  LANDSAT_METADATA_FILE``, ``PROCESSING_LEVEL = L1..``): bands ``B1``..``B11``, ETM+'s
  ``B6_VCID_1`` / ``B6_VCID_2`` (thermal, low and high gain). Scale and offset: the radiance
  rescaling (``RADIANCE_MULT_BAND_n`` / ``RADIANCE_ADD_BAND_n``), plus the TOA reflectance
  rescaling and the thermal constants where the metadata gives them. ETM+ SLC-off gap masks
  (``<ID>_GM_B<n>.TIF``, 0 = gap, optionally gzipped) are read from ``gap_mask/`` or beside the
  bands: Collection 1 ships them gzipped in ``gap_mask/``. Collection 2's MTL names no gap-mask
  file (checked against a 2023 ``LE07_L1TP_..._02_T1`` MTL); downloaders of Collection 2 ETM+
  Level-1 files do meet ``_GM_B<n>.TIF`` files, whose folder and compression no USGS document
  at hand settles, so both places and both forms are accepted.
* **Level-2** (``PROCESSING_LEVEL = L2SP`` or ``L2SR``): surface reflectance ``SR_B<n>`` (scale
  ``REFLECTANCE_MULT_BAND_n``, offset ``REFLECTANCE_ADD_BAND_n``, in
  ``LEVEL2_SURFACE_REFLECTANCE_PARAMETERS``) and surface temperature ``ST_B6`` / ``ST_B10``
  (``TEMPERATURE_MULT_BAND_ST_B<n>``, kelvin). ``QA_PIXEL`` bit 0 (fill) is nodata.

Bands by default: the reflective bands (coastal, blue, green, red, nir, swir1, swir2) whose
files are present. The pan band (15 m, another grid), cirrus (an atmospheric band, absent from
Level-2) and the thermal bands come only when asked, so Level-1 and Level-2 of one scene give
the same bands. Thermal bands (Level-1 brightness, Level-2 surface temperature) are never fitted
in one network with reflective ones (other units and physics): asking for both is refused.

``QA_PIXEL`` bits (Collection 2, Level-1 and Level-2 alike; USGS Collection 2 QA band spec)
used by ``--mask-qa``: 1 dilated cloud, 2 cirrus (Landsat 8-9 only), 3 cloud, 4 cloud shadow,
5 snow. Bit 0 is fill; 6 clear and 7 water are not offered (filling them is not a gap fill).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Sequence

from tilefill._errors import TilefillError
from tilefill._remote import RemotePath, as_path

# <sensor><satellite>_<level>_<path><row>_<acquired>_<processed>_<collection>_<tier>
PRODUCT_ID = re.compile(r"^(L[CEOTM]0\d_L[12][A-Z]{2}_\d{6}_\d{8}_\d{8}_\d{2}_(?:T1|T2|RT))(?:_|$)")
MTL_FILE = re.compile(r"^.+_MTL\.(txt|xml|json)$", re.IGNORECASE)
# any *_B<n>.TIF (also *_SR_B<n>.TIF): a folder of them is meant as a product even without its MTL
BAND_FILE = re.compile(r"^(?P<stem>.+)_B(?P<band>\d+)\.tiff?$", re.IGNORECASE)
GM_FILE = re.compile(r"^(?P<stem>.+)_GM_B(?P<key>\d+(?:_VCID_[12])?)\.tiff?(?P<gz>\.gz)?$", re.IGNORECASE)
SLC_FAILURE = date(2003, 5, 31)  # Landsat 7's scan line corrector failed on this day

RADIANCE_UNITS = "W/(m2 sr um)"

# QA_PIXEL bits a user may turn into gaps (Collection 2)
QA_BITS = {"dilated_cloud": 1, "cirrus": 2, "cloud": 3, "shadow": 4, "snow": 5}
QA_FILL_BIT = 0


@dataclass(frozen=True)
class _Spec:
    name: str  # common name, written as the band's description
    kind: str  # "reflective" (default), "thermal", "pan", "cirrus"


_TM = {"1": _Spec("blue", "reflective"), "2": _Spec("green", "reflective"), "3": _Spec("red", "reflective"),
       "4": _Spec("nir", "reflective"), "5": _Spec("swir1", "reflective"), "6": _Spec("thermal", "thermal"),
       "7": _Spec("swir2", "reflective"), "ST_B6": _Spec("thermal", "thermal")}
_ETM = {**{k: v for k, v in _TM.items() if k != "6"},
        "6_VCID_1": _Spec("thermal_low_gain", "thermal"), "6_VCID_2": _Spec("thermal_high_gain", "thermal"),
        "8": _Spec("pan", "pan")}
_OLI = {"1": _Spec("coastal", "reflective"), "2": _Spec("blue", "reflective"), "3": _Spec("green", "reflective"),
        "4": _Spec("red", "reflective"), "5": _Spec("nir", "reflective"), "6": _Spec("swir1", "reflective"),
        "7": _Spec("swir2", "reflective"), "8": _Spec("pan", "pan"), "9": _Spec("cirrus", "cirrus"),
        "10": _Spec("thermal1", "thermal"), "11": _Spec("thermal2", "thermal"), "ST_B10": _Spec("thermal", "thermal")}
# SENSOR_ID as the MTL writes it
SENSORS = {"TM": _TM, "ETM": _ETM, "OLI_TIRS": _OLI, "OLI": _OLI, "TIRS": _OLI}


@dataclass(frozen=True)
class LandsatBand:
    """One band of a product: its MTL key, common name, kind, file and rescaling tags.

    ``key`` is what follows ``FILE_NAME_BAND_`` in the MTL (``"4"``, ``"6_VCID_1"``,
    ``"ST_B6"``); ``label`` is the band part of its file name (``"B4"``, ``"SR_B4"``).
    """

    key: str
    name: str
    kind: str
    label: str
    path: Path | RemotePath
    tags: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def present(self) -> bool:
        return self.path.is_file()


@dataclass(frozen=True)
class LandsatProduct:
    """A Landsat product folder as its metadata describes it. Build it with :func:`read_product`."""

    folder: Path | RemotePath
    product_id: str
    spacecraft: str
    sensor: str
    level: str
    collection: int
    acquired: date
    slc_off: bool
    bands: tuple[LandsatBand, ...]
    qa_pixel: Path | RemotePath | None
    gap_masks: tuple[tuple[str, str], ...]  # (band key, path GDAL opens: /vsigzip/ for .gz)
    metadata_files: tuple[Path | RemotePath, ...]
    item: str | None = None  # the STAC item the product was read from, whose assets are its files

    @property
    def level2(self) -> bool:
        return self.level.startswith("L2")

    def gap_mask(self, key: str) -> str | None:
        return dict(self.gap_masks).get(key)

    def describe(self) -> str:
        """One line for the log: what the product is, and whether SLC-off stripes are expected."""
        slc = "; SLC-off: stripes expected" if self.slc_off else ""
        return (f"Landsat product {self.product_id} ({self.spacecraft} {self.sensor}, {self.level}, Collection "
                f"{self.collection}, acquired {self.acquired.isoformat()}{slc})")

    def tags(self) -> dict:
        """Dataset tags the output keeps: the product's identity as the MTL gives it."""
        out = {"LANDSAT_PRODUCT_ID": self.product_id, "SPACECRAFT_ID": self.spacecraft, "SENSOR_ID": self.sensor,
               "PROCESSING_LEVEL": self.level, "COLLECTION_NUMBER": f"{self.collection:02d}",
               "DATE_ACQUIRED": self.acquired.isoformat()}
        if self.spacecraft == "LANDSAT_7":
            out["SENSOR_MODE_SLC"] = "OFF" if self.slc_off else "ON"
        return out

    def _listing(self) -> str:
        return ", ".join(f"{b.name} ({b.label})" for b in self.bands)

    def select(self, bands: Sequence[int | str] | str | None = None) -> list[LandsatBand]:
        """The bands to fill, in the order asked: numbers, file labels or common names.

        Parameters
        ----------
        bands : str or list, optional
            ``"blue,green,red,nir"``, ``"1,2,3,4"``, ``"B4"``, ``"SR_B4"``, ``"ST_B6"``; ``"thermal"``
            also means every thermal band of the product. Default: the reflective bands present.

        Examples
        --------
        >>> product = read_product("LE07_L2SP_044034_20100815_20200911_02_T1")  # doctest: +SKIP
        >>> [b.name for b in product.select("nir,red,green")]  # doctest: +SKIP
        ['nir', 'red', 'green']
        """
        tokens = split_tokens(bands)
        if tokens is None:
            chosen = [b for b in self.bands if b.kind == "reflective" and b.present]
            if not chosen:
                wanted = ", ".join(b.path.name for b in self.bands if b.kind == "reflective")
                if self.item:
                    raise TilefillError(f"STAC item {self.item} has no asset for any reflective band file of "
                                        f"{self.product_id} ({wanted or 'the MTL names none'})")
                raise TilefillError(f"{self.folder}: none of the reflective band files of {self.product_id} is in the "
                                    f"folder ({wanted or 'the MTL names none'})")
            return chosen
        chosen = []
        for token in tokens:
            for band in self._resolve(token):
                if band in chosen:
                    raise TilefillError(f"band {band.name} ({band.label}) is selected twice in {','.join(tokens)}")
                chosen.append(band)
        missing = [b for b in chosen if not b.present]
        if missing:
            b = missing[0]
            if self.item:
                raise TilefillError(f"STAC item {self.item} has no asset for band {b.name} ({b.label}, "
                                    f"{b.path.name})")
            raise TilefillError(f"{self.folder}: band {b.name} ({b.label}) is selected but its file {b.path.name} is "
                                f"not in the folder")
        thermal = [b for b in chosen if b.kind == "thermal"]
        if thermal and len(thermal) != len(chosen):
            other = next(b for b in chosen if b.kind != "thermal")
            what = "surface temperature (kelvin)" if self.level2 else "thermal radiance"
            raise TilefillError(
                f"{thermal[0].label} is {what} and {other.label} is not: thermal and reflective bands are never fitted "
                f"in one network; run them separately (e.g. --bands thermal, then without it)")
        return chosen

    def _resolve(self, token: str) -> list[LandsatBand]:
        t = token.strip().lower()
        for b in self.bands:
            if t in (b.name, b.key.lower(), b.label.lower(), f"b{b.key.lower()}"):
                return [b]
        if t == "thermal":  # no single band is called that (ETM+ and TIRS Level-1): all of them
            thermal = [b for b in self.bands if b.kind == "thermal"]
            if thermal:
                return thermal
        raise TilefillError(f"{self.product_id} has no band {token!r}; it has {self._listing()}")

    def qa_bits(self, names: Sequence[str] | str | None) -> int:
        """The QA_PIXEL bit mask of ``--mask-qa`` names (``"cloud,shadow"``); 0 for none.

        Examples
        --------
        >>> product.qa_bits("cloud,shadow")  # bits 3 and 4  # doctest: +SKIP
        24
        """
        tokens = split_tokens(names)
        if not tokens:
            return 0
        if self.collection != 2:
            raise TilefillError(f"--mask-qa reads the Collection 2 QA_PIXEL band; {self.product_id} is Collection "
                                f"{self.collection} (its BQA band has another layout): give the gaps as --mask instead")
        if self.qa_pixel is None:
            raise TilefillError(f"--mask-qa needs {self.product_id}_QA_PIXEL.TIF, which is not in {self.folder}")
        bits = 0
        for token in tokens:
            name = token.strip().lower()
            if name not in QA_BITS:
                raise TilefillError(f"--mask-qa takes {', '.join(QA_BITS)}; not {token!r}")
            if name == "cirrus" and self.sensor not in ("OLI_TIRS", "OLI"):
                raise TilefillError(f"--mask-qa cirrus: the QA_PIXEL cirrus bit is set by Landsat 8-9 only, "
                                    f"not by {self.spacecraft} {self.sensor}")
            bits |= 1 << QA_BITS[name]
        return bits


def split_tokens(value: Sequence[int | str] | str | None) -> list[str] | None:
    """``"1, 2,nir"`` or ``[1, "nir"]`` -> ``["1", "2", "nir"]``; None or empty -> None."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    items = [i.strip() for i in items if i.strip()]
    return items or None


# --- the metadata file ---------------------------------------------------------------------------------------

def _unquote(value: str) -> str:
    value = value.strip()
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def _parse_odl(text: str, path: Path) -> dict:
    """``GROUP = X`` ... ``END_GROUP = X`` with ``KEY = VALUE`` lines -> nested dicts of strings."""
    root: dict = {}
    stack = [root]
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        key = key.strip()
        if not sep:
            continue  # "END", blank lines
        value = _unquote(value)
        if key == "GROUP":
            stack[-1][value] = {}
            stack.append(stack[-1][value])
        elif key == "END_GROUP":
            if len(stack) == 1:
                raise TilefillError(f"{path}: END_GROUP = {value} closes no group; the MTL file is damaged")
            stack.pop()
        else:
            stack[-1][key] = value
    return root


def _xml_dict(el: ET.Element) -> dict | str:
    if len(el) == 0:
        return (el.text or "").strip()
    return {child.tag.rpartition("}")[2]: _xml_dict(child) for child in el}


def _json_strings(value):
    if isinstance(value, dict):
        return {k: _json_strings(v) for k, v in value.items()}
    return "" if value is None else str(value)


def parse_mtl(path: str | Path) -> dict:
    """Read an MTL file (``.txt`` ODL, ``.xml`` or ``.json``) into nested dicts of strings.

    Values keep the metadata's own text (``"2.75E-05"``, ``"02"``), quotes removed.

    Examples
    --------
    >>> mtl = parse_mtl("LC08_L2SP_044034_20200801_20200908_02_T1_MTL.txt")  # doctest: +SKIP
    >>> mtl["LANDSAT_METADATA_FILE"]["PRODUCT_CONTENTS"]["PROCESSING_LEVEL"]  # doctest: +SKIP
    'L2SP'
    """
    path = as_path(path)
    try:
        suffix = path.suffix.lower()
        if suffix == ".xml":
            root = ET.fromstring(path.read_bytes())
            return {root.tag.rpartition("}")[2]: _xml_dict(root)}
        if suffix == ".json":
            doc = _json_strings(json.loads(path.read_text()))
            if not isinstance(doc, dict):
                raise ValueError("its top level is not an object")
            return doc
        return _parse_odl(path.read_text(errors="replace"), path)
    # LookupError: an XML declaration naming an unknown encoding; RecursionError: nesting too deep to be metadata
    except (ET.ParseError, ValueError, OSError, LookupError, RecursionError) as exc:
        raise TilefillError(f"cannot read the metadata file {path} ({type(exc).__name__}: {exc})") from None


def _outside(folder: Path, path: Path) -> str | None:
    """Where ``path`` leads when that is outside ``folder`` (a link out of it, a loop of links); None when inside."""
    try:
        target = path.resolve()
        inside = target.is_relative_to(folder.resolve())
    except (OSError, RuntimeError) as exc:  # a loop of links: RuntimeError before Python 3.13
        return f"nowhere ({exc})"
    return None if inside else str(target)


def _file_name(mtl: Path, field: str, value) -> str:
    """A file the metadata names: a base name in the MTL's own folder, never a path, nor a link, out of it."""
    name = value if isinstance(value, str) else ""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or Path(name).is_absolute()
            or any(ord(c) < 32 for c in name)):
        raise TilefillError(f"{mtl.name}: {field} = {value!r} is not a file name: a product's metadata names files "
                            "in its own folder (no path, no '..')")
    target = _outside(mtl.parent, mtl.parent / name)
    if target is not None:
        raise TilefillError(f"{mtl.name}: {field} names {name}, a link that leads to {target}, outside the product "
                            "folder: a product's files must stay in its folder")
    return name


def _group(doc: dict, *names: str) -> dict:
    node = doc
    for n in names:
        node = node.get(n) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return {}
    return node


def _field(group: dict, key: str, where: str, mtl: Path) -> str:
    value = group.get(key)
    if not value or isinstance(value, dict):
        raise TilefillError(f"{mtl.name}: no {key} in {where}; not a Landsat Collection 1 or 2 metadata file")
    return value


@dataclass(frozen=True)
class _Mtl:
    """What a metadata file says, whatever its collection and format."""

    product_id: str
    level1_id: str | None  # a Level-2 product's source Level-1 product
    spacecraft: str
    sensor: str
    level: str
    collection: int
    acquired: date
    slc_mode: str | None
    files: dict  # band key -> file name
    qa_pixel: str | None
    rescaling: dict  # group name -> group, for the band tags


def _read_mtl(mtl: Path) -> _Mtl:
    doc = parse_mtl(mtl)
    if "LANDSAT_METADATA_FILE" in doc:  # Collection 2
        root = doc["LANDSAT_METADATA_FILE"]
        contents, image = _group(root, "PRODUCT_CONTENTS"), _group(root, "IMAGE_ATTRIBUTES")
        level = _field(contents, "PROCESSING_LEVEL", "PRODUCT_CONTENTS", mtl)
        level1 = _group(root, "LEVEL1_PROCESSING_RECORD").get("LANDSAT_PRODUCT_ID") if level.startswith("L2") else None
        level1 = level1 if isinstance(level1, str) else None
        ids = dict(product_id=_field(contents, "LANDSAT_PRODUCT_ID", "PRODUCT_CONTENTS", mtl), level1_id=level1,
                   level=level, collection=_field(contents, "COLLECTION_NUMBER", "PRODUCT_CONTENTS", mtl),
                   spacecraft=_field(image, "SPACECRAFT_ID", "IMAGE_ATTRIBUTES", mtl),
                   sensor=_field(image, "SENSOR_ID", "IMAGE_ATTRIBUTES", mtl),
                   acquired=_field(image, "DATE_ACQUIRED", "IMAGE_ATTRIBUTES", mtl),
                   slc_mode=image.get("SENSOR_MODE_SLC") if isinstance(image.get("SENSOR_MODE_SLC"), str) else None,
                   qa_pixel=contents.get("FILE_NAME_QUALITY_L1_PIXEL"))
        files_from = contents
        rescaling = {g: _group(root, g) for g in (
            "LEVEL2_SURFACE_REFLECTANCE_PARAMETERS", "LEVEL2_SURFACE_TEMPERATURE_PARAMETERS",
            "LEVEL1_RADIOMETRIC_RESCALING", "LEVEL1_THERMAL_CONSTANTS")}
    elif "L1_METADATA_FILE" in doc:  # Collection 1 (Level-1 only: its Level-2 came from ESPA, without an MTL)
        root = doc["L1_METADATA_FILE"]
        info, meta = _group(root, "METADATA_FILE_INFO"), _group(root, "PRODUCT_METADATA")
        ids = dict(product_id=_field(info, "LANDSAT_PRODUCT_ID", "METADATA_FILE_INFO", mtl), level1_id=None,
                   level=_field(meta, "DATA_TYPE", "PRODUCT_METADATA", mtl),
                   collection=_field(info, "COLLECTION_NUMBER", "METADATA_FILE_INFO", mtl),
                   spacecraft=_field(meta, "SPACECRAFT_ID", "PRODUCT_METADATA", mtl),
                   sensor=_field(meta, "SENSOR_ID", "PRODUCT_METADATA", mtl),
                   acquired=_field(meta, "DATE_ACQUIRED", "PRODUCT_METADATA", mtl), slc_mode=None, qa_pixel=None)
        files_from = meta
        # Collection 1 groups, under the Collection 2 names the band tags look for
        rescaling = {"LEVEL1_RADIOMETRIC_RESCALING": _group(root, "RADIOMETRIC_RESCALING"),
                     "LEVEL1_THERMAL_CONSTANTS": _group(root, "THERMAL_CONSTANTS")}
    else:
        raise TilefillError(f"{mtl.name}: neither LANDSAT_METADATA_FILE (Collection 2) nor L1_METADATA_FILE "
                            "(Collection 1): not a Landsat metadata file tilefill reads")
    try:
        ids["collection"] = int(ids["collection"])
        ids["acquired"] = date.fromisoformat(ids["acquired"][:10])
    except ValueError:
        raise TilefillError(f"{mtl.name}: COLLECTION_NUMBER {ids['collection']!r} or DATE_ACQUIRED "
                            f"{ids['acquired']!r} cannot be read") from None
    files = {k[len("FILE_NAME_BAND_"):]: _file_name(mtl, k, v) for k, v in files_from.items()
             if k.startswith("FILE_NAME_BAND_")}
    if ids["qa_pixel"] is not None:
        ids["qa_pixel"] = _file_name(mtl, "FILE_NAME_QUALITY_L1_PIXEL", ids["qa_pixel"])
    return _Mtl(**ids, files=files, rescaling=rescaling)


def _band_tags(m: _Mtl, key: str, kind: str) -> dict:
    """Per-band tags: the MTL's rescaling of this band, its text kept so DN convert exactly as the input's."""
    def get(group: str, name: str) -> str | None:
        return m.rescaling.get(group, {}).get(f"{name}_BAND_{key}")

    if m.level.startswith("L2"):
        if kind == "thermal":
            pairs = [("SCALE", get("LEVEL2_SURFACE_TEMPERATURE_PARAMETERS", "TEMPERATURE_MULT")),
                     ("OFFSET", get("LEVEL2_SURFACE_TEMPERATURE_PARAMETERS", "TEMPERATURE_ADD")), ("UNITS", "K")]
        else:
            pairs = [("SCALE", get("LEVEL2_SURFACE_REFLECTANCE_PARAMETERS", "REFLECTANCE_MULT")),
                     ("OFFSET", get("LEVEL2_SURFACE_REFLECTANCE_PARAMETERS", "REFLECTANCE_ADD")),
                     ("UNITS", "reflectance")]
    else:
        pairs = [("SCALE", get("LEVEL1_RADIOMETRIC_RESCALING", "RADIANCE_MULT")),
                 ("OFFSET", get("LEVEL1_RADIOMETRIC_RESCALING", "RADIANCE_ADD")), ("UNITS", RADIANCE_UNITS),
                 # TOA reflectance before the sun-angle correction, and brightness temperature constants
                 ("REFLECTANCE_MULT", get("LEVEL1_RADIOMETRIC_RESCALING", "REFLECTANCE_MULT")),
                 ("REFLECTANCE_ADD", get("LEVEL1_RADIOMETRIC_RESCALING", "REFLECTANCE_ADD")),
                 ("K1_CONSTANT", get("LEVEL1_THERMAL_CONSTANTS", "K1_CONSTANT")),
                 ("K2_CONSTANT", get("LEVEL1_THERMAL_CONSTANTS", "K2_CONSTANT"))]
    has_scale = pairs[0][1] is not None
    return {k: v for k, v in pairs if v is not None and (k != "UNITS" or has_scale)}


# --- the folder --------------------------------------------------------------------------------------------

def metadata_files(folder: Path) -> list[Path]:
    """The folder's ``*_MTL.txt`` / ``.xml`` / ``.json`` files, sorted."""
    return sorted(f for f in folder.iterdir() if MTL_FILE.match(f.name) and f.is_file())


def is_product_folder(folder: str | Path) -> bool:
    """Whether a folder is meant as one Landsat product: it holds an MTL file or ``*_B<n>.TIF`` files.

    A folder of band files without its MTL counts too, so that ``tilefill batch`` reports it (the
    metadata is missing) instead of filling each band file as a scene of its own.
    """
    try:
        return any((MTL_FILE.match(f.name) or BAND_FILE.match(f.name)) and f.is_file() for f in as_path(folder).iterdir())
    except OSError:
        return False


def product_id(folder: str | Path) -> str | None:
    """The ``LANDSAT_PRODUCT_ID`` of a product folder's metadata, or None when it cannot be read."""
    try:
        return read_product(folder).product_id
    except (TilefillError, OSError):
        return None


def _product_of(name: str) -> str | None:
    m = PRODUCT_ID.match(name)
    return m.group(1) if m else None


def read_product(folder: str | Path | RemotePath) -> LandsatProduct:
    """Read a Landsat product folder's metadata and find its files.

    Refused, in one line: a folder without ``*_MTL.txt``/``.xml``/``.json``; metadata files or
    Landsat-named files of two products; a sensor other than TM, ETM+ or OLI/TIRS; a file name in
    the metadata that is not a base name in the folder (a path separator, ``..``, an absolute
    path) or that is a link leading out of the folder, and a gap mask that is such a link: what
    a folder's metadata names stays inside that folder.

    Examples
    --------
    >>> product = read_product("LE07_L2SP_044034_20100815_20200911_02_T1/")  # doctest: +SKIP
    >>> product.level, product.slc_off, [b.name for b in product.select()]  # doctest: +SKIP
    ('L2SP', True, ['blue', 'green', 'red', 'nir', 'swir1', 'swir2'])
    """
    folder = as_path(folder)
    if MTL_FILE.match(folder.name) and folder.is_file():
        # the metadata file itself, where its folder cannot be listed (a plain HTTP server): files by their names
        return product_from_metadata(folder, {})
    try:
        mtls = metadata_files(folder)
    except OSError as exc:
        raise TilefillError(f"cannot list the folder {folder} ({exc.strerror or exc})") from None
    if not mtls:
        raise TilefillError(f"{folder} has no *_MTL.txt, *_MTL.xml or *_MTL.json: tilefill knows a Landsat product "
                            "folder by its metadata; put the product's MTL file back, or stack the bands into one "
                            "GeoTIFF")
    read = [(p, _read_mtl(p)) for p in mtls]
    ids = sorted({m.product_id for _, m in read})
    if len(ids) > 1:
        raise TilefillError(f"{folder} mixes two products: metadata of {' and '.join(ids)}; give each its own folder")
    m = read[0][1]
    # every Landsat-named file must belong to the product; gap masks may be its Level-1 source's
    gm_dir = folder / "gap_mask"
    listed = list(folder.iterdir())
    entries = listed + (list(gm_dir.iterdir()) if any(e.name == "gap_mask" and e.is_dir() for e in listed) else [])
    gap_masks = {}
    for f in entries:
        owner = _product_of(f.name)
        gm = GM_FILE.match(f.name)
        allowed = {m.product_id, m.level1_id} if gm else {m.product_id}
        if owner is not None and owner not in allowed:
            raise TilefillError(f"{folder} mixes two products: {f.name} is not a file of {m.product_id}; give each "
                                "product its own folder")
        if gm and f.is_file():
            target = _outside(folder, f)
            if target is not None:
                raise TilefillError(f"{folder}: the gap mask {f.name} is a link that leads to {target}, outside the "
                                    "product folder: a product's files must stay in its folder")
            # GDAL reads the gzipped ones in place
            gap_masks.setdefault(gm["key"].upper(), f"/vsigzip/{f}" if gm["gz"] else str(f))
    return _product(folder, m, tuple(mtls), {e.name: e for e in listed}, gap_masks)


@dataclass(frozen=True)
class _Absent:
    """A file the metadata names that a STAC item has no asset for."""

    name: str

    def is_file(self) -> bool:
        return False

    def __str__(self) -> str:
        return self.name


def product_from_metadata(mtl: str | Path | RemotePath, files: dict, *, item: str | None = None) -> LandsatProduct:
    """A product read from its metadata file alone, without listing a folder (so without gap masks).

    The files it names are ``files[name]``; where ``files`` lacks one, the file beside the metadata,
    or, for a STAC ``item`` (whose assets are ``files``), none.
    """
    mtl = as_path(mtl)
    return _product(mtl.parent, _read_mtl(mtl), (mtl,), files, {}, item=item)


def _product(folder, m: _Mtl, mtls: tuple, located: dict, gap_masks: dict, item: str | None = None
             ) -> LandsatProduct:
    def locate(name: str):
        return located.get(name) or (_Absent(name) if item else folder / name)

    table = SENSORS.get(m.sensor)
    if table is None:
        raise TilefillError(f"{m.product_id}: sensor {m.sensor} is not one tilefill reads (TM, ETM+, OLI/TIRS)")
    bands = []
    for key, name in m.files.items():
        spec = table.get(key)
        if spec is None:
            continue  # e.g. Collection 1's FILE_NAME_BAND_QUALITY
        stem = Path(name).stem
        label = stem[len(m.product_id) + 1:] if stem.startswith(m.product_id + "_") else f"B{key}"
        bands.append(LandsatBand(key, spec.name, spec.kind, label, locate(name), _band_tags(m, key, spec.kind)))
    if not bands:
        raise TilefillError(f"{m.product_id}: its metadata names no band file (FILE_NAME_BAND_n)")
    qa = locate(m.qa_pixel) if m.qa_pixel else None
    slc_off = m.spacecraft == "LANDSAT_7" and (m.slc_mode.upper() == "OFF" if m.slc_mode else m.acquired > SLC_FAILURE)
    return LandsatProduct(
        folder=folder, product_id=m.product_id, spacecraft=m.spacecraft, sensor=m.sensor, level=m.level,
        collection=m.collection, acquired=m.acquired, slc_off=slc_off, bands=tuple(bands),
        qa_pixel=qa if qa is not None and qa.is_file() else None, gap_masks=tuple(sorted(gap_masks.items())),
        metadata_files=tuple(mtls), item=item)
