"""How DIP should be blended with its classical partners: every rule scored on the real gaps of kept runs.

A kept run (``benchmarks/quality.py --keep DIR`` with ``fit.validation``) holds, per tile, DIP's
fill and every partner's (``fit.blend_method: [biharmonic, gdal]``). The mosaic at a gap pixel is
``A + w * B`` for the weight ``w`` of the pixel's distance bin, so one pass over a store gives the
sums that fix the error of every weight vector, both on the scene's hidden pixels (what tilefill
sees) and on the real gaps against the truth (what a user gets): ``tilefill._mosaic.mosaic_stats``.
Every rule below is then scored per case and band in microseconds, without fitting again.

Rules
-----
dip              weight 0: DIP alone
fixed            the fixed 0.5 biharmonic blend (the presets before, less their per-tile blend_auto)
presets before   with --today: the pipeline's own output re-blended as the presets were (blend_auto included)
partner:NAME     the classical partner alone, through the same mosaic (thin-gap tiles included)
scene:N          weights fitted on the scene's hidden pixels, shrunk toward the bin before with N
                 pseudo-pixels (``blend.weights: distance``, ``blend.prior_pixels: N``), first partner
curve            a curve of weights per partner and bin measured on the real gaps of the *other*
                 images' cases (leave one image out), first partner
curve+scene:N    the scene's hidden pixels, shrunk toward that curve with N pseudo-pixels (", partner per
                 band": each band's partner chosen on the hidden pixels, ``blend.choose_partner``)
oracle           weights and partners fitted on the real gaps themselves: the best any weight per bin can do
oracle, partner per bin
                 the same with a partner per band and distance bin (with two stored partners): what choosing
                 the partner by distance could give at most

Where the runs kept two partners (biharmonic and GDAL), a third, virtual one is scored beside them: their
mean ("mean of two", through ``mosaic_stats(mix=...)``), with the rules "curve+scene:1000, mean partner",
"curve+scene:1000, partner per scene (first or mean)" (the partner whose blend errs least on the scene's
hidden pixels, all bands together) and "oracle, mean partner allowed".

Usage
-----
    python benchmarks/studies/blend_study.py --keep /tmp/keep --quality benchmarks/results/quality-*.json

Writes benchmarks/results/blend-study-*.json and .md: per case and band the gap r2 of every rule
beside the best classical method of the quality runs, a summary of losses and margins, the distance
curves, and the curve measured on all images (what ``blend.prior_curve`` ships).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import warnings
from pathlib import Path

import numpy as np
import rasterio

from tilefill._distance_blend import BIN_LABELS, N_BINS, BlendStats, fit_weights
from tilefill._mosaic import mosaic_stats, thin_tiles
from tilefill._store import TileStore

WIDE = ("slc-edge", "f35", "f55", "cloud")  # the "gaps are wide" cases
# A band below the best classical fill by less than TIE is a tie: the same biharmonic fill scored from the
# float mosaic here and from the output rounded to its dtype there. Beyond NOISE it counts apart: another fit
# seed moves a case's gap r2 by 0.001-0.011 on most cases measured, but Sentinel-2's 55% by 0.019.
TIE, NOISE = 0.0005, 0.002


def measure(keep: Path, case: str) -> dict:
    """Hidden-pixel and real-gap statistics of one kept DIP run, and each band's gap sum of squares."""
    stem = case.replace(":", "_")
    store = TileStore.open(keep / f"{stem}_dip.tiles.zarr" / "tiles.zarr")  # quality.py: the run's work dir
    with rasterio.open(keep / f"{stem}.tif") as ds:
        truth = store.scaling.forward(ds.read().astype(np.float64))
    thin = thin_tiles(store)
    names = list(store.config.fit.blend_methods)
    mix = np.eye(len(names))
    if len(names) > 1:  # a virtual partner: the mean of the first two classical fills
        mix = np.vstack([mix, np.eye(len(names))[:2].mean(axis=0)])
        names.append(MEAN)
    hidden = mosaic_stats(store, thin, mix=mix)
    gaps = mosaic_stats(store, thin, truth=truth, mix=mix)
    mask = np.asarray(store.group["gaps"][:])
    sst = np.array([np.var(truth[b][mask[b]]) * mask[b].sum() for b in range(truth.shape[0])])
    return {"case": case, "hidden": hidden, "gaps": gaps, "sst": sst, "thin_tiles": len(thin), "partners": names}


