"""Per-band scores: RMSE and the coefficient of determination over selected pixels."""

import math

import numpy as np
import pytest

from tilefill._metrics import band_scores, scale_factor, summarise


def direct(truth, pred, sel):
    """The textbook formulas, one band, written independently of the module."""
    t = truth[sel].astype(np.float64)
    p = pred[sel].astype(np.float64)
    rmse = np.sqrt(((t - p) ** 2).sum() / t.size)
    r2 = 1 - ((t - p) ** 2).sum() / ((t - t.mean()) ** 2).sum()
    return rmse, r2


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    truth = rng.random((4, 32, 40))
    pred = truth + rng.normal(0, 0.1, truth.shape)
    where = rng.random((32, 40)) < 0.3
    return truth, pred, where


def test_perfect_prediction(data):
    truth, _, where = data
    for s in band_scores(truth, truth.copy(), where):
        assert s["rmse"] == 0.0
        assert s["r2"] == 1.0
        assert s["n"] == where.sum()


def test_constant_mean_prediction_scores_zero_r2(data):
    truth, _, where = data
    pred = np.empty_like(truth)
    for b in range(4):
        pred[b] = truth[b][where].mean()
    for b, s in enumerate(band_scores(truth, pred, where)):
        assert abs(s["r2"]) < 1e-12
        assert math.isclose(s["rmse"], truth[b][where].std(), rel_tol=1e-12)


def test_hand_computed_example():
    truth = np.array([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [1.0, 5.0]]])
    pred = np.array([[[1.0, 2.0], [3.0, 6.0]], [[9.0, 1.0], [2.0, 5.0]]])
    where = np.array([[[True, True], [True, True]], [[False, True], [True, True]]])
    s0, s1 = band_scores(truth, pred, where)
    # Band 0: residuals 0, 0, 0, -2 -> SS_res 4, RMSE 1; mean 2.5 -> SS_tot 5; r2 0.2.
    assert s0 == {"band": 0, "n": 4, "rmse": 1.0, "r2": pytest.approx(0.2)}
    # Band 1 (the 9 is not selected): truth 0, 1, 5; pred 1, 2, 5 -> SS_res 2, RMSE sqrt(2/3);
    # mean 2 -> SS_tot 4 + 1 + 9 = 14; r2 1 - 2/14.
    assert s1["n"] == 3
    assert s1["rmse"] == pytest.approx(math.sqrt(2 / 3))
    assert s1["r2"] == pytest.approx(1 - 2 / 14)


def test_worse_than_mean_is_negative():
    truth = np.array([[[0.0, 1.0]]])
    pred = np.array([[[1.0, 0.0]]])
    (s,) = band_scores(truth, pred, np.ones((1, 2), bool))
    assert s["r2"] == pytest.approx(1 - 2 / 0.5)


def test_2d_where_is_broadcast_to_all_bands(data):
    truth, pred, where = data
    flat = band_scores(truth, pred, where)
    full = band_scores(truth, pred, np.broadcast_to(where, truth.shape).copy())
    assert flat == full
    assert [s["n"] for s in flat] == [int(where.sum())] * 4
    assert [s["band"] for s in flat] == [0, 1, 2, 3]


def test_per_band_where(data):
    truth, pred, _ = data
    where = np.zeros(truth.shape, bool)
    where[0, :5] = True
    where[2, :, :7] = True
    s = band_scores(truth, pred, where)
    assert [x["n"] for x in s] == [5 * 40, 0, 32 * 7, 0]
    assert math.isnan(s[1]["rmse"]) and math.isnan(s[1]["r2"])
    assert s[2]["rmse"] == pytest.approx(direct(truth[2], pred[2], where[2])[0], rel=1e-12)


def test_agrees_with_direct_formula_on_random_data(data):
    truth, pred, where = data
    for b, s in enumerate(band_scores(truth, pred, where)):
        rmse, r2 = direct(truth[b], pred[b], where)
        assert s["rmse"] == pytest.approx(rmse, rel=1e-12)
        assert s["r2"] == pytest.approx(r2, rel=1e-12)
        assert 0.5 < s["r2"] < 1.0  # noise 0.1 on U(0, 1) data: r2 about 0.88


def test_float32_and_uint8_inputs_computed_in_float64():
    rng = np.random.default_rng(1)
    t8 = rng.integers(0, 256, (2, 16, 16), dtype=np.uint8)
    p8 = rng.integers(0, 256, (2, 16, 16), dtype=np.uint8)
    where = np.ones((16, 16), bool)
    s = band_scores(t8, p8, where)  # uint8 differences must not wrap around
    rmse, r2 = direct(t8[0].astype(float), p8[0].astype(float), where)
    assert s[0]["rmse"] == pytest.approx(rmse, rel=1e-12)
    assert s[0]["r2"] == pytest.approx(r2, rel=1e-12)
    s32 = band_scores(t8.astype(np.float32), p8.astype(np.float32), where)
    assert s32[0]["rmse"] == pytest.approx(rmse, rel=1e-12)


def test_undefined_r2_is_nan():
    truth = np.full((1, 4, 4), 0.5)
    pred = np.zeros((1, 4, 4))
    (s,) = band_scores(truth, pred, np.ones((4, 4), bool))  # constant truth: SS_tot == 0
    assert math.isnan(s["r2"]) and s["rmse"] == pytest.approx(0.5)
    one = np.zeros((4, 4), bool)
    one[1, 2] = True
    (s,) = band_scores(np.random.default_rng(0).random((1, 4, 4)), pred, one)
    assert s["n"] == 1 and math.isnan(s["r2"]) and not math.isnan(s["rmse"])


def test_shape_errors():
    with pytest.raises(ValueError):
        band_scores(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)), np.ones((4, 4), bool))
    with pytest.raises(ValueError):
        band_scores(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), np.ones((4, 5), bool))
    with pytest.raises(ValueError):
        band_scores(np.zeros(4), np.zeros(4), np.ones(4, bool))


def test_summarise_means_over_bands(data):
    truth, pred, where = data
    scores = band_scores(truth, pred, where)
    summary = summarise(scores)
    assert summary["bands"] == 4
    assert summary["n"] == 4 * int(where.sum())
    assert summary["rmse"] == pytest.approx(np.mean([s["rmse"] for s in scores]))
    assert summary["r2"] == pytest.approx(np.mean([s["r2"] for s in scores]))
    nan_band = scores + [{"band": 4, "n": 0, "rmse": math.nan, "r2": math.nan}]
    assert math.isnan(summarise(nan_band)["r2"])  # a NaN band is not silently dropped
    assert summarise([])["bands"] == 0


def test_scale_factor():
    assert scale_factor(np.uint8) == 1 / 255
    assert scale_factor("uint8") == 1 / 255
    assert scale_factor(np.zeros((2, 2), np.uint8)) == 1 / 255
    assert scale_factor(np.float32) == 1.0
    assert scale_factor(np.zeros(3, np.uint16)) == 1.0
    # DN 255 in the scoring scale is 1.0, as the paper's image is scored.
    assert np.uint8(255) * scale_factor(np.uint8) == pytest.approx(1.0)
