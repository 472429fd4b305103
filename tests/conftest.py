"""Shared fixtures for the pipeline-stage tests: tiny networks and small synthetic rasters on disk.

Everything here is synthetic and small (tens to a few hundred pixels a side) so that the
stage tests run in seconds on two CPU cores. Rasters are real GeoTIFFs written with rasterio
into ``tmp_path``; helpers are handed out through fixtures (``synth``) rather than imported.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from affine import Affine

CRS = "EPSG:32633"
# 30 m pixels, north up, a plausible UTM origin
TRANSFORM = Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 4200000.0)

# Value ranges the smooth fields are mapped into, per dtype (never touching the nodata values used below)
RANGES = {
    "uint8": (10, 250),
    "uint16": (500, 20000),
    "int16": (-2000, 8000),
    "float32": (0.01, 0.6),
}
NODATA = {"uint8": 0, "uint16": 0, "int16": -9999, "float32": -9999.0}


def smooth_field(bands: int, height: int, width: int) -> np.ndarray:
    """Sums of sines in [0, 1], a little different per band: float64 (bands, height, width)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    yy /= max(height, 1)
    xx /= max(width, 1)
    out = []
    for b in range(bands):
        f = (0.5 + 0.2 * np.sin(2 * np.pi * (xx + 0.25 * b)) + 0.15 * np.cos(2 * np.pi * 1.3 * yy + b)
             + 0.1 * np.sin(2 * np.pi * (xx + yy) + 0.5 * b))
        out.append(f)
    f = np.stack(out)
    f -= f.min(axis=(1, 2), keepdims=True)
    f /= f.max(axis=(1, 2), keepdims=True)
    return f


def to_range(field01: np.ndarray, dtype: str) -> np.ndarray:
    """Map a [0, 1] field into the dtype's test range (see RANGES)."""
    lo, hi = RANGES[dtype]
    values = lo + field01 * (hi - lo)
    if np.dtype(dtype).kind != "f":
        values = np.rint(values)
    return values.astype(dtype)


def stripe_mask(height: int, width: int, *, period: int = 16, width_px: int = 4, tilt: int = 12,
                shift: int = 0) -> np.ndarray:
    """SLC-off-like gaps (True = gap): stripes every ``period`` rows, 1 px down per ``tilt`` px across."""
    r = np.arange(height)[:, None]
    c = np.arange(width)[None, :]
    return (r - c // tilt + shift) % period < width_px


def write_geotiff(path: Path, data: np.ndarray, *, nodata=None, crs=CRS, transform=TRANSFORM,
                  descriptions=None, tags=None, band_tags=None, dtype=None) -> Path:
    """Write (bands, h, w) or (h, w) ``data`` as a GeoTIFF and return its path."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    dtype = dtype or data.dtype.name
    profile = dict(driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0], dtype=dtype,
                   crs=crs, transform=transform)
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data.astype(dtype))
        for i, d in enumerate(descriptions or [], start=1):
            ds.set_band_description(i, d)
        if tags:
            ds.update_tags(**tags)
        for i, t in enumerate(band_tags or [], start=1):
            ds.update_tags(i, **t)
    return Path(path)


def inside_polygon(vertices: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bool (height, width): pixel centres inside a convex polygon, vertices (x, y) clockwise on screen (y down)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    inside = np.ones((height, width), dtype=bool)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0)):
        inside &= (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0) >= 0
    return inside


def distance_to_boundary(vertices: np.ndarray, height: int, width: int) -> np.ndarray:
    """Unsigned distance of each pixel centre to the polygon's outline, in pixels."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    best = np.full((height, width), np.inf)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0)):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / (dx * dx + dy * dy), 0, 1)
        best = np.minimum(best, np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy)))
    return best


def distance_to_polygon(vertices: np.ndarray, height: int, width: int) -> np.ndarray:
    """Distance of each pixel centre to the polygon (0 inside), in pixels."""
    d = distance_to_boundary(vertices, height, width)
    return np.where(inside_polygon(vertices, height, width), 0.0, d)


