"""A second date as guide: read on the scene's grid, bands matched, bad guides refused in one line."""

from __future__ import annotations


import numpy as np
import pytest
from affine import Affine
from rasterio.windows import Window

from tilefill import TilefillError
from tilefill._guide import open_guide
from tilefill._scene import open_scene

NAMES = ["blue", "green", "red", "nir"]


@pytest.fixture
def scene_file(tmp_path, synth):
    values = synth.to_range(synth.smooth_field(4, 48, 64), "uint16")
    return synth.write_geotiff(tmp_path / "scene.tif", values, nodata=0, descriptions=NAMES), values


def _read(guide):
    win = Window(0, 0, guide.info.width, guide.info.height)
    values = guide.read(win)
    return values, guide.has_data(win, values)


def test_a_guide_on_the_scene_grid_is_read_as_it_is_and_its_nodata_are_its_gaps(tmp_path, synth, scene_file):
    path, values = scene_file
    other = values[::-1].copy()  # another date: other values, the same place
    other[:, 10:13] = 0  # its own stripe
    guide_path = synth.write_geotiff(tmp_path / "guide.tif", other, nodata=0, descriptions=NAMES)
    with open_scene(path) as scene:
        guide, source = open_guide(guide_path, scene)
        with guide:
            got, valid = _read(guide)
    assert source.matched == "name" and not source.reprojected
    np.testing.assert_array_equal(got, other)
    assert not valid[:, 10:13].any() and valid[:, :10].all()


def test_bands_are_matched_by_name_in_the_scene_order_and_extra_bands_are_left_out(tmp_path, synth, scene_file):
    path, values = scene_file
    order = ["nir", "swir1", "red", "blue", "green"]
    stack = np.stack([values[NAMES.index(n)] if n in NAMES else values[0] for n in order])
    guide_path = synth.write_geotiff(tmp_path / "guide.tif", stack, nodata=0, descriptions=[n.upper() for n in order])
    with open_scene(path) as scene:
        guide, source = open_guide(guide_path, scene)
        with guide:
            got, _valid = _read(guide)
    assert source.bands == ("blue", "green", "red", "nir")
    np.testing.assert_array_equal(got, values)


def test_bands_without_names_are_matched_by_position_when_the_counts_agree(tmp_path, synth, scene_file):
    path, values = scene_file
    guide_path = synth.write_geotiff(tmp_path / "guide.tif", values + 1, nodata=0)
    with open_scene(path) as scene:
        guide, source = open_guide(guide_path, scene)
        guide.close()
    assert source.matched == "position" and source.bands == ("#1", "#2", "#3", "#4")


def test_bands_that_cannot_be_matched_are_refused_in_one_line(tmp_path, synth, scene_file):
    path, values = scene_file
    named = synth.write_geotiff(tmp_path / "named.tif", values, nodata=0, descriptions=["b", "g", "r", "n"])
    fewer = synth.write_geotiff(tmp_path / "fewer.tif", values[:3], nodata=0)
    with open_scene(path) as scene:
        for guide_path in (named, fewer):
            with pytest.raises(TilefillError, match="cannot be matched to the scene's") as err:
                open_guide(guide_path, scene)
            assert "\n" not in str(err.value)


def test_a_guide_on_an_offset_grid_is_read_on_the_scene_grid_and_beyond_it_carries_no_data(tmp_path, synth,
                                                                                               scene_file):
    path, values = scene_file
    # the guide starts 5 px right and 3 px down of the scene and is smaller: 5 columns and 3 rows uncovered
    shifted = synth.TRANSFORM * Affine.translation(5, 3)
    part = values[:, 3:, 5:]
    guide_path = synth.write_geotiff(tmp_path / "guide.tif", part, descriptions=NAMES, transform=shifted)  # no nodata
    with open_scene(path) as scene:
        guide, source = open_guide(guide_path, scene)
        with guide:
            got, valid = _read(guide)
    assert source.reprojected
    assert not valid[:, :3].any() and not valid[:, :, :5].any() and valid[:, 3:, 5:].all()
    np.testing.assert_array_equal(got[:, 3:, 5:], part)


def test_a_guide_in_another_crs_is_reprojected_and_the_run_says_so(tmp_path, synth, scene_file, tilefill_log):
    path, values = scene_file
    import rasterio
    from rasterio.warp import calculate_default_transform, reproject, Resampling

    dst_crs = "EPSG:32634"
    with rasterio.open(path) as src:
        transform, w, h = calculate_default_transform(src.crs, dst_crs, src.width, src.height, *src.bounds)
        out = np.zeros((4, h, w), np.uint16)
        reproject(values, out, src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                  dst_crs=dst_crs, resampling=Resampling.bilinear, src_nodata=0, dst_nodata=0)
    guide_path = synth.write_geotiff(tmp_path / "utm34.tif", out, nodata=0, descriptions=NAMES, crs=dst_crs,
                                     transform=transform)
    with open_scene(path) as scene:
        guide, source = open_guide(guide_path, scene)
        with guide:
            got, valid = _read(guide)
    assert source.reprojected
    assert any("EPSG:32634" in r.getMessage() and "reprojected" in r.getMessage() for r in tilefill_log)
    inner = valid[:, 4:-4, 4:-4]
    assert inner.mean() > 0.95
    # twice resampled, a smooth field stays within a few DN per 1000 of its range
    err = np.abs(got.astype(float) - values)[valid]
    assert np.median(err) < 0.01 * (values.max() - values.min())


def test_a_guide_that_does_not_overlap_the_scene_is_refused(tmp_path, synth, scene_file):
    path, values = scene_file
    far = synth.TRANSFORM * Affine.translation(10_000, 0)  # 300 km east
    guide_path = synth.write_geotiff(tmp_path / "far.tif", values, nodata=0, descriptions=NAMES, transform=far)
    with open_scene(path) as scene, pytest.raises(TilefillError, match="does not overlap the scene"):
        open_guide(guide_path, scene)


def test_the_scene_itself_is_refused_as_its_own_guide(scene_file):
    path, _values = scene_file
    with open_scene(path) as scene, pytest.raises(TilefillError, match="is the scene itself"):
        open_guide(path, scene)


def test_a_landsat_8_product_guides_a_landsat_7_scene_by_common_names_and_its_clouds_are_gaps(tmp_path, synth):
    l7 = synth.landsat_product(tmp_path, spacecraft="LANDSAT_7", acquired="2010-08-15")
    qa = np.full((64, 64), 1 << 6, np.uint16)
    qa[20:30, 20:30] = 1 << 3  # a cloud
    l8 = synth.landsat_product(tmp_path, spacecraft="LANDSAT_8", acquired="2010-08-07", qa=qa)
    with open_scene(l7.folder, bands="blue,red,nir", mask_qa="cloud") as scene:
        guide, source = open_guide(l8.folder, scene, mask_qa="cloud")
        with guide:
            win = Window(0, 0, 64, 64)
            values = guide.read(win)
            known = guide.has_data(win, values) & ~guide.flagged(win)
    assert source.bands == ("blue", "red", "nir") and source.acquired == "2010-08-07"
    import rasterio

    with rasterio.open(l8.path("4")) as ds:  # OLI band 4 is red
        np.testing.assert_array_equal(values[1], ds.read(1))
    assert not known[:, 20:30, 20:30].any() and known[:, :20].all()
