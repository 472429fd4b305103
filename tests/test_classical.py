"""Classical gap fills (GDAL FillNodata, biharmonic, Telea, Navier-Stokes, local kriging).

Small synthetic tiles (64 x 64 smooth fields with tilted stripe gaps) keep the whole file fast.
Methods whose optional package (``tilefill[peers]``) is missing are skipped.
"""

import sys

import numpy as np
import pytest

from tilefill import TilefillError

from tilefill._classical import (
    CLASSICAL_METHODS,
    fill_classical,
    fill_gdal,
    fill_kriging,
)

# Optional module each method needs (None: rasterio, always installed).
NEEDS = {"gdal": None, "biharmonic": "skimage", "telea": "cv2", "ns": "cv2", "kriging": "pykrige"}
METHODS = list(NEEDS)

# RMSE on the gap pixels of the smooth field below. Zero filling scores ~0.55 and filling with
# the band mean ~0.14 there, so these bounds only pass a method that really interpolates.
MAX_RMSE = {"gdal": 0.02, "biharmonic": 0.01, "telea": 0.02, "ns": 0.02, "kriging": 0.01}


def _need(method):
    if NEEDS[method]:
        pytest.importorskip(NEEDS[method])


def smooth_field(bands=3, size=64):
    """Sum of sines, in about [0.2, 0.9], a little different per band."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = [
        0.55
        + 0.15 * np.sin(2 * np.pi * (xx + 0.3 * b))
        + 0.10 * np.cos(2 * np.pi * 1.5 * yy + b)
        + 0.05 * np.sin(2 * np.pi * (xx + yy))
        for b in range(bands)
    ]
    return np.stack(out).astype(np.float32)


def stripes(size=64, period=16, width=4, shift=0):
    """Gap mask (True = gap): SLC-off-like stripes, tilted 1 px down per 12 px across."""
    r = np.arange(size)[:, None]
    c = np.arange(size)[None, :]
    return (r - c // 12 + shift) % period < width


def shared_known(bands=3, size=64):
    return np.broadcast_to(~stripes(size), (bands, size, size)).copy()


def rmse_on_gaps(out, truth, known):
    gap = ~known
    return float(np.sqrt(np.mean((out[gap].astype(np.float64) - truth[gap]) ** 2)))


def with_garbage(image, known):
    """The image with its gap pixels overwritten by values no method may read."""
    img = image.copy()
    img[~known] = np.nan
    img[0][~known[0]] = 1e6
    return img


@pytest.mark.parametrize("method", METHODS)
def test_contract(method):
    _need(method)
    truth = smooth_field()
    known = shared_known()
    image = with_garbage(truth, known)
    before = image.copy()
    out = fill_classical(method, image, known)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert out is not image
    assert np.array_equal(out[known].view(np.uint32), image[known].view(np.uint32))  # bit for bit
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(image, before)  # input untouched


@pytest.mark.parametrize("method", METHODS)
def test_gap_values_are_never_read(method):
    _need(method)
    truth = smooth_field(bands=2)
    known = shared_known(bands=2)
    a = fill_classical(method, truth, known)
    b = fill_classical(method, with_garbage(truth, known), known)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method", METHODS)
def test_smooth_field_is_reconstructed(method):
    _need(method)
    truth = smooth_field()
    known = shared_known()
    out = fill_classical(method, with_garbage(truth, known), known)
    assert rmse_on_gaps(out, truth, known) < MAX_RMSE[method]
    # the bound is meaningful: naive fills fail it by far
    assert rmse_on_gaps(np.where(known, truth, 0), truth, known) > 20 * MAX_RMSE[method]


@pytest.mark.parametrize("method", METHODS)
def test_per_band_masks(method):
    _need(method)
    truth = smooth_field(bands=3)
    known = np.stack([~stripes(shift=0), ~stripes(shift=7, width=3), ~stripes(shift=11, width=5)])
    known[2, 40:52, 5:20] = False  # plus a blob in one band only
    out = fill_classical(method, with_garbage(truth, known), known)
    assert np.array_equal(out[known], truth[known])
    assert np.isfinite(out).all()
    for b in range(3):
        assert rmse_on_gaps(out[b:b + 1], truth[b:b + 1], known[b:b + 1]) < 2 * MAX_RMSE[method]


@pytest.mark.parametrize("method", METHODS)
def test_band_without_known_pixels_is_nan_and_gap_free_band_is_copied(method):
    _need(method)
    truth = smooth_field(bands=3)
    known = shared_known(bands=3)
    known[1] = False  # nothing to interpolate from
    known[2] = True  # nothing to fill
    out = fill_classical(method, with_garbage(truth, known), known)
    assert np.isnan(out[1]).all()
    assert np.isfinite(out[0]).all()
    assert np.array_equal(out[2], truth[2])


@pytest.mark.parametrize("method", METHODS)
def test_constant_band(method):
    _need(method)
    image = np.full((1, 32, 32), 0.25, np.float32)
    known = np.ones_like(image, dtype=bool)
    known[0, 10:15, :] = False
    out = fill_classical(method, image, known)
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_unknown_method_lists_valid_names():
    image = smooth_field(bands=1, size=16)
    with pytest.raises(ValueError) as err:
        fill_classical("bilinear", image, np.ones_like(image, dtype=bool))
    for name in CLASSICAL_METHODS:
        assert name in str(err.value)
    assert set(CLASSICAL_METHODS) == {"gdal", "biharmonic", "telea", "ns", "kriging"}


def test_bad_inputs():
    image = smooth_field(bands=1, size=16)
    with pytest.raises(ValueError):
        fill_gdal(image[0], np.ones((16, 16), bool))  # not (B, H, W)
    with pytest.raises(ValueError):
        fill_gdal(image, np.ones((1, 16, 15), bool))
    with pytest.raises(TypeError):
        fill_gdal(image, np.ones((1, 16, 16), np.uint8))  # 0/1 masks are ambiguous: bool only
    bad = image.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError):
        fill_gdal(bad, np.ones((1, 16, 16), bool))  # NaN at a known pixel


def test_gdal_fills_beyond_search_distance():
    truth = smooth_field(bands=1)
    known = np.ones_like(truth, dtype=bool)
    known[0, 10:50, :] = False  # 40 rows: centre is 20 px from any known pixel
    out = fill_gdal(with_garbage(truth, known), known, max_search_distance=3)
    assert np.isfinite(out).all()
    assert np.array_equal(out[known], truth[known])
    # the far rows took their nearest known pixel's value
    np.testing.assert_array_equal(out[0, 20, :], truth[0, 9, :])


def test_options_pass_through():
    pytest.importorskip("cv2")
    truth = smooth_field(bands=1)
    known = shared_known(bands=1)
    a = fill_classical("telea", truth, known, radius=1)
    b = fill_classical("telea", truth, known, radius=7)
    assert not np.array_equal(a, b)
    with pytest.raises(TypeError):
        fill_classical("telea", truth, known, inpaintRadius=3)


def test_kriging_is_deterministic_and_seeded():
    pytest.importorskip("pykrige")
    rng = np.random.default_rng(0)
    truth = (smooth_field(bands=1) + 0.02 * rng.standard_normal((1, 64, 64))).astype(np.float32)
    known = shared_known(bands=1)
    # small blocks and point budget so the random subsample is actually used
    opts = dict(block=16, margin=16, max_points=40)
    a = fill_kriging(truth, known, **opts)
    np.testing.assert_array_equal(a, fill_kriging(truth, known, **opts))
    assert not np.array_equal(a, fill_kriging(truth, known, seed=1, **opts))


def test_kriging_degenerate_windows():
    pytest.importorskip("pykrige")
    truth = smooth_field(bands=1)
    # a few known pixels only (too few for a variogram: IDW), and whole windows without any
    known = np.zeros_like(truth, dtype=bool)
    known[0, 2, 2] = known[0, 5, 9] = known[0, 8, 3] = True
    out = fill_kriging(truth, known, block=16, margin=8)
    assert np.isfinite(out).all()
    assert np.array_equal(out[known], truth[known])
    assert out.min() >= truth[known].min() - 1e-6 and out.max() <= truth[known].max() + 1e-6
    with pytest.raises(ValueError):
        fill_kriging(truth, known, max_points=2)
    with pytest.raises(ValueError, match="spherical"):
        fill_kriging(truth, known, variogram_model="spherial")


@pytest.mark.parametrize("method, module, hint", [
    ("biharmonic", "skimage", r"pip install scikit-image \(a dependency of tilefill"),  # a core dependency, no extra
    ("telea", "cv2", r"tilefill\[peers\]"), ("ns", "cv2", r"tilefill\[peers\]"), ("kriging", "pykrige", r"tilefill\[peers\]")])
def test_missing_package_says_how_to_install(method, module, hint, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    image = smooth_field(bands=1, size=16)
    known = np.ones_like(image, dtype=bool)
    known[0, 4:6] = False
    with pytest.raises(TilefillError, match=hint) as err:
        fill_classical(method, image, known)
    assert method in str(err.value) and "\n" not in str(err.value)
