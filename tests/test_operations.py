"""Operations: SIGTERM, systematic faults, an output that cannot be written, and what listens on the network.

Real ``tilefill`` processes with the local Dask workers they start: SIGTERM in the middle of a
single run and of a batch (each also lists its process tree's listening sockets: nothing beyond
127.0.0.1), and a fault injected into every tile through a worker preload (Dask's own
``distributed.worker.preload`` setting, which the workers tilefill starts honour). The full disk
is a real tmpfs of a few KiB and the read-only folder a real read-only bind mount (both need root;
skipped with the reason where mounting is not permitted).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import rasterio
from click.testing import CliRunner
from conftest import IN_PROCESS, LOOPBACK_ADDRESSES, interruptible, listening_sockets

from tilefill import FillFailed, fill_batch, fill_scene
from tilefill import _pipeline, _schedule
from tilefill._pipeline import default_store, worker_log_path
from tilefill._records import failure_path
from tilefill._schedule import error_signature
from tilefill.cli import main

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("one_torch_thread")]

TINY = str(Path(__file__).with_name("tiny.yaml"))
ENV = {**os.environ, "TILEFILL_THREADS": "1"}


@pytest.fixture
def scene(tmp_path, synth):
    """A 2-band uint16 128 x 128 scene with stripes everywhere: all 9 tiles of 64 px have gaps."""
    values = synth.to_range(synth.smooth_field(2, 128, 128), "uint16")
    values[:, synth.stripe_mask(128, 128, period=16, width_px=3)] = 0
    return synth.write_geotiff(tmp_path / "scene.tif", values, nodata=0)


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "tilefill.cli", *map(str, args)]


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def _until(check, timeout: float = 90, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


# --- SIGTERM ------------------------------------------------------------------------------------------------

def test_sigterm_stops_a_run_like_ctrl_c_and_nothing_listens_beyond_loopback(scene, tmp_path):
    out = tmp_path / "out.tif"
    proc = subprocess.Popen(_cli(scene, "-o", out, "--config", TINY, "--iterations", 20, "--workers", 2),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=ENV,
                            preexec_fn=interruptible)
    try:
        lines = [""]
        while not lines[-1].startswith("tiles 2/9"):
            lines.append(proc.stderr.readline())
            assert lines[-1], "".join(lines)  # the command ended before its second tile
        listeners = listening_sockets(proc.pid)
        children = _descendants(proc.pid)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        err = proc.stderr.read()
        proc.wait(timeout=60)
        stopped = time.monotonic() - start
    finally:
        proc.kill()
    # the scheduler in the command, a nanny each, and both worker processes: all on loopback
    assert len({pid for _, _, pid in listeners}) >= 3, listeners
    assert [a for a in listeners if a[0] not in LOOPBACK_ADDRESSES] == []
    assert "dashboard:" not in "".join(lines) + err  # only on request
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("terminated (SIGTERM): workers stopped, no output written")
    assert "Traceback" not in err
    _until(lambda: not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], 10,
           "the worker processes to end")
    assert not out.exists() and default_store(out).is_dir()
    report = fill_scene(scene, out, config=TINY, iterations=20, cluster=IN_PROCESS, progress=False)  # the rerun resumes
    assert report.tiles_skipped >= 2 and report.tiles_skipped + report.tiles_fitted == 9
    print(f"\nSIGTERM after 2 of 9 tiles: exit 143 in {stopped:.1f} s, {len(children)} child processes gone; "
          f"the rerun skipped {report.tiles_skipped}")


def test_sigterm_while_the_local_cluster_starts_waits_for_it_and_stops_it_in_order(scene, tmp_path):
    """Interrupted mid-start, Dask left a half-started nanny whose exit hook printed a traceback."""
    out = tmp_path / "out.tif"
    proc = subprocess.Popen(_cli(scene, "-o", out, "--config", TINY, "--workers", 2), stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=ENV, preexec_fn=interruptible)
    try:
        def spawning():  # a worker process is being started: the cluster is not up yet
            try:
                return any("spawn_main" in " ".join(p.cmdline()) for p in _descendants(proc.pid))
            except psutil.Error:
                return False

        _until(spawning, 60, "a worker process")
        children = _descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        err = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("terminated (SIGTERM)")
    _until(lambda: not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], 10,
           "the processes it started to end")


def test_sigterm_in_a_batch_releases_the_claim_and_summarises_the_log(tmp_path, synth):
    archive = tmp_path / "archive"
    archive.mkdir()
    for i in range(2):
        values = synth.to_range(synth.smooth_field(2, 128, 128), "uint16")
        values[:, synth.stripe_mask(128, 128, period=16, width_px=3, shift=i)] = 0
        synth.write_geotiff(archive / f"s{i}.tif", values, nodata=0)
    out, log = tmp_path / "out", tmp_path / "batch.jsonl"
    proc = subprocess.Popen(_cli("batch", archive, "--output-dir", out, "--config", TINY, "--iterations", 20,
                                 "--workers", 1, "--log", log, "--dashboard"),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=ENV,
                            preexec_fn=interruptible)
    try:
        # two tiles of the first scene in its store: the batch is in the middle of it
        tiles = default_store(out / "s0.tif") / "tile_info"  # a chunk file per finished tile: c.INDEX.0
        _until(lambda: len(list(tiles.glob("c.*"))) >= 2, 120, "two tiles")
        listeners = listening_sockets(proc.pid)
        children = _descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert [a for a in listeners if a[0] not in LOOPBACK_ADDRESSES] == [] and len(listeners) >= 3, listeners
    link = re.search(r"dashboard: http://127\.0\.0\.1:(\d+)/status", err)
    assert link and int(link[1]) in {port for _, port, _ in listeners}, err
    assert proc.returncode == 143 and "Traceback" not in err, err
    _until(lambda: not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], 10,
           "the worker processes to end")
    assert not list(out.rglob(".*.claim"))
    records = [json.loads(line) for line in log.read_text().splitlines()]
    summary = records[-1]
    assert summary["type"] == "summary" and summary["status"] == "terminated", summary
    interrupted = [r for r in records if r["type"] == "scene" and r["status"] == "interrupted"]
    assert str(archive / "s0.tif") in {r["scene"] for r in interrupted}
    assert summary["interrupted"] == len(interrupted)
    report = fill_batch([archive], out, config=TINY, overrides={"fit.iterations": 20}, cluster=IN_PROCESS, progress=False)
    first = next(s for s in report.scenes if s.scene == str(archive / "s0.tif"))
    assert first.status == "done" and first.tiles_skipped >= 2  # resumed from the store SIGTERM kept
    assert not report.failed and len(report.done) + len(report.skipped) == 2


# --- systematic faults ----------------------------------------------------------------------------------------

FAULTY_PRELOAD = textwrap.dedent('''
    """A worker preload that breaks every tile after its window is read: a fault of the setup, not of tiles."""

    def dask_setup(worker):
        import tilefill._fill

        def broken(*args, **kwargs):
            raise RuntimeError("device fault at 0x7f3a2c while fitting")

        tilefill._fill.run_method_many = broken
''')


def test_a_fault_in_every_tile_stops_the_run_in_one_line_with_no_traceback(scene, tmp_path):
    preload = tmp_path / "faulty.py"
    preload.write_text(FAULTY_PRELOAD)
    out = tmp_path / "out.tif"
    start = time.monotonic()
    proc = subprocess.run(_cli(scene, "-o", out, "--config", TINY, "--workers", 2), capture_output=True, text=True,
                          timeout=170, env={**ENV, "DASK_DISTRIBUTED__WORKER__PRELOAD": json.dumps([str(preload)])})
    wall = time.monotonic() - start
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: stopped: 3 tile tasks in a row failed with the same error (RuntimeError: device "
                           "fault at 0x7f3a2c while fitting)"), last
    failed = json.loads(failure_path(out).read_text())
    assert failed["stopped"] == "RuntimeError: device fault at 0x7f3a2c while fitting"
    assert len(failed["failed_tiles"]) >= 3 and failed["not_tried"]  # stopped before trying every tile
    assert sorted([t["tile"] for t in failed["failed_tiles"]] + failed["not_tried"]) == list(range(9))
    # the tracebacks are in the worker log beside the kept store, which the line names
    log = worker_log_path(default_store(out))
    text = log.read_text()
    assert str(log) in last and "Compute Failed" in text and "device fault at 0x7f3a2c" in text and "Traceback" in text
    assert not out.exists() and default_store(out).is_dir()
    print(f"\na fault in every tile: stopped after {len(failed['failed_tiles'])} of 9 tiles, one line, "
          f"{wall:.1f} s from the start (2 local workers)")


def test_the_same_error_three_times_in_a_row_stops_other_errors_do_not(scene, tmp_path, monkeypatch):
    real, calls = _schedule.fill_tile, []

    def broken(path, index):
        calls.append(index)
        if index in (1, 3):  # two tiles with their own trouble: the run goes on
            raise MemoryError(f"tile {index} too big")
        if index >= 5:  # from tile 5 on, one fault (its numbers differ) hits every tile
            raise RuntimeError(f"CUDA error: illegal memory access at 0x{index:x}f0 (tile {index})")
        return real(path, index)

    monkeypatch.setattr(_schedule, "fill_tile", broken)
    out = tmp_path / "out.tif"
    with pytest.raises(FillFailed) as err:
        fill_scene(scene, out, config=TINY, iterations=5, cluster=IN_PROCESS, progress=False)
    report = err.value.report
    assert report.stopped == "RuntimeError: CUDA error: illegal memory access at 0x7f0 (tile 7)"
    assert sorted(report.failures) == [1, 3, 5, 6, 7] and report.not_tried == (8,) and report.tiles_fitted == 3
    assert calls.count(7) == 2 and 8 not in calls  # each task tried twice, then the run stopped
    assert str(err.value).startswith("stopped: 3 tile tasks in a row failed with the same error")
    assert "1 of 9 tiles not tried" in str(err.value)
    failed = json.loads(failure_path(out).read_text())
    assert failed["not_tried"] == [8] and failed["tiles"]["not_tried"] == 1
    assert "MemoryError: tile 3 too big" in worker_log_path(default_store(out)).read_text()
    # fixed, the same command fits what failed or was not tried, and nothing else
    monkeypatch.setattr(_schedule, "fill_tile", real)
    again = fill_scene(scene, out, config=TINY, iterations=5, cluster=IN_PROCESS, progress=False)
    assert (again.tiles_skipped, again.tiles_fitted) == (3, 6) and not failure_path(out).exists()


def test_error_signature_blanks_numbers_only():
    assert error_signature("OSError: [Errno 28] No space left on device: '/w/t/c/17'") == \
        error_signature("OSError: [Errno 28] No space left on device: '/w/t/c/4'")
    assert error_signature("MemoryError: tile 3 too big") != error_signature("MemoryError: out of host memory")


# --- an output that cannot be written -------------------------------------------------------------------------

def _mount(args: list[str], target: Path) -> None:
    try:
        subprocess.run(["mount", *args, str(target)], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"mounting is not permitted here ({getattr(exc, 'stderr', '') or exc}); the write path's "
                    "full-disk handling is then untested")


def _noisy_scene(tmp_path, synth) -> Path:
    """Incompressible pixels: its GeoTIFF does not fit in a few KiB."""
    rng = np.random.default_rng(0)
    values = rng.integers(500, 20000, size=(2, 128, 128)).astype("uint16")
    values[:, synth.stripe_mask(128, 128, period=16, width_px=3)] = 0
    return synth.write_geotiff(tmp_path / "noisy.tif", values, nodata=0)


def test_a_full_disk_at_the_write_leaves_nothing_written_and_keeps_the_store(tmp_path, synth):
    scene = _noisy_scene(tmp_path, synth)
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount(["-t", "tmpfs", "-o", "size=48k", "tmpfs"], disk)
    try:
        out = disk / "restored.tif"
        args = [str(scene), "-o", str(out), "--method", "gdal", "--config", TINY, "--workers", "0",
                "--workdir", str(tmp_path / "work"), "-q"]
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert res.output.strip() == (
            f"Error: cannot write {out} (no space left on the device): no output written; the work store "
            f"{tmp_path / 'work' / 'tiles.zarr'} keeps every tile, run the same command again to write it without "
            "fitting"), res.output
        assert list(disk.iterdir()) == []  # not even a partial file
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
        res = CliRunner().invoke(main, args[:-1])
        assert res.exit_code == 0, res.output
        assert "9 done by an earlier run (skipped)" in res.output and out.is_file()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_an_output_folder_turning_read_only_at_the_write(scene, tmp_path, monkeypatch):
    """A bind mount turned read-only as the write starts (it cannot turn while a file on it is open for writing)."""
    folder, real_folder = tmp_path / "ro", tmp_path / "rw"
    folder.mkdir()
    real_folder.mkdir()
    _mount(["--bind", str(real_folder)], folder)
    try:
        real_write = _pipeline.write_output

        def turned_read_only(*args, **kwargs):
            subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
            return real_write(*args, **kwargs)

        monkeypatch.setattr(_pipeline, "write_output", turned_read_only)
        out = folder / "restored.tif"
        res = CliRunner().invoke(main, [str(scene), "-o", str(out), "--config", TINY, "--iterations", "5",
                                        "--workers", "0", "-q"])
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert res.output.strip() == (
            f"Error: cannot write {out} (output folder {folder} is not writable): no output written; the work store "
            f"{default_store(out)} keeps every tile, run the same command again to write it without fitting")
        assert not out.exists() and default_store(out).is_dir()
        monkeypatch.setattr(_pipeline, "write_output", real_write)
        subprocess.run(["mount", "-o", "remount,bind,rw", str(folder)], check=True)
        report = fill_scene(scene, out, config=TINY, iterations=5, cluster=IN_PROCESS, progress=False)
        assert (report.tiles_skipped, report.tiles_fitted) == (9, 0) and out.is_file()
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
