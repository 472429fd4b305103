"""Presets side by side on the same cases: each one's gap r2 per case and band, against the others and the
best classical fill of any of the runs.

Reads ``benchmarks/quality.py`` JSON reports (one per preset, same cases and crop; the classical rows of
every report are pooled, so a report with ``--methods all`` supplies the five classical fills for all).
quality.py fills the classical methods through the same tiled pipeline as DIP, so presets with other tile
sizes give them other scores (a 60-120 px cloud hole fills better from 192 px tiles than from 128 px ones):
the best classical fill of a band is the best of every report's, the stricter bar.

Usage
-----
    python benchmarks/studies/compare_presets.py fast=benchmarks/reports/quality-fast-cpu-256-cases.json \\
        default=benchmarks/reports/quality-default-cpu-256-cases.json \\
        whole=benchmarks/reports/quality-classical-whole-crop-cpu-256-cases.json --out benchmarks/reports/presets-cpu-256

Writes OUT.json and OUT.md: per case the mean gap r2 of each preset, its margin over the best classical
fill per band, and a summary (mean r2 over cases, bands below the best classical fill by more than
``NOISE``, cases where a preset falls below the first one by more than ``NOISE``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # blend_study, beside this script
from blend_study import NOISE, classical_best  # noqa: E402


def compare(reports: dict[str, list[dict]]) -> dict:
    """``reports``: preset name -> quality.py rows. Cases are those every preset's DIP run covers; a report
    without DIP rows (e.g. classical fills on the whole crop) only adds classical rows."""
    best = classical_best([r for rows in reports.values() for r in rows])
    dip = {name: {r["case"]: [g["r2"] for g in r["gaps"]] for r in rows if r["method"] == "dip"}
           for name, rows in reports.items()}
    dip = {name: d for name, d in dip.items() if d}  # a report of classical fills alone only raises the bar
    cases = [c for c in next(iter(dip.values())) if all(c in d for d in dip.values()) and c in best]
    first = next(iter(dip))
    out = {"cases": [], "summary": {}}
    for c in cases:
        entry = {"case": c, "classical": best[c], "presets": {}}
        for name, d in dip.items():
            r2 = np.array(d[c])
            entry["presets"][name] = {"r2": r2.tolist(), "mean": float(r2.mean()),
                                      "margin": (r2 - np.array(best[c]["r2"])).tolist()}
        out["cases"].append(entry)
    for name in dip:
        margins = np.array([m for e in out["cases"] for m in e["presets"][name]["margin"]])
        below = [(e["case"], round(e["presets"][name]["mean"] - e["presets"][first]["mean"], 4)) for e in out["cases"]
                 if e["presets"][name]["mean"] < e["presets"][first]["mean"] - NOISE]
        out["summary"][name] = {"mean_r2": float(np.mean([e["presets"][name]["mean"] for e in out["cases"]])),
                                "bands": int(margins.size), "bands_below_classical": int((margins < -NOISE).sum()),
                                "worst_margin": float(margins.min()), f"cases_below_{first}": below}
    return out


def markdown(result: dict, sources: dict[str, str]) -> str:
    names = list(result["summary"])
    first = names[0]
    lines = ["# Presets compared on the same cases", "",
             "Reports: " + "; ".join(f"{n}: `{p}`" for n, p in sources.items()) + ".", "",
             "Best classical fill: per band, the best classical row of any report (the classical methods run through "
             "each preset's tiles, so other tile sizes give them other scores).", "",
             f"| preset | mean gap r2 | bands below the best classical fill by > {NOISE} | worst band margin "
             f"| cases below {first} by > {NOISE} |", "|---|---|---|---|---|"]
    for n, s in result["summary"].items():
        below = ", ".join(f"{c} {d:+.3f}" for c, d in s[f"cases_below_{first}"]) or "-"
        lines.append(f"| {n} | {s['mean_r2']:.4f} | {s['bands_below_classical']} of {s['bands']} | "
                     f"{s['worst_margin']:+.3f} | {below} |")
    lines += ["", "Per case: mean gap r2, and per band the margin over the best classical fill (method in brackets).",
              "", "| case | best classical | " + " | ".join(names) + " | " + " | ".join(f"{n}: margin per band" for n in names)
              + " |", "|---" * (2 + 2 * len(names)) + "|"]
    for e in result["cases"]:
        c = e["classical"]
        lines.append(f"| {e['case']} | {np.mean(c['r2']):.3f} ({'/'.join(dict.fromkeys(c['method']))}) | "
                     + " | ".join(f"{e['presets'][n]['mean']:.3f}" for n in names) + " | "
                     + " | ".join(" ".join(f"{m:+.3f}" for m in e["presets"][n]["margin"]) for n in names) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reports", nargs="+", metavar="NAME=JSON", help="a preset's quality.py report; the first is the reference")
    ap.add_argument("--out", default="benchmarks/results/presets", help="prefix of the .json and .md written")
    args = ap.parse_args(argv)
    sources = dict(a.split("=", 1) for a in args.reports)
    result = compare({n: json.loads(Path(p).read_text())["rows"] for n, p in sources.items()})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"sources": sources, **result}, indent=1))
    text = markdown(result, sources)
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
