"""The DIP / classical blend weighted by distance to known data: statistics, fitted weights, the mosaic."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import rasterio

from conftest import IN_PROCESS
from tilefill._distance_blend import (BIN_LABELS, KNOWN, N_BINS, BlendStats, distance_bins, fit_weights,
                                      histogram_match)


def _stripes(h=96, w=96, period=24, width=6):
    """Horizontal stripes ``width`` rows tall every ``period`` rows from row 3 (True = gap), one band."""
    return (((np.arange(h)[:, None] - 3) % period) < width) & np.ones((1, w), bool)


def test_distance_bins_follow_the_distance_to_known_pixels_per_band():
    gap = np.zeros((2, 40, 40), bool)
    gap[0, 10:17] = True  # 7 rows: distances 1, 2, 3, 4, 3, 2, 1
    gap[1, 5:35, 5:35] = True  # a 30 px hole: its centre is 15 px from data
    bins = distance_bins(~gap)
    assert (bins[~gap] == KNOWN).all()
    assert [BIN_LABELS[k] for k in bins[0, 10:17, 20]] == ["1", "2", "3", "4-5", "3", "2", "1"]
    assert BIN_LABELS[bins[1, 20, 20]] == "9-16" and BIN_LABELS[bins[1, 5, 20]] == "1"
    assert (distance_bins(np.zeros((1, 4, 4), bool)) == N_BINS - 1).all()  # nothing known: the farthest bin


def _measured(rng, truth, gap, hidden, dip_noise, classical_noise):
    """Stats of fills whose errors grow with distance as given: noise(bin) per fill, independent."""
    seen = ~gap & ~hidden
    bins = distance_bins(seen)
    k = np.minimum(bins, N_BINS - 1)
    dip = truth + rng.normal(size=truth.shape) * np.asarray(dip_noise)[k]
    classical = truth + rng.normal(size=truth.shape) * np.asarray(classical_noise)[k]
    return BlendStats.measure(dip, [classical], truth, seen, hidden, gap)


@pytest.mark.parametrize("size", [96, 160, 640])
def test_the_scene_holdout_hides_its_share_of_known_pixels_however_small_the_scene(size):
    from tilefill._distance_blend import HOLDOUT_SHIFT, SceneHoldout
    from tilefill._gaps import slc_off_mask

    gaps = slc_off_mask((size, size), seed=3, angle_deg=10, scene_width=6000, x_offset=300)
    above = np.zeros((HOLDOUT_SHIFT, size), bool)
    counts = SceneHoldout.count(SceneHoldout.shapes(gaps, above), 0)
    known = int((~gaps).sum())
    for seed in range(5):
        holdout = SceneHoldout((size, size), share=0.05, cell_candidates=counts, known=known, seed=seed)
        hidden = holdout.strip(0, gaps, above)
        assert not (hidden & gaps).any()
        # the cells are taken until the share is reached: at least 5%, at most one cell more
        assert 0.05 * known <= hidden.sum() <= 0.05 * known + counts.max()


def test_fitted_weights_follow_each_fills_error_with_distance():
    rng = np.random.default_rng(0)
    gap = _stripes()[None]
    hidden = np.roll(gap, 12, axis=1)  # the gaps' own shape, moved between them
    truth = rng.random(gap.shape)
    # the classical fill is exact next to data and poor further away; DIP errs alike everywhere
    dip_noise = [0.02] * N_BINS
    classical_noise = [0.0, 0.02, 0.06] + [0.1] * (N_BINS - 3)
    stats = _measured(rng, truth, gap, hidden, dip_noise, classical_noise)
    w = fit_weights(stats, prior=0.5, prior_pixels=0)
    assert w.weights[0, 0] == pytest.approx(1.0, abs=0.01)  # classical alone: an answer, not a clip artefact
    assert w.weights[0, 1] == pytest.approx(0.5, abs=0.1)  # equal errors: half and half
    assert w.weights[0, 2] == pytest.approx(0.02 ** 2 / (0.02 ** 2 + 0.06 ** 2), abs=0.06)
    assert w.weights[0, 0] > w.weights[0, 1] > w.weights[0, 2]
    # the blend's error per bin is what the hidden pixels measured at those weights
    assert np.sqrt(w.mse[0, 0]) < 0.005 and np.sqrt(w.mse[0, 2]) < 0.02


def test_a_bin_with_few_hidden_pixels_leans_on_the_bin_before():
    stats = BlendStats.zeros(1, 1)
    # bin 1: 5000 pixels say 0.9; bin 2: 10 pixels say 0.0; bins beyond: no pixel
    for k, (n, best) in enumerate([(5000, 0.9), (10, 0.0)]):
        stats.n[0, 0, k], stats.sbb[0, 0, k], stats.sab[0, 0, k], stats.saa[0, 0, k] = n, n * 1.0, -best * n, n
    w = fit_weights(stats, prior=0.5, prior_pixels=200).weights[0]
    assert w[0] == pytest.approx((5000 * 0.9 + 200 * 0.5) / 5200)
    assert w[1] == pytest.approx(200 * w[0] / 210)  # ten pixels barely move it
    assert np.allclose(w[2:], w[1])  # bins without evidence carry the last weight outward


def test_a_curve_measured_on_other_scenes_is_each_bins_prior():
    stats = BlendStats.zeros(1, 1)
    # bin 1: 5000 pixels say 0.9; bin 2: 10 pixels say 0.0; bins beyond: no pixel
    for k, (n, best) in enumerate([(5000, 0.9), (10, 0.0)]):
        stats.n[0, 0, k], stats.sbb[0, 0, k], stats.sab[0, 0, k], stats.saa[0, 0, k] = n, n * 1.0, -best * n, n
    curve = np.linspace(0.8, 0.1, N_BINS)
    w = fit_weights(stats, prior=0.5, prior_pixels=200, curve=curve).weights[0]
    assert w[0] == pytest.approx((5000 * 0.9 + 200 * curve[0]) / 5200)  # much evidence: the scene's own
    assert w[1] == pytest.approx(200 * curve[1] / 210)  # little: near the curve, not near bin 1
    np.testing.assert_allclose(w[2:], curve[2:])  # none: the curve itself


def test_the_prior_curve_setting_is_checked_and_shaped_per_partner():
    from tilefill import TilefillError, load_config

    two = {"fit.blend_method": ["biharmonic", "gdal"]}
    one_for_all = load_config("default", {**two, "blend.prior_curve": [0.5] * N_BINS})
    assert one_for_all.blend.curve(2).shape == (2, N_BINS)
    per_partner = load_config("default", {**two, "blend.prior_curve": [[1.0] * N_BINS, [0.0] * N_BINS]})
    assert per_partner.blend.curve(2)[:, 0].tolist() == [1.0, 0.0]
    assert load_config("paper").blend.curve(1) is None  # no curve: each bin leans on the bin before
    for bad, says in [([0.5] * 3, "8 weights"), ([1.5] * N_BINS, "in [0, 1]"),
                      ([[0.5] * N_BINS] * 3, "3 curves for 2 partners")]:
        with pytest.raises(TilefillError, match=re.escape(says)):
            load_config("default", {**two, "blend.prior_curve": bad})


def test_each_band_takes_the_partner_that_errs_least_where_its_gaps_are():
    rng = np.random.default_rng(1)
    gap = np.stack([_stripes(width=4), _stripes(width=12)])
    hidden = np.roll(gap, 12, axis=1) & ~gap
    truth = rng.random(gap.shape)
    seen = ~gap & ~hidden
    k = np.minimum(distance_bins(seen), N_BINS - 1)
    near_good = np.array([0.0, 0.0, 0.05] + [0.2] * (N_BINS - 3))  # exact near data, useless far away
    far_good = np.array([0.03] * N_BINS)  # never exact, never bad
    dip = truth + rng.normal(size=truth.shape) * 0.05
    fills = [truth + rng.normal(size=truth.shape) * near_good[k], truth + rng.normal(size=truth.shape) * far_good[k]]
    stats = BlendStats.measure(dip, fills, truth, seen, hidden, gap)
    w = fit_weights(stats, prior_pixels=50)
    # band 0's gaps are 1-2 px from data: the near-exact partner; band 1's reach 6 px: the steady one
    assert w.partner.tolist() == [0, 1]


def test_stats_round_trip_through_the_store_array_and_add_up():
    rng = np.random.default_rng(2)
    gap = _stripes()[None]
    hidden = np.roll(gap, 12, axis=1)
    truth = rng.random(gap.shape)
    a = _measured(rng, truth, gap, hidden, [0.02] * N_BINS, [0.01] * N_BINS)
    b = BlendStats.from_array(a.to_array())
    for name in ("n", "saa", "sab", "sbb", "gaps"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert (a + b).n.sum() == 2 * hidden.sum()
    assert a.gaps.sum() == gap.sum()
    # hidden stripes of the gaps' own shape: nearly the same distance histogram
    assert histogram_match(a)[0] > 0.9


# --- through the pipeline -------------------------------------------------------------------------------

@pytest.fixture
def recipe(tiny_config):
    """The tiny network with the default preset's recipe, a few iterations; distance weights."""
    return tiny_config.override({"fit.iterations": 4, "fit.ema": 0.9, "fit.classical_blend": 0.5,
                                 "fit.blend_method": ["biharmonic", "gdal"], "fit.validation": 0.05,
                                 "blend.weights": "distance"})


