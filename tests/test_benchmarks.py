"""The benchmark scripts keep working: each runs end to end on tiny settings and writes its JSON."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = str(Path(__file__).with_name("tiny.yaml"))


def _run(script: str, args: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [script, *args])
    runpy.run_path(str(ROOT / "benchmarks" / script), run_name="__main__")


def test_quality_benchmark_scores_methods_on_real_pixels(tmp_path, monkeypatch):
    _run("quality.py", ["--preset", TINY, "--set", "fit.iterations=3", "--set", "fit.validation=0.05",
                        "--cases", "landsat8:f15",
                        "--methods", "dip,gdal", "--crop", "128", "--workers", "0", "--out", str(tmp_path)],
         monkeypatch)
    result = json.loads(next(tmp_path.glob("quality-*.json")).read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"dip", "gdal"}
    assert abs(rows["gdal"]["gap_fraction"] - 0.15) < 0.001
    assert 0.3 < rows["gdal"]["gaps_mean"]["r2"] <= 1  # GDAL on 15% thin stripes of real pixels
    assert result["meta"]["device"].startswith("cpu") and result["meta"]["seed"] == 0
    assert next(tmp_path.glob("quality-*.md")).read_text().count("| dip |") == 1
    # each tile's self-validated estimate is set against its true gap RMSE
    est = rows["dip"]["estimate"]
    assert est["tiles"] == len(est["pairs"]) >= 3 and -1 <= est["spearman"] <= 1
    assert all(e > 0 and t > 0 for e, t in est["pairs"])
    assert "estimate" not in rows["gdal"]
    pytest.importorskip("matplotlib")
    assert len(list(tmp_path.glob("quality-*-crops.png"))) == 1  # the Figure-2-like comparison


def test_throughput_benchmark_compares_engine_and_reference(tmp_path, monkeypatch):
    _run("throughput.py", ["--preset", TINY, "--tile-size", "64", "--iterations", "2", "--batch", "1,2",
                           "--precision", "fp32", "--repeats", "1", "--scheduler-tasks", "20", "--workers", "0,1",
                           "--pipeline-iterations", "2", "--pipeline-size", "128", "--tiles-per-task", "2",
                           "--out", str(tmp_path)],
         monkeypatch)
    result = json.loads(next(tmp_path.glob("throughput-*.json")).read_text())
    scaling = result["pipeline_scaling"]
    assert [(r["workers"], r["tiles_per_task"]) for r in scaling] == [(0, 2), (1, 2)]
    assert scaling[0]["cluster"] == "in-process" and scaling[1]["cluster"].startswith("1 CPU worker")
    assert all(r["tiles"] > 0 and r["tiles_per_s"] > 0 for r in scaling)
    engines = [(r["engine"], r["batch"]) for r in result["rows"]]
    assert engines == [("reference", 1), ("tilefill", 1), ("tilefill", 2)]
    assert all(r["iterations_per_s"] > 0 and r["tflops"] > 0 for r in result["rows"])
    assert result["speedup"] > 0 and result["scheduler_overhead_s_per_task"] > 0
