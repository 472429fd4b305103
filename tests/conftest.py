"""Shared fixtures for the pipeline-stage tests: tiny networks and small synthetic rasters on disk.

Everything here is synthetic and small (tens to a few hundred pixels a side) so that the
stage tests run in seconds on two CPU cores. Rasters are real GeoTIFFs written with rasterio
into ``tmp_path``; helpers are handed out through fixtures (``synth``) rather than imported.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from affine import Affine

from tilefill import ClusterSpec

CRS = "EPSG:32633"
IN_PROCESS = ClusterSpec(workers=0)  # no cluster: tiles fitted in the test process
# 30 m pixels, north up, a plausible UTM origin
TRANSFORM = Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 4200000.0)

# Value ranges the smooth fields are mapped into, per dtype (never touching the nodata values used below)
RANGES = {
    "uint8": (10, 250),
    "uint16": (500, 20000),
    "int16": (-2000, 8000),
    "float32": (0.01, 0.6),
}
NODATA = {"uint8": 0, "uint16": 0, "int16": -9999, "float32": -9999.0}


def smooth_field(bands: int, height: int, width: int) -> np.ndarray:
    """Sums of sines in [0, 1], a little different per band: float64 (bands, height, width)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    yy /= max(height, 1)
    xx /= max(width, 1)
    out = []
    for b in range(bands):
        f = (0.5 + 0.2 * np.sin(2 * np.pi * (xx + 0.25 * b)) + 0.15 * np.cos(2 * np.pi * 1.3 * yy + b)
             + 0.1 * np.sin(2 * np.pi * (xx + yy) + 0.5 * b))
        out.append(f)
    f = np.stack(out)
    f -= f.min(axis=(1, 2), keepdims=True)
    f /= f.max(axis=(1, 2), keepdims=True)
    return f


def to_range(field01: np.ndarray, dtype: str) -> np.ndarray:
    """Map a [0, 1] field into the dtype's test range (see RANGES)."""
    lo, hi = RANGES[dtype]
    values = lo + field01 * (hi - lo)
    if np.dtype(dtype).kind != "f":
        values = np.rint(values)
    return values.astype(dtype)


def stripe_mask(height: int, width: int, *, period: int = 16, width_px: int = 4, tilt: int = 12,
                shift: int = 0) -> np.ndarray:
    """SLC-off-like gaps (True = gap): stripes every ``period`` rows, 1 px down per ``tilt`` px across."""
    r = np.arange(height)[:, None]
    c = np.arange(width)[None, :]
    return (r - c // tilt + shift) % period < width_px


def write_geotiff(path: Path, data: np.ndarray, *, nodata=None, crs=CRS, transform=TRANSFORM,
                  descriptions=None, tags=None, band_tags=None, dtype=None) -> Path:
    """Write (bands, h, w) or (h, w) ``data`` as a GeoTIFF and return its path."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    dtype = dtype or data.dtype.name
    profile = dict(driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0], dtype=dtype,
                   crs=crs, transform=transform)
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data.astype(dtype))
        for i, d in enumerate(descriptions or [], start=1):
            ds.set_band_description(i, d)
        if tags:
            ds.update_tags(**tags)
        for i, t in enumerate(band_tags or [], start=1):
            ds.update_tags(i, **t)
    return Path(path)


def inside_polygon(vertices: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bool (height, width): pixel centres inside a convex polygon, vertices (x, y) clockwise on screen (y down)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    inside = np.ones((height, width), dtype=bool)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0)):
        inside &= (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0) >= 0
    return inside


def distance_to_boundary(vertices: np.ndarray, height: int, width: int) -> np.ndarray:
    """Unsigned distance of each pixel centre to the polygon's outline, in pixels."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    best = np.full((height, width), np.inf)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0)):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / (dx * dx + dy * dy), 0, 1)
        best = np.minimum(best, np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy)))
    return best


def distance_to_polygon(vertices: np.ndarray, height: int, width: int) -> np.ndarray:
    """Distance of each pixel centre to the polygon (0 inside), in pixels."""
    d = distance_to_boundary(vertices, height, width)
    return np.where(inside_polygon(vertices, height, width), 0.0, d)


def rotated_vertices(size: int = 300, angle_deg: float = 13.0, half_w: float = 112.0, half_h: float = 96.0):
    """Corners (x, y) of a rotated rectangle centred in a ``size`` px square, clockwise on screen."""
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    corners = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
    # (x, y) with y down, clockwise on screen: the order inside_polygon expects
    return corners @ rot.T + size / 2.0