def _scene(tmp_path, synth, h=128, w=160):
    truth = synth.to_range(synth.smooth_field(3, h, w), "uint16")
    gaps = synth.slc_stripes(h, w)
    values = np.where(gaps[None], 0, truth).astype(np.uint16)
    return synth.write_geotiff(tmp_path / "scene.tif", values, nodata=0), truth, gaps


def test_distance_weights_through_the_pipeline_write_a_georeferenced_error_map(tmp_path, synth, recipe,
                                                                               one_torch_thread):
    from tilefill import fill_scene

    path, truth, gaps = _scene(tmp_path, synth)
    out = tmp_path / "out.tif"
    report = fill_scene(path, out, config=recipe, cluster=IN_PROCESS, progress=False, footprint="full",
                        workdir=tmp_path / "work.zarr")
    side = json.loads(out.with_name("out.tif.quality.json").read_text())
    blend = side["blend"]
    # several partners computed, but without experimental.choose_partner the first blends every band
    assert blend["bins"] == list(BIN_LABELS) and blend["partner"] == ["biharmonic"] * 3
    w = np.array(blend["weights"])
    assert w.shape == (3, N_BINS) and ((w >= 0) & (w <= 1)).all()
    assert all(n > 0 for n in np.array(blend["hidden_pixels"])[:, 0])  # every band's bin 1 was measured
    with rasterio.open(out) as o, rasterio.open(out.with_name("out.tif.quality.tif")) as q:
        assert q.crs == o.crs and q.transform == o.transform and q.count == o.count
        err = q.read()
        filled = o.read()
    # an estimate at every filled gap pixel, nothing elsewhere; in the band's units (DN here)
    assert np.isfinite(err[:, gaps]).all() and np.isnan(err[:, ~gaps]).all()
    true_rmse = np.sqrt(np.mean((filled[:, gaps].astype(float) - truth[:, gaps]) ** 2))
    assert 0.1 < np.sqrt(np.mean(err[:, gaps] ** 2)) / true_rmse < 10
    # per tile, the mosaic's estimate replaces the tile's own
    assert len(side["tiles"]) == report.tiles_fitted
    # the report's figure is the map's: each band's RMS over the filled pixels, mean of the bands, in DN
    expected = np.mean([np.sqrt(np.mean(e[gaps] ** 2)) for e in err.astype(np.float64)])
    assert report.estimated_gap_rmse == pytest.approx(expected, rel=1e-4)
    assert report.estimate_units == "in the input's units" and "in the input's units, mean of the bands" in str(report)