def rotated_vertices(size: int = 300, angle_deg: float = 13.0, half_w: float = 112.0, half_h: float = 96.0):
    """Corners (x, y) of a rotated rectangle centred in a ``size`` px square, clockwise on screen."""
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    corners = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
    # (x, y) with y down, clockwise on screen: the order inside_polygon expects
    return corners @ rot.T + size / 2.0


def slc_stripes(height: int, width: int, *, angle_deg: float = 13.0, period: int = 32, shift: int = 7) -> np.ndarray:
    """SLC-off-like stripes: tilted with the scene, 1-2 px wide at the centre, ~7 px at the east/west edges."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    along = yy - np.tan(np.deg2rad(angle_deg)) * (xx - width / 2)
    widths = 1.5 + 5.5 * np.abs(xx - width / 2) / (width / 2)
    return np.mod(along + shift, period) < widths


@pytest.fixture
def synth():
    """The synthetic-data helpers of this conftest, as a namespace."""
    return SimpleNamespace(
        CRS=CRS, TRANSFORM=TRANSFORM, RANGES=RANGES, NODATA=NODATA, smooth_field=smooth_field, to_range=to_range,
        stripe_mask=stripe_mask, write_geotiff=write_geotiff, inside_polygon=inside_polygon,
        distance_to_polygon=distance_to_polygon, distance_to_boundary=distance_to_boundary, rotated_vertices=rotated_vertices, slc_stripes=slc_stripes,
    )


@pytest.fixture
def tiny_network():
    """The paper's layout (5 levels, kernels 3/3/1) with 8/8/4 channels per level."""
    from tilefill._config import NetworkConfig

    return NetworkConfig(channels_down=(8,) * 5, channels_up=(8,) * 5, channels_skip=(4,) * 5)


@pytest.fixture
def tiny_config():
    """A whole-run config: tiny network, 3 iterations, 64 px tiles with 32 px overlap, CPU."""
    from tilefill import load_config

    return load_config("paper", {
        "name": "tiny",
        "network.channels_down": [8] * 5, "network.channels_up": [8] * 5, "network.channels_skip": [4] * 5,
        "fit.iterations": 3, "fit.device": "cpu", "tiles.size": 64, "tiles.overlap": 32,
    })


@pytest.fixture
def striped_scene(tmp_path):
    """A 3-band uint16 GeoTIFF (128 x 160) with a rotated nodata collar and stripe gaps in its top rows.

    Returns a namespace: path, values (what was written), truth (values before the gaps),
    data (bool: pixel carries data), inside (the true footprint), stripes (the gap stripes).
    """
    h, w, bands = 128, 160, 3
    truth = to_range(smooth_field(bands, h, w), "uint16")
    # a gently rotated footprint; the collar is nodata (0)
    verts = rotated_vertices(size=0, angle_deg=6.0, half_w=66.0, half_h=48.0) + np.array([w / 2, h / 2])
    inside = inside_polygon(verts, h, w)
    stripes = stripe_mask(h, w, period=16, width_px=3) & (np.arange(h)[:, None] < 40)
    data = inside & ~stripes
    values = np.where(data[None], truth, 0).astype(np.uint16)
    path = write_geotiff(tmp_path / "striped.tif", values, nodata=0, descriptions=["blue", "green", "red"],
                         tags={"SENSOR": "synthetic", "SCENE_ID": "T42"}, band_tags=[{"WAVELENGTH": "0.48"}, {}, {}])
    return SimpleNamespace(path=path, values=values, truth=truth, data=data, inside=inside, stripes=stripes,
                           vertices=verts, height=h, width=w, bands=bands)


@pytest.fixture
def one_torch_thread(monkeypatch):
    """Fits in this process use one torch thread, as the workers do (deterministic); restored afterwards."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("TILEFILL_THREADS", "1")
    yield
    torch.set_num_threads(before)


def interruptible():
    """Popen's ``preexec_fn`` for a child that must see Ctrl-C as a person's terminal sends it.

    A shell starting a job in the background (CI runners do) makes SIGINT ignored, and Python
    then never installs its KeyboardInterrupt handler in the child: restore the default first.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
