"""A scene filled with a second date as guide, end to end through the CLI: real GeoTIFFs, one run in process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner

from tilefill.cli import main

NAMES = ["blue", "green", "red", "nir"]
SIZE = 96
# the default preset's recipe (distance blend on hidden pixels) on the tests' tiny network and tiles
TINY = ["--config", "default", "--workers", "0", "--footprint", "full", "--iterations", "40", "--tile-size", "64", "--overlap", "32",
        "--set", "network.channels_down=[8,8,8,8,8]", "--set", "network.channels_up=[8,8,8,8,8]",
        "--set", "network.channels_skip=[4,4,4,4,4]", "--set", "fit.device=cpu", "--set", "blend.prior_pixels=50",
        "-q"]
CLOUD = (slice(30, 50), slice(None))  # rows where the guide has no data


def _stripes(n: int) -> np.ndarray:
    """SLC-off-like stripes: 6 px every 33 rows, 1 px down per 12 px across."""
    r, c = np.mgrid[:n, :n]
    return (r - c // 12) % 33 < 6


@pytest.fixture
def pair(tmp_path, synth, one_torch_thread):
    """A striped scene and a guide of the same place, which it follows by a linear map plus its own texture."""
    rng = np.random.default_rng(4)
    field = synth.smooth_field(4, SIZE, SIZE)
    guide01 = np.clip(0.6 * field + 0.4 * rng.random((1, SIZE, SIZE)), 0, 1)
    truth = synth.to_range(np.clip(0.7 * guide01 + 0.15, 0, 1), "uint16")
    guide = synth.to_range(guide01, "uint16")
    gaps = _stripes(SIZE)
    scene = synth.write_geotiff(tmp_path / "scene.tif", np.where(gaps[None], 0, truth), nodata=0, descriptions=NAMES)
    clouded = guide.copy()
    clouded[(slice(None), *CLOUD)] = 0
    guide_path = synth.write_geotiff(tmp_path / "guide.tif", clouded, nodata=0, descriptions=NAMES)
    return dict(scene=scene, guide=guide_path, truth=truth, gaps=gaps, dir=tmp_path)


def _fill(pair, out, *extra):
    res = CliRunner().invoke(main, [str(pair["scene"]), "-o", str(out), *TINY, *map(str, extra)])
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as ds:
        return ds.read().astype(np.float64), ds.tags()


def _rmse(pair, pred, where):
    return float(np.sqrt(np.mean((pred - pair["truth"])[:, where] ** 2)))


def test_a_guide_lowers_the_gap_error_and_the_output_names_it(pair):
    alone, _ = _fill(pair, pair["dir"] / "alone.tif")
    guided, tags = _fill(pair, pair["dir"] / "guided.tif", "--guide", pair["guide"])
    covered = pair["gaps"].copy()
    covered[CLOUD] = False
    assert _rmse(pair, guided, covered) < 0.6 * _rmse(pair, alone, covered)
    assert [g["path"] for g in json.loads(tags["TILEFILL_GUIDES"])] == [str(pair["guide"])]
    side = json.loads((pair["dir"] / "guided.tif.quality.json").read_text())
    blend = side["blend"]["guided"]
    assert blend["partner"] == "llhm" and blend["sources"] == ["dip", "partner", "guide"]
    assert np.allclose(np.sum(blend["weights"], axis=-1), 1, atol=1e-3)  # rounded to 4 places


def test_the_trust_map_says_where_the_guide_weighed_and_it_weighs_nothing_where_it_has_no_data(pair):
    _fill(pair, pair["dir"] / "guided.tif", "--guide", pair["guide"])
    with rasterio.open(pair["dir"] / "guided.tif.quality.tif") as ds:
        assert ds.count == 8 and "weight of the guides" in ds.descriptions[4]
        error, weight = ds.read()[:4], ds.read()[4:]
    gaps = pair["gaps"]
    under_cloud = gaps.copy()
    under_cloud[:CLOUD[0].start] = under_cloud[CLOUD[0].stop:] = False
    assert (weight[:, under_cloud] == 0).all()
    covered = gaps & ~under_cloud
    assert (weight[:, covered] > 0).mean() > 0.9 and np.isfinite(error[:, gaps]).all()
    assert np.isnan(weight[:, ~gaps]).all()
    # the sidecar's per-tile summary: the map's RMS and the guides' mean weight over each tile's filled pixels
    tiles = json.loads((pair["dir"] / "guided.tif.quality.json").read_text())["tiles"]
    for t in tiles:
        y, x, n = t["row_off"], t["col_off"], t["size"]
        tile_gaps = gaps[y:y + n, x:x + n]
        expect = np.sqrt(np.mean(error[0, y:y + n, x:x + n][tile_gaps] ** 2))
        assert t["map_rmse"][0] == pytest.approx(expect, rel=1e-4)
        assert 0 <= t["guide_weight"][0] <= 1


@pytest.mark.parametrize("method", ["llhm", "nspi"])
def test_llhm_and_nspi_fill_from_the_guide_and_from_the_scene_where_it_has_no_data(pair, method):
    filled, _ = _fill(pair, pair["dir"] / f"{method}.tif", "--method", method, "--guide", pair["guide"])
    gaps = pair["gaps"]
    covered = gaps.copy()
    covered[CLOUD] = False
    span = float(pair["truth"].max() - pair["truth"].min())
    assert _rmse(pair, filled, covered) < 0.03 * span  # the target is a linear map of the guide
    assert np.isfinite(filled[:, gaps]).all() and (filled[:, gaps] > 0).all()  # under the cloud too


def _copy_scene(pair, synth):
    copy = pair["dir"] / "copy.tif"
    shutil.copy(pair["scene"], copy)
    return ["--guide", copy]


def _far_guide(pair, synth):
    far = synth.TRANSFORM * Affine.translation(5000, 0)
    path = synth.write_geotiff(pair["dir"] / "far.tif", pair["truth"], nodata=0, descriptions=NAMES, transform=far)
    return ["--guide", path]


def _other_bands(pair, synth):
    path = synth.write_geotiff(pair["dir"] / "other.tif", pair["truth"], nodata=0,
                               descriptions=["b1_x", "b2_x", "b3_x", "b4_x"])
    return ["--guide", path]


@pytest.mark.parametrize("args, expect", [
    (lambda p, s: ["--guide", p["scene"]], "is the scene itself"),
    (_copy_scene, "holds the scene's own pixels"),
    (_far_guide, "does not overlap the scene"),
    (_other_bands, "cannot be matched to the scene's"),
    (lambda p, s: ["--guide", p["dir"] / "nowhere.tif"], "guide not found"),
    (lambda p, s: ["--method", "llhm"], "give it with --guide"),
    (lambda p, s: ["--method", "gdal", "--guide", p["guide"]], "--guide goes with dip, llhm or nspi"),
], ids=["itself", "a-copy", "far", "bands", "missing", "llhm-without", "gdal-with"])
def test_a_guide_that_cannot_guide_is_refused_in_one_line_and_nothing_is_written(pair, synth, args, expect):
    out = pair["dir"] / "out.tif"
    res = CliRunner().invoke(main, [str(pair["scene"]), "-o", str(out), *TINY, *map(str, args(pair, synth))])
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("Error:") and expect in lines[-1], res.output
    assert "Traceback" not in res.output and not out.exists()
    assert not list(pair["dir"].glob(".out.tif*"))  # no work store either: refused before any


def test_another_guide_content_is_another_run(pair, synth):
    """The guide's content is part of the run key: a kept store made with one guide is refused under another."""
    work = pair["dir"] / "work"
    _fill(pair, pair["dir"] / "a.tif", "--guide", pair["guide"], "--workdir", work)
    with rasterio.open(pair["guide"], "r+") as ds:  # the same file, other pixels
        data = ds.read()
        data[:, 60:70] = 7
        ds.write(data)
    res = CliRunner().invoke(main, [str(pair["scene"]), "-o", str(pair["dir"] / "b.tif"), *TINY,
                                    "--guide", str(pair["guide"]), "--workdir", str(work)])
    assert res.exit_code == 1 and "holds another run" in res.output
