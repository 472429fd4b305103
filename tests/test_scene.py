"""Read and mask: GeoTIFFs and Landsat folders, band selection, nodata/NaN/mask-raster gaps, the footprint."""

from __future__ import annotations

import numpy as np
import pytest
from rasterio.crs import CRS
from rasterio.windows import Window
from scipy import ndimage

from tilefill import TilefillError
from tilefill._scene import footprint_extents, footprint_window, open_scene

pytestmark = pytest.mark.timeout(60)

H, W = 40, 56


def _full(scene):
    return Window(0, 0, scene.info.width, scene.info.height)


def _read_all(scene):
    win = _full(scene)
    values = scene.read(win)
    return values, scene.has_data(win, values), scene.flagged(win)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_multiband_geotiff_of_each_dtype(tmp_path, synth, dtype):
    values = synth.to_range(synth.smooth_field(3, H, W), dtype)
    holes = synth.stripe_mask(H, W, period=10, width_px=2)
    nodata = synth.NODATA[dtype]
    values[:, holes] = nodata
    path = synth.write_geotiff(tmp_path / f"{dtype}.tif", values, nodata=nodata)
    with open_scene(path) as scene:
        info = scene.info
        assert scene.shape == (3, H, W)
        assert (info.height, info.width, info.count) == (H, W, 3)
        assert info.dtype == dtype
        assert info.nodata == nodata
        assert CRS.from_wkt(info.crs_wkt) == CRS.from_string(synth.CRS)
        assert info.affine.almost_equals(synth.TRANSFORM)
        assert info.band_names == ("band_1", "band_2", "band_3")
        assert info.sources == (str(path),)
        got, data, flagged = _read_all(scene)
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, values)
        assert data.shape == (3, H, W)
        np.testing.assert_array_equal(data, np.broadcast_to(~holes, (3, H, W)))
        assert flagged is None
        # a window in the middle reads the same pixels
        win = Window(7, 5, 20, 12)
        np.testing.assert_array_equal(scene.read(win), values[:, 5:17, 7:27])


def test_band_selection_and_descriptions(tmp_path, synth):
    values = synth.to_range(synth.smooth_field(4, H, W), "uint16")
    path = synth.write_geotiff(tmp_path / "s.tif", values, nodata=0,
                               descriptions=["blue", "green", "red", "nir"], tags={"SCENE_ID": "X1"},
                               band_tags=[{"k": "1"}, {"k": "2"}, {"k": "3"}, {"k": "4"}])
    with open_scene(path, bands="2,3") as scene:
        assert scene.info.band_names == ("green", "red")
        assert scene.shape == (2, H, W)
        np.testing.assert_array_equal(scene.read(_full(scene)), values[1:3])
        assert scene.info.tags["SCENE_ID"] == "X1"
        assert [t["k"] for t in scene.info.band_tags] == ["2", "3"]
    with open_scene(path, bands=[4, 1]) as scene:  # order as given
        assert scene.info.band_names == ("nir", "blue")
        np.testing.assert_array_equal(scene.read(_full(scene)), values[[3, 0]])
    with open_scene(path, bands=" 1, 2 ") as scene:
        assert scene.info.band_names == ("blue", "green")


@pytest.mark.parametrize("bands, match", [("1,x", "band numbers separated by commas"), ("5", "cannot select"),
                                          ("0,1", "cannot select"), ("1,1", "selected twice")])
def test_bad_band_selection(tmp_path, synth, bands, match):
    path = synth.write_geotiff(tmp_path / "s.tif", synth.to_range(synth.smooth_field(4, H, W), "uint8"))
    with pytest.raises(TilefillError, match=match):
        open_scene(path, bands=bands)


def test_nan_is_nodata_in_a_float_scene_without_a_nodata_value(tmp_path, synth):
    values = synth.to_range(synth.smooth_field(2, H, W), "float32")
    values[0, 3:6, :] = np.nan
    values[1, :, 10] = np.inf
    path = synth.write_geotiff(tmp_path / "nan.tif", values)
    with open_scene(path) as scene:
        assert scene.info.nodata is None
        _, data, _ = _read_all(scene)
    assert not data[0, 3:6].any() and data[0, 6:].all()
    assert not data[1, :, 10].any() and data[1, :, 11:].all()
    assert data.sum() == 2 * H * W - 3 * W - H


def test_nan_nodata_single_band(tmp_path, synth):
    values = synth.to_range(synth.smooth_field(1, H, W), "float32")
    values[0, 10:12] = np.nan
    path = synth.write_geotiff(tmp_path / "nan1.tif", values, nodata=float("nan"))
    with open_scene(path) as scene:
        assert np.isnan(scene.info.nodata)
        _, data, _ = _read_all(scene)
    assert not data[0, 10:12].any() and data.sum() == H * W - 2 * W


