"""Gap masks: the SLC-off simulator, exact-fraction stripes, the paper's masks, mask files."""

import math
import os

import numpy as np
import pytest

from tilefill import _gaps
from tilefill._gaps import (
    load_paper_image,
    load_paper_mask,
    paper_data_dir,
    slc_off_mask,
    stripe_mask_with_fraction,
    write_mask,
)


def runs(column):
    """(start rows, lengths) of the gap runs in one column."""
    d = np.diff(np.r_[0, column.astype(np.int8), 0])
    starts = np.flatnonzero(d == 1)
    return starts, np.flatnonzero(d == -1) - starts


def best_lag(a, b, lags):
    """Lag L in `lags` maximising the overlap of a[y] with b[y + L]."""
    a = a.astype(float)
    b = b.astype(float)
    n = len(a)
    scores = []
    for lag in lags:
        if lag >= 0:
            scores.append(np.dot(a[: n - lag], b[lag:]))
        else:
            scores.append(np.dot(a[-lag:], b[: n + lag]))
    return lags[int(np.argmax(scores))]


@pytest.fixture(scope="module")
def scene():
    # A full scene (the mask is the whole swath): 2000 x 2000, tilt fixed for the geometry checks.
    return slc_off_mask((2000, 2000), seed=7, angle_deg=12.0, jitter=0)


# --- slc_off_mask ---------------------------------------------------------------------------


def test_slc_off_reproducible_and_seeded():
    a = slc_off_mask((300, 400), seed=3)
    b = slc_off_mask((300, 400), seed=3)
    c = slc_off_mask((300, 400), seed=4)
    assert a.dtype == bool and a.shape == (300, 400)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slc_off_full_scene_fraction_about_22_percent(seed):
    m = slc_off_mask((2000, 2000), seed=seed)
    assert 0.19 <= m.mean() <= 0.25


