"""The blend of a DIP fit with a classical fill, and the weight chosen on the hidden pixels.

The DIP fit is replaced by a made-up :class:`DipResult` (the truth, or the truth plus noise), so
the choice of weight can be checked exactly, without fitting a network.
"""

import numpy as np
import pytest

from tilefill._classical import fill_classical
from tilefill._config import FitConfig
from tilefill._dip import DipResult, holdout_mask
from tilefill._fill import BLEND_WEIGHTS, _with_classical, holdout_is_representative


def _window(synth, period, width_px):
    """A smooth 2-band 96 px window with stripe gaps and gap-shaped hidden pixels."""
    truth = synth.smooth_field(2, 96, 96).astype(np.float32)
    gap = synth.stripe_mask(96, 96, period=period, width_px=width_px)
    known = np.broadcast_to(~gap, truth.shape).copy()
    hidden = holdout_mask(known, 0.1, seed=3)
    assert hidden.any() and not (hidden & ~known).any()
    return truth, known, hidden


@pytest.fixture()
def window(synth):
    """4 px stripes every 32 rows (gap reach 3 px): the hidden stripes lie midway between them, a fair stand-in."""
    return _window(synth, 32, 4)


def _dip(prediction):
    return DipResult(prediction.astype(np.float32), 0.0, 10, 0.0, "cpu", (0.5, 0.5))


def _blend(truth, known, hidden, dip, fit):
    """The window blended at its own weight, and its statistics."""
    fill = _with_classical(truth, known, hidden, _dip(dip), fit)
    return fill.blended(), fill.info


def test_fixed_weight_averages_dip_with_the_classical_fill(window):
    truth, known, hidden = window
    dip = np.full_like(truth, 0.5)
    fit = FitConfig(classical_blend=0.25, blend_method="gdal", validation=0.1)
    prediction, stats = _blend(truth, known, hidden, dip, fit)
    classical = fill_classical("gdal", truth, known)
    # at the hidden pixels the partner is its fill made without them: what the mosaic scores
    classical = np.where(hidden, fill_classical("gdal", truth, known & ~hidden), classical)
    np.testing.assert_allclose(prediction, 0.75 * dip + 0.25 * classical, atol=1e-6)
    assert stats["blend_weights"] == [0.25, 0.25]


def test_auto_weight_follows_the_better_fill_per_band(window):
    """Band 0's 'DIP' is the truth: weight 0. Band 1's is noise: weight 1, the classical fill alone."""
    truth, known, hidden = window
    dip = truth.copy()
    dip[1] = np.random.default_rng(0).random(truth.shape[1:])
    fit = FitConfig(classical_blend=0.5, blend_method="gdal", validation=0.1, blend_auto=True)
    prediction, stats = _blend(truth, known, hidden, dip, fit)
    assert stats["blend_weights"] == [0.0, 1.0]
    np.testing.assert_allclose(prediction[0], truth[0], atol=1e-6)
    shown = ~hidden[1]  # the hidden pixels hold the fill made without them
    np.testing.assert_allclose(prediction[1][shown], fill_classical("gdal", truth, known)[1][shown], atol=1e-6)
    # the estimate is the chosen blend's error on the hidden pixels, where the classical fill did not see them
    held_classical = fill_classical("gdal", truth, known & ~hidden)[1]
    band1 = np.sqrt(np.mean((held_classical - truth[1])[hidden[1]] ** 2))
    assert band1 > 0
    assert stats["estimated_rmse"] == pytest.approx(band1 / 2, rel=1e-5)  # mean of band 0's 0 and band 1's error


def test_auto_weight_can_land_between_the_ends(window):
    """DIP and the classical fill err in opposite directions by as much: half and half is best."""
    truth, known, hidden = window
    held_classical = fill_classical("gdal", truth, known & ~hidden)
    dip = 2 * truth - held_classical  # the mirror image of the classical error, on the hidden pixels
    fit = FitConfig(blend_method="gdal", validation=0.1, blend_auto=True)
    _prediction, stats = _blend(truth, known, hidden, dip, fit)
    assert stats["blend_weights"] == [0.5, 0.5]
    assert 0.5 in BLEND_WEIGHTS


def test_hidden_stripes_crowding_wide_gaps_do_not_choose_the_weight(synth):
    """12 px stripes every 20 rows: hidden stripes touch the real ones, so the fixed weight stays."""
    truth, known, hidden = _window(synth, 20, 12)
    assert not holdout_is_representative(known, hidden)
    dip = truth.copy()  # the truth itself: a free choice would take weight 0
    fit = FitConfig(classical_blend=0.5, blend_method="gdal", validation=0.1, blend_auto=True)
    _prediction, stats = _blend(truth, known, hidden, dip, fit)
    assert stats["blend_weights"] == [0.5, 0.5] and stats["blend_auto"] is False


def test_wide_gaps_keep_the_fixed_weight_even_where_hidden_stripes_stand_apart(synth):
    """8 px stripes every 32 rows reach 5 px: beyond blend_auto_max_reach (3.5), so the fixed weight stays."""
    truth, known, hidden = _window(synth, 32, 8)
    assert holdout_is_representative(known, hidden)
    dip = truth.copy()  # the truth itself: a free choice would take weight 0
    fit = FitConfig(classical_blend=0.5, blend_method="gdal", validation=0.1, blend_auto=True)
    _prediction, stats = _blend(truth, known, hidden, dip, fit)
    assert stats["blend_weights"] == [0.5, 0.5] and stats["blend_auto"] is False
    wider = FitConfig(classical_blend=0.5, blend_method="gdal", validation=0.1, blend_auto=True,
                      blend_auto_max_reach=5)
    assert _blend(truth, known, hidden, dip, wider)[1]["blend_weights"] == [0.0, 0.0]


def test_representative_holdouts(synth, window):
    _truth, known, hidden = window
    assert holdout_is_representative(known, hidden)
    assert not holdout_is_representative(known, np.zeros_like(hidden))  # nothing hidden
    assert not holdout_is_representative(np.ones_like(known), hidden & False)  # no gaps