def test_nan_nodata_multiband(tmp_path, synth):
    values = synth.to_range(synth.smooth_field(3, H, W), "float32")
    values[:, 10:12] = np.nan
    path = synth.write_geotiff(tmp_path / "nan3.tif", values, nodata=float("nan"))
    with open_scene(path) as scene:
        assert scene.shape == (3, H, W)
        _, data, _ = _read_all(scene)
    assert not data[:, 10:12].any()


def _vrt(path, sources):
    """A VRT stacking single-band files, each band with its own dtype and nodata: [(file, dtype, nodata)]."""
    bands = []
    for i, (src, dtype, nodata) in enumerate(sources, start=1):
        gdal_type = {"uint16": "UInt16", "int16": "Int16", "uint8": "Byte"}[dtype]
        bands.append(
            f'<VRTRasterBand dataType="{gdal_type}" band="{i}"><NoDataValue>{nodata}</NoDataValue>'
            f'<SimpleSource><SourceFilename relativeToVRT="0">{src}</SourceFilename><SourceBand>1</SourceBand>'
            f'</SimpleSource></VRTRasterBand>')
    path.write_text(f'<VRTDataset rasterXSize="{W}" rasterYSize="{H}">' + "".join(bands) + "</VRTDataset>")
    return path


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_mixed_nodata_or_dtypes_are_refused(tmp_path, synth):
    values = synth.to_range(synth.smooth_field(2, H, W), "uint16")
    a = synth.write_geotiff(tmp_path / "a.tif", values[0])
    b = synth.write_geotiff(tmp_path / "b.tif", values[1])
    mixed_nodata = _vrt(tmp_path / "nodata.vrt", [(a, "uint16", 0), (b, "uint16", 7)])
    with pytest.raises(TilefillError, match="different nodata"):
        open_scene(mixed_nodata)
    with open_scene(mixed_nodata, bands="2") as scene:  # one band alone is fine
        assert scene.info.nodata == 7
    mixed_types = _vrt(tmp_path / "types.vrt", [(a, "uint16", 0), (b, "int16", 0)])
    with pytest.raises(TilefillError, match="different data types"):
        open_scene(mixed_types)


def test_unsupported_dtype(tmp_path, synth):
    path = synth.write_geotiff(tmp_path / "c.tif", np.ones((1, H, W), dtype=np.complex64))
    with pytest.raises(TilefillError, match="unsupported data type complex64"):
        open_scene(path)


def test_mask_raster_single_band(tmp_path, synth):
    values = synth.to_range(synth.smooth_field(3, H, W), "int16")
    scene_path = synth.write_geotiff(tmp_path / "s.tif", values, nodata=-9999)
    gap = synth.stripe_mask(H, W, period=9, width_px=3)
    mask_path = synth.write_geotiff(tmp_path / "m.tif", np.where(gap, 255, 0).astype(np.uint8))
    with open_scene(scene_path, mask=mask_path) as scene:
        _, data, flagged = _read_all(scene)
    assert data.all()  # no nodata in the scene itself
    assert flagged.shape == (1, H, W) and flagged.dtype == bool
    np.testing.assert_array_equal(flagged[0], gap)


def test_mask_raster_per_band(tmp_path, synth):
    values = synth.to_range(synth.smooth_field(3, H, W), "uint8")
    scene_path = synth.write_geotiff(tmp_path / "s.tif", values, nodata=0)
    gaps = np.stack([synth.stripe_mask(H, W, period=9, width_px=2, shift=s) for s in (0, 3, 6)])
    mask_path = synth.write_geotiff(tmp_path / "m.tif", gaps.astype(np.uint8) * 7)  # any nonzero value is a gap
    with open_scene(scene_path, mask=mask_path) as scene:
        _, _, flagged = _read_all(scene)
    np.testing.assert_array_equal(flagged, gaps)
    assert not np.array_equal(flagged[0], flagged[1])


