"""The data path: a task's windows read a row of tiles at a time, its chunks written one write per array, and the
same store, resume and output as tile by tile.

Real stores on disk, real GeoTIFFs; the interrupted run is the pipeline in-process, stopped inside a write.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from conftest import IN_PROCESS

from tilefill import TileGrid, fill_scene, load_config
from tilefill._classical import fill_classical
from tilefill._cluster import Cluster
from tilefill._fill import fill_tile, fill_tiles
from tilefill._pipeline import default_store
from tilefill._scene import open_scene
from tilefill._schedule import CHEAP_TILES_PER_TASK, run_tiles, tiles_per_task
from tilefill._store import FLOAT_CODECS, TILE_INFO_FIELDS, TileStore, WindowReader, build_store

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
TINY = str(Path(__file__).with_name("tiny.yaml"))
GDAL = dict(config=TINY, method="gdal", cluster=IN_PROCESS, progress=False)


@pytest.fixture
def wide_scene(tmp_path, synth):
    """A 2-band uint16 128 x 640 scene striped everywhere: 3 x 19 tiles of 64 px, every one with gaps."""
    values = synth.to_range(synth.smooth_field(2, 128, 640), "uint16")
    values[:, synth.stripe_mask(128, 640, period=16, width_px=3)] = 0
    values[:, 20:, 300:420] = 0  # a hole wider than a tile: its tiles are fitted on wider windows
    return synth.write_geotiff(tmp_path / "scene.tif", values, nodata=0)


def _store(scene: Path, path: Path, method: str = "gdal", **overrides) -> TileStore:
    cfg = load_config(TINY).override({"method": method, **overrides})
    with open_scene(scene) as src:
        return build_store(src, TileGrid.from_scene(src.info, cfg), cfg, path)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def test_windows_cut_from_a_row_read_equal_windows_read_alone(wide_scene, tmp_path):
    store = _store(wide_scene, tmp_path / "tiles.zarr", method="dip", **{"fit.validation": 0.05})  # hidden pixels
    grid = store.grid
    indices = list(range(15, 25))  # the end of one tile row and the start of the next
    reader = WindowReader(store, indices, hidden=True)
    g = store.group
    for y, x, side in [(grid[i].y, grid[i].x, grid.size) for i in indices] + [grid.context_window(grid[20], 2)]:
        got = reader.window(y, x, side)
        rows, cols = slice(y, y + side), slice(x, x + side)
        known = ~np.asarray(g["gaps"][:, rows, cols]) & np.asarray(g["footprint"][rows, cols])[None]
        np.testing.assert_array_equal(got["image"], np.asarray(g["scene"][:, rows, cols]))
        np.testing.assert_array_equal(got["known"], known)
        np.testing.assert_array_equal(got["hidden"], np.asarray(g["hidden"][:, rows, cols]))
    assert len(reader._read) == 2, "one read per row of tiles"
    a, b = reader.window(grid[15].y, grid[15].x, grid.size), reader.window(grid[16].y, grid[16].x, grid.size)
    a["image"][:] = -1  # a fill writing into its window leaves its neighbour's alone
    assert (b["image"] >= 0).all()


def test_tiles_filled_many_per_task_equal_tiles_filled_one_by_one(wide_scene, tmp_path):
    one = _store(wide_scene, tmp_path / "one.zarr")
    many = _store(wide_scene, tmp_path / "many.zarr")
    todo = one.tiles_to_fit
    assert len(todo) == 57
    for i in todo:
        fill_tile(str(one.path), i)
    run = run_tiles(Cluster(None), str(many.path), todo, per_task=CHEAP_TILES_PER_TASK)
    assert not run.failures and len(run.results) == 57
    np.testing.assert_array_equal(np.asarray(many.group["tiles"][:]), np.asarray(one.group["tiles"][:]))
    info_one, info_many = np.asarray(one.group["tile_info"][:]), np.asarray(many.group["tile_info"][:])
    same = [k for k, f in enumerate(TILE_INFO_FIELDS) if f != "seconds"]
    np.testing.assert_array_equal(info_many[:, same], info_one[:, same])
    assert np.isfinite(info_many[todo, TILE_INFO_FIELDS.index("seconds")]).all()
    assert (info_many[todo, TILE_INFO_FIELDS.index("window")] > one.grid.size).any(), "some fitted wider"
    # and each tile on its own window, read straight from the arrays, as before tasks read blocks
    g = one.group
    for i in todo[:5]:
        t = one.grid[i]
        rows, cols = slice(t.y, t.y + t.size), slice(t.x, t.x + t.size)
        known = ~np.asarray(g["gaps"][:, rows, cols]) & np.asarray(g["footprint"][rows, cols])[None]
        if known.mean(axis=(1, 2)).min() >= one.config.fit.min_known_fraction:
            fill = fill_classical("gdal", np.asarray(g["scene"][:, rows, cols]), known)
            np.testing.assert_array_equal(np.asarray(many.group["tiles"][i]), fill)


def test_classical_fills_take_several_tiles_per_task_and_dip_keeps_its_setting():
    dip = load_config(TINY)
    assert tiles_per_task(dip) == 1 and tiles_per_task(dip.override({"engine.tiles_per_task": 8})) == 8
    gdal = dip.override({"method": "gdal"})
    assert tiles_per_task(gdal) == CHEAP_TILES_PER_TASK
    assert tiles_per_task(gdal.override({"engine.tiles_per_task": 64})) == 64


def test_the_scratch_store_keeps_floats_raw_and_compresses_masks(wide_scene, tmp_path):
    store = _store(wide_scene, tmp_path / "tiles.zarr")
    codecs = {name: [c.to_dict()["name"] for c in store.group[name].metadata.codecs]
              for name in ("scene", "tiles", "gaps", "footprint")}
    assert FLOAT_CODECS is None and codecs["scene"] == codecs["tiles"] == ["bytes"]
    assert codecs["gaps"] == codecs["footprint"] == ["bytes", "zstd"]


def test_a_task_interrupted_in_its_write_leaves_none_of_its_tiles_done_and_resumes_exactly(wide_scene, tmp_path,
                                                                                            monkeypatch):
    clean = tmp_path / "clean.tif"
    fill_scene(wide_scene, clean, **GDAL)
    out = tmp_path / "out.tif"
    real, writes = zarr.Array.set_orthogonal_selection, []

    def crash_on_the_second_info_write(self, selection, value, *args, **kwargs):
        if self.basename == "tile_info":
            writes.append(selection[0].tolist())
            if len(writes) == 2:  # the second task: its predictions are written, its infos not
                raise KeyboardInterrupt
        return real(self, selection, value, *args, **kwargs)

    monkeypatch.setattr(zarr.Array, "set_orthogonal_selection", crash_on_the_second_info_write)
    with pytest.raises(KeyboardInterrupt):
        fill_scene(wide_scene, out, **GDAL)
    monkeypatch.undo()
    first, second = writes
    assert len(first) > 1 and len(second) > 1, "tasks of several tiles, one write each"
    store = TileStore.open(default_store(out))
    assert store.tiles_done(store.tiles_to_fit) == first, "the interrupted task's tiles are not done"
    assert np.isfinite(np.asarray(store.group["tiles"][second[0]])).any(), "though its predictions were written"
    report = fill_scene(wide_scene, out, **GDAL)
    assert report.tiles_skipped == len(first) and report.tiles_fitted == 57 - len(first)
    np.testing.assert_array_equal(_read(out), _read(clean))


def test_the_datapath_benchmark_reports_each_stage_against_a_plain_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["datapath.py", "--height", "400", "--width", "300", "--workers", "1",
                                      "--method", "noop", "--out", str(tmp_path)])
    runpy.run_path(str(ROOT / "benchmarks" / "datapath.py"), run_name="__main__")
    result = json.loads(next(tmp_path.glob("datapath-noop-fast-300x400-*.json")).read_text())
    run = result["runs"]["fast/1"]
    assert result["plain_copy"]["seconds"] > 0 and run["ratio_to_copy"] > 0
    tiles = run["median_run"]["stages"]["tiles"]
    assert tiles["tiles"] == run["median_run"]["tiles_fitted"] > 0 and tiles["tasks"] >= 1
    assert tiles["seconds_in"]["fill"] > 0 and tiles["seconds_in"]["zarr_write"] > 0
    assert tiles["bytes_written_gb"] > 0 and run["peak_rss_gb"] > 0
    prepare = run["median_run"]["stages"]["prepare"]
    assert prepare["seconds_in"]["write_pass"] > 0 and prepare["calls"]["geotiff_read_bytes"] >= 300 * 400 * 4 * 2
    assert len(run["output_digests"]) == 1


def test_the_datapath_benchmark_runs_from_and_to_a_local_s3_server(tmp_path, monkeypatch):
    """``--s3``: the scene, the work store and the output on a local S3 server (moto) the benchmark starts; the same
    pixels as from and to local disk, an upload stage, and nothing of it left in this process's environment."""
    pytest.importorskip("moto.server")
    pytest.importorskip("obstore")
    monkeypatch.delenv("AWS_S3_ENDPOINT", raising=False)
    common = ["--height", "200", "--width", "150", "--workers", "1", "--method", "gdal", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", ["datapath.py", *common, "--s3"])
    runpy.run_path(str(ROOT / "benchmarks" / "datapath.py"), run_name="__main__")
    monkeypatch.setattr(sys, "argv", ["datapath.py", *common])
    runpy.run_path(str(ROOT / "benchmarks" / "datapath.py"), run_name="__main__")
    s3 = json.loads(next(tmp_path.glob("datapath-gdal-fast-150x200-s3-*.json")).read_text())
    local = json.loads(next(tmp_path.glob("datapath-gdal-fast-150x200-2*.json")).read_text())
    assert s3["meta"]["storage"].startswith("local S3 server") and local["meta"]["storage"] == "local disk"
    run = s3["runs"]["fast/1"]["median_run"]
    assert set(run["stages"]) == {"prepare", "tiles", "write", "upload"} and run["tiles_fitted"] > 0
    assert run["stages"]["prepare"]["calls"]["geotiff_read_bytes"] >= 150 * 200 * 4 * 2  # the scene, from the bucket
    assert s3["plain_copy"]["repeats"][0]["upload_s"] >= 0
    assert s3["runs"]["fast/1"]["output_digests"] == local["runs"]["fast/1"]["output_digests"]
    assert "AWS_S3_ENDPOINT" not in os.environ
