"""Choosing guides in an archive (``tilefill batch --guide auto``): dates, footprints, the ranking, the batch.

Archives are small synthetic GeoTIFFs (and Landsat product folders) named as Landsat scenes are;
fills run in-process with llhm (cheap, deterministic) or the tiny network.
"""

from __future__ import annotations

import json
import os
import random
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner

from tilefill import fill_batch
from tilefill._guide import acquisition, landsat_name
from tilefill._guide_choice import GuideChooser, lattice_stride
from tilefill._scene import open_scene
from tilefill.cli import main

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("one_torch_thread")]

TINY = str(Path(__file__).with_name("tiny.yaml"))
N = 64
NAMES = ["red", "nir"]


def _doy(day: date) -> str:
    return f"{day.year}{day.timetuple().tm_yday:03d}"


def _write(root: Path, name: str, *, stripes=None, seed: int = 0, nodata=-9999, names=NAMES, tags=None,
           transform=None, synth) -> Path:
    """A 2-band int16 scene ``name`` in ``root``: a smooth field a little different per ``seed``, ``stripes`` nodata."""
    field = synth.smooth_field(len(names), N, N)
    field = np.roll(field, seed, axis=2) * 0.8 + 0.1
    values = synth.to_range(field, "int16")
    if stripes is not None:
        values[:, stripes] = nodata
    kw = {"transform": transform} if transform is not None else {}
    return synth.write_geotiff(root / name, values, nodata=nodata, descriptions=names, tags=tags, **kw)


def _stripes(synth, shift: int):
    return synth.stripe_mask(N, N, period=16, width_px=4, tilt=12, shift=shift)


# --- dates and path/rows ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, expect", [
    ("LE70350322008118EDC00.tif", ((35, 32), date(2008, 4, 27))),
    ("LE70350322008118EDC00_b3.tif", ((35, 32), date(2008, 4, 27))),
    ("LT05_L2SP_035032_20080505_20200829_02_T1", ((35, 32), date(2008, 5, 5))),
    ("LE07_119038_20000317.tif", ((119, 38), date(2000, 3, 17))),
    ("restored_LC08_L1TP_044034_20200801_20200908_02_T1.tif", ((44, 34), date(2020, 8, 1))),
    ("scene_20080427.tif", None),
    ("LE70350322008999EDC00.tif", None),  # day 999 is no date
    ("XLE70350322008118EDC00.tif", None),  # inside another word
])
def test_landsat_ids_in_names_give_path_row_and_date(name, expect):
    assert landsat_name(name) == expect


def test_the_date_comes_from_the_tag_then_the_name(tmp_path, synth):
    tagged = _write(tmp_path, "LE70350322008118EDC00.tif", tags={"DATE_ACQUIRED": "2008:05:01"}, synth=synth)
    named = _write(tmp_path, "LT50350322008126PAC01.tif", synth=synth)
    bare = _write(tmp_path, "chip.tif", synth=synth)
    for path, expect in ((tagged, (date(2008, 5, 1), "DATE_ACQUIRED tag")), (named, (date(2008, 5, 5), "file name")),
                         (bare, (None, ""))):
        with open_scene(path) as scene:
            assert acquisition(scene.info, path) == expect


def test_lattice_stride_keeps_about_256_points_a_side():
    assert [lattice_stride(h, w) for h, w in ((61, 61), (256, 100), (257, 10), (7001, 8121))] == [1, 1, 2, 32]


# --- the ranking ------------------------------------------------------------------------------------------