def slc_stripes(height: int, width: int, *, angle_deg: float = 13.0, period: int = 32, shift: int = 7) -> np.ndarray:
    """SLC-off-like stripes: tilted with the scene, 1-2 px wide at the centre, ~7 px at the east/west edges."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    along = yy - np.tan(np.deg2rad(angle_deg)) * (xx - width / 2)
    widths = 1.5 + 5.5 * np.abs(xx - width / 2) / (width / 2)
    return np.mod(along + shift, period) < widths


# --- Landsat product folders, as USGS names and describes them -----------------------------------------------

SENSOR_CODES = {"LANDSAT_5": ("LT05", "TM"), "LANDSAT_7": ("LE07", "ETM"), "LANDSAT_8": ("LC08", "OLI_TIRS"),
                "LANDSAT_9": ("LC09", "OLI_TIRS")}
# FILE_NAME_BAND_<key> in the order real MTL files list them
L1_KEYS = {"TM": ["1", "2", "3", "4", "5", "6", "7"],
           "ETM": ["1", "2", "3", "4", "5", "6_VCID_1", "6_VCID_2", "7", "8"],
           "OLI_TIRS": [str(n) for n in range(1, 12)]}
L2_KEYS = {"TM": ["1", "2", "3", "4", "5", "ST_B6", "7"], "ETM": ["1", "2", "3", "4", "5", "ST_B6", "7"],
           "OLI_TIRS": ["1", "2", "3", "4", "5", "6", "7", "ST_B10"]}
SR_MULT, SR_ADD, ST_MULT, ST_ADD = "2.75E-05", "-0.2", "3.41802E-03", "149.0"


class Bare(str):
    """An MTL value written without quotes (numbers, dates), as USGS writes them."""


def mtl_text(tree: list) -> str:
    """ODL text (``GROUP = X`` ... ``END_GROUP = X``, two-space indents) of a tree of (key, value | subtree)."""
    lines: list[str] = []

    def emit(items, depth):
        for key, value in items:
            pad = "  " * depth
            if isinstance(value, list):
                lines.append(f"{pad}GROUP = {key}")
                emit(value, depth + 1)
                lines.append(f"{pad}END_GROUP = {key}")
            else:
                lines.append(f"{pad}{key} = {value if isinstance(value, Bare) else chr(34) + value + chr(34)}")
    emit(tree, 0)
    return "\n".join(lines) + "\nEND\n"


def mtl_xml(tree: list) -> str:
    """The same tree as Collection 2's ``_MTL.xml``: one element per group and field."""
    def emit(items, depth):
        out = []
        for key, value in items:
            pad = "  " * depth
            if isinstance(value, list):
                out += [f"{pad}<{key}>", *emit(value, depth + 1), f"{pad}</{key}>"]
            else:
                out.append(f"{pad}<{key}>{value}</{key}>")
        return out
    (root, items), = tree
    return "\n".join(['<?xml version="1.0" encoding="UTF-8"?>', f"<{root}>", *emit(items, 1), f"</{root}>"]) + "\n"


def mtl_json(tree: list) -> str:
    """The same tree as Collection 2's ``_MTL.json``: nested objects, every value a string."""
    import json

    def obj(items):
        return {k: obj(v) if isinstance(v, list) else str(v) for k, v in items}
    return json.dumps(obj(tree), indent=2) + "\n"


