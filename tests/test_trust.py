"""The trust map: each filled pixel's expected error, fitted on the scene's hidden pixels, points at the hard places."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from tilefill._trust import MIN_HIDDEN, TrustStats, features, local_variance
from tilefill.cli import main


def test_local_variance_is_the_variance_of_the_known_pixels_in_the_window():
    rng = np.random.default_rng(0)
    values = rng.random((2, 20, 20))
    known = rng.random((2, 20, 20)) > 0.3
    got = local_variance(values, known, side=5)
    for b, y, x in ((0, 10, 10), (1, 0, 0), (1, 19, 7)):
        win = (b, slice(max(0, y - 2), y + 3), slice(max(0, x - 2), x + 3))
        assert got[b, y, x] == pytest.approx(values[win][known[win]].var(), abs=1e-9)


def test_the_mix_leaves_out_what_does_not_explain_the_error_and_a_band_with_few_pixels_keeps_the_curve():
    rng = np.random.default_rng(1)
    m = 5000
    curve, spread, noise, texture = (rng.random(m) * 0.01 for _ in range(4))
    stats = TrustStats.zeros(2)
    x = features(curve, spread, noise, texture)
    stats.add(0, x, 0.3 * curve + 1.5 * texture)
    stats.add(1, x[:MIN_HIDDEN - 1], x[:MIN_HIDDEN - 1, 1])
    coef = stats.fit().coef
    np.testing.assert_allclose(coef[0], [0.3, 0.0, 0.0, 1.5], atol=1e-6)
    np.testing.assert_allclose(coef[1], [1.0, 0.0, 0.0, 0.0])  # too few hidden pixels: the curve as it was


def _block_pearson(est, err, gaps, side=16):
    pairs = []
    for y in range(0, gaps.shape[0], side):
        for x in range(0, gaps.shape[1], side):
            g = gaps[y:y + side, x:x + side]
            if g.sum() >= 20:
                pairs.append((np.sqrt(np.nanmean(est[:, y:y + side, x:x + side][:, g] ** 2)),
                              np.sqrt(np.mean(err[:, y:y + side, x:x + side][:, g] ** 2))))
    a, t = np.array(pairs).T
    return float(np.corrcoef(a, t)[0, 1])


def test_the_map_points_at_the_busy_half_of_a_scene_that_the_distance_curve_cannot_tell_apart(tmp_path, synth,
                                                                                               one_torch_thread):
    """Half the scene smooth, half fine texture, the same stripes over both: by distance to known data every gap
    looks alike, but the textured half errs far more. The fitted map sees it; the curve alone does not."""
    size = 128
    rng = np.random.default_rng(2)
    smooth = synth.smooth_field(3, size, size)
    busy = np.clip(smooth + 0.5 * (rng.random((3, size, size)) - 0.5), 0, 1)
    truth = synth.to_range(np.where(np.arange(size)[None, None, :] < size // 2, smooth, busy), "uint16")
    r, c = np.mgrid[:size, :size]
    gaps = (r - c // 12) % 33 < 6
    scene = synth.write_geotiff(tmp_path / "scene.tif", np.where(gaps[None], 0, truth), nodata=0,
                                descriptions=["blue", "green", "red"])
    common = ["--config", "default", "--workers", "0", "--footprint", "full", "--iterations", "30", "--tile-size", "64",
              "--overlap", "32", "--set", "network.channels_down=[8,8,8,8,8]", "--set", "network.channels_up=[8,8,8,8,8]",
              "--set", "network.channels_skip=[4,4,4,4,4]", "--set", "fit.device=cpu", "--set", "fit.validation=0.1",
              "--workdir", str(tmp_path / "work"), "-q"]
    pearson = {}
    for features_on in (False, True):
        out = tmp_path / f"out-{features_on}.tif"
        res = CliRunner().invoke(main, [str(scene), "-o", str(out), *common,
                                        "--set", f"blend.trust_features={str(features_on).lower()}"])
        assert res.exit_code == 0, res.output
        with rasterio.open(out) as o, rasterio.open(out.with_name(out.name + ".quality.tif")) as q:
            err = o.read().astype(np.float64) - truth
            est = q.read().astype(np.float64)
        pearson[features_on] = _block_pearson(est, err, gaps)
    assert pearson[True] > 0.6 and pearson[True] > pearson[False] + 0.2, pearson
