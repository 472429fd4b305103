"""Landsat product folders as USGS delivers them: Collection 1 and 2, Level-1 and Level-2, TM / ETM+ / OLI.

Every folder is written with the real file names and the real MTL structure (``synth.landsat_product``,
in conftest; a literal Collection 1 MTL below as well) and read back: the bands chosen, their order,
names and tags, what is nodata and what is a gap, the run key's inputs, the output of a real fill,
and the one-line errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.windows import Window

from conftest import IN_PROCESS
from tilefill import TilefillError, fill_batch
from tilefill._grid import TileGrid
from tilefill._landsat import parse_mtl, read_product
from tilefill._runkey import params_digest, scene_files
from tilefill._scene import open_scene
from tilefill.cli import main

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("one_torch_thread")]

TINY = str(Path(__file__).with_name("tiny.yaml"))
N = 64
SR = ["1", "2", "3", "4", "5", "7"]


def _read_all(scene):
    win = Window(0, 0, scene.info.width, scene.info.height)
    values = scene.read(win)
    return values, scene.has_data(win, values), scene.flagged(win)


def _qa(fill=None, **bits) -> np.ndarray:
    """A QA_PIXEL array: bit 6 (clear) everywhere, bit 0 where ``fill``, bit n where ``bits[name]``."""
    qa = np.full((N, N), 1 << 6, dtype=np.uint16)
    positions = {"dilated_cloud": 1, "cirrus": 2, "cloud": 3, "shadow": 4, "snow": 5}
    for name, where in bits.items():
        qa[where] |= 1 << positions[name]
        qa[where] &= ~np.uint16(1 << 6)
    if fill is not None:
        qa[fill] = 1
    return qa


def _box(y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((N, N), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# --- the metadata file -------------------------------------------------------------------------------------

C1_MTL = """GROUP = L1_METADATA_FILE
  GROUP = METADATA_FILE_INFO
    ORIGIN = "Image courtesy of the U.S. Geological Survey"
    REQUEST_ID = "0501906188198_00004"
    LANDSAT_SCENE_ID = "LE70380352019169EDC00"
    LANDSAT_PRODUCT_ID = "LE07_L1TP_038035_20190618_20190618_01_RT"
    COLLECTION_NUMBER = 01
    FILE_DATE = 2019-06-18T19:06:33Z
  END_GROUP = METADATA_FILE_INFO
  GROUP = PRODUCT_METADATA
    DATA_TYPE = "L1TP"
    COLLECTION_CATEGORY = "RT"
    SPACECRAFT_ID = "LANDSAT_7"
    SENSOR_ID = "ETM"
    SENSOR_MODE = "BUMPER"
    WRS_PATH = 038
    DATE_ACQUIRED = 2019-06-18
    FILE_NAME_BAND_1 = "LE07_L1TP_038035_20190618_20190618_01_RT_B1.TIF"
    FILE_NAME_BAND_6_VCID_1 = "LE07_L1TP_038035_20190618_20190618_01_RT_B6_VCID_1.TIF"
    FILE_NAME_BAND_8 = "LE07_L1TP_038035_20190618_20190618_01_RT_B8.TIF"
    FILE_NAME_BAND_QUALITY = "LE07_L1TP_038035_20190618_20190618_01_RT_BQA.TIF"
  END_GROUP = PRODUCT_METADATA
  GROUP = RADIOMETRIC_RESCALING
    RADIANCE_MULT_BAND_1 = 1.1807E+00
    RADIANCE_ADD_BAND_1 = -7.38071
    RADIANCE_MULT_BAND_6_VCID_1 = 6.7087E-02
    RADIANCE_ADD_BAND_6_VCID_1 = -0.06709
    REFLECTANCE_MULT_BAND_1 = 1.8807E-03
    REFLECTANCE_ADD_BAND_1 = -0.011757
  END_GROUP = RADIOMETRIC_RESCALING
  GROUP = THERMAL_CONSTANTS
    K1_CONSTANT_BAND_6_VCID_1 = 666.09
    K2_CONSTANT_BAND_6_VCID_1 = 1282.71
  END_GROUP = THERMAL_CONSTANTS
