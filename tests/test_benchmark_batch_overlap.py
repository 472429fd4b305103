"""``benchmarks/studies/batch_overlap.py`` keeps working: its idle figures, and a tiny run end to end.

A study's test: marked ``study``, left out of the default run (CI runs it with ``-m study``).
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.study
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "studies" / "batch_overlap.py"


def _bench():
    return runpy.run_path(str(SCRIPT))


def _task(scene: str, worker: str, start: float, stop: float) -> dict:
    return {"key": f"tilefill-tile-0-.{scene}.tilefill.zarr-123", "worker": worker,
            "startstops": [{"action": "transfer", "start": start - 1, "stop": start},
                           {"action": "compute", "start": start, "stop": stop}]}


def test_idle_between_scenes_counts_each_workers_gap_at_each_boundary():
    idle_times = _bench()["idle_times"]
    # a -> b: each worker waits 1 s, but w2 starts b before w1 ends a; b -> c: w1 waits 0.5 s, w2 not at all
    tasks = [_task("a.tif", "w1", 0, 4), _task("a.tif", "w2", 0, 2), _task("b.tif", "w2", 3, 6),
             _task("b.tif", "w1", 5, 7), _task("c.tif", "w1", 7.5, 9), _task("c.tif", "w2", 6, 8)]
    out = idle_times(tasks, ["a.tif", "b.tif", "c.tif"])
    assert out["idle_between_scenes_s"] == 2.5
    assert out["all_idle_per_boundary_s"] == [0.0, 0.0] and out["all_idle_between_scenes_s"] == 0.0
    assert out["first_to_last_tile_s"] == 9 and out["busy_s"] == 4 + 2 + 3 + 2 + 1.5 + 2
    assert out["idle_total_s"] == 2 * 9 - out["busy_s"] and out["tiles"] == 6 and out["workers"] == 2
    late = idle_times([_task("a.tif", "w1", 0, 2), _task("b.tif", "w1", 5, 6)], ["a.tif", "b.tif"])
    assert late["all_idle_per_boundary_s"] == [3.0] and late["idle_between_scenes_s"] == 3.0


def test_a_tiny_batch_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["batch_overlap.py", "--scenes", "2", "--size", "96", "--iterations", "1",
                                      "--workers", "1", "--label", "test", "--out", str(tmp_path)])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    result = json.loads((tmp_path / "batch-overlap-test.json").read_text())
    assert result["tiles"] == result["tiles_fitted"] == 2 * 4 and result["workers"] == 1
    assert len(result["all_idle_per_boundary_s"]) == 1 and result["busy_s"] > 0
    assert "shared with other jobs" in result["meta"]["machine"] and result["params"]["scenes"] == 2