def landsat_mtl(*, product_id: str, l1_id: str, spacecraft: str, sensor: str, level: str, collection: int,
                acquired: str, files: dict, qa: str | None, slc: str | None) -> list:
    """The MTL tree of a product, with the real groups and field names of its collection and level."""
    ymd = acquired.replace("-", "")
    keys = list(files)
    rescale = [(f"RADIANCE_MULT_BAND_{k}", Bare(f"{0.6 + 0.1 * i:.4E}")) for i, k in enumerate(keys)]
    rescale += [(f"RADIANCE_ADD_BAND_{k}", Bare(f"{-1.5 - i:.5f}")) for i, k in enumerate(keys)]
    rescale += [(f"REFLECTANCE_MULT_BAND_{k}", Bare(f"{1.9 + 0.1 * i:.4f}E-03"))
                for i, k in enumerate(keys) if "6" not in k and k not in ("10", "11")]
    thermal = [k for k in keys if k.startswith("6") or k in ("10", "11")]
    constants = [(f"K{n}_CONSTANT_BAND_{k}", Bare("666.09" if n == 1 else "1282.71")) for k in thermal for n in (1, 2)]
    image = [("SPACECRAFT_ID", spacecraft), ("SENSOR_ID", sensor), ("WRS_PATH", Bare("044")),
             ("WRS_ROW", Bare("034")), ("DATE_ACQUIRED", Bare(acquired)), ("SCENE_CENTER_TIME", "18:43:19.5690620Z"),
             ("CLOUD_COVER", Bare("12.00"))]
    if collection == 1:
        return [("L1_METADATA_FILE", [
            ("METADATA_FILE_INFO", [("ORIGIN", "Image courtesy of the U.S. Geological Survey"),
                                    ("REQUEST_ID", "0501906188198_00004"),
                                    ("LANDSAT_SCENE_ID", f"{product_id[:2]}{product_id[3]}044034{ymd}EDC00"),
                                    ("LANDSAT_PRODUCT_ID", product_id), ("COLLECTION_NUMBER", Bare("01")),
                                    ("STATION_ID", "EDC")]),
            ("PRODUCT_METADATA", [("DATA_TYPE", level), ("COLLECTION_CATEGORY", "T1"), ("OUTPUT_FORMAT", "GEOTIFF"),
                                  *image, *[(f"FILE_NAME_BAND_{k}", v) for k, v in files.items()],
                                  ("FILE_NAME_BAND_QUALITY", f"{product_id}_BQA.TIF"),
                                  ("METADATA_FILE_NAME", f"{product_id}_MTL.txt")]),
            ("RADIOMETRIC_RESCALING", rescale),
            ("THERMAL_CONSTANTS", constants),
            ("PROJECTION_PARAMETERS", [("MAP_PROJECTION", "UTM"), ("UTM_ZONE", Bare("33"))]),
        ])]
    contents = [("ORIGIN", "Image courtesy of the U.S. Geological Survey"), ("LANDSAT_PRODUCT_ID", product_id),
                ("PROCESSING_LEVEL", level), ("COLLECTION_NUMBER", Bare("02")), ("COLLECTION_CATEGORY", "T1"),
                ("OUTPUT_FORMAT", "GEOTIFF"), *[(f"FILE_NAME_BAND_{k}", v) for k, v in files.items()]]
    if qa:
        contents.append(("FILE_NAME_QUALITY_L1_PIXEL", qa))
    contents += [("FILE_NAME_METADATA_ODL", f"{product_id}_MTL.txt"),
                 ("FILE_NAME_METADATA_XML", f"{product_id}_MTL.xml")]
    if slc:
        image.append(("SENSOR_MODE_SLC", slc))
    tree = [("PRODUCT_CONTENTS", contents), ("IMAGE_ATTRIBUTES", image),
            ("PROJECTION_ATTRIBUTES", [("MAP_PROJECTION", "UTM"), ("UTM_ZONE", Bare("33"))])]
    l1_record = [("LANDSAT_PRODUCT_ID", l1_id), ("PROCESSING_LEVEL", "L1TP")]
    if level.startswith("L2"):
        sr = [k for k in keys if not k.startswith("ST_")]
        st = [k for k in keys if k.startswith("ST_")]
        l1_keys = L1_KEYS[sensor][:]
        tree += [
            ("LEVEL2_PROCESSING_RECORD", [("LANDSAT_PRODUCT_ID", product_id), ("PROCESSING_LEVEL", level)]),
            ("LEVEL2_SURFACE_REFLECTANCE_PARAMETERS",
             [(f"REFLECTANCE_MAXIMUM_BAND_{k}", Bare("1.602213")) for k in sr]
             + [(f"REFLECTANCE_MULT_BAND_{k}", Bare(SR_MULT)) for k in sr]
             + [(f"REFLECTANCE_ADD_BAND_{k}", Bare(SR_ADD)) for k in sr]),
            ("LEVEL2_SURFACE_TEMPERATURE_PARAMETERS",
             [(f"TEMPERATURE_MULT_BAND_{k}", Bare(ST_MULT)) for k in st]
             + [(f"TEMPERATURE_ADD_BAND_{k}", Bare(ST_ADD)) for k in st]),
            # the Level-1 source names its own files: a reader must take the bands from PRODUCT_CONTENTS
            ("LEVEL1_PROCESSING_RECORD", l1_record + [(f"FILE_NAME_BAND_{k}", f"{l1_id}_B{k}.TIF") for k in l1_keys]),
            ("LEVEL1_RADIOMETRIC_RESCALING", [(f"RADIANCE_MULT_BAND_{k}", Bare("7.7874E-01")) for k in l1_keys]),
        ]
    else:
        tree += [("LEVEL1_PROCESSING_RECORD", l1_record), ("LEVEL1_RADIOMETRIC_RESCALING", rescale),
                 ("LEVEL1_THERMAL_CONSTANTS", constants)]
    return [("LANDSAT_METADATA_FILE", tree)]


