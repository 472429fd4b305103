"""Engine options through the whole command, resuming under other engine settings, and device
requests this machine cannot meet refused before any work.

Runs on any machine: GPU counts are read from torch, and ``CUDA_VISIBLE_DEVICES=""`` stands for
a machine without one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner

from conftest import IN_PROCESS
from tilefill import FillFailed, fill_scene
from tilefill import _schedule
from tilefill._pipeline import default_store
from tilefill.cli import main

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("one_torch_thread")]

TINY = str(Path(__file__).with_name("tiny.yaml"))
SIZE = 96  # 2 x 2 tiles of 64 px with 32 px overlap


@pytest.fixture
def scene(tmp_path, synth):
    values = synth.to_range(synth.smooth_field(2, SIZE, SIZE), "uint16")
    gaps = synth.stripe_mask(SIZE, SIZE, period=16, width_px=3)
    values[:, gaps] = 0
    path = synth.write_geotiff(tmp_path / "scene.tif", values, nodata=0)
    return path, values, gaps


def _cli(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


# --- every engine option, the whole command -------------------------------------------------------------

OPTIONS = {
    "bf16": ["engine.precision=bf16"],
    "fp16": ["engine.precision=fp16"],
    "channels_last": ["engine.channels_last=true"],
    "tiles_per_task": ["engine.tiles_per_task=4"],
    "ensemble": ["experimental.ensemble=2"],
    "all_at_once": ["engine.precision=bf16", "engine.channels_last=true", "engine.tiles_per_task=2", "experimental.ensemble=2"],
}


@pytest.fixture
def baseline(scene, tmp_path):
    out = tmp_path / "fp32.tif"
    res = _cli(scene[0], "-o", out, "--config", TINY, "--footprint", "full", "--iterations", 3, "--workers", 0, "-q")
    assert res.exit_code == 0, res.output
    return _read(out)


@pytest.mark.parametrize("name", OPTIONS)
def test_each_engine_option_fills_the_scene(scene, tmp_path, name):
    path, values, gaps = scene
    out = tmp_path / f"{name}.tif"
    sets = [a for s in OPTIONS[name] for a in ("--set", s)]
    res = _cli(path, "-o", out, "--config", TINY, "--footprint", "full", "--iterations", 3, "--workers", 0, *sets)
    assert res.exit_code == 0, res.output
    assert "4 fitted" in res.output
    filled = _read(out)
    np.testing.assert_array_equal(filled[:, ~gaps], values[:, ~gaps])  # known pixels kept, bit for bit
    assert (filled[:, gaps] != 0).all()  # every gap filled (0 is nodata)
    lo, hi = values[:, ~gaps].min(), values[:, ~gaps].max()
    assert filled[:, gaps].min() >= lo and filled[:, gaps].max() <= hi  # the network's [0, 1], mapped back


@pytest.mark.parametrize("sets", [["engine.compile=true", "engine.compile_backend=eager"],
                                  ["engine.deterministic=true"]])
def test_compile_and_deterministic_give_the_cpu_fit_bit_for_bit(scene, tmp_path, baseline, sets):
    """On a CPU both change nothing but how the fit runs: a compiled network (dynamo's graph, run by the
    eager backend) reused across the scene's tiles, and deterministic mode (CPU fits are already so)."""
    out = tmp_path / "out.tif"
    res = _cli(scene[0], "-o", out, "--config", TINY, "--footprint", "full", "--iterations", 3, "--workers", 0,
               *[a for s in sets for a in ("--set", s)])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(_read(out), baseline)


def test_engine_options_on_a_worker_process(scene, tmp_path):
    out = tmp_path / "out.tif"
    res = _cli(scene[0], "-o", out, "--config", TINY, "--footprint", "full", "--iterations", 3, "--workers", 1,
               "--set", "engine.precision=bf16", "--set", "engine.channels_last=true",
               "--set", "engine.tiles_per_task=2")
    assert res.exit_code == 0, res.output
    assert "4 fitted" in res.output and "1 CPU worker" in res.output
    assert (_read(out)[:, scene[2]] != 0).all()


# --- resume under other engine settings -----------------------------------------------------------------