def test_blend_settings_reuse_the_fitted_tiles(tmp_path, synth, recipe, one_torch_thread):
    """``blend`` is decided after the fits: another setting re-mosaics the kept store without fitting."""
    from tilefill import fill_scene

    path, truth, gaps = _scene(tmp_path, synth)
    work = tmp_path / "work.zarr"
    first = fill_scene(path, tmp_path / "distance.tif", config=recipe, cluster=IN_PROCESS, progress=False,
                       footprint="full", workdir=work)
    outputs = {}
    settings = [("fixed", {"blend.weights": "fixed"}), ("weak-prior", {"blend.prior_pixels": 5}),
                ("curve", {"blend.prior_curve": [1.0] * N_BINS, "blend.prior_pixels": 1e9})]
    for name, over in settings:
        rep = fill_scene(path, tmp_path / f"{name}.tif", config=recipe.override(over), cluster=IN_PROCESS, progress=False,
                         footprint="full", workdir=work)
        assert rep.tiles_fitted == 0 and rep.tiles_skipped == first.tiles_fitted
        with rasterio.open(tmp_path / f"{name}.tif") as ds:
            outputs[name] = ds.read()
    with rasterio.open(tmp_path / "distance.tif") as ds:
        outputs["distance"] = ds.read()
    assert not np.array_equal(outputs["fixed"][:, gaps], outputs["distance"][:, gaps])
    assert not (tmp_path / "fixed.tif.quality.tif").exists()  # fixed weights make no per-pixel map
    # a curve of 1.0 held with overwhelming weight: each band's partner alone, whatever the hidden pixels say
    curve = json.loads((tmp_path / "curve.tif.quality.json").read_text())["blend"]["weights"]
    np.testing.assert_allclose(curve, 1.0, atol=1e-6)
    for v in outputs.values():
        np.testing.assert_array_equal(v[:, ~gaps], truth[:, ~gaps])