def test_slc_off_centre_gap_free_edges_14px(scene):
    h, w = scene.shape
    centre = scene[:, w // 2 - 100 : w // 2 + 100]  # middle 10 % of the swath
    assert not centre.any()
    for col in (0, 3, w - 4, w - 1):
        _, lengths = runs(scene[:, col])
        inner = lengths[1:-1]  # the first and last stripe may be cut by the image border
        assert len(inner) > 40
        assert set(inner.tolist()) <= {13, 14}
        assert np.median(inner) == 14


def test_slc_off_width_grows_linearly_from_centre(scene):
    h, w = scene.shape
    frac = scene.mean(axis=0)
    # Half-way between centre and edge a stripe is ~7 of every 33 rows.
    for col in (w // 4, 3 * w // 4):
        assert abs(frac[col - 5 : col + 5].mean() - 7 / 33) < 0.02
    # Monotone on average: each outer quarter loses more than the inner one.
    west = [frac[a : a + w // 8].mean() for a in range(0, w // 2, w // 8)]
    assert west == sorted(west, reverse=True)


def test_slc_off_jitter_moves_edges_by_at_most_jitter(scene):
    m = slc_off_mask((2000, 2000), seed=7, angle_deg=12.0, jitter=1)
    _, lengths = runs(m[:, 0])
    inner = lengths[1:-1]
    assert inner.min() >= 12 and inner.max() <= 16
    assert len(set(inner.tolist())) >= 3  # the jitter really varies from stripe to stripe
    assert abs(inner.mean() - 14) < 0.7


def test_slc_off_period_about_33_rows(scene):
    col = scene[:, 0].astype(float)
    col -= col.mean()
    ac = np.correlate(col, col, mode="full")[len(col) - 1 :]
    lags = np.arange(20, 50)
    assert 31 <= lags[np.argmax(ac[20:50])] <= 35
    starts, _ = runs(scene[:, 0])
    assert abs(np.diff(starts).mean() - 33.0) < 0.3


def test_slc_off_alternate_scans_are_offset(scene):
    starts, _ = runs(scene[:, 0])
    gaps = np.diff(starts[1:-1])
    # Forward/reverse scans: spacings alternate (33 +- 2), not a constant 33.
    assert abs(gaps[0::2].mean() - gaps[1::2].mean()) >= 2.0


@pytest.mark.parametrize("angle", [8.0, 12.0, 15.0])
def test_slc_off_tilt_recovered(angle):
    m = slc_off_mask((1500, 2000), seed=1, angle_deg=angle, jitter=0)
    dx = 60
    # Stripes go down to the east: column dx sees each stripe tan(angle) * dx rows lower.
    lag = best_lag(m[:, 0], m[:, dx], np.arange(-5, 28))
    assert abs(math.degrees(math.atan(lag / dx)) - angle) < 1.5


def test_slc_off_default_angle_in_landsat_range():
    for seed in range(4):
        m = slc_off_mask((1500, 2000), seed=seed, jitter=0)
        lag = best_lag(m[:, 0], m[:, 60], np.arange(-5, 28))
        assert 6.5 <= math.degrees(math.atan(lag / 60)) <= 16.5


def test_slc_off_crop_matches_full_scene():
    full = slc_off_mask((400, 3000), seed=5)
    for x0 in (0, 100, 2744):
        crop = slc_off_mask((400, 256), seed=5, scene_width=3000, x_offset=x0)
        assert np.array_equal(crop, full[:, x0 : x0 + 256])


def test_slc_off_crop_at_scene_centre_has_no_gaps_and_edge_crop_has():
    mid = slc_off_mask((256, 256), seed=0, scene_width=7000, x_offset=3500 - 128)
    edge = slc_off_mask((256, 256), seed=0, scene_width=7000, x_offset=0)
    assert not mid.any()
    assert 0.3 < edge.mean() < 0.5


def test_slc_off_rejects_bad_arguments():
    with pytest.raises(ValueError):
        slc_off_mask((100, 300), scene_width=200)
    with pytest.raises(ValueError):
        slc_off_mask((100, 100), scene_width=1000, x_offset=950)
    with pytest.raises(ValueError):
        slc_off_mask((0, 10))
    with pytest.raises(ValueError):
        slc_off_mask((10, 10), period=0)


# --- stripe_mask_with_fraction ----------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.03, 0.06, 0.15, 0.35, 0.55])
@pytest.mark.parametrize("shape", [(397, 396), (129, 257), (256, 256)])
def test_stripe_fraction_exact(fraction, shape):
    m = stripe_mask_with_fraction(shape, fraction, seed=2)
    h, w = shape
    assert m.dtype == bool and m.shape == shape
    assert abs(int(m.sum()) - round(fraction * h * w)) <= 1
    # Stripes spread the gaps evenly over the columns (not a blob in one corner).
    per_col = m.mean(axis=0)
    assert np.abs(per_col - fraction).max() < 0.09


def test_stripe_fraction_exact_with_ties():
    # A flat angle makes whole rows tie: the count must still be exact.
    m = stripe_mask_with_fraction((100, 100), 0.305, angle_deg=0.0, seed=0)
    assert int(m.sum()) == 3050


def test_stripe_fraction_geometry():
    m = stripe_mask_with_fraction((1000, 400), 0.15, seed=4, angle_deg=10.0)
    starts, lengths = runs(m[:, 0])
    inner = lengths[1:-1]
    assert abs(np.diff(starts).mean() - 33.0) < 0.5  # period
    assert inner.max() - inner.min() <= 1  # constant width, ~0.15 * 33 = 5 rows
    assert abs(inner.mean() - 0.15 * 33) < 0.6
    lag = best_lag(m[:, 0], m[:, 60], np.arange(-5, 28))
    assert abs(math.degrees(math.atan(lag / 60)) - 10.0) < 1.5


def test_stripe_fraction_reproducible():
    a = stripe_mask_with_fraction((200, 200), 0.35, seed=9)
    assert np.array_equal(a, stripe_mask_with_fraction((200, 200), 0.35, seed=9))
    assert not np.array_equal(a, stripe_mask_with_fraction((200, 200), 0.35, seed=10))


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_stripe_fraction_rejects_bad_fraction(bad):
    with pytest.raises(ValueError):
        stripe_mask_with_fraction((50, 50), bad)


# --- the paper's data -----------------------------------------------------------------------


@pytest.fixture
def paper_dir():
    try:
        return paper_data_dir()
    except FileNotFoundError:
        pytest.skip("the paper's data folder (shared/data/paper) is not available")


@pytest.mark.parametrize("name, percent", [("paper6", 6.0), ("paper13", 12.6), ("paper26", 26.3)])
def test_paper_masks_load_with_their_true_fractions(paper_dir, name, percent):
    m = load_paper_mask(name)
    assert m.dtype == bool and m.shape == (397, 396)
    assert abs(100 * m.mean() - percent) <= 0.5


def test_paper_image_loads(paper_dir):
    img, profile = load_paper_image()
    assert img.dtype == np.uint8 and img.shape == (4, 397, 396)
    assert profile["crs"].to_epsg() == 32610
    assert img.std() > 0


def test_paper_mask_tilt_matches_simulator_convention(paper_dir):
    # Positive angles mean "down to the east" in both the paper's masks and the simulators.
    paper = load_paper_mask("paper26")
    lag = best_lag(paper[:, 0], paper[:, 60], np.arange(-5, 28))
    assert 7.0 <= math.degrees(math.atan(lag / 60)) <= 11.0
    sim = stripe_mask_with_fraction(paper.shape, 0.263, seed=0, angle_deg=9.0)
    assert abs(best_lag(sim[:, 0], sim[:, 60], np.arange(-5, 28)) - lag) <= 2


def test_paper_mask_unknown_name(paper_dir):
    with pytest.raises(ValueError, match="paper26"):
        load_paper_mask("paper55")


def test_paper_data_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TILEFILL_PAPER_DATA", str(tmp_path))
    assert paper_data_dir() == tmp_path
    monkeypatch.setenv("TILEFILL_PAPER_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="TILEFILL_PAPER_DATA"):
        paper_data_dir()


# --- write_mask ---------------------------------------------------------------------------------


def _reference_raster(path, h, w):
    import rasterio
    from affine import Affine

    profile = dict(driver="GTiff", dtype="uint16", count=2, height=h, width=w,
                   crs="EPSG:32610", transform=Affine(30.0, 0.0, 600000.0, 0.0, -30.0, 4200000.0))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.ones((2, h, w), np.uint16))
    return profile


def test_write_mask_round_trip(tmp_path):
    import rasterio

    ref = tmp_path / "scene.tif"
    profile = _reference_raster(ref, 300, 280)
    mask = slc_off_mask((300, 280), seed=1)
    out = tmp_path / "mask.tif"
    assert write_mask(out, mask, like=ref) == out
    with rasterio.open(out) as src:
        assert src.count == 1 and src.dtypes[0] == "uint8"
        assert src.crs.to_epsg() == 32610
        assert src.transform == profile["transform"]
        data = src.read(1)
    assert set(np.unique(data).tolist()) == {0, 1}
    assert np.array_equal(data == 1, mask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.tif", "scene.tif"]


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_write_mask_without_like_and_overwrite(tmp_path):
    import rasterio

    out = tmp_path / "m.tif"
    write_mask(out, np.zeros((20, 30), bool))
    write_mask(str(out), np.ones((20, 30), bool))  # replaces the old file
    with rasterio.open(out) as src:
        assert src.read(1).min() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["m.tif"]


def test_write_mask_rejects_other_grid(tmp_path):
    ref = tmp_path / "scene.tif"
    _reference_raster(ref, 50, 50)
    with pytest.raises(ValueError, match="50x50"):
        write_mask(tmp_path / "m.tif", np.zeros((40, 50), bool), like=ref)
    assert [p.name for p in tmp_path.iterdir()] == ["scene.tif"]


def test_write_mask_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    import rasterio

    out = tmp_path / "m.tif"
    out.write_bytes(b"previous")
    real_open = rasterio.open

    def failing_open(path, mode="r", *args, **kwargs):
        if mode == "w":
            raise RuntimeError("disk full")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(rasterio, "open", failing_open)
    with pytest.raises(RuntimeError, match="disk full"):
        write_mask(out, np.ones((8, 8), bool))
    assert out.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["m.tif"]


def test_module_has_no_torch_dependency():
    # The gap simulator is used by light-weight tools: it must not need torch.
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(_gaps))
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
             for a in getattr(n, "names", [])}
    mods = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "torch" not in names | mods
