"""The corpus of bad inputs: each kind made on disk, run through ``tilefill``, with the line it must print.

Every kind below is a mistake a user or an archive can make (a missing or damaged file, a mask of another
place, a product folder whose metadata names a file outside it, a band that cannot be matched); each must end
in one line ``Error: ...`` that contains its expected text, exit 1, no traceback, and nothing written: no
output, no partial file, no work store. A few inputs that look wrong but are accepted say so in one line of
the log. The table in ``docs/operations.md`` lists every kind with its line (checked below).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from rasterio.control import GroundControlPoint

from conftest import TRANSFORM, smooth_field, stripe_mask, to_range, write_geotiff, write_landsat_product
from tilefill.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
FAST = ["--method", "gdal", "--workers", "0", "--tile-size", "64", "--overlap", "32"]
N = 64


class Kind(NamedTuple):
    name: str
    make: Callable[[Path], list]  # writes the input under the folder, returns the command's arguments (less -o)
    line: str  # what the one line must contain (the input's own path written as {tmp})


# --- inputs ------------------------------------------------------------------------------------------------


def _scene(tmp: Path, name: str = "scene.tif", **kw) -> Path:
    values = to_range(smooth_field(2, N, N), "uint16")
    values[:, 20:23, :] = 0
    return write_geotiff(tmp / name, values, nodata=0, **kw)


def _mask(tmp: Path, bands: int = 1, shape=(N, N), **kw) -> Path:
    return write_geotiff(
        tmp / "mask.tif",
        np.broadcast_to(stripe_mask(*shape, period=16, width_px=2), (bands, *shape)).astype(np.uint8),
        **kw,
    )


def _cut(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _with_mask(tmp: Path, **kw) -> list:
    return [_scene(tmp), "--mask", _mask(tmp, **kw)]


def _gcp_mask(tmp: Path) -> list:
    path = _mask(tmp, crs=None, transform=Affine.identity())
    with rasterio.open(path, "r+") as ds:
        ds.gcps = (
            [
                GroundControlPoint(0, 0, 500000, 4200000),
                GroundControlPoint(N, N, 501920, 4198080),
                GroundControlPoint(0, N, 500000, 4198080),
            ],
            rasterio.crs.CRS.from_epsg(32633),
        )
    return [_scene(tmp), "--mask", path]


def _damaged_block(tmp: Path) -> list:
    path = tmp / "scene.tif"
    values = to_range(smooth_field(2, N, N), "uint16")
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=N,
        width=N,
        count=2,
        dtype="uint16",
        crs="EPSG:32633",
        transform=TRANSFORM,
        nodata=0,
        tiled=True,
        blockxsize=32,
        blockysize=32,
        compress="deflate",
    ) as ds:
        ds.write(values)
        offset = int(ds.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1) or 0)
    data = bytearray(path.read_bytes())
    data[offset : offset + 64] = bytes(64)  # the deflate stream of one block, zeroed
    path.write_bytes(bytes(data))
    return [path]


def _product(tmp: Path, **kw):
    return write_landsat_product(tmp, shape=(N, N), **kw)


def _edit_mtl(product, old: str, new: str, fmt: str = "txt") -> Path:
    mtl = next(product.folder.glob(f"*_MTL.{fmt}"))
    text = mtl.read_text()
    assert old in text, old
    mtl.write_text(text.replace(old, new, 1))
    return product.folder


def _band1_named(tmp: Path, name: str, fmt: str = "txt") -> list:
    p = _product(tmp, mtl=(fmt,))
    quoted = {"txt": '"{}"', "xml": ">{}<", "json": '"{}"'}[fmt]
    new = quoted.format(name.replace("\\", "\\\\") if fmt == "json" else name)
    return [_edit_mtl(p, quoted.format(p.names["1"]), new, fmt)]


def _band1_link_outside(tmp: Path) -> list:
    p = _product(tmp)
    outside = tmp / "elsewhere.TIF"
    p.path("1").rename(outside)
    os.symlink(outside, p.path("1"))
    return [p.folder]


def _gap_mask_link_outside(tmp: Path) -> list:
    p = _product(
        tmp,
        level="L1TP",
        collection=1,
        acquired="2005-06-01",
        gap_masks={k: stripe_mask(N, N) for k in ("1", "2", "3", "4", "5", "7")},
    )
    gm = next((p.folder / "gap_mask").glob("*_GM_B1.TIF"))
    outside = tmp / "elsewhere_GM.TIF"
    gm.rename(outside)
    os.symlink(outside, gm)
    return [p.folder]


def _c1(tmp: Path, **kw):
    return _product(tmp, level="L1TP", collection=1, acquired="2005-06-01", **kw)


def _gap_mask_shifted(tmp: Path) -> list:
    p = _c1(tmp, gap_masks={k: stripe_mask(N, N) for k in ("1", "2", "3", "4", "5", "7")})
    gm = next((p.folder / "gap_mask").glob("*_GM_B2.TIF"))
    write_geotiff(gm, (~stripe_mask(N, N)).astype(np.uint8), transform=TRANSFORM * Affine.translation(0, 40))
    return [p.folder]


def _gap_mask_gzip_damaged(tmp: Path) -> list:
    speckle = (
        np.random.default_rng(0).random((N, N)) < 0.1
    )  # pixels enough for the deflated stream to outlast its header
    p = _c1(tmp, gap_masks={k: speckle for k in ("1", "2", "3", "4", "5", "7")}, gm_gzip=True)
    gm = next((p.folder / "gap_mask").glob("*_GM_B1.TIF.gz"))
    data = bytearray(gm.read_bytes())
    at = int(len(data) * 0.7)
    data[at : at + 8] = bytes(8)  # the stream damaged past the TIFF header: it opens, its pixels do not inflate
    gm.write_bytes(bytes(data))
    return [p.folder]


def _qa_other_size(tmp: Path) -> list:
    p = _product(tmp)
    write_geotiff(p.qa, np.full((N // 2, N), 1 << 6, dtype=np.uint16))
    return [p.folder, "--mask-qa", "cloud"]


def _two_products(tmp: Path) -> list:
    p = _product(tmp)
    other = _product(tmp / "other", acquired="2011-08-15")
    (p.folder / other.mtls[0].name).write_text(other.mtls[0].read_text())
    return [p.folder]


def _bands_on_other_grids(tmp: Path) -> list:
    p = _product(tmp)
    write_geotiff(
        p.path("2"), to_range(smooth_field(1, N, N), "uint16")[0], transform=TRANSFORM * Affine.translation(3, 0)
    )
    return [p.folder]


def _removed(path: Path) -> Path:
    path.unlink()
    return path


def _no_band_files(tmp: Path) -> list:
    p = _product(tmp)
    for k in p.keys:
        _removed(p.path(k))
    return [p.folder]


def _no_band_names(tmp: Path) -> list:
    p = _product(tmp)
    mtl = p.mtls[0]
    mtl.write_text(
        "\n".join(line for line in mtl.read_text().splitlines() if not line.strip().startswith("FILE_NAME_BAND_"))
        + "\n"
    )
    return [p.folder]


def _guide(tmp: Path, damage: Callable[[Path], object]) -> list:
    scene = _scene(tmp)
    guide = _scene(tmp, "guide.tif")  # bands matched by position
    damage(guide)
    return [scene, "--guide", guide, "--method", "llhm"]


KINDS = [
    # a GeoTIFF scene
    Kind("scene missing", lambda t: [t / "nope.tif"], "scene not found: {tmp}/nope.tif"),
    Kind(
        "scene not a raster",
        lambda t: [(t / "s.tif", (t / "s.tif").write_text("not a GeoTIFF"))[0]],
        "not a raster GDAL can read: {tmp}/s.tif",
    ),
    Kind(
        "scene an empty file",
        lambda t: [(t / "s.tif", (t / "s.tif").write_bytes(b""))[0]],
        "not a raster GDAL can read: {tmp}/s.tif",
    ),
    Kind("scene truncated", lambda t: [_cut(_scene(t))], "cannot read {tmp}/scene.tif: band 1 in rows 0-63"),
    Kind("scene with a damaged block", _damaged_block, "IReadBlock failed at X offset 1, Y offset 1"),
    Kind(
        "scene of complex numbers",
        lambda t: [write_geotiff(t / "c.tif", np.ones((1, N, N), dtype=np.complex64))],
        "c.tif: unsupported data type complex64",
    ),
    Kind(
        "scene with no known pixel",
        lambda t: [write_geotiff(t / "e.tif", np.zeros((1, N, N), np.uint8), nodata=0)],
        "no known pixel in band(s) band_1 of {tmp}/e.tif",
    ),
    Kind("tile size below the smallest", lambda t: [_scene(t), "--tile-size", "32"], "tile size must be at least 64 px, not 32"),
    Kind(
        "band number out of range", lambda t: [_scene(t), "--bands", "5"], "scene.tif has bands 1-2; cannot select [5]"
    ),
    Kind("band name on a GeoTIFF", lambda t: [_scene(t), "--bands", "blue"], "--bands takes band numbers"),
    Kind("band selected twice", lambda t: [_scene(t), "--bands", "1,1"], "a band is selected twice"),
    Kind("--mask-qa on a GeoTIFF", lambda t: [_scene(t), "--mask-qa", "cloud"], "give its gaps as --mask"),
    # a --mask
    Kind("mask missing", lambda t: [_scene(t), "--mask", t / "nope.tif"], "mask not found: {tmp}/nope.tif"),
    Kind(
        "mask not a raster",
        lambda t: [_scene(t), "--mask", (t / "m.tif", (t / "m.tif").write_text("x"))[0]],
        "not a raster GDAL can read: mask {tmp}/m.tif",
    ),
    Kind(
        "mask of another size",
        lambda t: _with_mask(t, shape=(N // 2, N)),
        "mask mask.tif is 32x64 px but the scene is 64x64",
    ),
    Kind(
        "mask of another place",
        lambda t: _with_mask(t, transform=TRANSFORM * Affine.translation(100000 / 30, 0)),
        "mask mask.tif is not on the scene's grid: it has EPSG:32633, transform (30, 0, 600000, 0, -30, 4200000), "
        "the scene EPSG:32633, transform (30, 0, 500000, 0, -30, 4200000); corners 3333 px apart",
    ),
    Kind(
        "mask in another CRS",
        lambda t: _with_mask(t, crs="EPSG:32634"),
        "mask mask.tif is not on the scene's grid: it has EPSG:32634",
    ),
    Kind(
        "mask half a pixel off",
        lambda t: _with_mask(t, transform=TRANSFORM * Affine.translation(0.5, 0)),
        "corners 0.5 px apart",
    ),
    Kind(
        "mask of another pixel size",
        lambda t: _with_mask(t, transform=TRANSFORM * Affine.scale(0.5)),
        "corners 32 px apart",
    ),
    Kind(
        "mask with a transform but no CRS",
        lambda t: _with_mask(t, crs=None),
        "mask mask.tif is not on the scene's grid: it has no CRS",
    ),
    Kind("mask georeferenced by GCPs only", _gcp_mask, "mask mask.tif is georeferenced by ground control points only"),
    Kind(
        "mask with another band count",
        lambda t: _with_mask(t, bands=3),
        "mask mask.tif has 3 bands; give 1, or one per selected band (2)",
    ),
    Kind(
        "mask truncated",
        lambda t: [_scene(t), "--mask", _cut(_mask(t), 0.3)],
        "cannot read {tmp}/mask.tif: band 1 in rows 0-63",
    ),
    # a Landsat product folder and its metadata
    Kind(
        "product folder without its MTL",
        lambda t: [_removed(_product(t).mtls[0]).parent],
        "has no *_MTL.txt, *_MTL.xml or *_MTL.json",
    ),
    Kind(
        "MTL names ../other.tif",
        lambda t: _band1_named(t, "../other.tif"),
        "_MTL.txt: FILE_NAME_BAND_1 = '../other.tif' is not a file name",
    ),
    Kind(
        "MTL names an absolute path",
        lambda t: _band1_named(t, "/etc/hostname"),
        "_MTL.txt: FILE_NAME_BAND_1 = '/etc/hostname' is not a file name",
    ),
    Kind(
        "MTL names a file in a subfolder",
        lambda t: _band1_named(t, "sub/b1.TIF"),
        "FILE_NAME_BAND_1 = 'sub/b1.TIF' is not a file name",
    ),
    Kind(
        "MTL names a Windows path",
        lambda t: _band1_named(t, "..\\b1.TIF"),
        "FILE_NAME_BAND_1 = '..\\\\b1.TIF' is not a file name",
    ),
    Kind("MTL names ..", lambda t: _band1_named(t, ".."), "FILE_NAME_BAND_1 = '..' is not a file name"),
    Kind(
        "MTL (xml) names ../other.tif",
        lambda t: _band1_named(t, "../other.tif", "xml"),
        "_MTL.xml: FILE_NAME_BAND_1 = '../other.tif' is not a file name",
    ),
    Kind(
        "MTL (json) names an absolute path",
        lambda t: _band1_named(t, "/etc/hostname", "json"),
        "_MTL.json: FILE_NAME_BAND_1 = '/etc/hostname' is not a file name",
    ),
    Kind(
        "MTL names a link out of the folder",
        _band1_link_outside,
        "_MTL.txt: FILE_NAME_BAND_1 names LE07_L2SP_044034_20100815_20200911_02_T1_SR_B1.TIF, a link that leads to {tmp}/elsewhere.TIF, outside the product folder",
    ),
    Kind(
        "MTL names a QA band out of the folder",
        lambda t: [_edit_mtl(p := _product(t), f'"{p.qa.name}"', '"../qa.TIF"')],
        "FILE_NAME_QUALITY_L1_PIXEL = '../qa.TIF' is not a file name",
    ),
    Kind(
        "gap mask a link out of the folder",
        _gap_mask_link_outside,
        "the gap mask LE07_L1TP_044034_20050601_20200911_01_T1_GM_B1.TIF is a link that leads to {tmp}/elsewhere_GM.TIF",
    ),
    Kind(
        "MTL damaged (ODL)",
        lambda t: [_edit_mtl(_product(t), "GROUP = PRODUCT_CONTENTS", "END_GROUP = PRODUCT_CONTENTS")],
        "closes no group; the MTL file is damaged",
    ),
    Kind(
        "MTL damaged (xml)",
        lambda t: [_edit_mtl(_product(t, mtl=("xml",)), "</PRODUCT_CONTENTS>", "", "xml")],
        "cannot read the metadata file {tmp}/LE07_L2SP_044034_20100815_20200911_02_T1/LE07_L2SP_044034_20100815_20200911_02_T1_MTL.xml (ParseError",
    ),
    Kind(
        "MTL damaged (json)",
        lambda t: [_edit_mtl(_product(t, mtl=("json",)), "{", "[", "json")],
        "_MTL.json (JSONDecodeError",
    ),
    Kind(
        "MTL (json) not an object",
        lambda t: [
            (p := _product(t, mtl=("json",))).folder,
            p.mtls[0].write_text(json.dumps(["LANDSAT_METADATA_FILE"])),
        ][:1],
        "_MTL.json (ValueError: its top level is not an object)",
    ),
    Kind(
        "MTL field missing",
        lambda t: [_edit_mtl(_product(t), 'PROCESSING_LEVEL = "L2SP"', "")],
        "_MTL.txt: no PROCESSING_LEVEL in PRODUCT_CONTENTS",
    ),
    Kind(
        "MTL date 2010-13-45",
        lambda t: [_edit_mtl(_product(t), "DATE_ACQUIRED = 2010-08-15", "DATE_ACQUIRED = 2010-13-45")],
        "DATE_ACQUIRED '2010-13-45' cannot be read",
    ),
    Kind(
        "MTL of no Landsat product",
        lambda t: [_edit_mtl(_product(t), "GROUP = LANDSAT_METADATA_FILE", "GROUP = SENTINEL")],
        "neither LANDSAT_METADATA_FILE (Collection 2) nor L1_METADATA_FILE",
    ),
    Kind(
        "MTL of an unknown sensor",
        lambda t: [_edit_mtl(_product(t), 'SENSOR_ID = "ETM"', 'SENSOR_ID = "MSS"')],
        "sensor MSS is not one tilefill reads",
    ),
    Kind("MTL names no band file", _no_band_names, "its metadata names no band file"),
    Kind(
        "band file missing",
        lambda t: [_removed((p := _product(t)).path("1")).parent, "--bands", "blue"],
        "band blue (SR_B1) is selected but its file",
    ),
    Kind("no band file in the folder", _no_band_files, "none of the reflective band files"),
    Kind("two products in one folder", _two_products, "mixes two products"),
    Kind(
        "bands of different shape",
        lambda t: [_product(t, level="L1TP", files=["1", "8"]).folder, "--bands", "1,8"],
        "bands of different shape in {tmp}/LE07_L1TP_044034_20100815_20200911_02_T1: B1 is 64x64, B8 is 128x128",
    ),
    Kind(
        "bands on different grids",
        _bands_on_other_grids,
        "bands on different grids in {tmp}/LE07_L2SP_044034_20100815_20200911_02_T1: SR_B1 has EPSG:32633",
    ),
    Kind(
        "band file truncated",
        lambda t: [_cut((p := _product(t)).path("1"), 0.4).parent],
        "cannot read {tmp}/LE07_L2SP_044034_20100815_20200911_02_T1/LE07_L2SP_044034_20100815_20200911_02_T1_SR_B1.TIF: band 1 in rows 0-63",
    ),
    Kind("band of an unknown name", lambda t: [_product(t).folder, "--bands", "fog"], "has no band 'fog'"),
    Kind(
        "thermal with reflective",
        lambda t: [_product(t).folder, "--bands", "red,thermal"],
        "never fitted in one network",
    ),
    Kind("--mask-qa on Collection 1", lambda t: [_c1(t).folder, "--mask-qa", "cloud"], "is Collection 1"),
    Kind("--mask-qa of an unknown condition", lambda t: [_product(t).folder, "--mask-qa", "fog"], "--mask-qa takes"),
    Kind(
        "--mask-qa cirrus on Landsat 7",
        lambda t: [_product(t).folder, "--mask-qa", "cirrus"],
        "set by Landsat 8-9 only",
    ),
    Kind(
        "--mask-qa without QA_PIXEL",
        lambda t: [_removed(_product(t).qa).parent, "--mask-qa", "cloud"],
        "--mask-qa needs",
    ),
    Kind(
        "gap masks for some bands only",
        lambda t: [_c1(t, gap_masks={"1": stripe_mask(N, N)}).folder],
        "has gap masks for some selected bands but not all (only B1)",
    ),
    Kind(
        "gap mask of another place",
        _gap_mask_shifted,
        "gap mask LE07_L1TP_044034_20050601_20200911_01_T1_GM_B2.TIF is not on the scene's grid",
    ),
    Kind(
        "gap mask (gzip) damaged",
        _gap_mask_gzip_damaged,
        "cannot read {tmp}/LE07_L1TP_044034_20050601_20200911_01_T1/gap_mask/LE07_L1TP_044034_20050601_20200911_01_T1_GM_B1.TIF.gz: band 1 in rows 0-63",
    ),
    Kind(
        "QA band of another size",
        _qa_other_size,
        "QA band LE07_L2SP_044034_20100815_20200911_02_T1_QA_PIXEL.TIF is 32x64 px but the scene is 64x64",
    ),
    # a --guide
    Kind("guide truncated", lambda t: _guide(t, _cut), "cannot read {tmp}/guide.tif: band 1 in rows 0-63"),
    Kind(
        "guide of another place",
        lambda t: _guide(
            t,
            lambda g: write_geotiff(
                g, np.ones((2, N, N), np.uint16), nodata=0, transform=TRANSFORM * Affine.translation(5000, 0)
            ),
        ),
        "guide guide.tif does not overlap the scene",
    ),
]


# --- inputs by URL and STAC items (tests/servers.py: the local S3 server) ---------------------------------------

_NO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_SESSION_TOKEN": None,
                   "AWS_PROFILE": None, "AWS_NO_SIGN_REQUEST": None, "CPL_AWS_CREDENTIALS_FILE": "/nonexistent",
                   "AWS_CONFIG_FILE": "/nonexistent", "CPL_AWS_AUTODETECT_EC2": "NO"}


def _s3_scene(tmp: Path) -> str:
    """A scene on the local S3 server, in a bucket of its own; its URL."""
    from servers import new_bucket, s3_client

    bucket = new_bucket()
    s3_client().upload_file(str(_scene(tmp)), bucket, "scenes/scene.tif")
    return f"s3://{bucket}/scenes/scene.tif"


def _s3(env: dict | None = None) -> dict:
    from servers import s3_env

    return {**s3_env(), **(env or {})}


def _stac_item(tmp: Path, drop: tuple) -> Path:
    p = _product(tmp)
    assets = {k: {"href": f"./{n}"} for k, n in p.names.items()}
    assets["qa_pixel"] = {"href": f"./{p.qa.name}"}
    assets["mtl.txt"] = {"href": f"./{p.mtls[0].name}"}
    for key in drop:
        assets.pop(key)
    item = p.folder / "item.json"
    item.write_text(json.dumps({"type": "Feature", "stac_version": "1.0.0", "id": "LE07-item", "geometry": None,
                                "properties": {"datetime": "2010-08-15T10:00:00Z"}, "links": [], "assets": assets}))
    return item


def _port() -> int:
    from servers import free_port

    return free_port()


REMOTE_KINDS = [
    Kind("bucket that does not exist", lambda t: [_s3(), "s3://tf-no-such-bucket/scenes/scene.tif"],
         "cannot read the scene s3://tf-no-such-bucket/scenes/scene.tif: The specified bucket does not exist"),
    Kind("key that does not exist", lambda t: [_s3(), _s3_scene(t).replace("scene.tif", "gone.tif")],
         "/scenes/gone.tif: no such bucket or object, or no access to it"),
    Kind("no credentials for s3://", lambda t: [{**_s3(), **_NO_CREDENTIALS}, _s3_scene(t)],
         "no AWS credentials in the environment"),
    Kind("unreachable endpoint", lambda t: [_s3({"AWS_S3_ENDPOINT": f"127.0.0.1:{_port()}"}), _s3_scene(t)],
         "no answer from the endpoint"),
    Kind("URL scheme GDAL cannot read", lambda t: ["ftp://example.org/scene.tif"],
         "ftp://example.org/scene.tif: tilefill cannot read ftp:// URLs"),
    Kind("STAC item without an MTL asset", lambda t: [_stac_item(t, ("mtl.txt",))],
         "STAC item LE07-item has no MTL asset"),
    Kind("STAC item without a band's asset", lambda t: [_stac_item(t, ("3",)), "--bands", "red"],
         "STAC item LE07-item has no asset for band red (SR_B3"),
    Kind("not a STAC item", lambda t: [_write(t / "item.json", '{"type": "Collection", "id": "x"}')],
         "is not a STAC item (a GeoJSON Feature with assets)"),
]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


KINDS += REMOTE_KINDS


def _run(args: list, out: Path, *, quiet: bool = True):
    """``tilefill INPUT -o OUT`` with a fast method, then the kind's own options (which win)."""
    args = [str(a) for a in args]
    return CliRunner().invoke(main, [args[0], "-o", str(out), *FAST, *(["-q"] if quiet else []), *args[1:]])


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # the tests' own writes
@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_each_bad_input_is_one_line_exit_1_and_nothing_written(tmp_path, kind, monkeypatch):
    work = tmp_path / "in"
    work.mkdir()
    out = tmp_path / "out" / "o.tif"
    out.parent.mkdir()
    args = kind.make(work)
    if args and isinstance(args[0], dict):  # the environment a remote input is read with (credentials, endpoint)
        for k, v in args.pop(0).items():
            if v is None:
                monkeypatch.delenv(k, raising=False)
            else:
                monkeypatch.setenv(k, v)
    start = time.monotonic()
    res = _run(args, out)
    assert time.monotonic() - start < 30, "a bad input took 30 s or more to be refused"
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 1 and (res.exception is None or isinstance(res.exception, SystemExit)), res.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert kind.line.format(tmp=work) in lines[0], f"{lines[0]}\nwanted: {kind.line.format(tmp=work)}"
    assert not list(out.parent.iterdir()), "something was written beside the output"


