"""Tile store: layout, attributes, scaling, gaps/footprint, tiles to fit, reopening, and safety of the path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from rasterio.crs import CRS

from tilefill import TileGrid, TilefillError
from tilefill import _store
from tilefill._scene import open_scene
from tilefill._store import TILE_INFO_FIELDS, TileStore, build_store

pytestmark = pytest.mark.timeout(60)


def _grid(scene, config):
    info = scene.info
    return TileGrid.from_scene(info, config)


def _build(path, config, store_path, **kw):
    with open_scene(path, **{k: v for k, v in kw.items() if k in ("bands", "mask")}) as scene:
        grid = _grid(scene, config)
        store = build_store(scene, grid, config, store_path, **{k: v for k, v in kw.items() if k == "footprint"})
        return store, grid, scene.info


@pytest.fixture
def built(striped_scene, tiny_config, tmp_path):
    store, grid, info = _build(striped_scene.path, tiny_config, tmp_path / "work" / "tiles.zarr")
    return store, grid, info, striped_scene


def test_arrays_shapes_dtypes_and_chunks(built):
    store, grid, info, s = built
    g = store.group
    b, h, w, n, t = s.bands, s.height, s.width, len(grid), grid.size
    assert set(g.array_keys()) >= {"scene", "gaps", "footprint", "tiles", "tile_info"}
    expect = {
        "scene": ((b, h, w), "float32"),
        "gaps": ((b, h, w), "bool"),
        "footprint": ((h, w), "bool"),
        "tiles": ((n, b, t, t), "float32"),
        "tile_info": ((n, len(TILE_INFO_FIELDS)), "float64"),
    }
    for name, (shape, dtype) in expect.items():
        assert g[name].shape == shape, name
        assert g[name].dtype == np.dtype(dtype), name
    assert g["tiles"].chunks == (1, b, t, t)  # one chunk per tile: workers never share a chunk
    assert g["tile_info"].chunks == (1, len(TILE_INFO_FIELDS))
    assert g["scene"].chunks == (b, _store.CHUNK_PX, _store.CHUNK_PX)
    assert g["gaps"].chunks == (b, _store.CHUNK_PX, _store.CHUNK_PX)
    assert g["footprint"].chunks == (_store.CHUNK_PX, _store.CHUNK_PX)
    # nothing fitted yet
    assert np.isnan(np.asarray(g["tiles"][0])).all() and np.isnan(np.asarray(g["tile_info"][:])).all()
    assert store.path.name == "tiles.zarr" and (store.path / "zarr.json").is_file()


def test_attributes_carry_georeferencing_and_run_settings(built, synth, tiny_config):
    store, grid, info, s = built
    meta = json.loads((store.path / "zarr.json").read_text())["attributes"]["tilefill"]
    scene = meta["scene"]
    assert CRS.from_wkt(scene["crs_wkt"]) == CRS.from_string(synth.CRS)
    assert scene["transform"] == list(synth.TRANSFORM)[:6]
    assert scene["band_names"] == ["blue", "green", "red"]
    assert scene["dtype"] == "uint16" and scene["nodata"] == 0
    assert scene["tags"]["SCENE_ID"] == "T42"
    assert meta["grid"] == {"size": 64, "overlap": 32, "shape": list(grid.shape)}
    assert meta["config"]["network"]["channels_down"] == [8] * 5
    assert meta["config"]["fit"]["iterations"] == tiny_config.fit.iterations
    assert meta["footprint"] == "hull"
    assert meta["tile_info_fields"] == list(TILE_INFO_FIELDS)
    assert CRS.from_wkt(meta["proj:wkt2"]) == CRS.from_string(synth.CRS)
    assert meta["spatial:transform"] == list(synth.TRANSFORM)[:6]
    # the scaling is each band's range over its known pixels
    known = s.data
    for b in range(s.bands):
        assert meta["scaling"]["lo"][b] == s.values[b][known].min()
        assert meta["scaling"]["hi"][b] == s.values[b][known].max()
    assert meta["gap_pixels"] == int(np.asarray(store.group["gaps"]).sum())


def test_scaled_scene_is_in_unit_range_on_known_pixels_and_zero_elsewhere(built):
    store, grid, info, s = built
    scaled = np.asarray(store.group["scene"])
    gaps = np.asarray(store.group["gaps"])
    fp = np.asarray(store.group["footprint"])
    known = ~gaps & fp[None]
    np.testing.assert_array_equal(known, np.broadcast_to(s.data, known.shape))
    lo = np.array(store.scaling.lo)[:, None, None]
    hi = np.array(store.scaling.hi)[:, None, None]
    expect = (s.values.astype(np.float64) - lo) / (hi - lo)
    np.testing.assert_allclose(scaled[known], expect[known].astype(np.float32), rtol=0, atol=1e-6)
    assert scaled[known].min() >= 0 and scaled[known].max() <= 1
    for b in range(s.bands):  # the range is used in full
        assert scaled[b][known[b]].min() == 0 and scaled[b][known[b]].max() == pytest.approx(1)
    assert np.all(scaled[~known] == 0)  # gaps and collar hold 0
    # and the inverse map gives back the input's values
    back = store.scaling.inverse_at(scaled, known)
    np.testing.assert_allclose(back, s.values[known], atol=0.01)


def test_gaps_are_the_stripes_inside_the_footprint(built):
    store, grid, info, s = built
    gaps = np.asarray(store.group["gaps"])
    fp = np.asarray(store.group["footprint"])
    assert (fp == s.inside).mean() > 0.99 and not fp[0, 0] and not fp[-1, -1]
    assert not (gaps & ~fp[None]).any()  # the collar is never a gap
    truth = s.stripes & s.inside
    assert (gaps[0] != truth).sum() <= 2  # a pixel or two hugging the hull's corners at most
    np.testing.assert_array_equal(gaps[0], gaps[1])  # the same stripes in every band here
    assert store.meta["gap_pixels"] == int(gaps.sum()) > 0


def test_footprint_full_makes_the_collar_a_gap(striped_scene, tiny_config, tmp_path):
    store, grid, info = _build(striped_scene.path, tiny_config, tmp_path / "full.zarr", footprint="full")
    fp = np.asarray(store.group["footprint"])
    gaps = np.asarray(store.group["gaps"])
    assert fp.all()
    np.testing.assert_array_equal(gaps, np.broadcast_to(~striped_scene.data, gaps.shape))
    assert store.meta["footprint"] == "full"
    assert store.tiles_to_fit == list(range(len(grid)))  # every tile touches the collar
    with pytest.raises(TilefillError, match="footprint must be 'hull' or 'full'"):
        _build(striped_scene.path, tiny_config, tmp_path / "bad.zarr", footprint="convex")


def test_tiles_to_fit_are_exactly_the_tiles_with_gaps(built):
    store, grid, info, s = built
    gaps = np.asarray(store.group["gaps"]).any(axis=0)
    expect = [t.index for t in grid if gaps[t.slices].any()]
    assert store.tiles_to_fit == expect
    assert 0 < len(expect) < len(grid)  # the stripes are only in the top rows: some tiles have none


def test_keep_known_false_fits_every_tile(striped_scene, tiny_config, tmp_path):
    cfg = tiny_config.override({"fit.keep_known": False})
    store, grid, _ = _build(striped_scene.path, cfg, tmp_path / "all.zarr")
    assert store.tiles_to_fit == list(range(len(grid)))


def test_strip_size_does_not_change_the_store(striped_scene, tiny_config, tmp_path, monkeypatch):
    ref, grid, _ = _build(striped_scene.path, tiny_config, tmp_path / "one_strip.zarr")
    monkeypatch.setattr(_store, "STRIP", 48)  # 128 rows in strips of 48, 48, 32
    monkeypatch.setattr(_store, "CHUNK_PX", 32)  # chunks that strips cut through
    small, _, _ = _build(striped_scene.path, tiny_config, tmp_path / "strips.zarr")
    assert small.group["scene"].chunks == (3, 32, 32)
    for name in ("scene", "gaps", "footprint"):
        np.testing.assert_array_equal(np.asarray(small.group[name]), np.asarray(ref.group[name]), err_msg=name)
    assert small.tiles_to_fit == ref.tiles_to_fit
    assert small.scaling == ref.scaling


def test_mask_flags_gaps_and_flagged_pixels_do_not_set_the_scaling(tmp_path, synth, tiny_config):
    h, w = 96, 96
    values = synth.to_range(synth.smooth_field(2, h, w), "int16")
    flag = np.zeros((h, w), dtype=bool)
    flag[40:44, 10:50] = True
    values[:, 41, 20] = 30000  # an outlier under the mask must not stretch the scaling
    scene = synth.write_geotiff(tmp_path / "s.tif", values, nodata=-9999)
    mask = synth.write_geotiff(tmp_path / "m.tif", flag.astype(np.uint8))
    store, grid, _ = _build(scene, tiny_config, tmp_path / "m.zarr", mask=mask)
    gaps = np.asarray(store.group["gaps"])
    np.testing.assert_array_equal(gaps, np.broadcast_to(flag, gaps.shape))
    assert max(store.scaling.hi) < 30000
    assert store.scaling.hi[0] == values[0][~flag].max()
    assert np.all(np.asarray(store.group["scene"])[:, flag] == 0)
    assert store.tiles_to_fit == [t.index for t in grid if flag[t.slices].any()]


def test_constant_band_and_band_without_known_pixels(tmp_path, synth, tiny_config):
    values = np.full((2, 64, 64), 500, dtype=np.uint16)
    values[1] = synth.to_range(synth.smooth_field(1, 64, 64), "uint16")[0]
    values[:, 5, 5] = 0
    store, _, _ = _build(synth.write_geotiff(tmp_path / "c.tif", values, nodata=0), tiny_config, tmp_path / "c.zarr",
                         footprint="full")
    assert store.scaling.lo[0] == 500 and store.scaling.hi[0] == 501  # a constant band still maps to [0, 1]
    assert np.asarray(store.group["scene"][0, 0, 0]) == 0
    values[0] = 0  # band 1 entirely nodata
    path = synth.write_geotiff(tmp_path / "e.tif", values, nodata=0, descriptions=["empty", "fine"])
    with pytest.raises(TilefillError, match="no known pixel in band.*empty"):
        _build(path, tiny_config, tmp_path / "e.zarr")


def test_open_round_trip(built, tiny_config):
    store, grid, info, s = built
    again = TileStore.open(store.path)
    assert again.config == tiny_config
    assert again.grid == grid
    assert [(t.y, t.x) for t in again.grid] == [(t.y, t.x) for t in grid]
    assert again.info == info
    assert again.info.band_names == info.band_names and again.info.tags == info.tags
    assert again.scaling == store.scaling
    assert again.tiles_to_fit == store.tiles_to_fit
    np.testing.assert_array_equal(np.asarray(again.group["gaps"]), np.asarray(store.group["gaps"]))


def test_open_round_trip_keeps_a_nan_nodata(tmp_path, synth, tiny_config):
    values = synth.to_range(synth.smooth_field(1, 64, 64), "float32")
    values[0, 10:12] = np.nan
    path = synth.write_geotiff(tmp_path / "f.tif", values, nodata=float("nan"))
    store, _, info = _build(path, tiny_config, tmp_path / "f.zarr")
    again = TileStore.open(store.path)
    assert np.isnan(again.info.nodata) and again.info.dtype == "float32"
    assert int(np.asarray(again.group["gaps"]).sum()) == 2 * 64


def test_window_reads_and_tile_writes(built):
    store, grid, info, s = built
    image, known = store.read_window(0, 32, 64)
    assert image.shape == known.shape == (3, 64, 64) and known.dtype == bool
    np.testing.assert_array_equal(known, np.broadcast_to(s.data[0:64, 32:96], known.shape))
    np.testing.assert_array_equal(image, np.asarray(store.group["scene"][:, 0:64, 32:96]))
    i = store.tiles_to_fit[0]
    assert not store.tile_done(i) and np.isnan(store.read_tile(i)).all()
    pred = np.random.default_rng(0).random((3, 64, 64)).astype(np.float64)
    store.write_tile(i, pred, {"final_loss": 0.01, "seconds": 1.5, "iterations": 3, "window": 64,
                               "estimated_rmse": 0.02})
    reopened = TileStore.open(store.path)
    assert reopened.tile_done(i)
    np.testing.assert_array_equal(reopened.read_tile(i), pred.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(reopened.group["tile_info"][i]), [0.01, 1.5, 3, 64, 0.02])
    others = [j for j in range(len(grid)) if j != i]
    assert not any(reopened.tile_done(j) for j in others)


def test_a_tile_filled_by_a_classical_method_is_done(striped_scene, tiny_config, tmp_path):
    from tilefill._fill import fill_tile

    cfg = tiny_config.override({"method": "gdal"})
    store, _, _ = _build(striped_scene.path, cfg, tmp_path / "g.zarr")
    i = store.tiles_to_fit[0]
    result = fill_tile(str(store.path), i)
    assert result.status == "filled"
    assert np.isfinite(store.read_tile(i)).all()
    assert store.tile_done(i)


def test_reopen_errors(tmp_path):
    with pytest.raises(TilefillError, match="no tile store at"):
        TileStore.open(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").attrs["x"] = 1
    with pytest.raises(TilefillError, match="not a tilefill tile store"):
        TileStore.open(tmp_path / "other.zarr")


def test_build_store_never_deletes_a_foreign_folder(striped_scene, tiny_config, tmp_path):
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "thesis.tex").write_text("do not delete")
    with pytest.raises(TilefillError, match="not a tilefill store"):
        _build(striped_scene.path, tiny_config, folder)
    assert (folder / "thesis.tex").read_text() == "do not delete"
    # a Zarr store that is not ours is not ours either
    other = tmp_path / "other.zarr"
    zarr.open_group(str(other), mode="w").create_array("a", shape=(2,), dtype="int8")
    with pytest.raises(TilefillError, match="not a tilefill store"):
        _build(striped_scene.path, tiny_config, other)
    assert (other / "a").exists()
    # nor is a file
    plain = tmp_path / "file.zarr"
    plain.write_text("x")
    with pytest.raises(TilefillError, match="not a tilefill store"):
        _build(striped_scene.path, tiny_config, plain)
    assert plain.read_text() == "x"


def test_build_store_replaces_its_own_store(built, tiny_config):
    store, grid, info, s = built
    store.write_tile(store.tiles_to_fit[0], np.zeros((3, 64, 64)), {"final_loss": 1.0, "seconds": 1.0})
    assert store.tile_done(store.tiles_to_fit[0])
    again, _, _ = _build(s.path, tiny_config.override({"fit.iterations": 9}), store.path)
    assert not again.tile_done(store.tiles_to_fit[0])  # a fresh store
    assert again.config.fit.iterations == 9