@pytest.fixture
def archive(tmp_path, synth):
    """A Landsat-7 target (striped) and candidates around it, named as Landsat scene IDs (path 035, row 032)."""
    root = tmp_path / "archive"
    root.mkdir()
    t0 = date(2008, 4, 27)

    def name(sensor: str, days: int, pathrow: str = "035032") -> str:
        from datetime import timedelta

        return f"L{sensor}{pathrow}{_doy(t0 + timedelta(days=days))}EDC00.tif"

    cloud = np.zeros((N, N), bool)
    cloud[:, : N // 2] = True  # half the scene under a cloud (its nodata)
    paths = dict(
        target=_write(root, name("E7", 0), stripes=_stripes(synth, 0), synth=synth),
        near=_write(root, name("T5", 8), seed=1, synth=synth),  # gap-free, 8 days
        same_stripes=_write(root, name("E7", 16), stripes=_stripes(synth, 0), seed=2, synth=synth),
        cloudy=_write(root, name("T5", -8), stripes=cloud, seed=3, synth=synth),
        far=_write(root, name("T5", 40), seed=4, synth=synth),  # within 48 days, but far
        outside=_write(root, name("T5", 56), seed=5, synth=synth),  # beyond the window
        other_row=_write(root, name("T5", 8, "035033"), seed=6, synth=synth),  # another path/row
        unmatched=_write(root, name("T5", 24), seed=7, names=["blue", "green"], synth=synth),
        no_date=_write(root, "chip.tif", seed=8, synth=synth),
    )
    return root, paths


def test_candidates_are_ranked_by_covered_gaps_and_time_apart(archive):
    root, p = archive
    chooser = GuideChooser(sorted(root.iterdir()))
    choice = chooser.choose(p["target"])
    by_path = {Path(c.path).name: c for c in choice.candidates}
    # eligible: the same path/row within 48 days; another row, day 56 and a scene without a date are not
    assert set(by_path) == {p[k].name for k in ("near", "same_stripes", "cloudy", "far", "unmatched")}
    near, cloudy, far = by_path[p["near"].name], by_path[p["cloudy"].name], by_path[p["far"].name]
    assert near.covered == far.covered == 1.0 and near.days_apart == 8 and far.days_apart == 40
    assert 0.35 < cloudy.covered < 0.65  # half its pixels under the cloud
    assert by_path[p["same_stripes"].name].covered == 0  # its stripes lie where the target's do
    assert "cannot be matched" in by_path[p["unmatched"].name].refused
    assert near.score == pytest.approx(1 - 8 / 96) and far.score == pytest.approx(1 - 40 / 96)
    assert choice.guides == (str(p["near"]), str(p["far"]))  # far covers all: it beats the near cloudy one
    assert choice.note == "2 of 5 candidate(s) chosen" and 0 < choice.gap_share < 0.5
    # one guide at most; a narrower window
    assert GuideChooser(sorted(root.iterdir()), count=1).choose(p["target"]).guides == (str(p["near"]),)
    narrow = GuideChooser(sorted(root.iterdir()), window=10).choose(p["target"])
    assert narrow.guides == (str(p["near"]), str(p["cloudy"]))


def test_the_choice_does_not_depend_on_the_order_of_the_scenes(archive):
    root, p = archive
    scenes = sorted(root.iterdir())
    first = GuideChooser(scenes).choose(p["target"])
    random.Random(3).shuffle(scenes)
    again = GuideChooser(scenes).choose(p["target"])
    assert (again.guides, again.candidates, again.signature) == (first.guides, first.candidates, first.signature)


def test_scenes_without_a_date_gaps_or_candidates_are_filled_from_themselves(archive, tmp_path, synth):
    root, p = archive
    chooser = GuideChooser(sorted(root.iterdir()))
    assert "no acquisition date" in chooser.choose(p["no_date"]).note and not chooser.choose(p["no_date"]).guides
    assert chooser.choose(p["near"]).note == "no gap pixel: nothing to guide"
    alone = chooser.choose(p["outside"])  # day 56: only far (16 days) is near it, and it has no gaps
    assert alone.guides == () and alone.note == "no gap pixel: nothing to guide"
    lonely = _write(tmp_path, "LE70440342010227EDC00.tif", stripes=_stripes(synth, 3), synth=synth)
    assert GuideChooser([lonely, *root.iterdir()]).choose(lonely).note.startswith(
        "filled from itself: no other scene of path/row 044/034 within 48 days")


def test_without_a_path_row_the_bounds_must_overlap_most_of_the_scene(tmp_path, synth):
    tags = {"DATE_ACQUIRED": "2010-08-15"}
    target = _write(tmp_path, "target.tif", stripes=_stripes(synth, 0), tags=tags, synth=synth)
    moved = {share: _write(tmp_path, f"moved{share}.tif", seed=share, tags={"DATE_ACQUIRED": "2010-08-23"},
                           transform=synth.TRANSFORM * Affine.translation(round(N * (1 - share / 100)), 0),
                           synth=synth)
             for share in (30, 70)}
    choice = GuideChooser([target, *moved.values()]).choose(target)
    assert [Path(c.path).name for c in choice.candidates] == ["moved70.tif"]  # 70% of the bounds: most
    assert choice.guides == (str(moved[70]),) and 0.6 < choice.candidates[0].covered < 0.8


def test_coverage_on_a_sparse_lattice_estimates_the_full_count(tmp_path, synth, monkeypatch):
    import tilefill._guide_choice as gc

    root = tmp_path / "a"
    root.mkdir()
    target = _write(root, "LE70350322008118EDC00.tif", stripes=_stripes(synth, 0), synth=synth)
    rng = np.random.default_rng(0)
    holes = rng.random((N, N)) < 0.3
    guide = _write(root, "LT50350322008126PAC01.tif", stripes=holes, synth=synth)
    gaps = _stripes(synth, 0)
    exact = (gaps & ~holes).sum() / gaps.sum()
    # the whole raster is the footprint here (the hull leaves out stripes along its top and bottom rows)
    full = GuideChooser([target, guide], footprint="full").choose(target)
    assert full.stride == 1 and full.candidates[0].covered == pytest.approx(exact, abs=1e-6)
    monkeypatch.setattr(gc, "LATTICE_SIDE", 16)  # a 64 px scene read every 4th row and column
    sparse = GuideChooser([target, guide], footprint="full").choose(target)
    assert sparse.stride == 4 and sparse.candidates[0].covered == pytest.approx(exact, abs=0.12)


def test_landsat_product_folders_give_their_dates_and_path_row_from_the_mtl(tmp_path, synth):
    qa = np.full((N, N), 1 << 6, np.uint16)
    qa[_stripes(synth, 0)] = 1  # fill: the Level-2 product's stripes
    l7 = synth.landsat_product(tmp_path / "a", spacecraft="LANDSAT_7", acquired="2010-08-15", qa=qa)
    l8 = synth.landsat_product(tmp_path / "b", spacecraft="LANDSAT_8", acquired="2010-08-07")
    choice = GuideChooser([l7.folder, l8.folder], bands="red,nir").choose(l7.folder)
    assert choice.guides == (str(l8.folder),) and choice.candidates[0].days_apart == 8
    assert choice.candidates[0].covered == 1.0


# --- the batch --------------------------------------------------------------------------------------------

def _records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_batch_guide_auto_fills_each_scene_once_names_its_guides_and_a_rerun_redoes_nothing(archive, tmp_path,
                                                                                                synth):
    root, p = archive
    out, log = tmp_path / "out", tmp_path / "night.jsonl"
    args = ["batch", str(root), "--output-dir", str(out), "--guide", "auto", "--method", "llhm", "--workers", "0",
            "--log", str(log), "--footprint", "full"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    records = _records(log)
    choices = {Path(r["scene"]).name: r for r in records if r["type"] == "guides"}
    scenes = {Path(r["scene"]).name: r for r in records if r["type"] == "scene"}
    assert len(choices) == len(scenes) == 9 and all(r["status"] == "done" for r in scenes.values())
    target = p["target"].name
    assert choices[target]["guides"] == [str(p["near"]), str(p["far"])] == scenes[target]["guides"]
    assert "no acquisition date" in choices["chip.tif"]["note"] and scenes["chip.tif"]["guides"] == []
    with rasterio.open(out / target) as ds:
        tagged = json.loads(ds.tags()["TILEFILL_GUIDES"])
        filled = ds.read()
    assert [g["path"] for g in tagged] == [str(p["near"]), str(p["far"])]
    assert tagged[0]["acquired"] == "2008-05-05"  # from its name
    assert (filled[:, _stripes(synth, 0)] != -9999).all()
    # the rerun: every scene done, every choice taken from its record, no pixel read to choose
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "9 already done (skipped)" in again.output
    rerun = [r for r in _records(log)[len(records):] if r["type"] == "guides"]
    assert len(rerun) == 9 and all(r["reused"] for r in rerun if r["signature"])
    # a new acquisition 2 days from the target: the scenes whose guides it changes are filled again (and it
    # is filled), and only they; a scene without gaps, or whose best guides stay, is not
    newer = _write(root, p["target"].name.replace("2008118", "2008120").replace("LE7", "LT5"), seed=9, synth=synth)
    before = len(_records(log))
    third = CliRunner().invoke(main, args)
    assert third.exit_code == 0, third.output
    latest = _records(log)[before:]
    done_now = {Path(r["scene"]).name for r in latest if r["type"] == "scene" and r["status"] == "done"}
    guides_then = {Path(r["scene"]).name: r["guides"] for r in rerun}
    changed = {Path(r["scene"]).name for r in latest if r["type"] == "guides"
               and r["guides"] != guides_then.get(Path(r["scene"]).name)}
    assert done_now == changed and {target, newer.name} <= changed and p["far"].name not in changed
    with rasterio.open(out / target) as ds:
        assert [g["path"] for g in json.loads(ds.tags()["TILEFILL_GUIDES"])][0] == str(newer)


def test_a_changed_guide_means_the_scene_is_not_done(archive, tmp_path):
    root, p = archive
    out = tmp_path / "out"
    kw = dict(guide="auto", config=TINY, overrides={"fit.iterations": 3}, footprint="full")
    from tilefill import ClusterSpec

    first = fill_batch([p["target"], p["near"], p["far"]], out, cluster=ClusterSpec(workers=0), progress=False, **kw)
    assert [s.status for s in first.scenes] == ["done"] * 3 and first.summary()["guided"] == 1
    # the guide's content changes (reprocessed): same size and name, another run key
    with rasterio.open(p["near"], "r+") as ds:
        data = ds.read()
        ds.write(data + 1)
    os.utime(p["near"], ns=(1, 1))
    second = fill_batch([p["target"], p["near"], p["far"]], out, cluster=ClusterSpec(workers=0), progress=False, **kw)
    status = {Path(s.scene).name: s.status for s in second.scenes}
    assert status[p["target"].name] == "done" and status[p["far"].name] == "skipped"


def test_guide_auto_bad_input_is_one_line(archive, tmp_path):
    root, _p = archive
    out = tmp_path / "out"
    for extra, expect in ((["--guide-window", "10"], "--guide-window and --guides go with --guide auto"),
                          (["--guide", "auto", "--method", "gdal"], "goes with dip, llhm or nspi"),
                          (["--guide", "/some/path.tif"], "'/some/path.tif' is not 'auto'")):
        res = CliRunner().invoke(main, ["batch", str(root), "--output-dir", str(out), *extra])
        assert res.exit_code != 0 and expect in res.output, res.output
        assert "Traceback" not in res.output