def test_fixed_weights_blend_each_tile_as_the_tile_task_chose(tmp_path, synth, tiny_config, one_torch_thread):
    """With a fixed weight the mosaic averages DIP and partner per tile, exactly as a single blended fill would."""
    from tilefill._fill import run_method_many

    rng = np.random.default_rng(3)
    img = rng.random((2, 64, 64), dtype=np.float32)
    known = np.ones_like(img, dtype=bool)
    known[:, 20:26] = False
    cfg = tiny_config.override({"fit.iterations": 2, "fit.classical_blend": 0.3, "fit.blend_method": "gdal"})
    fill = run_method_many("dip", [(img, known, 5)], cfg)[0]
    np.testing.assert_allclose(fill.blended(), 0.7 * fill.prediction + 0.3 * fill.partners[0], atol=1e-6)
    assert fill.weights.tolist() == [0.3, 0.3]


def test_the_sums_on_the_real_gaps_give_the_error_of_the_written_output(tmp_path, synth, recipe, one_torch_thread):
    """``mosaic_stats(truth=...)`` (what benchmarks/blend_study.py scores every rule with) predicts, at the
    fitted weights, the gap error of the GeoTIFF the pipeline wrote."""
    from tilefill import fill_scene
    from tilefill._mosaic import mosaic_stats, thin_tiles
    from tilefill._store import TileStore

    path, truth, gaps = _scene(tmp_path, synth)
    out = tmp_path / "out.tif"
    fill_scene(path, out, config=recipe.override({"experimental.choose_partner": True}), cluster=IN_PROCESS,
               progress=False, footprint="full", workdir=tmp_path / "work.zarr")
    blend = json.loads(out.with_name("out.tif.quality.json").read_text())["blend"]
    store = TileStore.open(tmp_path / "work.zarr" / "tiles.zarr")  # the store inside the work folder
    stats = mosaic_stats(store, thin_tiles(store), truth=store.scaling.forward(truth.astype(np.float64)))
    partner = np.array([["biharmonic", "gdal"].index(p) for p in blend["partner"]])
    predicted = stats.sse(np.array(blend["weights"]), partner).sum(axis=1)
    with rasterio.open(out) as ds:
        written = store.scaling.forward(ds.read().astype(np.float64)) - store.scaling.forward(truth.astype(np.float64))
    actual = np.array([np.sum(written[b][gaps] ** 2) for b in range(truth.shape[0])])
    assert stats.n[0].sum(axis=1).tolist() == [gaps.sum()] * truth.shape[0]  # every gap pixel, once per band
    np.testing.assert_allclose(predicted, actual, rtol=0.005)  # the output is rounded to uint16


def test_the_error_map_of_thin_gap_tiles_is_their_partners_error_not_zero(tmp_path, synth, recipe, one_torch_thread):
    """1 px stripes: every tile is filled by its partner alone (``fit.thin_gap_px``), with no fit; the
    error map gives those pixels the partner's error on the hidden pixels, never a flattering 0."""
    from tilefill import fill_scene

    h, w = 96, 96
    truth = synth.to_range(synth.smooth_field(3, h, w), "uint16")
    gaps = np.zeros((h, w), bool)
    gaps[5::12] = True  # 1 px stripes (the hidden copies, 16 rows down, fall between them)
    values = np.where(gaps[None], 0, truth).astype(np.uint16)
    path = synth.write_geotiff(tmp_path / "thin.tif", values, nodata=0)
    out = tmp_path / "out.tif"
    report = fill_scene(path, out, config=recipe.override({"fit.thin_gap_px": 1}), cluster=IN_PROCESS,
                        progress=False, footprint="full")
    assert report.tiles_fitted > 0 and all(t.iterations == 0 for t in report.tiles if t.status == "filled")
    with rasterio.open(out) as o, rasterio.open(out.with_name("out.tif.quality.tif")) as q:
        err, filled = q.read(), o.read()
    true_rmse = np.sqrt(np.mean((filled[:, gaps].astype(float) - truth[:, gaps]) ** 2))
    assert (err[:, gaps] > 0).all() and np.isnan(err[:, ~gaps]).all()
    assert 0.1 < np.sqrt(np.mean(err[:, gaps] ** 2)) / true_rmse < 10
