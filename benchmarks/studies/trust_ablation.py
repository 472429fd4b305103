"""What each piece of evidence adds to the trust map: the map refitted without one feature at a time.

The trust map (tilefill._trust) mixes four features per band, fitted on the scene's hidden pixels: the distance
curve, the disagreement between DIP and its partner, the guide against the blend, and the local texture. This
study re-blends kept work stores of ``benchmarks/quality.py --keep KEEP`` (no refits) with one feature left out
(its column zeroed, so its non-negative coefficient is 0) and scores each map as ``quality.py`` does: Pearson with
the true error over 32 px blocks of gap pixels per band, and the median estimate / true. Rows per variant:
every feature; without each one; the curve alone.

Usage
-----
    python benchmarks/quality.py --preset fast --crop 256 --workers 2 --cases all --methods dip --keep KEEP
    python benchmarks/studies/trust_ablation.py --keep KEEP --cases all --crop 256 --out benchmarks/reports/trust-ablation
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: quality.py

import quality  # noqa: E402
import tilefill._trust as trust  # noqa: E402

_features = trust.features


def _without(name: str | None):
    """``tilefill._trust.features`` with the column ``name`` zeroed (None: unchanged)."""
    if name is None:
        return _features
    col = trust.FEATURES.index(name)

    def features(*args):
        x = _features(*args)
        x[..., col] = 0.0
        return x

    return features


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", required=True, help="the --keep folder of a quality.py run (its stores are reused)")
    ap.add_argument("--cases", default="all")
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as quality.py's")
    ap.add_argument("--drop", default="disagreement,guide,texture", help="features left out one at a time")
    ap.add_argument("--out", default="benchmarks/results/trust-ablation")
    args = ap.parse_args(argv)
    variants = [("every feature", None, True), *((f"without {d}", d, True) for d in args.drop.split(",")),
                ("the curve alone", None, False)]
    results = {}
    for label, drop, on in variants:
        trust.features = _without(drop)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                quality.main(["--preset", args.preset, "--crop", str(args.crop), "--workers", "0", "--cases",
                              args.cases, "--methods", "dip", "--keep", args.keep, "--out", tmp,
                              "--set", f"blend.trust_features={str(on).lower()}",
                              *(a for kv in args.set for a in ("--set", kv))])
                rows = json.loads(next(Path(tmp).glob("quality-*.json")).read_text())["rows"]
        finally:
            trust.features = _features
        results[label] = {r["case"]: {k: r["estimate_map"]["blocks"][k] for k in ("pearson", "median_ratio", "blocks")}
                          for r in rows if (r.get("estimate_map") or {}).get("blocks")}
    summary = []
    for label, cases in results.items():
        p = np.array([v for b in cases.values() for v in b["pearson"]], float)
        q = np.array([v for b in cases.values() for v in b["median_ratio"]], float)
        ok = np.isfinite(p) & np.isfinite(q)
        p, q = p[ok], q[ok]
        summary.append({"variant": label, "case_bands": int(ok.sum()), "median_pearson": float(np.median(p)),
                        "pearson_at_least_0.6": int((p >= 0.6).sum()), "median_ratio": float(np.median(q)),
                        "ratio_within_0.8_1.25": int(((q >= 0.8) & (q <= 1.25)).sum())})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "keep": args.keep, "cases": args.cases,
            "crop": args.crop, "preset": args.preset}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": summary, "blocks": results}, indent=1))
    lines = ["| map | case-bands | median Pearson | Pearson >= 0.6 | median estimate/true | within 0.8-1.25 |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {s['variant']} | {s['case_bands']} | {s['median_pearson']:.2f} | {s['pearson_at_least_0.6']} | "
              f"{s['median_ratio']:.2f} | {s['ratio_within_0.8_1.25']} |" for s in summary]
    out.with_suffix(".md").write_text("# The trust map without each feature (32 px blocks of gap pixels, per band)\n\n"
                                      + "\n".join(lines) + f"\n\n`python benchmarks/studies/trust_ablation.py "
                                      f"--keep KEEP --cases {args.cases} --crop {args.crop} --out {args.out}`\n")
    print("\n".join(lines))
    print("wrote", out.with_suffix(".json"), out.with_suffix(".md"))


if __name__ == "__main__":
    main()