MEAN = "mean of two"  # the virtual partner: (biharmonic + GDAL) / 2 where the runs kept both


MIN_CASES = 6  # a bin of the curve needs the real gaps of this many cases (1% of their gap pixels or more)
HALF = 0.5  # the weight of a bin too few cases measured: the fixed blend's


def bin_cases(cases: list[dict]) -> np.ndarray:
    """(bins,): how many of ``cases`` with DIP fits have at least 1% of their gap pixels in each bin."""
    return sum((c["gaps"].gaps.sum(axis=0) >= 0.01 * c["gaps"].gaps.sum()).astype(int) for c in cases if fitted(c))


def fitted(c: dict) -> bool:
    """Whether any tile of the case was fitted (not every tile filled by its partner alone)."""
    return bool(c["gaps"].sbb.sum() > 0)


def pooled_curve(cases: list[dict]) -> np.ndarray:
    """(partners, bins): the weight that minimises the pooled real-gap error of ``cases``, all bands together.

    Each case and band counts alike: its sums are divided by its gap sum of squares (otherwise the
    paper image's uint8 bands, with 2-3x the error of the reflectance bands, would set the curve).
    A bin that fewer than :data:`MIN_CASES` cases reach takes :data:`HALF`: beyond 16 px only the cloud
    holes reached, and their best weights ranged from 0 to 0.95 (a curve from two of them cost
    Sentinel-2's cloud 0.036 gap r2 against the fixed 0.5)."""
    sab = sum((c["gaps"].sab / c["sst"][None, :, None]).sum(axis=1) for c in cases)
    sbb = sum((c["gaps"].sbb / c["sst"][None, :, None]).sum(axis=1) for c in cases)
    curve = np.clip(np.divide(-sab, sbb, out=np.full_like(sab, np.nan), where=sbb > 0), 0, 1)
    curve[:, (bin_cases(cases) < MIN_CASES) | ~np.isfinite(curve).all(axis=0)] = HALF
    return curve


def score(c: dict, weights: np.ndarray, partner: np.ndarray) -> dict:
    """Gap r2 and RMSE per band at ``weights`` (bands, bins) with a partner per band (bands,) or per band and
    bin (bands, bins)."""
    sse = c["gaps"].sse(weights, partner).sum(axis=1)
    n = c["gaps"].n[0].sum(axis=1)
    return {"r2": (1 - sse / c["sst"]).tolist(), "rmse": np.sqrt(sse / n).tolist()}