END_GROUP = L1_METADATA_FILE
END
"""


def test_a_collection1_mtl_as_usgs_wrote_it(tmp_path, synth):
    pid = "LE07_L1TP_038035_20190618_20190618_01_RT"
    (tmp_path / f"{pid}_MTL.txt").write_text(C1_MTL)
    for label in ("B1", "B6_VCID_1"):
        synth.write_geotiff(tmp_path / f"{pid}_{label}.TIF", np.full((8, 8), 90, dtype=np.uint8))
    doc = parse_mtl(tmp_path / f"{pid}_MTL.txt")
    assert doc["L1_METADATA_FILE"]["METADATA_FILE_INFO"]["FILE_DATE"] == "2019-06-18T19:06:33Z"
    product = read_product(tmp_path)
    assert (product.product_id, product.collection, product.level, product.sensor) == (pid, 1, "L1TP", "ETM")
    assert product.slc_off  # no SENSOR_MODE_SLC in Collection 1: the date says so
    assert [(b.key, b.name, b.label) for b in product.bands] == [
        ("1", "blue", "B1"), ("6_VCID_1", "thermal_low_gain", "B6_VCID_1"), ("8", "pan", "B8")]
    blue, thermal = product.bands[:2]
    assert blue.tags == {"SCALE": "1.1807E+00", "OFFSET": "-7.38071", "UNITS": "W/(m2 sr um)",
                         "REFLECTANCE_MULT": "1.8807E-03", "REFLECTANCE_ADD": "-0.011757"}
    assert thermal.tags["K1_CONSTANT"] == "666.09" and "REFLECTANCE_MULT" not in thermal.tags
    with open_scene(tmp_path) as scene:  # B8's file is not there: the default takes the reflective bands present
        assert scene.info.band_names == ("blue",)


@pytest.mark.parametrize("fmt", ["xml", "json"])
def test_txt_xml_and_json_metadata_read_alike(tmp_path, synth, fmt):
    txt = synth.landsat_product(tmp_path / "a", mtl=("txt",))
    other = synth.landsat_product(tmp_path / "b", mtl=(fmt,))
    assert parse_mtl(txt.mtls[0]) == parse_mtl(other.mtls[0])
    a, b = read_product(txt.folder), read_product(other.folder)
    assert [(x.key, x.name, x.label, x.tags) for x in a.bands] == [(x.key, x.name, x.label, x.tags) for x in b.bands]
    assert (a.product_id, a.level, a.acquired, a.slc_off) == (b.product_id, b.level, b.acquired, b.slc_off)
    assert b.metadata_files == (other.mtls[0],)


def test_a_damaged_or_foreign_metadata_file_is_refused(tmp_path, synth):
    p = synth.landsat_product(tmp_path)
    text = p.mtls[0].read_text()
    p.mtls[0].write_text(text.replace('    LANDSAT_PRODUCT_ID = "' + p.product_id + '"\n', "", 1))
    with pytest.raises(TilefillError, match="no LANDSAT_PRODUCT_ID in PRODUCT_CONTENTS"):
        read_product(p.folder)
    p.mtls[0].write_text("END_GROUP = PRODUCT_CONTENTS\n" + text)
    with pytest.raises(TilefillError, match="closes no group"):
        read_product(p.folder)
    p.mtls[0].write_text(text.replace('"ETM"', '"MSS"'))
    with pytest.raises(TilefillError, match="sensor MSS is not one tilefill reads"):
        read_product(p.folder)
    p.mtls[0].write_text("GROUP = SOMETHING_ELSE\nEND_GROUP = SOMETHING_ELSE\nEND\n")
    with pytest.raises(TilefillError, match="not a Landsat metadata file"):
        read_product(p.folder)


# --- Level-2 -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["txt", "xml"])
def test_level2_reflectance_by_default_with_names_tags_and_the_fill_flag(tmp_path, synth, fmt):
    """A Landsat-7 SLC-off Level-2 folder: SR bands 1-5, 7 in order, ST_B6 left out, QA_PIXEL fill is nodata."""
    fill = _box(0, N, 0, 4)  # a collar QA_PIXEL marks as fill...
    stripe = _box(20, 23, 0, N)  # ...and an SLC-off stripe: SR holds 0 there, QA_PIXEL marks fill too
    data = {k: np.where(stripe | fill, 0, 7000 + 100 * i) for i, k in enumerate(SR)}
    data["1"][40, 40] = 0  # SR fill that QA_PIXEL does not flag: still nodata (0, no nodata declared)
    data["2"][50, 50] = 9  # data QA_PIXEL says is fill: nodata
    qa = _qa(fill=fill | stripe | _box(50, 51, 50, 51))
    p = synth.landsat_product(tmp_path, data=data, qa=qa, mtl=(fmt,))
    with open_scene(p.folder) as scene:
        info = scene.info
        assert info.band_names == ("blue", "green", "red", "nir", "swir1", "swir2")
        assert info.sources == tuple(str(p.path(k)) for k in SR)
        assert all("_SR_B" in s for s in info.sources)
        assert info.nodata == 0 and info.dtype == "uint16"
        assert [t["LANDSAT_BAND"] for t in info.band_tags] == ["SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B7"]
        assert all(t["SCALE"] == "2.75E-05" and t["OFFSET"] == "-0.2" and t["UNITS"] == "reflectance"
                   for t in info.band_tags)
        assert info.tags["LANDSAT_PRODUCT_ID"] == p.product_id == "LE07_L2SP_044034_20100815_20200911_02_T1"
        assert (info.tags["PROCESSING_LEVEL"], info.tags["DATE_ACQUIRED"], info.tags["SENSOR_MODE_SLC"]) == (
            "L2SP", "2010-08-15", "OFF")
        assert scene.product.slc_off and "SLC-off: stripes expected" in scene.product.describe()
        values, data_mask, flagged = _read_all(scene)
        files = scene_files(scene)
    assert flagged is None  # no gap mask in a Level-2 product, no --mask-qa
    expected = ~(fill | stripe | _box(50, 51, 50, 51))
    np.testing.assert_array_equal(data_mask[1:], np.broadcast_to(expected, (5, N, N)))
    np.testing.assert_array_equal(data_mask[0], expected & ~_box(40, 41, 40, 41))
    # the run key reads the QA band that decides nodata, and the metadata that chose the files
    assert str(p.qa.resolve()) in files and str(p.mtls[0].resolve()) in files


def test_bands_by_name_number_or_label_in_the_order_asked(tmp_path, synth):
    p = synth.landsat_product(tmp_path)
    for ask in ("nir,red,green", "4,3,2", "SR_B4,sr_b3,B2", [4, 3, 2]):
        with open_scene(p.folder, bands=ask) as scene:
            assert scene.info.band_names == ("nir", "red", "green"), ask
            assert scene.info.sources == (str(p.path("4")), str(p.path("3")), str(p.path("2")))
    with pytest.raises(TilefillError, match="selected twice"):
        open_scene(p.folder, bands="red,3")
    # band 6 of a Landsat-7 Level-2 product is surface temperature: not a number to ask by
    with pytest.raises(TilefillError, match=r"has no band '6'; it has blue \(SR_B1\).*thermal \(ST_B6\)"):
        open_scene(p.folder, bands="6")


def test_surface_temperature_only_when_asked_and_never_with_reflectance(tmp_path, synth):
    p = synth.landsat_product(tmp_path)
    for ask in ("thermal", "ST_B6"):
        with open_scene(p.folder, bands=ask) as scene:
            assert scene.info.band_names == ("thermal",)
            assert scene.info.sources == (str(p.path("ST_B6")),)
            assert scene.info.band_tags[0] == {"LANDSAT_BAND": "ST_B6", "SCALE": "3.41802E-03", "OFFSET": "149.0",
                                               "UNITS": "K"}
    with pytest.raises(TilefillError, match="ST_B6 is surface temperature .* run them separately") as err:
        open_scene(p.folder, bands="red,nir,thermal")
    assert "\n" not in str(err.value)


def test_mask_qa_turns_cloud_and_shadow_bits_into_gaps(tmp_path, synth):
    cloud, shadow, snow = _box(5, 15, 5, 15), _box(30, 35, 30, 40), _box(50, 55, 5, 10)
    dilated = _box(4, 16, 4, 16) & ~cloud  # a ring around the cloud
    qa = _qa(cloud=cloud, shadow=shadow, snow=snow, dilated_cloud=dilated)
    p = synth.landsat_product(tmp_path, qa=qa)
    with open_scene(p.folder, mask_qa="cloud,shadow") as scene:
        _, data_mask, flagged = _read_all(scene)
        assert scene.info.tags["TILEFILL_MASK_QA"] == "cloud,shadow"
        rules = scene.gap_rules
    assert flagged.shape == (1, N, N)
    np.testing.assert_array_equal(flagged[0], cloud | shadow)
    assert data_mask.all()  # clouds carry data: they are gaps because QA_PIXEL says so, not nodata
    with open_scene(p.folder, mask_qa=["dilated_cloud", "snow"]) as scene:
        np.testing.assert_array_equal(_read_all(scene)[2][0], dilated | snow)
    assert "QA_PIXEL:bits=0x18" in rules
    with pytest.raises(TilefillError, match="cirrus bit is set by Landsat 8-9 only"):
        open_scene(p.folder, mask_qa="cloud,cirrus")
    with pytest.raises(TilefillError, match="--mask-qa takes dilated_cloud, cirrus, cloud, shadow, snow; not 'haze'"):
        open_scene(p.folder, mask_qa="haze")


def test_mask_qa_is_part_of_the_run_key(tmp_path, synth, tiny_config):
    p = synth.landsat_product(tmp_path, qa=_qa(cloud=_box(5, 15, 5, 15)))

    def digest(**kw):
        with open_scene(p.folder, **kw) as scene:
            grid = TileGrid(N, N, 64, 32, scene.info.affine)
            return params_digest(scene, tiny_config, grid, "hull")
    assert digest() != digest(mask_qa="cloud") != digest(mask_qa="cloud,shadow")
    assert digest(mask_qa="cloud") == digest(mask_qa="cloud")


def test_landsat8_level2_has_coastal_and_st_b10_and_a_cirrus_bit(tmp_path, synth):
    cirrus = _box(10, 20, 10, 20)
    p = synth.landsat_product(tmp_path, spacecraft="LANDSAT_8", acquired="2020-08-01", qa=_qa(cirrus=cirrus))
    with open_scene(p.folder, mask_qa="cirrus") as scene:
        assert scene.info.band_names == ("coastal", "blue", "green", "red", "nir", "swir1", "swir2")
        assert "SENSOR_MODE_SLC" not in scene.info.tags and not scene.product.slc_off
        np.testing.assert_array_equal(_read_all(scene)[2][0], cirrus)
    with open_scene(p.folder, bands="thermal") as scene:
        assert scene.info.sources == (str(p.path("ST_B10")),)


# --- Level-1 -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout,gzip", [("gap_mask", True), ("gap_mask", False), ("top", False)])
def test_level1_etm_gap_masks_wherever_the_product_keeps_them(tmp_path, synth, layout, gzip):
    """Collection 1 ships gap_mask/*_GM_B<n>.TIF.gz; Collection 2's place is not documented: both are read."""
    stripes = {k: _box(10 + i, 13 + i, 0, N) for i, k in enumerate(SR)}
    data = {k: np.where(stripes[k], 0, 120) for k in SR}
    p = synth.landsat_product(tmp_path, level="L1TP", data=data, gap_masks=stripes, gm_layout=layout, gm_gzip=gzip,
                              qa=_qa(fill=_box(0, N, 0, 2)))
    with open_scene(p.folder) as scene:
        assert scene.info.band_names == ("blue", "green", "red", "nir", "swir1", "swir2")  # no B6_VCID_*, no pan
        assert scene.info.dtype == "uint8"
        assert scene.info.band_tags[0]["UNITS"] == "W/(m2 sr um)" and "REFLECTANCE_MULT" in scene.info.band_tags[0]
        values, data_mask, flagged = _read_all(scene)
        files = scene_files(scene)
    np.testing.assert_array_equal(flagged, np.stack([stripes[k] for k in SR]))
    # Level-1: the bands' own zeros are nodata, per band; QA_PIXEL fill is not (it is the union over bands)
    np.testing.assert_array_equal(data_mask, ~np.stack([stripes[k] for k in SR]))
    gm = [f for f in files if "_GM_B" in f]
    assert len(gm) == 6 and all(Path(f).is_file() for f in gm)  # the plain path of a gzipped mask, hashed
    assert not any("QA_PIXEL" in f for f in files)


def test_level1_thermal_and_pan_bands_come_only_when_asked(tmp_path, synth):
    p = synth.landsat_product(tmp_path, level="L1TP")
    with open_scene(p.folder, bands="thermal") as scene:  # ETM+ has two: low and high gain
        assert scene.info.band_names == ("thermal_low_gain", "thermal_high_gain")
        assert scene.info.band_tags[0]["K2_CONSTANT"] == "1282.71"
    with open_scene(p.folder, bands="B6_VCID_2") as scene:
        assert scene.info.sources == (str(p.path("6_VCID_2")),)
    with open_scene(p.folder, bands="pan") as scene:
        assert scene.shape == (1, 2 * N, 2 * N)
    with pytest.raises(TilefillError, match=r"bands of different shape in .*: B1 is 64x64, B8 is 128x128"):
        open_scene(p.folder, bands="1,8")
    with pytest.raises(TilefillError, match="B6_VCID_1 is thermal radiance and B3 is not"):
        open_scene(p.folder, bands="6_VCID_1,3")


def test_level1_tm_and_the_slc_date(tmp_path, synth):
    tm = synth.landsat_product(tmp_path / "tm", spacecraft="LANDSAT_5", level="L1TP", acquired="1995-07-04")
    with open_scene(tm.folder) as scene:
        assert scene.info.band_names == ("blue", "green", "red", "nir", "swir1", "swir2")
    with open_scene(tm.folder, bands="6") as scene:
        assert scene.info.band_names == ("thermal",)
    before = synth.landsat_product(tmp_path / "on", level="L1TP", collection=1, acquired="2002-05-31")
    after = synth.landsat_product(tmp_path / "off", level="L1TP", collection=1, acquired="2003-06-01")
    assert not read_product(before.folder).slc_off and read_product(after.folder).slc_off
    with pytest.raises(TilefillError, match="--mask-qa reads the Collection 2 QA_PIXEL band.*Collection 1"):
        open_scene(after.folder, mask_qa="cloud")


def test_level2_takes_the_gap_masks_of_its_level1_source(tmp_path, synth):
    stripes = {k: _box(30, 33, 0, N) for k in SR}
    p = synth.landsat_product(tmp_path, gap_masks=stripes, gm_gzip=True)
    assert p.l1_id != p.product_id
    with open_scene(p.folder, bands="red") as scene:
        np.testing.assert_array_equal(_read_all(scene)[2], stripes["3"][None])


# --- refusals ----------------------------------------------------------------------------------------------

def test_folders_that_are_not_one_readable_product_are_refused(tmp_path, synth):
    p = synth.landsat_product(tmp_path / "a")
    with pytest.raises(TilefillError, match="band red \\(SR_B3\\) is selected but its file .*_SR_B3.TIF is not"):
        p.path("3").unlink()
        open_scene(p.folder, bands="blue,red")
    with open_scene(p.folder) as scene:  # the default takes the reflective bands that are there
        assert scene.info.band_names == ("blue", "green", "nir", "swir1", "swir2")

    other = synth.landsat_product(tmp_path / "b", acquired="2011-01-02")
    (other.folder / other.mtls[0].name).rename(p.folder / other.mtls[0].name)
    with pytest.raises(TilefillError, match="mixes two products: metadata of"):
        open_scene(p.folder)
    (p.folder / other.mtls[0].name).unlink()
    other.path("1").rename(p.folder / other.path("1").name)
    with pytest.raises(TilefillError, match=f"mixes two products: {other.path('1').name} is not a file of"):
        open_scene(p.folder)

    bare = tmp_path / "bare"
    bare.mkdir()
    synth.write_geotiff(bare / "LE07_TEST_B1.TIF", np.ones((8, 8), dtype=np.uint8))
    with pytest.raises(TilefillError, match="has no \\*_MTL.txt, \\*_MTL.xml or \\*_MTL.json"):
        open_scene(bare)


def test_names_and_mask_qa_need_a_product_folder(tmp_path, synth):
    tif = synth.write_geotiff(tmp_path / "s.tif", np.ones((2, 8, 8), dtype=np.uint8))
    with pytest.raises(TilefillError, match="names such as blue select bands of a Landsat product folder"):
        open_scene(tif, bands="blue")
    with pytest.raises(TilefillError, match="--mask-qa reads the QA_PIXEL band of a Landsat Collection 2"):
        open_scene(tif, mask_qa="cloud")


# --- through the pipeline ----------------------------------------------------------------------------------

def _cloudy_level2(parent, synth, folder=None):
    fill = _box(0, N, 0, 3)
    stripe = _box(40, 43, 0, N)
    cloud = _box(10, 18, 20, 30)
    fields = synth.smooth_field(6, N, N)
    data = {}
    for i, k in enumerate(SR):
        band = np.rint(7500 + 4000 * fields[i]).astype(np.uint16)
        band[cloud] = 30000  # bright cloud tops: real values that QA_PIXEL flags
        band[fill | stripe] = 0
        data[k] = band
    p = synth.landsat_product(parent, data=data, qa=_qa(fill=fill | stripe, cloud=cloud), folder=folder)
    return p, data, fill, stripe, cloud


def test_fill_a_level2_folder_with_clouds_keeps_names_tags_and_known_pixels(tmp_path, synth):
    p, data, fill, stripe, cloud = _cloudy_level2(tmp_path / "in", synth)
    out = tmp_path / "restored.tif"
    res = CliRunner().invoke(main, [str(p.folder), "-o", str(out), "--mask-qa", "cloud,shadow", "--config", TINY,
                                    "--iterations", "10", "--workers", "0"])
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as ds:
        assert ds.descriptions == ("blue", "green", "red", "nir", "swir1", "swir2")
        assert ds.nodata == 0 and ds.dtypes[0] == "uint16"
        assert ds.tags()["LANDSAT_PRODUCT_ID"] == p.product_id and ds.tags()["TILEFILL_MASK_QA"] == "cloud,shadow"
        assert [ds.tags(i)["SCALE"] for i in ds.indexes] == ["2.75E-05"] * 6
        assert [ds.tags(i)["LANDSAT_BAND"] for i in ds.indexes] == [f"SR_B{k}" for k in SR]
        got = ds.read()
    truth = np.stack([data[k] for k in SR])
    known = ~(fill | stripe | cloud)
    np.testing.assert_array_equal(got[:, known], truth[:, known])
    # the clouds and the stripe are filled from their surroundings: nothing near the 30000 cloud tops
    assert (got[:, cloud | (stripe & ~fill)] > 0).all() and got[:, cloud].max() < 20000
    assert (got[:, fill] == 0).all()  # QA_PIXEL's fill outside the data stays nodata: the collar
    assert "LE07_L2SP" in res.output and "SLC-off" in res.output


@pytest.mark.parametrize("args,expect", [
    (["--bands", "red,thermal"], "run them separately"),
    (["--bands", "red,coastal"], "has no band 'coastal'"),
    (["--mask-qa", "fog"], "--mask-qa takes"),
])
def test_cli_refuses_in_one_line_and_writes_nothing(tmp_path, synth, args, expect):
    p = synth.landsat_product(tmp_path / "in")
    out = tmp_path / "o.tif"
    res = CliRunner().invoke(main, [str(p.folder), "-o", str(out), "--config", TINY, "--workers", "0", *args])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and expect in lines[0], res.output
    assert not out.exists() and sorted(x.name for x in tmp_path.iterdir()) == ["in"]


def test_batch_names_outputs_after_the_product_and_fails_a_folder_without_metadata(tmp_path, synth):
    root = tmp_path / "archive"
    p, data, fill, stripe, cloud = _cloudy_level2(root / "2010", synth, folder="scene7")  # named by hand
    bare = root / "2011" / "LE07_copy"
    bare.mkdir(parents=True)
    synth.write_geotiff(bare / "LE07_copy_B1.TIF", data["1"])
    synth.write_geotiff(root / "plain.tif", np.stack([data["1"], data["2"]]), nodata=0)
    out = tmp_path / "out"
    report = fill_batch([root], out, config=TINY, overrides={"fit.iterations": 5}, cluster=IN_PROCESS, mask_qa="cloud",
                        progress=False)
    by_name = {Path(o.scene).name: o for o in report.scenes}
    assert by_name["scene7"].status == "done" and by_name["plain.tif"].status == "done"
    assert (out / "2010" / f"{p.product_id}.tif").is_file()
    with rasterio.open(out / "2010" / f"{p.product_id}.tif") as ds:
        assert ds.read()[:, cloud].max() < 20000  # --mask-qa reached the product folder...
    assert (out / "plain.tif").is_file()  # ...and the GeoTIFF was filled without it
    failed = by_name["LE07_copy"]
    assert failed.status == "failed" and "has no *_MTL.txt" in failed.error and "\n" not in failed.error
    assert not (out / "2011" / "LE07_copy.tif").exists()
    assert json.loads((out / "2011" / "LE07_copy.tif.failed.json").read_text())["status"] == "failed"
