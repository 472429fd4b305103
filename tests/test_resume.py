"""Resumable, exactly once: run keys, resuming a kept work store, refusing another run's, failing tiles.

Most tests run the pipeline in-process (``ClusterSpec(workers=0)``) with a tiny network, interrupting it by
making a tile task raise; the last one kills a real ``tilefill`` process with Ctrl-C while its
local Dask workers fit, and runs the same command again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import IN_PROCESS, interruptible
import rasterio
from click.testing import CliRunner

from tilefill import FillFailed, TileGrid, TilefillError, fill_scene, load_config
from tilefill import _schedule
from tilefill._pipeline import default_store
from tilefill._records import failure_path
from tilefill._runkey import run_key
from tilefill._scene import open_scene
from tilefill._store import build_store, resumable_store
from tilefill.cli import main

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("one_torch_thread")]

TINY = str(Path(__file__).with_name("tiny.yaml"))
FAST = dict(config=TINY, iterations=5, cluster=IN_PROCESS, progress=False)


@pytest.fixture
def scene(tmp_path, synth):
    """A 2-band uint16 128 x 128 scene with stripes everywhere: all 9 tiles of 64 px have gaps."""
    values = synth.to_range(synth.smooth_field(2, 128, 128), "uint16")
    values[:, synth.stripe_mask(128, 128, period=16, width_px=3)] = 0
    return synth.write_geotiff(tmp_path / "scene.tif", values, nodata=0)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def _interrupt_after(monkeypatch, n: int) -> list[int]:
    """Make the n+1-th tile task raise KeyboardInterrupt (Ctrl-C); returns the tiles that finished."""
    real, finished = _schedule.fill_tile, []

    def tile(path, index):
        if len(finished) == n:
            raise KeyboardInterrupt
        result = real(path, index)
        finished.append(index)
        return result

    monkeypatch.setattr(_schedule, "fill_tile", tile)
    return finished


@pytest.fixture
def clean(scene, tmp_path):
    """The scene filled by one uninterrupted run."""
    out = tmp_path / "clean" / "out.tif"
    out.parent.mkdir()
    report = fill_scene(scene, out, **FAST)
    assert report.tiles_fitted == 9 and report.tiles_skipped == 0
    return _read(out)


# --- the run key -------------------------------------------------------------------------------------------

def _key(path, config=None, footprint="hull", mask=None, bands=None):
    config = config or load_config(TINY)
    with open_scene(path, mask=mask, bands=bands) as src:
        grid = TileGrid.from_scene(src.info, config)
        return run_key(src, config, grid, footprint=footprint)


def test_the_key_follows_content_and_parameters_not_names_or_times(scene, tmp_path, synth):
    key = _key(scene)
    assert len(key.digest) == 40 and str(key) == key.digest[:16]
    assert [f.path for f in key.files] == [str(scene.resolve())]
    # the same bytes elsewhere, or touched: the same key
    copy = tmp_path / "elsewhere" / "copy.tif"
    copy.parent.mkdir()
    shutil.copy(scene, copy)
    os.utime(copy, (1, 1))
    assert _key(copy).digest == key.digest
    # one pixel more: another key
    with rasterio.open(copy, "r+") as ds:
        band = ds.read(1)
        band[5, 5] += 1
        ds.write(band, 1)
    assert _key(copy).digest != key.digest
    # parameters that change a tile change the key; how the GeoTIFF is written does not
    cfg = load_config(TINY)
    assert _key(scene, cfg.override({"fit.iterations": 7})).digest != key.digest
    assert _key(scene, cfg.override({"fit.seed": 1})).digest != key.digest
    assert _key(scene, footprint="full").digest != key.digest
    assert _key(scene, bands="1").digest != key.digest
    assert _key(scene, cfg.override({"output.cog": True, "name": "other"})).digest == key.digest
    # research knobs that change a fit change the key; the mosaic's choice of partner does not
    assert _key(scene, cfg.override({"experimental.lr_end": 0.5})).digest != key.digest
    assert _key(scene, cfg.override({"experimental.choose_partner": True})).digest == key.digest
    # scoring at the end only is scoring every `iterations` (or less often): the same fits, one key
    assert cfg.fit.check_every == 0
    for every in (cfg.fit.iterations, cfg.fit.iterations + 100):
        assert _key(scene, cfg.override({"fit.check_every": every})).digest == key.digest
    assert _key(scene, cfg.override({"fit.check_every": 7})).digest != key.digest
    # a mask file is input too
    flag = np.zeros((128, 128), dtype=np.uint8)
    mask = synth.write_geotiff(tmp_path / "mask.tif", flag)
    with_mask = _key(scene, mask=mask)
    assert with_mask.digest != key.digest and len(with_mask.files) == 2
    flag[3, 3] = 1
    synth.write_geotiff(tmp_path / "mask.tif", flag)
    assert _key(scene, mask=mask).digest != with_mask.digest


# --- resuming ----------------------------------------------------------------------------------------------

def test_an_interrupted_run_resumes_and_writes_what_an_uninterrupted_run_writes(scene, tmp_path, clean, monkeypatch):
    out = tmp_path / "out.tif"
    finished = _interrupt_after(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        fill_scene(scene, out, **FAST)
    assert not out.exists() and len(finished) == 4
    store = default_store(out)
    assert store.is_dir(), "the work store is kept after an interrupt"
    monkeypatch.undo()
    monkeypatch.setenv("TILEFILL_THREADS", "1")
    fitted = _interrupt_after(monkeypatch, 99)
    report = fill_scene(scene, out, **FAST)
    assert report.tiles_skipped == 4 and report.tiles_fitted == 5
    assert sorted(fitted) == sorted(set(range(9)) - set(finished)), "only the missing tiles are fitted"
    assert sorted(r.index for r in report.tiles if r.status == "skipped") == sorted(finished)
    assert "4 done by an earlier run (skipped)" in str(report)
    np.testing.assert_array_equal(_read(out), clean)
    assert not store.exists(), "the default work store goes once the output is written"


def test_a_store_of_another_run_is_refused_and_restart_discards_it(scene, tmp_path, clean, monkeypatch):
    out = tmp_path / "out.tif"
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        fill_scene(scene, out, **FAST)
    monkeypatch.undo()
    monkeypatch.setenv("TILEFILL_THREADS", "1")
    with pytest.raises(TilefillError, match=r"holds another run .*--restart"):
        fill_scene(scene, out, **{**FAST, "iterations": 6})
    # the input changed under the store: detected by the key, not mixed
    with rasterio.open(scene, "r+") as ds:
        band = ds.read(1)
        band[100, 100] += 1
        ds.write(band, 1)
    res = CliRunner().invoke(main, [str(scene), "-o", str(out), "--config", TINY, "--iterations", "5",
                                    "--workers", "0", "-q"])
    assert res.exit_code == 1 and "holds another run" in res.output and "Traceback" not in res.output
    report = fill_scene(scene, out, **FAST, restart=True)
    assert report.tiles_skipped == 0 and report.tiles_fitted == 9
    assert _read(out)[0, 100, 100] == clean[0, 100, 100] + 1  # the new input's pixel


def test_an_interrupted_build_is_rebuilt(scene, tmp_path):
    cfg = load_config(TINY)
    path = tmp_path / "w" / "tiles.zarr"
    with open_scene(scene) as src:
        grid = TileGrid(128, 128, 64, 32, src.info.affine)
        build_store(src, grid, cfg, path, run_key="abc")
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["tilefill"] = {"version": "x", "building": True, "run_key": "abc"}
    (path / "zarr.json").write_text(json.dumps(meta))
    assert resumable_store(path, "abc") is None  # nothing to resume ...
    report = fill_scene(scene, tmp_path / "o.tif", **FAST, workdir=tmp_path / "w")  # ... and replaced
    assert report.tiles_fitted == 9 and report.workdir == path


def test_a_tile_that_keeps_failing_fails_the_run_and_names_the_tile(scene, tmp_path, clean, monkeypatch):
    out = tmp_path / "out.tif"
    real, calls = _schedule.fill_tile, []

    def broken(path, index):
        calls.append(index)
        if index == 4:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(path, index)

    monkeypatch.setattr(_schedule, "fill_tile", broken)
    with pytest.raises(FillFailed) as err:
        fill_scene(scene, out, **FAST)
    report = err.value.report
    assert calls.count(4) == 2, "tried once more"
    assert report.failures == {4: "RuntimeError: CUDA error: an illegal memory access was encountered"}
    assert report.tiles_fitted == 8 and report.retried == {4: 1}
    assert "1 of 9 tiles failed (tile 4: RuntimeError: CUDA error" in str(err.value)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if "partial" in p.name]
    failed = json.loads(failure_path(out).read_text())
    assert failed["status"] == "failed" and failed["output"] == str(out)
    assert failed["failed_tiles"] == [{"tile": 4, "cause": report.failures[4]}]
    assert failed["tiles"] == {"in_grid": 9, "to_fit": 9, "skipped": 0, "fitted": 8, "failed": 1, "not_tried": 0}
    # the CLI: one line, exit 1, still no output
    res = CliRunner().invoke(main, [str(scene), "-o", str(out), "--config", TINY, "--iterations", "5",
                                    "--workers", "0", "-q"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.strip().splitlines()[-1].startswith("Error: 1 of 9 tiles failed (tile 4")
    # fixed: the next run fits only the failed tile, writes the clean scene and settles the failure
    monkeypatch.setattr(_schedule, "fill_tile", real)
    report = fill_scene(scene, out, **FAST)
    assert (report.tiles_fitted, report.tiles_skipped) == (1, 8)
    np.testing.assert_array_equal(_read(out), clean)
    assert not failure_path(out).exists()


# --- a real process, Ctrl-C, and the same command again --------------------------------------------------------

def test_ctrl_c_then_the_same_command_resumes_with_equal_output(scene, tmp_path):
    ref = tmp_path / "ref.tif"
    fill_scene(scene, ref, config=TINY, iterations=60, cluster=IN_PROCESS, progress=False)  # one torch thread, as below
    out = tmp_path / "out.tif"
    cmd = [sys.executable, "-m", "tilefill.cli", str(scene), "-o", str(out), "--config", TINY, "--iterations", "60",
           "--workers", "1"]
    env = {**os.environ, "TILEFILL_THREADS": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                            preexec_fn=interruptible)
    deadline, done = time.monotonic() + 60, 0
    while done < 3 and time.monotonic() < deadline:
        m = re.match(r"tiles (\d+)/9", proc.stderr.readline())
        done = int(m[1]) if m else done
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "run the same command again to resume" in err, err
    assert not out.exists() and default_store(out).is_dir()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=100)
    assert again.returncode == 0, again.stderr
    skipped = int(re.search(r"resuming run \w+: (\d+) of 9 tiles are already done", again.stderr)[1])
    assert 3 <= skipped < 9
    assert f"{9 - skipped} fitted" in again.stderr and f"{skipped} done by an earlier run (skipped)" in again.stderr
    np.testing.assert_array_equal(_read(out), _read(ref))
    print(f"\nCtrl-C after {done} of 9 tiles: the rerun skipped {skipped} and fitted {9 - skipped}")
