"""Mosaic and write: dtype conversion, output-path checks, and the restored GeoTIFF (plain and COG)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.crs import CRS

from tilefill import TileGrid, TilefillError
from tilefill import _mosaic
from tilefill._mosaic import check_output_path, to_dtype, write_output
from tilefill._scene import SceneInfo, open_scene
from tilefill._store import build_store

pytestmark = pytest.mark.timeout(60)

FILL_METHOD = "gdal"  # the mosaic's tests need filled tiles, not fitted ones: GDAL's take milliseconds


def _info(dtype, nodata):
    return SceneInfo(height=1, width=1, dtype=dtype, nodata=nodata, crs_wkt=None, transform=(1, 0, 0, 0, -1, 0),
                     band_names=("b",))


# --- to_dtype ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, nodata, values, expect", [
    # uint8, nodata 0: values that round or clip to 0 step up to 1
    ("uint8", 0, [-3.0, 0.2, 0.5, 0.6, 1.5, 254.6, 300.0], [1, 1, 1, 1, 2, 255, 255]),
    # uint8, nodata 255 at the top of the range: step down to 254
    ("uint8", 255, [254.7, 300.0, 0.0, 3.4], [254, 254, 0, 3]),
    # int16, nodata -9999 inside the range: step up to -9998
    ("int16", -9999, [-9999.4, -9998.6, -9999.0, -40000.0, 40000.0, 12.5, -3.5], [-9998, -9998, -9998, -32768, 32767, 12, -4]),
    # uint16 without nodata: only rounding and clipping
    ("uint16", None, [70000.0, -1.0, 0.0, 41.49], [65535, 0, 0, 41]),
])
def test_to_dtype_rounds_clips_and_avoids_nodata(dtype, nodata, values, expect):
    out = to_dtype(np.array(values, dtype=np.float64), _info(dtype, nodata))
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, np.array(expect, dtype=dtype))
    if nodata is not None:
        assert not np.any(out == nodata)


def test_to_dtype_never_lands_on_nodata_for_any_value():
    values = np.linspace(-20000, 20000, 400_001)
    for dtype, nodata in [("int16", -9999), ("int16", 0), ("uint8", 0), ("uint8", 255), ("uint16", 0)]:
        out = to_dtype(values, _info(dtype, nodata))
        assert not np.any(out == nodata), (dtype, nodata)


@pytest.mark.parametrize("nodata", [None, -9999.0, float("nan")])
def test_to_dtype_float_passes_through(nodata):
    values = np.array([0.1, -9999.0, 1e6, np.nan, 0.123456789])
    out = to_dtype(values, _info("float32", nodata))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, values.astype(np.float32))


# --- check_output_path ---------------------------------------------------------------------------------

def test_check_output_path(tmp_path):
    out = tmp_path / "restored.tif"
    assert check_output_path(out, overwrite=False) == out
    out.write_bytes(b"old")
    with pytest.raises(TilefillError, match="exists; pass --overwrite"):
        check_output_path(out, overwrite=False)
    assert check_output_path(str(out), overwrite=True) == out
    with pytest.raises(TilefillError, match="output folder .* does not exist"):
        check_output_path(tmp_path / "missing" / "restored.tif", overwrite=False)
    with pytest.raises(TilefillError, match="is a folder; give a file name"):
        check_output_path(tmp_path, overwrite=True)


def test_check_output_path_relative_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_output_path("restored.tif", overwrite=False).name == "restored.tif"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: root can write into a folder without write permission, so an "
                           "unwritable folder cannot be made with chmod (see the os.access variant below)")
def test_check_output_path_unwritable_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(TilefillError, match="not writable"):
            check_output_path(locked / "restored.tif", overwrite=False)
    finally:
        locked.chmod(0o700)


def test_check_output_path_unwritable_folder_via_os_access(tmp_path, monkeypatch):
    # Works as root too: the check relies on os.access, so make it say "no".
    real = os.access
    monkeypatch.setattr(_mosaic.os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real(p, mode))
    with pytest.raises(TilefillError, match="not writable"):
        check_output_path(tmp_path / "restored.tif", overwrite=False)


# --- write_output --------------------------------------------------------------------------------------

H, W = 128, 160


def _make_scene(folder, synth, dtype):
    """A 3-band scene of ``dtype`` with a rotated nodata collar and stripe gaps, plus names and tags."""
    nodata = synth.NODATA[dtype]
    truth = synth.to_range(synth.smooth_field(3, H, W), dtype)
    verts = synth.rotated_vertices(size=0, angle_deg=8.0, half_w=66.0, half_h=46.0) + np.array([W / 2, H / 2])
    inside = synth.inside_polygon(verts, H, W)
    stripes = synth.stripe_mask(H, W, period=16, width_px=3)
    data = inside & ~stripes
    values = np.where(data[None], truth, nodata).astype(dtype)
    path = synth.write_geotiff(folder / f"scene_{dtype}.tif", values, nodata=nodata,
                               descriptions=["blue", "green", "red"], tags={"SENSOR": "synthetic", "SCENE_ID": "T7"},
                               band_tags=[{"WAVELENGTH": "0.48"}, {"WAVELENGTH": "0.56"}, {}])
    return SimpleNamespace(path=path, truth=truth, values=values, data=data, inside=inside, stripes=stripes,
                           nodata=nodata, dtype=dtype)


def _filled_store(tmp_path, scene_path, config, *, fill=True):
    from tilefill._fill import fill_tile

    with open_scene(scene_path) as scene:
        info = scene.info
        grid = TileGrid.from_scene(info, config)
        store = build_store(scene, grid, config, tmp_path / "work" / "tiles.zarr")
    if fill:
        for i in store.tiles_to_fit:
            assert fill_tile(str(store.path), i).status == "filled"
    return store


@pytest.fixture
def config(tiny_config):
    return tiny_config.override({"method": FILL_METHOD, "fit.iterations": 2, "output.blocksize": 64})


@pytest.fixture
def outdir(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_restored_geotiff(tmp_path, outdir, synth, config, dtype):
    s = _make_scene(tmp_path, synth, dtype)
    store = _filled_store(tmp_path, s.path, config)
    out = outdir / "restored.tif"
    with open_scene(s.path) as scene:
        stats = write_output(store, scene, out)
    fp = np.asarray(store.group["footprint"])
    gaps = np.asarray(store.group["gaps"])
    assert sorted(os.listdir(outdir)) == ["restored.tif"]  # no temporary file left behind
    with rasterio.open(out) as ds:
        got = ds.read()
        assert ds.dtypes == (dtype,) * 3
        assert ds.nodata == s.nodata
        assert ds.crs == CRS.from_string(synth.CRS)
        assert ds.transform.almost_equals(synth.TRANSFORM)
        assert ds.descriptions == ("blue", "green", "red")
        assert ds.tags()["SCENE_ID"] == "T7" and ds.tags()["SENSOR"] == "synthetic"
        assert ds.tags(1)["WAVELENGTH"] == "0.48" and ds.tags(2)["WAVELENGTH"] == "0.56"
        assert (ds.height, ds.width, ds.count) == (H, W, 3)
    known = np.broadcast_to(s.data, got.shape)
    # known pixels are the input's, bit for bit
    np.testing.assert_array_equal(got[known], s.values[known])
    # every gap is filled with a valid value close to the truth (a smooth field)
    assert gaps.sum() > 0 and stats.filled_pixels == int(gaps.sum()) and stats.unfilled_pixels == 0
    assert not np.any(got[gaps] == s.nodata) and np.isfinite(got[gaps].astype(np.float64)).all()
    lo, hi = synth.RANGES[dtype]
    err = np.abs(got[gaps].astype(np.float64) - s.truth[gaps].astype(np.float64)) / (hi - lo)
    assert err.mean() < 0.03 and err.max() < 0.2
    # the collar stays nodata
    assert np.all(got[:, ~fp] == s.nodata)
    assert (~fp).sum() > 0.2 * H * W


def test_strips_blend_like_one_pass(tmp_path, synth, config, monkeypatch):
    s = _make_scene(tmp_path, synth, "uint16")
    store = _filled_store(tmp_path, s.path, config)
    with open_scene(s.path) as scene:
        write_output(store, scene, tmp_path / "one.tif")
        monkeypatch.setattr(_mosaic, "STRIP", 40)  # strips cut through tiles at 40, 80, 120
        write_output(store, scene, tmp_path / "strips.tif")
    with rasterio.open(tmp_path / "one.tif") as a, rasterio.open(tmp_path / "strips.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_unfitted_tiles_leave_gaps_nodata(tmp_path, outdir, synth, config):
    s = _make_scene(tmp_path, synth, "int16")
    store = _filled_store(tmp_path, s.path, config, fill=False)
    with open_scene(s.path) as scene:
        stats = write_output(store, scene, outdir / "r.tif")
    gaps = np.asarray(store.group["gaps"])
    assert stats.filled_pixels == 0 and stats.unfilled_pixels == int(gaps.sum()) > 0
    with rasterio.open(outdir / "r.tif") as ds:
        got = ds.read()
    assert np.all(got[gaps] == s.nodata)
    known = np.broadcast_to(s.data, got.shape)
    np.testing.assert_array_equal(got[known], s.values[known])


def test_keep_known_false_replaces_the_footprint_but_not_the_collar(tmp_path, outdir, synth, config):
    s = _make_scene(tmp_path, synth, "uint16")
    store = _filled_store(tmp_path, s.path, config.override({"fit.keep_known": False}))
    with open_scene(s.path) as scene:
        stats = write_output(store, scene, outdir / "r.tif")
    fp = np.asarray(store.group["footprint"])
    assert stats.filled_pixels == 3 * int(fp.sum())
    with rasterio.open(outdir / "r.tif") as ds:
        got = ds.read()
    assert np.all(got[:, ~fp] == 0) and not np.any(got[:, fp] == 0)


def test_cog_output(tmp_path, outdir, synth, config):
    s = _make_scene(tmp_path, synth, "uint16")
    store = _filled_store(tmp_path, s.path, config)  # output.blocksize 64: small enough for overviews
    out = outdir / "restored_cog.tif"
    with open_scene(s.path) as scene:
        write_output(store, scene, out, cog=True)
        write_output(store, scene, outdir / "plain.tif", cog=False)
    assert sorted(os.listdir(outdir)) == ["plain.tif", "restored_cog.tif"]
    with rasterio.open(out) as ds, rasterio.open(outdir / "plain.tif") as plain:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert plain.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG"
        assert ds.profile["tiled"] and ds.block_shapes[0] == (64, 64)
        assert ds.overviews(1)  # 128 x 160 with 64 px blocks: at least one overview level
        assert ds.crs == CRS.from_string(synth.CRS) and ds.nodata == 0
        assert ds.descriptions == ("blue", "green", "red")
        assert ds.tags()["SCENE_ID"] == "T7"
        assert ds.compression is not None and ds.compression.name.lower() == "deflate"
        np.testing.assert_array_equal(ds.read(), plain.read())  # same pixels, other layout
    assert rasterio.shutil.exists(out)


def test_existing_output_needs_overwrite(tmp_path, outdir, synth, config):
    s = _make_scene(tmp_path, synth, "uint8")
    store = _filled_store(tmp_path, s.path, config)
    out = outdir / "r.tif"
    out.write_bytes(b"previous")
    with open_scene(s.path) as scene:
        with pytest.raises(TilefillError, match="exists"):
            write_output(store, scene, out)
        assert out.read_bytes() == b"previous"
        write_output(store, scene, out, overwrite=True)
    with rasterio.open(out) as ds:
        assert ds.count == 3
    assert sorted(os.listdir(outdir)) == ["r.tif"]


def test_failure_mid_write_leaves_nothing(tmp_path, outdir, synth, config, monkeypatch):
    s = _make_scene(tmp_path, synth, "uint16")
    store = _filled_store(tmp_path, s.path, config)
    real = _mosaic._StripMosaic.strip
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            # the partial file exists by now: the first strip is written
            assert any(n.endswith(".partial.tif") for n in os.listdir(outdir))
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(_mosaic, "STRIP", 48)
    monkeypatch.setattr(_mosaic._StripMosaic, "strip", failing)
    with open_scene(s.path) as scene, pytest.raises(RuntimeError, match="disk on fire"):
        write_output(store, scene, outdir / "r.tif")
    assert len(calls) == 2
    assert os.listdir(outdir) == []


def test_failure_in_the_cog_copy_leaves_nothing(tmp_path, outdir, synth, config, monkeypatch):
    s = _make_scene(tmp_path, synth, "uint16")
    store = _filled_store(tmp_path, s.path, config)

    def broken_copy(src, dst, **kwargs):
        with open(dst, "wb") as f:  # a half-written COG
            f.write(b"II*\x00")
        raise rasterio.errors.RasterioIOError("out of space")

    monkeypatch.setattr(rasterio.shutil, "copy", broken_copy)
    with open_scene(s.path) as scene, pytest.raises(rasterio.errors.RasterioIOError):
        write_output(store, scene, outdir / "r.tif", cog=True)
    assert os.listdir(outdir) == []


def test_interrupt_mid_write_leaves_nothing(tmp_path, outdir, synth, config, monkeypatch):
    s = _make_scene(tmp_path, synth, "uint16")
    store = _filled_store(tmp_path, s.path, config)
    monkeypatch.setattr(_mosaic._StripMosaic, "strip", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with open_scene(s.path) as scene, pytest.raises(KeyboardInterrupt):
        write_output(store, scene, outdir / "r.tif")
    assert os.listdir(outdir) == []


def test_float_scene_without_nodata_uses_nan(tmp_path, outdir, synth, config):
    truth = synth.to_range(synth.smooth_field(1, H, W), "float32")
    s = _make_scene(tmp_path, synth, "float32")
    values = np.where(s.data, truth[0], np.nan).astype(np.float32)[None]
    path = synth.write_geotiff(tmp_path / "nan.tif", values)  # no nodata declared: NaN marks no data
    store = _filled_store(tmp_path, path, config)
    with open_scene(path) as scene:
        stats = write_output(store, scene, outdir / "r.tif")
    fp = np.asarray(store.group["footprint"])
    gaps = np.asarray(store.group["gaps"])
    with rasterio.open(outdir / "r.tif") as ds:
        got = ds.read()
        assert ds.nodata is None
    assert stats.unfilled_pixels == 0 and np.isfinite(got[gaps]).all()
    assert np.isnan(got[:, ~fp]).all()
    np.testing.assert_array_equal(got[:, s.data], values[:, s.data])


def test_integer_scene_with_an_internal_mask_gets_a_mask(tmp_path, outdir, synth, config):
    s = _make_scene(tmp_path, synth, "uint8")
    path = tmp_path / "masked.tif"
    with rasterio.open(path, "w", driver="GTiff", height=H, width=W, count=3, dtype="uint8", crs=synth.CRS,
                       transform=synth.TRANSFORM) as ds:  # no nodata value: validity comes from the mask band
        ds.write(np.where(s.data[None], s.truth, 0).astype(np.uint8))
        ds.write_mask(np.where(s.data, 255, 0).astype(np.uint8))
    store = _filled_store(tmp_path, path, config)
    fp = np.asarray(store.group["footprint"])
    gaps = np.asarray(store.group["gaps"])
    assert gaps.sum() > 0 and not fp.all()
    with open_scene(path) as scene:
        stats = write_output(store, scene, outdir / "r.tif")
    assert stats.filled_pixels == int(gaps.sum())
    with rasterio.open(outdir / "r.tif") as ds:
        assert ds.nodata is None
        mask = ds.read_masks(1)
        got = ds.read()
    np.testing.assert_array_equal(mask > 0, fp)  # the collar is masked out, the filled gaps are valid
    np.testing.assert_array_equal(got[:, s.data], s.truth[:, s.data])
