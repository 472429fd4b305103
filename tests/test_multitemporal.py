"""Fills from a second date: local linear regression (llhm), similar pixels (NSPI), and guided DIP."""

from __future__ import annotations

import numpy as np
import pytest

from tilefill._multitemporal import fill_llhm, fill_nspi, local_regression


def _pair(seed=0, size=64):
    """A guide with texture and a target that is a per-region linear map of it (two 'land covers')."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    guide = np.stack([0.5 + 0.25 * np.sin(9 * xx + 4 * yy) * np.cos(7 * yy), 0.45 + 0.25 * np.cos(8 * xx * yy + 1),
                      0.5 + 0.2 * np.sin(5 * xx - 3 * yy)])
    guide = (guide + rng.normal(0, 0.04, guide.shape)).astype(np.float32)
    left = xx < 0.5
    target = np.where(left, 0.8 * guide + 0.05, 0.5 * guide + 0.3).astype(np.float32)
    known = np.ones_like(target, bool)
    known[:, 30:36] = False  # a 6 px stripe across both covers
    return target, known, guide[None], np.ones_like(guide[None], bool)


def test_llhm_recovers_a_local_linear_map_and_leaves_nan_where_no_guide_speaks():
    target, known, guide, gknown = _pair()
    gknown[0, :, 30:33, :10] = False  # the guide's own gap over part of the target's
    out = fill_llhm(target, known, guide, gknown)
    assert np.array_equal(out[known], target[known])  # known pixels bit for bit
    covered = ~known & gknown[0]
    err = np.abs(out - target)[covered & np.isfinite(out)]
    assert np.isfinite(out[covered]).all() and np.median(err) < 0.02
    assert np.isnan(out[~known & ~gknown[0]]).all()


def test_with_several_guides_each_pixel_takes_the_guide_that_fits_best():
    target, known, guide, gknown = _pair()
    noise = np.random.default_rng(5).random(guide.shape, dtype=np.float32)  # a guide that says nothing
    both = np.concatenate([noise, guide])
    one = fill_llhm(target, known, guide, gknown)
    two = fill_llhm(target, known, both, np.ones_like(both, bool))
    gap = ~known
    assert np.sqrt(np.mean((two - target)[gap] ** 2)) <= 1.05 * np.sqrt(np.mean((one - target)[gap] ** 2))


def test_local_regression_widens_its_window_where_few_pixels_are_known_in_both():
    target, known, guide, gknown = _pair()
    k = known[0].copy()
    k[20:44, 20:44] = False  # a 24 px hole: the 15 px window finds too few known pixels in its middle
    pred, r2 = local_regression(target[0], k, guide[0, 0], gknown[0, 0])
    assert np.isfinite(pred[32, 32]) and 0 <= r2[32, 32] <= 1 + 1e-9


def test_nspi_predicts_every_gap_pixel_a_guide_covers_from_its_similar_pixels():
    target, known, guide, gknown = _pair()
    out = fill_nspi(target, known, guide, gknown)
    gap = ~known
    assert np.isfinite(out[gap]).all() and np.array_equal(out[known], target[known])
    nspi = np.sqrt(np.mean((out - target)[gap] ** 2))
    assert nspi < 0.05


@pytest.mark.parametrize("fill", [fill_llhm, fill_nspi])
def test_guided_fills_refuse_guides_of_another_shape(fill):
    target, known, guide, gknown = _pair()
    with pytest.raises(ValueError, match="guides"):
        fill(target, known, guide[:, :, :32], gknown[:, :, :32])


def test_guided_dip_learns_the_map_from_the_guide_that_plain_dip_cannot_see(tiny_network, one_torch_thread):
    from tilefill._config import FitConfig
    from tilefill._dip import fit_windows

    target, known, guide, gknown = _pair(size=64)
    fit = FitConfig(iterations=150)
    plain = fit_windows([(target, known, 1)], tiny_network, fit)[0].prediction
    guided = fit_windows([(target, known, 1)], tiny_network, fit, guides=[(guide, gknown)])[0].prediction
    gap = ~known
    rmse = lambda p: float(np.sqrt(np.mean((p - target)[gap] ** 2)))  # noqa: E731
    assert rmse(guided) < 0.5 * rmse(plain)


def test_the_guided_window_is_the_networks_offset_plus_each_guides_gain_times_the_guide():
    import torch

    from tilefill._config import FitConfig
    from tilefill._dip import GuidedInput, Problem

    c, h, w = 2, 8, 8
    image = np.zeros((c, h, w), np.float32)
    guides = np.random.default_rng(0).random((2, c, h, w), dtype=np.float32)
    problem = Problem(image, np.ones_like(image, bool), 3, guides=guides, guides_known=np.ones_like(guides, bool))
    target = torch.zeros(1, c, h, w)
    inputs = GuidedInput([problem], FitConfig(), target, target)
    # the network sees the paper's input; its output holds the offset and one gain per guide
    assert GuidedInput.channels([problem]) == (c, c * 3) and inputs.z.shape == (1, c, h, w)
    out = torch.rand(1, c * 3, h, w)
    expect = out[0, :c] + sum((4 * out[0, c * (1 + g):c * (2 + g)] - 2) * (torch.from_numpy(guides[g]) - 0.5)
                              for g in range(2))
    np.testing.assert_allclose(inputs.decode(out)[0].numpy(), expect.numpy(), rtol=1e-5, atol=1e-6)


def test_a_guide_enters_the_network_with_its_own_gaps_filled_from_itself():
    from tilefill._fill import network_guides

    _target, _known, guide, gknown = _pair()
    holed = gknown.copy()
    holed[0, :, 10:14] = False
    holed[0, 2] = False  # a band with no data at all in the window
    filled, known = network_guides((np.where(holed, guide, 0), holed))
    assert known is holed and np.isfinite(filled).all()
    assert np.abs(filled[0, :2, 10:14] - guide[0, :2, 10:14]).mean() < 0.05  # a smooth guess of what lies there
    assert (filled[0, 2] == 0.5).all()  # no data at all: no gain can use it


def test_the_three_way_blend_trusts_the_guide_only_as_far_as_the_hidden_pixels_say():
    from tilefill._distance_blend import N_BINS, BlendWeights, GuidedStats, fit_guided_weights

    rng = np.random.default_rng(0)
    base = BlendWeights(np.full((2, N_BINS), 0.4), np.zeros(2, int), np.ones((2, N_BINS)), np.zeros((2, N_BINS)),
                        np.ones((2, N_BINS)))
    stats = GuidedStats.zeros(2)
    m = 4000
    bins = rng.integers(0, 3, m)
    dip, partner = rng.normal(0, 0.05, m), rng.normal(0, 0.05, m)
    stats.add(0, bins, np.stack([dip, partner, rng.normal(0, 0.01, m)]))  # band 0: the guide is right
    stats.add(1, bins, np.stack([dip, partner, rng.normal(0.2, 0.1, m)]))  # band 1: the land changed
    again = GuidedStats.from_array(stats.to_array())
    np.testing.assert_array_equal(again.gram, stats.gram)
    w = fit_guided_weights(stats, base, prior_pixels=100).weights
    assert (w[0, :3, 2] > 0.8).all()  # leans on the guide where it is right
    assert (w[1, :3, 2] < 0.05).all() and np.allclose(w[1, :3, :2].sum(axis=1), 1, atol=0.05)
    assert np.allclose(w.sum(axis=2), 1)
    # no covered hidden pixel: the blend without a guide, the guide at 0
    empty = fit_guided_weights(GuidedStats.zeros(2), base, prior_pixels=100).weights
    np.testing.assert_allclose(empty[:, :, 1], 0.4) and np.testing.assert_allclose(empty[:, :, 2], 0.0)