def write_landsat_product(parent: Path, *, spacecraft: str = "LANDSAT_7", level: str = "L2SP", collection: int = 2,
                          acquired: str = "2010-08-15", shape: tuple[int, int] = (64, 64), data: dict | None = None,
                          files: list | None = None, qa: np.ndarray | None = None, gap_masks: dict | None = None,
                          gm_layout: str = "gap_mask", gm_gzip: bool = False, mtl: tuple = ("txt",),
                          folder: str | None = None, nodata=None, slc: str | None = None) -> SimpleNamespace:
    """Write a Landsat product folder with USGS's file names and MTL structure; return what was written.

    ``data`` maps MTL band keys (``"1"``, ``"6_VCID_1"``, ``"ST_B6"``) to 2-D arrays (default: smooth
    fields); ``files`` lists the keys whose files are written (default: every band the MTL names;
    the pan band at twice the resolution). ``qa``: the QA_PIXEL array (Collection 2; default: bit 6,
    clear, everywhere). ``gap_masks``: key -> bool array, True = gap, written 0 = gap as USGS does,
    in ``gap_mask/`` or beside the bands (``gm_layout="top"``), gzipped with ``gm_gzip``. ``mtl``:
    the metadata formats to write (``"txt"``, ``"xml"``, ``"json"``).
    """
    code, sensor = SENSOR_CODES[spacecraft]
    ymd = acquired.replace("-", "")
    product_id = f"{code}_{level}_044034_{ymd}_20200911_{collection:02d}_T1"
    l1_id = product_id.replace(level, "L1TP")
    keys = (L2_KEYS if level.startswith("L2") else L1_KEYS)[sensor]

    def label(k):
        return k if k.startswith("ST_") else (f"SR_B{k}" if level.startswith("L2") else f"B{k}")

    names = {k: f"{product_id}_{label(k)}.TIF" for k in keys}
    dtype = "uint8" if not level.startswith("L2") and sensor != "OLI_TIRS" else "uint16"
    root = parent / (folder or product_id)
    root.mkdir(parents=True, exist_ok=True)
    h, w = shape
    fields = smooth_field(len(keys), h, w)
    data = data or {}
    for i, k in enumerate(files if files is not None else keys):
        if k == "8":  # pan: 15 m, another grid
            write_geotiff(root / names[k], np.full((2 * h, 2 * w), 100, dtype=dtype),
                          transform=TRANSFORM * Affine.scale(0.5))
            continue
        values = data.get(k, to_range(fields[keys.index(k):keys.index(k) + 1], dtype)[0])
        write_geotiff(root / names[k], np.asarray(values).astype(dtype), nodata=nodata)
    qa_name = f"{product_id}_QA_PIXEL.TIF" if collection == 2 else None
    if qa_name:
        write_geotiff(root / qa_name, np.full(shape, 1 << 6, dtype=np.uint16) if qa is None else qa.astype(np.uint16))
    else:
        write_geotiff(root / f"{product_id}_BQA.TIF", np.zeros(shape, dtype=np.uint16))
    for k, gaps in (gap_masks or {}).items():
        gm_dir = root / "gap_mask" if gm_layout == "gap_mask" else root
        gm_dir.mkdir(exist_ok=True)
        gm = write_geotiff(gm_dir / f"{l1_id}_GM_B{k}.TIF", (~np.asarray(gaps)).astype(np.uint8))
        if gm_gzip:
            import gzip

            gm.with_name(gm.name + ".gz").write_bytes(gzip.compress(gm.read_bytes()))
            gm.unlink()
    slc = slc or ("OFF" if spacecraft == "LANDSAT_7" and collection == 2 and acquired > "2003-05-31" else
                  "ON" if spacecraft == "LANDSAT_7" and collection == 2 else None)
    tree = landsat_mtl(product_id=product_id, l1_id=l1_id, spacecraft=spacecraft, sensor=sensor, level=level,
                       collection=collection, acquired=acquired, files=names, qa=qa_name, slc=slc)
    mtls = []
    for fmt in mtl:
        path = root / f"{product_id}_MTL.{fmt}"
        path.write_text({"txt": mtl_text, "xml": mtl_xml, "json": mtl_json}[fmt](tree))
        mtls.append(path)
    return SimpleNamespace(folder=root, product_id=product_id, l1_id=l1_id, names=names, keys=keys, mtls=mtls,
                           qa=root / qa_name if qa_name else None, dtype=dtype,
                           path=lambda k: root / names[k])