def rules(c: dict, others: list[dict], prior_pixels: list[float]) -> dict:
    """Every rule's weights and partners for case ``c`` (``others``: the cases of the other images)."""
    bands = c["gaps"].bands
    zero, first = np.zeros((bands, N_BINS)), np.zeros(bands, dtype=int)
    out = {"dip": (zero, first), "fixed": (zero + 0.5, first)}
    for p, name in enumerate(c["partners"]):
        out[f"partner:{name}"] = (zero + 1.0, np.full(bands, p))
    hidden = c["hidden"].first_partner()  # blend.choose_partner: false, as the presets run
    for n in prior_pixels:
        w = fit_weights(hidden, prior=0.5, prior_pixels=n)
        out[f"scene:{n:g}"] = (w.weights, w.partner)
    curve = pooled_curve(others)
    w = fit_weights(hidden, prior=0.5, prior_pixels=1e12, curve=curve[:1])
    out["curve"] = (w.weights, w.partner)
    for n in prior_pixels:
        w = fit_weights(hidden, prior=0.5, prior_pixels=n, curve=curve[:1])
        out[f"curve+scene:{n:g}"] = (w.weights, w.partner)
    stored = [p for p, name in enumerate(c["partners"]) if name != MEAN]
    if len(stored) > 1:  # blend.choose_partner: true, among the partners the pipeline computes
        for n in prior_pixels:
            w = fit_weights(_only(c["hidden"], stored), prior=0.5, prior_pixels=n, curve=curve[stored])
            out[f"curve+scene:{n:g}, partner per band"] = (w.weights, w.partner)
    if MEAN in c["partners"]:
        m = c["partners"].index(MEAN)
        w = fit_weights(_only(c["hidden"], [m]), prior=0.5, prior_pixels=1000, curve=curve[m:m + 1])
        out["curve+scene:1000, mean partner"] = (w.weights, np.full(bands, m))
        # one partner for the whole scene (all bands), the one whose blend errs least on the hidden pixels
        first = fit_weights(c["hidden"].first_partner(), prior=0.5, prior_pixels=1000, curve=curve[:1])
        ratio = np.mean(c["hidden"].sse(w.weights, np.full(bands, m)).sum(axis=1)
                        / c["hidden"].sse(first.weights, first.partner).sum(axis=1))
        out["curve+scene:1000, partner per scene (first or mean)"] = (
            (w.weights, np.full(bands, m)) if ratio < 1 else (first.weights, first.partner))
    w = fit_weights(_only(c["gaps"], stored), prior=0.5, prior_pixels=0)
    out["oracle"] = (w.weights, w.partner)
    if len(stored) > 1:
        out["oracle, partner per bin"] = oracle_per_bin(_only(c["gaps"], stored))
    if MEAN in c["partners"]:
        w = fit_weights(c["gaps"], prior=0.5, prior_pixels=0)
        out["oracle, mean partner allowed"] = (w.weights, w.partner)
    return out


def oracle_per_bin(stats: BlendStats) -> tuple[np.ndarray, np.ndarray]:
    """The best weight and partner of each band and bin on these sums (the real gaps: an upper bound): would a
    partner chosen by distance, e.g. kriging far from known pixels and biharmonic near, pay?

    Examples
    --------
    >>> s = BlendStats.zeros(2, 1)
    >>> s.n[:] = 100
    >>> s.saa[:] = 4.0
    >>> s.sab[0, 0, 0], s.sbb[0, 0, 0] = -2.0, 4.0   # partner 0 halves bin 1's error at weight 0.5
    >>> s.sab[1, 0, 4], s.sbb[1, 0, 4] = -3.0, 3.0   # partner 1 removes bin 6-8's at weight 1
    >>> w, p = oracle_per_bin(s)
    >>> p[0, [0, 4]].tolist(), w[0, [0, 4]].tolist()
    ([0, 1], [0.5, 1.0])
    """
    w = np.clip(np.divide(-stats.sab, stats.sbb, out=np.zeros_like(stats.sab), where=stats.sbb > 0), 0.0, 1.0)
    sse = np.stack([stats.sse(w[p], np.full(stats.bands, p)) for p in range(stats.partners)])
    partner = np.argmin(sse, axis=0)
    return np.take_along_axis(w, partner[None], axis=0)[0], partner


def _only(stats: BlendStats, partners: list[int]) -> BlendStats:
    """The same sums for some partners alone (partner indices then count within ``partners``)."""
    return BlendStats(stats.n[partners], stats.saa[partners], stats.sab[partners], stats.sbb[partners], stats.gaps)


def classical_best(quality_rows: list[dict]) -> dict:
    """case -> per band the best classical r2 and its method, from quality.py rows."""
    best: dict = {}
    for r in quality_rows:
        if r["method"] == "dip":
            continue
        r2 = [g["r2"] for g in r["gaps"]]
        cur = best.setdefault(r["case"], {"r2": [-np.inf] * len(r2), "method": [None] * len(r2)})
        for b, v in enumerate(r2):
            if v > cur["r2"][b]:
                cur["r2"][b], cur["method"][b] = v, r["method"]
    return best