def test_mask_raster_errors(tmp_path, synth):
    scene_path = synth.write_geotiff(tmp_path / "s.tif", synth.to_range(synth.smooth_field(3, H, W), "uint8"))
    wrong_shape = synth.write_geotiff(tmp_path / "shape.tif", np.zeros((1, H + 1, W), dtype=np.uint8))
    with pytest.raises(TilefillError, match=rf"is {H + 1}x{W} px but the scene is {H}x{W}"):
        open_scene(scene_path, mask=wrong_shape)
    two_bands = synth.write_geotiff(tmp_path / "two.tif", np.zeros((2, H, W), dtype=np.uint8))
    with pytest.raises(TilefillError, match="has 2 bands"):
        open_scene(scene_path, mask=two_bands)
    with pytest.raises(TilefillError, match="mask not found"):
        open_scene(scene_path, mask=tmp_path / "missing.tif")
    # with a band selection the per-band mask must match the selection
    three = synth.write_geotiff(tmp_path / "three.tif", np.zeros((3, H, W), dtype=np.uint8))
    with pytest.raises(TilefillError, match="one per selected band"):
        open_scene(scene_path, bands="1,2", mask=three)


def test_missing_scene_and_not_a_raster(tmp_path):
    with pytest.raises(TilefillError, match="scene not found"):
        open_scene(tmp_path / "nope.tif")
    fake = tmp_path / "fake.tif"
    fake.write_text("this is not a GeoTIFF\n")
    with pytest.raises(TilefillError, match="not a raster GDAL can read"):
        open_scene(fake)
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(TilefillError, match="has no \\*_MTL.txt"):
        open_scene(empty)


def test_strips_cover_every_row_once(tmp_path, synth):
    path = synth.write_geotiff(tmp_path / "s.tif", synth.to_range(synth.smooth_field(1, H, W), "uint8"))
    with open_scene(path) as scene:
        strips = list(scene.strips(16))
    assert [(w.row_off, w.height) for w in strips] == [(0, 16), (16, 16), (32, 8)]
    assert all(w.col_off == 0 and w.width == W for w in strips)


# --- Landsat product folders ------------------------------------------------------------------------

LS = 64


@pytest.fixture
def landsat(tmp_path, synth):
    """A Collection 1 Landsat-7 Level-1 product: B1..B4 (64 x 64 uint8, 0 = fill, no nodata declared) of the
    nine bands its MTL names, the 128 x 128 pan B8, and gzipped per-band gap masks in gap_mask/."""
    field = synth.to_range(synth.smooth_field(4, LS, LS), "uint8")
    collar = np.zeros((LS, LS), dtype=bool)
    collar[:, :5] = True  # a fill collar on the west
    stripes = np.stack([synth.stripe_mask(LS, LS, period=16, width_px=3, shift=b) for b in range(4)])
    keys = ["1", "2", "3", "4"]
    product = synth.landsat_product(
        tmp_path, level="L1TP", collection=1, shape=(LS, LS), files=keys + ["8"], gm_gzip=True,
        data={k: np.where(collar | stripes[b], 0, field[b]) for b, k in enumerate(keys)},
        gap_masks={k: stripes[b] for b, k in enumerate(keys)})
    return product, field, collar, stripes


def test_landsat_folder_default_bands_skip_b8(landsat):
    product, field, collar, stripes = landsat
    with open_scene(product.folder) as scene:
        assert scene.info.band_names == ("blue", "green", "red", "nir")
        assert scene.shape == (4, LS, LS)
        assert scene.info.nodata == 0  # the USGS fill value
        assert scene.info.dtype == "uint8"
        values, data, flagged = _read_all(scene)
    # zeros are nodata: the collar and the stripes
    np.testing.assert_array_equal(data, ~(collar[None] | stripes))
    # gap masks: 0 = gap, per band
    np.testing.assert_array_equal(flagged, stripes)
    known = ~(collar[None] | stripes)
    np.testing.assert_array_equal(values[known], field[known])


def test_landsat_folder_band_selection(landsat):
    product, field, collar, stripes = landsat
    with open_scene(product.folder, bands="2,4") as scene:
        assert scene.info.band_names == ("green", "nir")
        assert scene.info.sources == (str(product.path("2")), str(product.path("4")))
        _, _, flagged = _read_all(scene)
    np.testing.assert_array_equal(flagged, stripes[[1, 3]])


def test_landsat_folder_errors(landsat):
    product = landsat[0]
    with pytest.raises(TilefillError, match=r"bands of different shape in .*: B1 is 64x64, B8 is 128x128"):
        open_scene(product.folder, bands="1,8")
    with pytest.raises(TilefillError, match=r"band swir1 \(B5\) is selected but its file .*_B5.TIF is not in the"):
        open_scene(product.folder, bands="1,5")
    (product.folder / "gap_mask" / f"{product.l1_id}_GM_B3.TIF.gz").unlink()
    with pytest.raises(TilefillError, match=r"gap masks for some selected bands but not all \(only B1, B2, B4\)"):
        open_scene(product.folder)
    with open_scene(product.folder, bands="1,2") as scene:  # the selected bands still have theirs
        assert scene.flagged(Window(0, 0, 4, 4)).shape == (2, 4, 4)


