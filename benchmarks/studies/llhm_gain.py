"""Which gain for the local linear fill from a guide: least squares, or the USGS standard-deviation ratio?

USGS's SLC-off gap-filled products (Scaramuzza, Storey et al. 2004) matched each window's mean and standard
deviation between the dates: gain = sd(target) / sd(guide). tilefill's ``llhm`` (tilefill._multitemporal)
takes the least-squares gain, cov / var(guide) = r * sd ratio, which shrinks toward the target's local mean
where the dates disagree (low local r). Both use the same windows (15, 31, 63 px, at least 40 pixels known in
both dates) and the same clip of the gain; scored on the gap pixels of the real pairs of
``benchmarks/quality.py``'s guide cases (whole images), split as there.

Usage
-----
    python benchmarks/studies/llhm_gain.py --out benchmarks/reports/llhm-gain
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: quality.py, _shared

from quality import GUIDE_CASES, guide_splits, load_guide_case, split_scores  # noqa: E402
from tilefill._multitemporal import LLHM_MAX_GAIN, LLHM_MIN_PIXELS, LLHM_WINDOWS, _box, fill_llhm  # noqa: E402


def sd_ratio_fill(image: np.ndarray, known: np.ndarray, guide: np.ndarray, guide_known: np.ndarray) -> np.ndarray:
    """The USGS rule on tilefill's windows: target mean + sign(cov) * sd ratio * (guide - guide mean)."""
    out = image.astype(np.float64).copy()
    for b in range(image.shape[0]):
        both = (known[b] & guide_known[b]).astype(np.float64)
        t = np.where(both > 0, image[b], 0.0)
        g = np.where(both > 0, guide[b], 0.0)
        pred = np.full(t.shape, np.nan)
        todo = guide_known[b] & ~known[b]
        for size in LLHM_WINDOWS:
            n = _box(both, size)
            ok = todo & (n >= LLHM_MIN_PIXELS)
            nn = np.maximum(n, 1.0)
            mt, mg = _box(t, size) / nn, _box(g, size) / nn
            vt = np.maximum(_box(t * t, size) / nn - mt * mt, 0.0)
            vg = np.maximum(_box(g * g, size) / nn - mg * mg, 0.0)
            cov = _box(t * g, size) / nn - mt * mg
            flat = vg < 1e-10
            gain = np.where(flat, 0.0, np.sign(cov) * np.sqrt(vt / np.where(flat, 1.0, vg)))
            gain = np.clip(gain, -LLHM_MAX_GAIN, LLHM_MAX_GAIN)
            value = mt + gain * (np.where(guide_known[b], guide[b], 0.0) - mg)
            pred[ok] = value[ok]
            todo &= ~ok
        gap = ~known[b]
        out[b][gap] = pred[gap]
    return out.astype(np.float32)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(GUIDE_CASES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/llhm-gain")
    args = ap.parse_args(argv)
    rows = []
    for case in args.cases.split(","):
        truth, gap, _profile, _names, scale, guide = load_guide_case(case, None, args.seed)
        image = truth.astype(np.float32) * scale
        known = np.broadcast_to(~gap, image.shape).copy()
        gvals = guide["values"].astype(np.float32) * scale
        gknown = np.broadcast_to(~guide["gap"], gvals.shape) & (guide["values"] > 0)
        splits = guide_splits(gap, guide)
        splits = {"all": gap & ~guide["gap"], **{k: v for k, v in splits.items() if k != "uncovered"}}
        for name, fill in (("least squares (tilefill)", lambda: fill_llhm(image, known, gvals[None], gknown[None])),
                           ("sd ratio (USGS)", lambda: sd_ratio_fill(image, known, gvals, gknown))):
            t0 = time.perf_counter()
            pred = fill()
            seconds = time.perf_counter() - t0
            scores = split_scores(truth.astype(np.float32) * scale, pred, splits)
            rows.append({"case": case, "gain": name, "seconds": round(seconds, 2),
                         **{k: {"mean_r2": v["mean"]["r2"], "pixels": v["pixels"]} for k, v in scores.items()}})
            print(case, name, {k: round(v["mean"]["r2"], 3) for k, v in scores.items()}, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seed": args.seed, "cases": args.cases,
            "scored": "gap pixels where the guide has data, mean r2 of the bands, splits by the pair's change labels"}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["| case | gain | covered | covered unchanged | covered changed |", "|---|---|---|---|---|"]
    for r in rows:
        cell = lambda k: f"{r[k]['mean_r2']:.3f}" if k in r else "-"  # noqa: E731
        lines.append(f"| {r['case']} | {r['gain']} | {cell('all')} | {cell('covered_unchanged')} | "
                     f"{cell('covered_changed')} |")
    out.with_suffix(".md").write_text("# llhm: least-squares gain against the sd ratio\n\n"
                                      + "\n".join(lines) + "\n\n`python benchmarks/studies/llhm_gain.py "
                                      f"--out {args.out}`\n")
    print("wrote", out.with_suffix(".json"), out.with_suffix(".md"))


if __name__ == "__main__":
    main()