def distance_curves(c: dict) -> dict:
    """Gap RMSE by distance bin (mean of bands) of DIP alone and of each partner alone, on the real gaps."""
    g = c["gaps"]
    n = g.n[0]
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # bins no gap pixel reaches: NaN, not a warning
        out = {"share": (n.sum(axis=0) / n.sum()).round(4).tolist(),
               "dip": np.sqrt(np.nanmean(g.saa[0] / n, axis=0)).round(5).tolist()}
        for p, name in enumerate(c["partners"]):
            sse = g.saa[p] + 2 * g.sab[p] + g.sbb[p]
            out[name] = np.sqrt(np.nanmean(sse / n, axis=0)).round(5).tolist()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", required=True, help="the --keep folder of quality.py runs")
    ap.add_argument("--quality", nargs="*", default=[], help="quality.py JSON reports of the same runs")
    ap.add_argument("--today", nargs="*", default=[],
                    help="quality.py JSON of the same kept runs re-blended as the presets were (blend.weights: "
                         "fixed, with their per-tile blend_auto): its dip rows join as the rule 'presets before'")
    ap.add_argument("--cases", default=None, help="comma list (default: every kept DIP run)")
    ap.add_argument("--prior-pixels", default="50,200,1000,5000")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    keep = Path(args.keep)
    if args.cases:
        cases = args.cases.split(",")
    else:
        cases = sorted(p.name[:-len("_dip.tiles.zarr")].replace("_", ":", 1) for p in keep.glob("*_dip.tiles.zarr"))
    rows = [r for q in args.quality for r in json.loads(Path(q).read_text())["rows"]]
    best = classical_best(rows)
    before = {r["case"]: r for q in args.today for r in json.loads(Path(q).read_text())["rows"] if r["method"] == "dip"}
    # only the cases every given report covers (a run still writing its last store is left out)
    cases = [c for c in cases if (not rows or c in best) and (not before or c in before)]
    pp = [float(x) for x in args.prior_pixels.split(",")]
    measured = [measure(keep, c) for c in cases]
    results = []
    for c in measured:
        image = c["case"].split(":")[0]
        others = [o for o in measured if o["case"].split(":")[0] != image]
        entry = {"case": c["case"], "thin_tiles": c["thin_tiles"], "fitted": fitted(c), "curves": distance_curves(c),
                 "classical": best.get(c["case"]), "rules": {}}
        for name, (w, p) in rules(c, others, pp).items():
            entry["rules"][name] = {**score(c, w, p), "weights": np.round(w, 3).tolist(),
                                    "partner": np.array(c["partners"], dtype=object)[np.asarray(p)].tolist()}
        if before:  # the output file's own scores (rounded to the output dtype), input units
            r = before[c["case"]]
            entry["rules"]["presets before"] = {"r2": [g["r2"] for g in r["gaps"]], "rmse": [g["rmse"] for g in r["gaps"]]}
        results.append(entry)
    summary = summarise(results)
    all_curve = pooled_curve(measured)
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores", "keep": str(keep),
            "quality_reports": args.quality, "cases": cases, "bins": list(BIN_LABELS),
            "curve_all_images": {name: np.round(all_curve[p], 3).tolist() for p, name in enumerate(measured[0]["partners"])},
            "cases_per_bin": bin_cases(measured).tolist(), "min_cases": MIN_CASES,
            "oracle_weight_per_bin": spread(results)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / f"blend-study-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    prefix.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": summary, "cases": results}, indent=1))
    text = markdown(meta, summary, results)
    prefix.with_suffix(".md").write_text(text)
    print(text)
    print("wrote", prefix.with_suffix(".json"), prefix.with_suffix(".md"))


def spread(results: list[dict]) -> list[list[float]]:
    """Per bin, the oracle's weight (median of bands) of each case with 1% of its gap pixels there."""
    out = [[] for _ in range(N_BINS)]
    for e in results:
        if not e["fitted"]:
            continue
        w = np.median(np.array(e["rules"]["oracle"]["weights"]), axis=0)
        for k in range(N_BINS):
            if e["curves"]["share"][k] >= 0.01:
                out[k].append(round(float(w[k]), 3))
    return out