def test_landsat_folder_with_declared_nodata_keeps_it(tmp_path, synth):
    data = {}
    for k in ("1", "2"):
        band = synth.to_range(synth.smooth_field(1, LS, LS), "uint16")[0]
        band[:3] = 65535
        data[k] = band
    product = synth.landsat_product(tmp_path, spacecraft="LANDSAT_8", level="L1TP", shape=(LS, LS), data=data,
                                    files=["1", "2"], nodata=65535)
    with open_scene(product.folder) as scene:
        assert scene.info.nodata == 65535
        values, data, flagged = _read_all(scene)
    assert flagged is None
    np.testing.assert_array_equal(data, values != 65535)
    assert not data[:, :3].any() and data[:, 3:].all()


# --- footprint ---------------------------------------------------------------------------------------

N = 300


@pytest.fixture
def rotated(tmp_path, synth):
    """A 300 x 300 uint16 raster: data only in a rotated rectangle (13 deg), SLC-like stripes across it."""
    verts = synth.rotated_vertices(N, angle_deg=13.0)
    inside = synth.inside_polygon(verts, N, N)
    stripes = synth.slc_stripes(N, N, angle_deg=13.0)
    data = inside & ~stripes
    values = np.where(data, synth.to_range(synth.smooth_field(1, N, N), "uint16")[0], 0).astype(np.uint16)
    path = synth.write_geotiff(tmp_path / "rotated.tif", values, nodata=0)
    return path, verts, inside, stripes


def _extents(path):
    with open_scene(path) as scene:
        values, data, _ = _read_all(scene)
    rows_any = data.any(axis=0)
    has = rows_any.any(axis=1)
    first = np.where(has, np.argmax(rows_any, axis=1), -1)
    last = np.where(has, rows_any.shape[1] - 1 - np.argmax(rows_any[:, ::-1], axis=1), -1)
    return footprint_extents(first, last)


def test_footprint_of_a_rotated_scene_spans_the_stripes(rotated, synth):
    path, verts, inside, stripes = rotated
    gaps_true = inside & stripes
    assert gaps_true.mean() > 0.03  # the stripes are a real share of the scene
    # The stripes run edge to edge: a flood fill of nodata from the border would leak into all of them.
    labels, _ = ndimage.label(~(inside & ~stripes))
    border = set(np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])) - {0}
    assert np.isin(labels, list(border))[gaps_true].mean() > 0.99

    left, right = _extents(path)
    fp = footprint_window(left, right, 0, N, N)
    assert fp.shape == (N, N) and fp.dtype == bool
    # every stripe pixel inside the scene is in the footprint (but for a pixel or two hugging a corner)
    edge = synth.distance_to_boundary(verts, N, N)
    missed = gaps_true & ~fp
    assert missed.sum() <= 0.001 * gaps_true.sum()
    assert np.all(edge[missed] < 1.5)
    assert fp[gaps_true & (edge >= 1.5)].all()
    # the footprint is the true polygon, to a pixel
    assert (fp == inside).mean() > 0.99
    outside = synth.distance_to_polygon(verts, N, N)
    assert outside[fp].max() <= 1.0  # no collar pixel more than 1 px outside
    # the collar corners are out
    for sl in [np.s_[:25, :25], np.s_[:25, -25:], np.s_[-25:, :25], np.s_[-25:, -25:]]:
        assert not fp[sl].any()


def test_footprint_window_slices_rows(rotated):
    left, right = _extents(rotated[0])
    full = footprint_window(left, right, 0, N, N)
    np.testing.assert_array_equal(footprint_window(left, right, 100, 50, N), full[100:150])


def test_footprint_extents_small_cases():
    # no data at all: every row is empty (left > right)
    left, right = footprint_extents(np.full(5, -1), np.full(5, -1))
    assert np.all(left > right)
    # a single data row: just that row's range
    first = np.array([-1, 2, -1]); last = np.array([-1, 6, -1])
    left, right = footprint_extents(first, last)
    assert (left[1], right[1]) == (2, 6) and left[0] > right[0] and left[2] > right[2]
    # a triangle with a data-free row inside it: the hull spans the row
    first = np.array([4, 3, -1, 1, 0, -1]); last = np.array([4, 5, -1, 7, 8, -1])
    left, right = footprint_extents(first, last)
    assert (left[2], right[2]) == (2, 6)
    assert (left[4], right[4]) == (0, 8)
    assert left[5] > right[5]  # below the hull
