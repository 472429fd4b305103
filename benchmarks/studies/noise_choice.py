"""Could a scene choose its own input noise on its hidden pixels? Reads ``benchmarks/quality.py`` reports of
the same cases fitted with different settings and, per case, sets the choice the hidden-pixel estimate makes
(lowest mean estimated gap RMSE over the tiles) beside the best choice on the true gap pixels.

No fits: it reads the per-tile (estimate, true) pairs the reports already hold (``estimate.pairs``: each
tile's gap RMSE estimated from its hidden pixels and measured against the truth).

Usage
-----
    python benchmarks/studies/noise_choice.py 0.1=benchmarks/reports/fast-sweep-cpu-256-shipped-mid-reach.json \\
        0.05=benchmarks/reports/fast-sweep-cpu-256-noise0.05-mid-reach.json --out benchmarks/reports/noise-choice

Each LABEL=JSON may be given several times (reports are pooled per label, a later report's row of a case replacing
an earlier one's); cases present under fewer than two labels are left out. Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def choices(runs: dict[str, list[dict]]) -> list[dict]:
    """``runs``: label -> quality.py rows. Per case: each label's gap mean r2, mean estimated and true tile gap
    RMSE; the label the estimate picks, the one the truth picks, and the r2 lost by following the estimate."""
    by_case: dict[str, dict[str, dict]] = {}
    for label, rows in runs.items():
        for r in rows:
            if r["method"] == "dip" and r.get("estimate"):
                by_case.setdefault(r["case"], {})[label] = r
    out = []
    for case, labelled in by_case.items():
        if len(labelled) < 2:
            continue
        points = {}
        for label, r in labelled.items():
            pairs = np.asarray(r["estimate"]["pairs"], dtype=float)
            points[label] = {"r2": r["gaps_mean"]["r2"], "estimated_rmse": float(pairs[:, 0].mean()),
                             "true_rmse": float(pairs[:, 1].mean())}
        by_estimate = min(points, key=lambda k: points[k]["estimated_rmse"])
        by_truth = max(points, key=lambda k: points[k]["r2"])
        out.append({"case": case, "points": points, "chosen_by_estimate": by_estimate, "best": by_truth,
                    "r2_lost": points[by_truth]["r2"] - points[by_estimate]["r2"]})
    return out


def markdown(rows: list[dict], sources: dict[str, list[str]]) -> str:
    labels = sorted({k for r in rows for k in r["points"]})
    lines = ["# Input noise chosen on the hidden pixels", "",
             "Sources: " + "; ".join(f"{k}: " + ", ".join(f"`{p}`" for p in v) for k, v in sources.items()) + ".", "",
             "Per case: gap mean r2 (mean estimated / true tile gap RMSE, band scaling units) for each setting; the "
             "setting the estimate picks (lowest estimated RMSE) against the best on the truth (highest r2).", "",
             "| case | " + " | ".join(labels) + " | estimate picks | best | r2 lost |",
             "|---|" + "---|" * (len(labels) + 3)]
    for r in rows:
        cells = [f"{p['r2']:.3f} ({p['estimated_rmse']:.4f} / {p['true_rmse']:.4f})" if (p := r["points"].get(k))
                 else "" for k in labels]
        lines.append(f"| {r['case']} | " + " | ".join(cells)
                     + f" | {r['chosen_by_estimate']} | {r['best']} | {r['r2_lost']:.3f} |")
    right = sum(r["chosen_by_estimate"] == r["best"] for r in rows)
    lines += ["", f"The estimate picks the best setting in {right} of {len(rows)} cases; mean r2 lost by following it "
              f"{np.mean([r['r2_lost'] for r in rows]):.4f}, worst {max(r['r2_lost'] for r in rows):.3f}."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="LABEL=JSON")
    ap.add_argument("--out", required=True, help="path prefix of OUT.json and OUT.md")
    args = ap.parse_args(argv)
    runs: dict[str, list[dict]] = {}
    sources: dict[str, list[str]] = {}
    for spec in args.runs:
        label, path = spec.split("=", 1)
        runs.setdefault(label, []).extend(json.loads(Path(path).read_text())["rows"])
        sources.setdefault(label, []).append(path)
    rows = choices(runs)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"sources": sources, "cases": rows}, indent=1))
    md = markdown(rows, sources)
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