@pytest.fixture
def synth():
    """The synthetic-data helpers of this conftest, as a namespace."""
    return SimpleNamespace(
        CRS=CRS, TRANSFORM=TRANSFORM, RANGES=RANGES, NODATA=NODATA, smooth_field=smooth_field, to_range=to_range,
        stripe_mask=stripe_mask, write_geotiff=write_geotiff, inside_polygon=inside_polygon,
        distance_to_polygon=distance_to_polygon, distance_to_boundary=distance_to_boundary, rotated_vertices=rotated_vertices, slc_stripes=slc_stripes,
        landsat_product=write_landsat_product,
    )


@pytest.fixture
def tiny_network():
    """The paper's layout (5 levels, kernels 3/3/1) with 8/8/4 channels per level."""
    from tilefill._config import NetworkConfig

    return NetworkConfig(channels_down=(8,) * 5, channels_up=(8,) * 5, channels_skip=(4,) * 5)


@pytest.fixture
def tiny_config():
    """A whole-run config: tiny network, 3 iterations, 64 px tiles with 32 px overlap, CPU."""
    from tilefill import load_config

    return load_config("paper", {
        "name": "tiny",
        "network.channels_down": [8] * 5, "network.channels_up": [8] * 5, "network.channels_skip": [4] * 5,
        "fit.iterations": 3, "fit.device": "cpu", "tiles.size": 64, "tiles.overlap": 32,
    })


@pytest.fixture
def striped_scene(tmp_path):
    """A 3-band uint16 GeoTIFF (128 x 160) with a rotated nodata collar and stripe gaps in its top rows.

    Returns a namespace: path, values (what was written), truth (values before the gaps),
    data (bool: pixel carries data), inside (the true footprint), stripes (the gap stripes).
    """
    h, w, bands = 128, 160, 3
    truth = to_range(smooth_field(bands, h, w), "uint16")
    # a gently rotated footprint; the collar is nodata (0)
    verts = rotated_vertices(size=0, angle_deg=6.0, half_w=66.0, half_h=48.0) + np.array([w / 2, h / 2])
    inside = inside_polygon(verts, h, w)
    stripes = stripe_mask(h, w, period=16, width_px=3) & (np.arange(h)[:, None] < 40)
    data = inside & ~stripes
    values = np.where(data[None], truth, 0).astype(np.uint16)
    path = write_geotiff(tmp_path / "striped.tif", values, nodata=0, descriptions=["blue", "green", "red"],
                         tags={"SENSOR": "synthetic", "SCENE_ID": "T42"}, band_tags=[{"WAVELENGTH": "0.48"}, {}, {}])
    return SimpleNamespace(path=path, values=values, truth=truth, data=data, inside=inside, stripes=stripes,
                           vertices=verts, height=h, width=w, bands=bands)


@pytest.fixture
def one_torch_thread(monkeypatch):
    """Fits in this process use one torch thread, as the workers do (deterministic); restored afterwards."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("TILEFILL_THREADS", "1")
    yield
    torch.set_num_threads(before)


def interruptible():
    """Popen's ``preexec_fn`` for a child that must see Ctrl-C as a person's terminal sends it.

    A shell starting a job in the background (CI runners do) makes SIGINT ignored, and Python
    then never installs its KeyboardInterrupt handler in the child: restore the default first.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def listening_sockets(pid: int) -> list[tuple[str, int, int]]:
    """``(address, port, pid)`` of every socket listening in process ``pid`` and all its descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    found = []
    for proc in procs:
        try:
            found += [(c.laddr.ip, c.laddr.port, proc.pid) for c in proc.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass  # gone between the listing and the look
    return found


LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")


@pytest.fixture(autouse=True)
def _tilefill_logger_restored():
    """The CLI points the ``tilefill`` logger at stderr and stops it propagating. A module-scoped fixture that runs
    the CLI does so before any function fixture starts, so restoring what a test found is not enough: every test
    starts and ends with the logger as Python makes it (no handler, level unset, propagating), so that ``caplog`` (a
    handler on the root logger) sees tilefill's records whatever ran before."""
    import logging

    logger = logging.getLogger("tilefill")

    def pristine() -> None:
        logger.handlers[:] = []
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
        logger.disabled = False

    pristine()
    yield
    pristine()


@pytest.fixture
def tilefill_log():
    """The ``tilefill`` logger's records at INFO and above, taken by a handler on that logger itself (not the
    root's, as ``caplog``), so that what the run says is seen however logging was configured before."""
    import logging

    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("tilefill")
    handler = _Keep(logging.INFO)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
