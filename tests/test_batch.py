"""``tilefill batch``: finding scenes, the mirrored output tree, done records, failures, claims, bad input.

Scenes are small synthetic GeoTIFFs and a Landsat-style folder; fits run in-process with a tiny
network (or GDAL's fill where only the bookkeeping matters). Two real ``tilefill batch``
processes share one archive in the concurrency test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from conftest import IN_PROCESS
from tilefill import TilefillError, fill_batch
from tilefill._archive import Claim, claim_path, done_path, find_scenes
from tilefill._pipeline import default_store
from tilefill._records import failure_path
from tilefill._runkey import file_digest
from tilefill.cli import main

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("one_torch_thread")]

TINY = str(Path(__file__).with_name("tiny.yaml"))
FAST = ["--config", TINY, "--iterations", "5", "--workers", "0"]


def _scene(path: Path, shift: int = 0, dtype: str = "uint16", nodata=0) -> Path:
    yy, xx = np.mgrid[0:96, 0:96]
    values = np.stack([100 + 60 * np.sin(xx / 9.0 + shift + b) + 40 * np.cos(yy / 13.0) for b in range(2)])
    values = values.astype(dtype)
    values[:, (yy + xx // 8 + shift) % 24 < 4] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", dtype=dtype, count=values.shape[0], height=96, width=96,
                       nodata=nodata, crs="EPSG:32633",
                       transform=rasterio.Affine(30, 0, 500000, 0, -30, 4200000)) as ds:
        ds.write(values)
    return path


# the product in the archive's folder 2010/LE07_L1TP_TEST/: its output is named after the ID in its MTL
LANDSAT_ID = "LE07_L1TP_044034_20100815_20200911_02_T1"


def _landsat(parent: Path, synth) -> Path:
    """A Landsat-7 Level-1 product folder (MTL, QA_PIXEL, B1 and B2 of 96 x 96 uint8, 0 = fill)."""
    bands = {}
    for b in (1, 2):
        single = _scene(parent / f"tmp_{b}.tif", shift=b, dtype="uint8", nodata=None)
        with rasterio.open(single) as src:
            bands[str(b)] = src.read(1)
        single.unlink()
    product = synth.landsat_product(parent, level="L1TP", shape=(96, 96), data=bands, files=["1", "2"],
                                    folder="LE07_L1TP_TEST")
    assert product.product_id == LANDSAT_ID
    return product.folder


@pytest.fixture
def archive(tmp_path, synth):
    """archive/{a.tif, 2010/b.tif, 2010/LE07_L1TP_TEST/ (Landsat), corrupt.tif, .hidden.tif, notes.txt}."""
    root = tmp_path / "archive"
    _scene(root / "a.tif")
    _scene(root / "2010" / "b.tif", shift=5)
    _landsat(root / "2010", synth)
    (root / "corrupt.tif").write_bytes(b"II*\x00 this was a GeoTIFF until the disk failed")
    _scene(root / ".hidden.tif")
    (root / "notes.txt").write_text("not a scene")
    return root


def _records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _batch_cli(*args):
    return CliRunner().invoke(main, ["batch", *map(str, args)])


# --- finding scenes -----------------------------------------------------------------------------------------

def test_scenes_from_trees_globs_and_manifests_mirror_the_input(archive, tmp_path):
    out = tmp_path / "out"
    scenes, problems = find_scenes([archive], out)
    assert problems == []
    assert [(s.path.relative_to(archive), s.output.relative_to(out)) for s in scenes] == [
        (Path("2010/LE07_L1TP_TEST"), Path(f"2010/{LANDSAT_ID}.tif")),  # a Landsat folder is one scene
        (Path("2010/b.tif"), Path("2010/b.tif")),
        (Path("a.tif"), Path("a.tif")),
        (Path("corrupt.tif"), Path("corrupt.tif")),
    ]
    by_glob, _ = find_scenes([str(archive / "**" / "*.tif")], out)
    assert [s.output for s in by_glob] == [out / "2010/b.tif", out / "a.tif", out / "corrupt.tif"]
    manifest = tmp_path / "list.txt"
    manifest.write_text("# tonight\narchive/a.tif\n\n" + str(archive / "2010" / "b.tif") + "\n")
    listed, _ = find_scenes([], out, manifest=manifest)
    assert [s.output for s in listed] == [out / "a.tif", out / "2010/b.tif"]
    assert listed[0].origin == "list.txt line 2"
    # an output tree inside the input tree is not searched; an output over its input is refused
    (archive / "restored").mkdir()
    _scene(archive / "restored" / "a.tif")
    inside, _ = find_scenes([archive], archive / "restored")
    assert not [s for s in inside if "restored" in s.path.parts]
    _, over = find_scenes([archive / "a.tif"], archive)
    assert "would replace the input" in over[0].message and over[0].failure


# --- a folder with a corrupt scene ---------------------------------------------------------------------------

def test_a_corrupt_scene_fails_alone_and_the_rerun_skips_what_is_done(archive, tmp_path):
    out, log = tmp_path / "out", tmp_path / "nightly.jsonl"
    res = _batch_cli(archive, "--output-dir", out, "--log", log, *FAST)
    assert res.exit_code == 1, res.output
    assert "batch: 4 scene(s): 3 filled, 0 already done (skipped), 0 claimed by another batch, 1 failed" in res.output
    assert f"failed: not a raster GDAL can read: {archive / 'corrupt.tif'}" in res.output
    assert "Traceback" not in res.output
    for rel in ("a.tif", "2010/b.tif", f"2010/{LANDSAT_ID}.tif"):
        record = json.loads(done_path(out / rel).read_text())
        assert record["sha256"] == file_digest(out / rel, "sha256") and record["size"] == (out / rel).stat().st_size
        assert not default_store(out / rel).exists() and not claim_path(out / rel).exists()
    with rasterio.open(out / "2010" / f"{LANDSAT_ID}.tif") as ds:
        assert ds.descriptions == ("blue", "green") and ds.count == 2
    assert not (out / "corrupt.tif").exists()
    failed = json.loads(failure_path(out / "corrupt.tif").read_text())
    assert failed["status"] == "failed" and "not a raster GDAL can read" in failed["error"]
    assert sorted(p.name for p in out.iterdir()) == ["2010", "a.tif", "a.tif.done.json", "corrupt.tif.failed.json"]

    records = _records(log)
    tiles = [r for r in records if r["type"] == "tile"]
    assert len(tiles) == 3 * 4
    for r in tiles:
        assert set(r) >= {"scene", "tile", "worker", "device", "iterations", "final_loss", "seconds", "status"}
        assert r["status"] == "filled" and r["device"] == "cpu" and r["iterations"] == 5
        assert r["final_loss"] > 0 and r["worker"].endswith(f":{os.getpid()}")
    scenes = {Path(r["scene"]).name: r for r in records if r["type"] == "scene"}
    assert {n: r["status"] for n, r in scenes.items()} == {
        "a.tif": "done", "b.tif": "done", "LE07_L1TP_TEST": "done", "corrupt.tif": "failed"}
    assert scenes["a.tif"]["tiles_fitted"] == 4 and "not a raster" in scenes["corrupt.tif"]["error"]
    summary = records[-1]
    assert summary["type"] == "summary"
    assert {k: summary[k] for k in ("scenes", "done", "skipped", "failed", "tiles_fitted")} == {
        "scenes": 4, "done": 3, "skipped": 0, "failed": 1, "tiles_fitted": 12}

    # cron runs it again: nothing to fit, no cluster started, the corrupt scene still fails
    before = (out / "a.tif").stat().st_mtime_ns
    res = _batch_cli(archive, "--output-dir", out, "--log", log, *FAST)
    assert res.exit_code == 1 and "0 filled, 3 already done (skipped)" in res.output
    assert "no cluster (nothing to fit)" in res.output
    assert (out / "a.tif").stat().st_mtime_ns == before

    # the input changes: detected by the key and filled again; the repaired scene is filled, its failure settled
    os.utime(archive / "2010" / "b.tif", (1, 1))  # only touched: still done
    with rasterio.open(archive / "a.tif", "r+") as ds:
        band = ds.read(1)
        band[50, 50] += 3
        ds.write(band, 1)
    (archive / "corrupt.tif").unlink()
    _scene(archive / "corrupt.tif", shift=9)
    res = _batch_cli(archive, "--output-dir", out, "--log", log, *FAST)
    assert res.exit_code == 0, res.output
    assert "2 filled, 2 already done (skipped)" in res.output
    assert not failure_path(out / "corrupt.tif").exists() and done_path(out / "corrupt.tif").is_file()
    with rasterio.open(out / "a.tif") as ds:
        assert ds.read(1)[50, 50] == band[50, 50]


def test_one_scene_that_keeps_failing_tiles_leaves_a_report_not_an_output(archive, tmp_path, monkeypatch):
    from tilefill import _schedule

    real = _schedule.fill_tile

    def broken(path, index):
        if "b.tif" in path and index == 2:
            raise MemoryError("tile too big")
        return real(path, index)

    monkeypatch.setattr(_schedule, "fill_tile", broken)
    out = tmp_path / "out"
    report = fill_batch([archive / "a.tif", archive / "2010"], out, config=TINY, overrides={"fit.iterations": 5},
                        cluster=IN_PROCESS, progress=False)
    assert [s.status for s in report.scenes] == ["done", "done", "failed"]  # a.tif, 2010/LE07_..., 2010/b.tif
    bad = report.failed[0]
    assert bad.tiles_failed == 1 and bad.tiles_fitted == 3 and "tile 2: MemoryError: tile too big" in bad.error
    assert not (out / "2010" / "b.tif").exists() and not done_path(out / "2010" / "b.tif").exists()
    failed = json.loads(failure_path(out / "2010" / "b.tif").read_text())
    assert failed["failed_tiles"] == [{"tile": 2, "cause": "MemoryError: tile too big"}]
    assert default_store(out / "2010" / "b.tif").is_dir(), "finished tiles kept for the next night"
    monkeypatch.setattr(_schedule, "fill_tile", real)
    report = fill_batch([archive / "a.tif", archive / "2010"], out, config=TINY, overrides={"fit.iterations": 5},
                        cluster=IN_PROCESS, progress=False)
    assert [s.status for s in report.scenes] == ["skipped", "skipped", "done"]
    assert (report.scenes[2].tiles_fitted, report.scenes[2].tiles_skipped) == (1, 3)


def test_an_interrupted_batch_releases_its_claim_and_resumes(archive, tmp_path, monkeypatch):
    from tilefill import _schedule

    real, seen = _schedule.fill_tile, []

    def interrupted(path, index):
        if "b.tif" in path and len([p for p in seen if "b.tif" in p]) == 2:
            raise KeyboardInterrupt
        seen.append(path)
        return real(path, index)

    monkeypatch.setattr(_schedule, "fill_tile", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        fill_batch([archive / "2010" / "b.tif"], out, config=TINY, overrides={"fit.iterations": 5}, cluster=IN_PROCESS)
    assert not claim_path(out / "b.tif").exists() and default_store(out / "b.tif").is_dir()
    monkeypatch.setattr(_schedule, "fill_tile", real)
    report = fill_batch([archive / "2010" / "b.tif"], out, config=TINY, overrides={"fit.iterations": 5}, cluster=IN_PROCESS)
    assert (report.done[0].tiles_skipped, report.done[0].tiles_fitted) == (2, 2)


# --- claims --------------------------------------------------------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_claims_live_stale_and_abandoned(archive, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    here = socket.gethostname()
    claim_path(out / "a.tif").write_text(json.dumps({"host": here, "pid": os.getpid(), "started": "now"}))
    claim_path(out / "b.tif").write_text(json.dumps({"host": here, "pid": _dead_pid(), "started": "then"}))
    claim_path(out / "c.tif").write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "long ago"}))
    _scene(archive / "c.tif", shift=2)
    old = time.time() - 120
    os.utime(claim_path(out / "c.tif"), (old, old))
    report = fill_batch([archive / "a.tif", archive / "2010" / "b.tif", archive / "c.tif"], out, config=TINY,
                        overrides={"fit.iterations": 5}, cluster=IN_PROCESS, progress=False, claim_ttl=60, input_root=archive)
    status = {Path(s.scene).name: s.status for s in report.scenes}
    # a live batch's claim is respected (not a failure); a dead process's and an unrefreshed one are taken over
    assert status == {"a.tif": "claimed", "b.tif": "done", "c.tif": "done"}
    assert "claimed by pid" in report.claimed[0].error and not report.failed
    assert claim_path(out / "a.tif").exists() and not (out / "a.tif").exists()
    assert not claim_path(out / "2010" / "b.tif").exists()


def test_a_claim_is_exclusive_and_kept_fresh(tmp_path):
    out = tmp_path / "x.tif"
    first = Claim.acquire(out, ttl=0.4)
    assert first is not None and Claim.acquire(out, ttl=0.4) is None
    time.sleep(0.6)  # past the ttl, but the heartbeat refreshed it
    assert Claim.acquire(out, ttl=0.4) is None
    first.release()
    second = Claim.acquire(out, ttl=0.4)
    assert second is not None
    second.release()
    assert not claim_path(out).exists()


def test_two_batches_at_once_fill_each_scene_exactly_once(tmp_path):
    archive = tmp_path / "archive"
    for i in range(6):
        _scene(archive / f"s{i}.tif", shift=i)
    env = {**os.environ, "TILEFILL_THREADS": "1"}
    cmds = [[sys.executable, "-m", "tilefill.cli", "batch", str(archive), "--output-dir", str(tmp_path / "out"),
             "--config", TINY, "--iterations", "20", "--workers", "0", "-q", "--log", str(tmp_path / f"{n}.jsonl")]
            for n in ("one", "two")]
    procs = [subprocess.Popen(c, stderr=subprocess.PIPE, text=True, env=env) for c in cmds]
    errs = [p.communicate(timeout=110)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    done: dict[str, int] = {}
    for n in ("one", "two"):
        for r in _records(tmp_path / f"{n}.jsonl"):
            if r["type"] == "scene":
                assert r["status"] in ("done", "skipped", "claimed"), r
                done[r["scene"]] = done.get(r["scene"], 0) + (r["status"] == "done")
    assert done == {str(archive / f"s{i}.tif"): 1 for i in range(6)}
    assert len(list((tmp_path / "out").glob("*.done.json"))) == 6 and not list((tmp_path / "out").glob(".*"))
    split = [sum(r["type"] == "scene" and r["status"] == "done" for r in _records(tmp_path / f"{n}.jsonl"))
             for n in ("one", "two")]
    print(f"\ntwo concurrent batches over 6 scenes: {split[0]} + {split[1]} filled, each scene once")


# --- bad input -------------------------------------------------------------------------------------------------

def test_manifest_naming_missing_unreadable_and_duplicate_files(archive, tmp_path, monkeypatch):
    manifest = tmp_path / "tonight.txt"
    manifest.write_text("\n".join([str(archive / "a.tif"), "archive/missing.tif", "archive/2010/b.tif",
                                   "archive/a.tif", "archive/locked.tif"]) + "\n")
    _scene(archive / "locked.tif")
    real_access = os.access  # root reads anything: make one file unreadable the way the check sees it
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p).name == "locked.tif" else real_access(p, mode))
    out, log = tmp_path / "out", tmp_path / "log.jsonl"
    res = _batch_cli("--manifest", manifest, "--output-dir", out, "--log", log, *FAST)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"tonight.txt line 2: {tmp_path / 'archive/missing.tif'} not found" in res.output
    assert f"tonight.txt line 5: {tmp_path / 'archive/locked.tif'} is not readable (permissions)" in res.output
    assert "tonight.txt line 4: " in res.output and "is named again (first by tonight.txt line 1): filled once" in res.output
    assert "2 filled" in res.output and "2 failed" in res.output
    assert (out / "a.tif").is_file() and (out / "2010" / "b.tif").is_file()
    statuses = sorted(r["status"] for r in _records(log) if r["type"] == "scene")
    assert statuses == ["done", "done", "duplicate", "failed", "failed"]
    # a manifest that is not there at all: one line
    res = _batch_cli("--manifest", tmp_path / "nope.txt", "--output-dir", out, *FAST)
    assert res.exit_code == 1 and res.output.strip() == f"Error: manifest {tmp_path / 'nope.txt'} not found"


def test_an_output_root_that_cannot_be_written(archive, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = _batch_cli(archive, "--output-dir", blocker, *FAST)
    assert res.exit_code == 1 and res.output.strip() == f"Error: output root {blocker} is a file, not a folder"
    res = _batch_cli(archive, "--output-dir", blocker / "sub", *FAST)
    assert res.exit_code == 1 and res.output.strip().startswith(f"Error: output root {blocker / 'sub'} cannot be created")
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked and mode & os.W_OK
                        else real_access(p, mode))  # root writes anywhere: deny the way the check asks
    res = _batch_cli(archive, "--output-dir", locked, *FAST)
    assert res.exit_code == 1 and res.output.strip() == f"Error: output root {locked} is not writable", res.output
    assert list(locked.iterdir()) == []


def test_a_scheduler_that_does_not_answer_stops_the_batch_before_any_work(archive, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "log.jsonl"
    start = time.monotonic()
    res = _batch_cli(archive, "--output-dir", tmp_path / "out", "--config", TINY, "--scheduler",
                     f"tcp://127.0.0.1:{port}", "--log", log)
    assert time.monotonic() - start < 5
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        f"Error: no Dask scheduler answers at tcp://127.0.0.1:{port} (Connection refused; waited up to 10 s)"]
    assert _records(log)[-1]["status"] == "error"
    assert list((tmp_path / "out").iterdir()) == []


def test_no_sources_and_sources_without_scenes(tmp_path):
    res = _batch_cli("--output-dir", tmp_path / "out")
    assert res.exit_code == 1 and "name the scenes: SOURCES" in res.output
    (tmp_path / "empty").mkdir()
    res = _batch_cli(tmp_path / "empty", str(tmp_path / "nothing*.tif"), "--output-dir", tmp_path / "out", *FAST)
    assert res.exit_code == 1
    assert f"no GeoTIFF or Landsat folder in {tmp_path / 'empty'}" in res.output
    assert f"{tmp_path / 'nothing*.tif'}: no file matches" in res.output
    with pytest.raises(TilefillError, match="name the scenes"):
        fill_batch([], tmp_path / "out")


# --- verify -----------------------------------------------------------------------------------------------------

def test_verify_rehashes_done_outputs_and_fills_damaged_ones_again(archive, tmp_path):
    out, log = tmp_path / "out", tmp_path / "log.jsonl"
    sources = [archive / "a.tif", archive / "2010" / "b.tif"]
    gdal = ["--method", "gdal", "--config", TINY, "--workers", "0", "--input-root", archive]
    res = _batch_cli(*sources, "--output-dir", out, *gdal)
    assert res.exit_code == 0 and "2 filled" in res.output, res.output
    a, b = out / "a.tif", out / "2010" / "b.tif"
    with rasterio.open(a) as ds:
        pixels = ds.read()
    rotten = bytearray(a.read_bytes())  # bit rot: one byte flipped, the size unchanged
    rotten[len(rotten) // 2] ^= 0xFF
    a.write_bytes(bytes(rotten))
    size = b.stat().st_size
    b.write_bytes(b.read_bytes()[:-100])  # a copy that stopped short

    # without --verify only the size is compared: the short copy is found, the flipped byte is not
    res = _batch_cli(*sources, "--output-dir", out, *gdal, "--log", log)
    assert res.exit_code == 0 and "1 filled, 1 already done (skipped)" in res.output, res.output
    assert f"damaged: {b}: the output has {size - 100} bytes, its record {size}" in res.output
    assert a.read_bytes() == bytes(rotten)

    res = _batch_cli(*sources, "--output-dir", out, *gdal, "--log", log, "--verify")
    assert res.exit_code == 0 and "1 filled, 1 already done (skipped)" in res.output, res.output
    assert "verified: 1 output(s) match their record, 1 damaged (filled again)" in res.output
    assert f"damaged: {a}: the output's SHA-256 differs from its record" in res.output
    record = json.loads(done_path(a).read_text())
    assert record["sha256"] == file_digest(a, "sha256") and a.read_bytes() != bytes(rotten)
    with rasterio.open(a) as ds:
        np.testing.assert_array_equal(ds.read(), pixels)
    scenes = [r for r in _records(log) if r["type"] == "scene"]
    assert sorted((Path(r["scene"]).name, r["status"], r["verified"], bool(r["damaged"])) for r in scenes[-2:]) == [
        ("a.tif", "done", False, True), ("b.tif", "skipped", True, False)]
    assert _records(log)[-1]["verified"] == 1 and _records(log)[-1]["damaged"] == 1


# --- a fault that stops scene after scene ---------------------------------------------------------------------------

def test_the_same_fault_stopping_two_scenes_in_a_row_stops_the_batch(tmp_path, monkeypatch):
    from tilefill import _schedule

    archive = tmp_path / "archive"
    for i in range(4):
        _scene(archive / f"s{i}.tif", shift=i)

    def broken(path, index):
        raise OSError(28, f"No space left on device: '{path}/tiles/c/{index}/0/0/0'")

    monkeypatch.setattr(_schedule, "fill_tile", broken)
    out, log = tmp_path / "out", tmp_path / "log.jsonl"
    res = _batch_cli(archive, "--output-dir", out, "--log", log, *FAST)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert res.output.strip().splitlines()[-1].startswith(
        "Error: the same error stopped 2 scenes in a row (OSError: [Errno 28] No space left on device: ")
    records = _records(log)
    status = {Path(r["scene"]).name: r["status"] for r in records if r["type"] == "scene"}
    assert status["s0.tif"] == status["s1.tif"] == "failed" and "s3.tif" not in status  # never reached
    assert set(status.values()) <= {"failed", "interrupted"}
    for name in ("s0.tif", "s1.tif"):
        assert json.loads(failure_path(out / name).read_text())["stopped"].startswith("OSError: [Errno 28]")
    assert records[-1]["type"] == "summary" and records[-1]["status"] == "error"
    assert not list(out.rglob(".*.claim"))