def test_the_corpus_has_at_least_40_kinds_and_the_docs_list_each_with_its_line():
    assert len(KINDS) >= 40 and len({k.name for k in KINDS}) == len(KINDS)
    rows = {m[1]: m[2] for m in re.finditer(r"^\| (.+?) \| `(.+)` \|$", DOC.read_text(), re.MULTILINE)}
    for kind in KINDS:
        assert kind.name in rows, f"docs/operations.md lacks the row of {kind.name!r}"
        assert kind.line.format(tmp="...") == rows[kind.name], kind.name


# --- inputs that look wrong and are taken, in one line of the log ----------------------------------------------


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.parametrize(
    "scene_georef, mask_georef, says",
    [
        (
            True,
            False,
            "mask mask.tif carries no georeferencing: taken as on the scene's grid, its size (64x64 px) "
            "matching the scene's",
        ),
        (False, True, "the scene carries no georeferencing: mask mask.tif is taken as on its grid by its size"),
    ],
)
def test_a_mask_or_scene_without_georeferencing_is_matched_by_size_and_the_run_says_so(
    tmp_path, scene_georef, mask_georef, says
):
    none = dict(crs=None, transform=Affine.identity())
    scene = _scene(tmp_path, **({} if scene_georef else none))
    mask = _mask(tmp_path, **({} if mask_georef else none))
    out = tmp_path / "o.tif"
    res = _run([scene, "--mask", mask], out, quiet=False)
    assert res.exit_code == 0, res.output
    assert says in res.output and "Warning" not in res.output  # tilefill's line, not rasterio's warning
    with rasterio.open(out) as ds, rasterio.open(mask) as m:
        assert (ds.read()[:, m.read(1) > 0] > 0).all()  # the mask's stripes were filled
    # a mask of another size stays refused, georeferencing or not
    res = _run([scene, "--mask", _mask(tmp_path, shape=(N, N // 2), **none)], tmp_path / "o2.tif")
    assert res.exit_code == 1 and "is 64x32 px but the scene is 64x64" in res.output


def test_a_mask_within_the_tolerance_is_taken_without_a_word(tmp_path):
    from tilefill._scene import GRID_TOLERANCE_PX

    shift = GRID_TOLERANCE_PX / 10
    args = _with_mask(tmp_path, transform=TRANSFORM * Affine.translation(shift, -shift))
    res = _run(args, tmp_path / "o.tif", quiet=False)
    assert res.exit_code == 0 and "georeferencing" not in res.output and "scene's grid" not in res.output, res.output


def test_a_link_inside_the_product_folder_is_followed(tmp_path):
    p = _product(tmp_path)
    kept = p.folder / "kept_B1.TIF"
    p.path("1").rename(kept)
    os.symlink(kept.name, p.path("1"))  # a relative link to a file beside it
    res = _run([p.folder], tmp_path / "o.tif")
    assert res.exit_code == 0, res.output


def test_the_scene_damaged_between_reading_and_writing_is_named_and_nothing_is_written(tmp_path):
    """The final write reads the scene again: a file damaged since is the input's fault, not the output's."""
    from tilefill._cluster import LazyCluster
    from tilefill._clusterspec import ClusterSpec
    from tilefill._errors import InputReadError
    from tilefill._pipeline import finish_fill, prepare_fill, resolve_config, start_fit

    scene = _scene(tmp_path)
    intact = scene.read_bytes()
    out = tmp_path / "o.tif"
    cfg = resolve_config("default", {"method": "gdal", "tiles.size": 64, "tiles.overlap": 32})
    with LazyCluster(ClusterSpec(workers=0)) as clusters:
        prep = prepare_fill(scene, out, cfg, store_path=tmp_path / "work.zarr", keep_store=False)
        job = start_fit(prep, clusters, progress=False)
        run = job.wait() if job else None
        _cut(scene, 0.5)
        with pytest.raises(
            InputReadError,
            match=rf"^cannot read {scene}: band 1 in rows 0-63, .*: no output written; "
            rf"the work store {tmp_path}/work.zarr keeps every tile",
        ):
            finish_fill(prep, run, clusters)
        assert not out.exists() and not [p for p in tmp_path.iterdir() if "partial" in p.name]
        scene.write_bytes(intact)  # the input mended: the same run writes it from the store
        assert finish_fill(prep, run, clusters).ok and out.is_file()