def test_a_store_resumes_under_other_engine_settings(scene, tmp_path, monkeypatch):
    """engine.* and fit.device change speed, not the method: they are not in the run key, and the
    resumed run fits its remaining tiles with its own."""
    path = scene[0]
    out, work = tmp_path / "out.tif", tmp_path / "work"
    real = _schedule.fill_tile

    def broken(store_path, index):
        if index == 3:
            raise RuntimeError("out of memory (injected)")
        return real(store_path, index)

    monkeypatch.setattr(_schedule, "fill_tile", broken)
    with pytest.raises(FillFailed):
        fill_scene(path, out, config=TINY, iterations=3, cluster=IN_PROCESS, progress=False, workdir=work, footprint="full")
    monkeypatch.setattr(_schedule, "fill_tile", real)
    engine = {"engine.precision": "bf16", "engine.tiles_per_task": 2, "engine.channels_last": True,
              "fit.device": "auto"}
    report = fill_scene(path, out, config=TINY, iterations=3, cluster=IN_PROCESS, progress=False, workdir=work, footprint="full",
                        overrides=engine)
    assert (report.tiles_skipped, report.tiles_fitted) == (3, 1)
    stored = json.loads((work / "tiles.zarr" / "zarr.json").read_text())["attributes"]["tilefill"]["config"]
    assert stored["engine"]["precision"] == "bf16" and stored["engine"]["tiles_per_task"] == 2
    assert stored["fit"]["device"] == "auto"  # what the workers fit the remaining tiles with
    assert (_read(out)[:, scene[2]] != 0).all()
    with pytest.raises(Exception, match="holds another run"):  # the method's settings are in the key
        fill_scene(path, out, config=TINY, iterations=4, cluster=IN_PROCESS, progress=False, workdir=work, footprint="full",
                   overwrite=True)


# --- device requests this machine cannot meet -----------------------------------------------------------

def _refused(res, out: Path, message: str) -> None:
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], res.output
    assert "Traceback" not in res.output
    assert not out.exists() and not default_store(out).exists()  # no work was done


def test_more_gpus_than_the_machine_has_are_refused_before_any_work(scene, tmp_path):
    out = tmp_path / "out.tif"
    have = torch.cuda.device_count()
    start = time.monotonic()
    res = _cli(scene[0], "-o", out, "--config", TINY, "--gpus", have + 1)
    _refused(res, out, f"--gpus {have + 1} but {have or 'no'} CUDA device(s) are visible here")
    assert time.monotonic() - start < 60  # no cluster was started


def test_gpus_when_cuda_visible_devices_hides_them_all(scene, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # set but empty: no GPU, as CUDA reads it
    out = tmp_path / "out.tif"
    _refused(_cli(scene[0], "-o", out, "--config", TINY, "--gpus", 1), out,
             "--gpus 1 but CUDA_VISIBLE_DEVICES lists only 0 device(s)")


@pytest.mark.parametrize("workers", [None, 2, 0])
def test_fit_device_cuda_without_cuda_is_refused_before_any_work(scene, tmp_path, monkeypatch, workers):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    out = tmp_path / "out.tif"
    args = [scene[0], "-o", out, "--config", TINY, "--set", "fit.device=cuda"]
    res = _cli(*args, *(["--workers", workers] if workers is not None else []))
    if workers == 0:  # in this process: asked of torch
        _refused(res, out, "fit.device=cuda but no CUDA device is visible here")
    else:  # the CPU workers tilefill starts never see a GPU
        _refused(res, out, "fit.device=cuda but the CPU workers tilefill starts see no GPU: use --gpus N")


def test_batch_refuses_them_too(scene, tmp_path):
    res = _cli("batch", scene[0], "--output-dir", tmp_path / "batch", "--config", TINY, "--workers", 2,
               "--set", "fit.device=cuda")
    assert res.exit_code == 1 and "fit.device=cuda but the CPU workers tilefill starts see no GPU" in res.output
    assert not (tmp_path / "batch").exists() or not any((tmp_path / "batch").iterdir())


def test_fit_device_cuda_on_a_cluster_without_gpus_is_refused_on_connect(scene, tmp_path):
    from distributed import LocalCluster

    out = tmp_path / "out.tif"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0",
                      env={"CUDA_VISIBLE_DEVICES": ""}) as cluster:
        _refused(_cli(scene[0], "-o", out, "--config", TINY, "--set", "fit.device=cuda", "--scheduler",
                      cluster.scheduler_address), out, "fit.device=cuda: a worker sees no CUDA device")