def summarise(results: list[dict]) -> dict:
    """Per rule: mean gap r2 over cases, and against the best classical fill per band: losses, worst margin,
    mean margin over all cases and over the wide-gap ones."""
    out = {}
    for name in results[0]["rules"]:
        r2 = [np.mean(e["rules"][name]["r2"]) for e in results]
        margins, wide, losses, clear = [], [], 0, 0
        for e in results:
            if not e["classical"]:
                continue
            m = np.array(e["rules"][name]["r2"]) - np.array(e["classical"]["r2"])
            losses += int((m < -TIE).sum())
            clear += int((m < -NOISE).sum())
            margins.append(m)
            if e["case"].split(":")[1] in WIDE:
                wide.append(m.mean())
        flat = np.concatenate(margins) if margins else np.array([np.nan])
        out[name] = {"mean_r2": float(np.mean(r2)), "band_losses": losses, "band_losses_beyond_noise": clear,
                     "bands": int(flat.size),
                     "worst_margin": float(flat.min()), "mean_margin": float(flat.mean()),
                     "mean_margin_wide": float(np.mean(wide)) if wide else None}
    return out


def markdown(meta: dict, summary: dict, results: list[dict]) -> str:
    lines = [f"# Blend study ({meta['date']}, {meta['machine']})", "",
             f"Kept runs: `{meta['keep']}`; quality reports: {', '.join(meta['quality_reports']) or 'none'}.",
             "Gap r2 computed from the mosaic's sums (float, before rounding to the output dtype).", "",
             "## Summary (margin: r2 minus the best classical method's, per case and band)", "",
             f"| rule | mean gap r2 | bands below best classical (by > {TIE}) | of them by > {NOISE} | worst margin "
             "| mean margin | mean margin, wide gaps |", "|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        wide = f"{s['mean_margin_wide']:+.3f}" if s["mean_margin_wide"] is not None else "-"
        lines.append(f"| {name} | {s['mean_r2']:.3f} | {s['band_losses']} of {s['bands']} | "
                     f"{s['band_losses_beyond_noise']} | {s['worst_margin']:+.3f} | {s['mean_margin']:+.3f} | {wide} |")
    lines += ["", "Weights per partner and bin measured on the real gaps of every case (`blend.prior_curve`): "
              + "; ".join(f"{k} {'/'.join(f'{v:.2f}' for v in w)}" for k, w in meta["curve_all_images"].items())
              + f" (bins {', '.join(meta['bins'])} px; cases reaching each bin: "
              + ", ".join(str(n) for n in meta["cases_per_bin"]) + f"; a bin fewer than {meta['min_cases']} reach "
              f"takes {HALF})", "",
              "The oracle's weight per bin (median of bands) in each case reaching the bin: "
              + "; ".join(f"{lab} px: " + ", ".join(f"{w:.2f}" for w in ws)
                          for lab, ws in zip(meta["bins"], meta["oracle_weight_per_bin"]) if ws),
              "", "## Per case: gap r2 per band", ""]
    names = list(summary)
    for e in results:
        c = e["classical"]
        lines += [f"### {e['case']}", "", "| rule | " + " | ".join(f"b{b + 1}" for b in range(len(e['rules']['dip']['r2'])))
                  + " | mean |", "|---" * (len(e["rules"]["dip"]["r2"]) + 2) + "|"]
        if c:
            lines.append("| best classical | " + " | ".join(f"{v:.3f} ({m})" for v, m in zip(c["r2"], c["method"]))
                         + f" | {np.mean(c['r2']):.3f} |")
        for name in names:
            r2 = e["rules"][name]["r2"]
            lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in r2) + f" | {np.mean(r2):.3f} |")
        cur = e["curves"]
        lines += ["", "Gap RMSE by distance (mean of bands; share of gap pixels): "
                  + "; ".join(f"{lab} px ({s:.0%}): dip {d:.4f}, " + ", ".join(f"{k} {cur[k][i]:.4f}"
                              for k in cur if k not in ("share", "dip"))
                              for i, (lab, s, d) in enumerate(zip(meta["bins"], cur["share"], cur["dip"])) if s > 0), ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
