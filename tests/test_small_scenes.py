"""Scenes smaller than a tile (field-scale chips): one tile, padded; the padding is never data.

Real GeoTIFFs and work stores in tmp dirs; fits in-process: the default preset with few iterations
(blend partner, hidden pixels, distance weights), or classical and guided methods.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from tilefill import TileGrid, load_config
from tilefill._store import TileStore, build_store
from tilefill._scene import open_scene
from tilefill.cli import main

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("one_torch_thread")]

TINY_RECIPE = str(Path(__file__).with_name("tiny_recipe.yaml"))  # 64 px tiles, tiny network
H, W = 45, 61  # smaller than one 64 px tile both ways


@pytest.fixture
def chip(tmp_path, synth):
    """A 45 x 61 px, 2-band int16 scene with SLC-like stripes as nodata; its truth."""
    truth = synth.to_range(synth.smooth_field(2, H, W), "int16")
    gaps = synth.stripe_mask(H, W, period=15, width_px=3, tilt=10)
    values = np.where(gaps[None], -9999, truth).astype(np.int16)
    path = synth.write_geotiff(tmp_path / "chip.tif", values, nodata=-9999, descriptions=["red", "nir"],
                               tags={"DATE_ACQUIRED": "2008-04-27"})
    return path, values, truth, gaps


def _fill(*args):
    res = CliRunner().invoke(main, [*map(str, args)])
    assert res.exit_code == 0, res.output
    return res


def test_a_chip_smaller_than_a_tile_is_filled_as_one_padded_tile(tmp_path, chip):
    path, values, truth, gaps = chip
    out, work = tmp_path / "out.tif", tmp_path / "work"
    res = _fill(path, "-o", out, "--config", "default", "--iterations", "20", "--workers", "0",
                "--footprint", "full", "--workdir", work)
    assert "1 tiles of 64 px (smaller than a tile: padded" in res.output
    with rasterio.open(out) as ds:
        assert (ds.height, ds.width) == (H, W)
        got = ds.read()
    known = ~gaps
    np.testing.assert_array_equal(got[:, known], values[:, known])  # known pixels bit for bit
    assert (got[:, gaps] != -9999).all()  # every gap filled
    with rasterio.open(out.with_name("out.tif.quality.tif")) as q:  # the estimates: the scene's pixels only
        assert (q.height, q.width) == (H, W) and np.isfinite(q.read(1)[gaps]).all()
    store = TileStore.open(work / "tiles.zarr")
    assert store.grid.size == 64 and len(store.grid) == 1 and store.grid.extent == (64, 64)
    pad = np.ones((64, 64), bool)
    pad[:H, :W] = False
    footprint = np.asarray(store.group["footprint"][:])
    scene_gaps = np.asarray(store.group["gaps"][:])
    hidden = np.asarray(store.group["hidden"][:])
    assert store.group["scene"].shape == (2, 64, 64)
    # the padding is collar: not in the footprint, never a gap, never a hidden (scored) pixel, never known
    assert not footprint[pad].any() and footprint[~pad].all()
    assert not scene_gaps[:, pad].any() and not hidden[:, pad].any()
    np.testing.assert_array_equal(scene_gaps[:, :H, :W], np.broadcast_to(gaps, (2, H, W)))
    assert hidden[:, :H, :W].any()  # the chip's own known pixels are hidden and scored
    blend = json.loads(out.with_name("out.tif.quality.json").read_text())["blend"]
    # the gap pixels the blend weighs are the chip's own: the padding adds none
    assert 0 < np.sum(blend["gap_pixels"]) == 2 * gaps.sum()


def test_a_guided_chip_and_a_classical_one(tmp_path, chip, synth):
    path, values, truth, gaps = chip
    other = synth.to_range(synth.smooth_field(2, H, W) * 0.9 + 0.05, "int16")
    guide = synth.write_geotiff(tmp_path / "guide.tif", other, nodata=-9999, descriptions=["red", "nir"])
    for method in ("llhm", "biharmonic"):
        out = tmp_path / f"{method}.tif"
        extra = ["--guide", guide] if method == "llhm" else []
        _fill(path, "-o", out, "--method", method, "--config", TINY_RECIPE, "--workers", "0", "--footprint", "full",
              *extra)
        with rasterio.open(out) as ds:
            got = ds.read()
            tags = ds.tags()
        assert got.shape == values.shape and (got[:, gaps] != -9999).all()
        np.testing.assert_array_equal(got[:, ~gaps], values[:, ~gaps])
        err = np.abs(got[:, gaps].astype(float) - truth[:, gaps])
        assert err.mean() < 0.05 * (truth.max() - truth.min())
        assert ("TILEFILL_GUIDES" in tags) == (method == "llhm")


def test_a_scene_a_tile_wide_keeps_its_store_and_run_key_layout(tmp_path, synth, tiny_config):
    """A scene at least a tile on both sides: store arrays of the scene's shape, the preset's grid in its key."""
    from tilefill._runkey import run_parameters

    values = synth.to_range(synth.smooth_field(2, 64, 96), "uint16")
    values[:, 10:13] = 0
    path = synth.write_geotiff(tmp_path / "scene.tif", values, nodata=0)
    with open_scene(path) as scene:
        grid = TileGrid.from_scene(scene.info, tiny_config)
        store = build_store(scene, grid, tiny_config, tmp_path / "tiles.zarr")
        params = run_parameters(scene, tiny_config, grid, "hull")
    assert not grid.padded and store.group["scene"].shape == (2, 64, 96)
    assert params["grid"] == {"height": 64, "width": 96, "size": 64, "overlap": 32}


def test_the_grid_of_a_chip_is_in_its_run_key(tmp_path, chip):
    from tilefill._runkey import run_parameters

    path, *_ = chip
    cfg = load_config("default")
    with open_scene(path) as scene:
        params = run_parameters(scene, cfg, TileGrid.from_scene(scene.info, cfg), "hull")
    assert params["grid"] == {"height": H, "width": W, "size": 64, "overlap": 32}
