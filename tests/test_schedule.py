"""Schedule: progress lines, the in-process path, tile tasks, a real LocalCluster, and GPU worker pinning.

Clusters are slow to start, so only two are started: one CPU ``LocalCluster`` in this process, and one
``gpus=2`` cluster (with ``check_cuda=False``, so it runs on this CPU machine) in a fresh Python process,
where "the client never imports torch" can be checked without other tests having imported it already.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tilefill import ClusterSpec, TileGrid, TilefillError
from tilefill import _schedule
from tilefill._fill import TileResult, fill_tile, fill_tiles
from tilefill._scene import open_scene
from tilefill._cluster import Cluster, _visible_gpus, default_workers, start_cluster
from tilefill._schedule import Progress, TileRun, run_tiles, tile_groups
from tilefill._store import TileStore, build_store

pytestmark = pytest.mark.timeout(120)


def _store(tmp_path, synth, config, *, name="scene", size=128, block=None):
    """A 2-band uint16 scene with stripes (and optionally a square gap block), built into a tile store."""
    values = synth.to_range(synth.smooth_field(2, size, size), "uint16")
    gap = synth.stripe_mask(size, size, period=16, width_px=3) & (np.arange(size)[:, None] < 56)
    if block is not None:
        y0, y1, x0, x1 = block
        gap[y0:y1, x0:x1] = True
    values[:, gap] = 0
    path = synth.write_geotiff(tmp_path / f"{name}.tif", values, nodata=0)
    with open_scene(path) as scene:
        info = scene.info
        grid = TileGrid.from_scene(info, config)
        return build_store(scene, grid, config, tmp_path / f"{name}.zarr", footprint="full")


@pytest.fixture
def gdal_config(tiny_config):
    return tiny_config.override({"method": "gdal"})


@pytest.fixture
def dip_config(tiny_config):
    return tiny_config.override({"fit.iterations": 2})


# --- Progress ------------------------------------------------------------------------------------------

def test_progress_prints_a_line_per_tile_when_few():
    stream = io.StringIO()
    bar = Progress(3, stream=stream)
    for _ in range(3):
        bar.update()
    lines = stream.getvalue().splitlines()
    assert [line.split(" [")[0] for line in lines] == ["tiles 1/3", "tiles 2/3", "tiles 3/3"]
    assert lines[-1].startswith("tiles 3/3 [100%] elapsed 0:00")
    assert all("ETA" in line for line in lines)


def test_progress_prints_every_5_percent_when_many():
    stream = io.StringIO()
    bar = Progress(200, stream=stream, label="tiles")
    for _ in range(200):
        bar.update()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 20
    assert lines[0].startswith("tiles 10/200 [5%]") and lines[-1].startswith("tiles 200/200 [100%]")


def test_progress_on_a_tty_rewrites_one_line():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    bar = Progress(4, stream=stream)
    for _ in range(4):
        bar.update()
    text = stream.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    assert "tiles 4/4 [100%]" in text


def test_progress_time_format():
    assert Progress._fmt(5) == "0:05" and Progress._fmt(125) == "2:05" and Progress._fmt(3725) == "1:02:05"


# --- cluster arguments -----------------------------------------------------------------------------------

def test_default_workers_is_between_1_and_8():
    assert 1 <= default_workers() <= 8
    assert default_workers() <= (os.cpu_count() or 1)


def test_visible_gpus(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert _visible_gpus(2) == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5,7")
    assert _visible_gpus(2) == ["3", "5"]  # a SLURM-style allocation is respected
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4")
    with pytest.raises(TilefillError, match="lists only 1 device"):
        _visible_gpus(2)


@pytest.mark.parametrize("kwargs, match", [
    ({"workers": 2, "gpus": 1}, "either --workers or --gpus"),
    ({"workers": -1}, "0 or more"),
    ({"gpus": 0}, "1 or more"),
])
def test_contradictory_cluster_choices_are_refused(kwargs, match):
    with pytest.raises(TilefillError, match=match):
        ClusterSpec(**kwargs)


def test_cluster_resources():
    assert Cluster(None).resources is None
    assert Cluster(object(), gpu=True).resources == {"GPU": 1}


# --- in process --------------------------------------------------------------------------------------------

def test_workers_0_runs_tiles_in_process(tmp_path, synth, gdal_config):
    store = _store(tmp_path, synth, gdal_config)
    todo = store.tiles_to_fit
    assert 1 < len(todo) < len(store.grid)
    seen = []
    with start_cluster(ClusterSpec(workers=0)) as cluster:
        assert cluster.client is None and cluster.description == "in-process" and not cluster.gpu
        run = run_tiles(cluster, str(store.path), todo, on_done=seen.append)
    assert isinstance(run, TileRun) and run.failures == {}
    assert [r.index for r in run.results] == todo
    assert all(isinstance(r, TileResult) and r.status == "filled" and r.window == 64 for r in run.results)
    assert all(r.worker.endswith(f":{os.getpid()}") for r in run.results)  # this process did the work
    assert seen == run.results
    reopened = TileStore.open(store.path)
    for i in range(len(store.grid)):
        assert np.isfinite(reopened.read_tile(i)).all() == (i in todo)


def test_a_failing_tile_is_reported_and_the_others_finish(tmp_path, synth, gdal_config, monkeypatch):
    store = _store(tmp_path, synth, gdal_config)
    todo = store.tiles_to_fit
    real = _schedule.fill_tile

    def flaky(path, index):
        if index == todo[1]:
            raise MemoryError("tile too big")
        return real(path, index)

    monkeypatch.setattr(_schedule, "fill_tile", flaky)
    seen = []
    run = run_tiles(Cluster(None), str(store.path), todo + [9999], on_done=seen.append)
    assert set(run.failures) == {todo[1], 9999}
    assert run.failures[todo[1]] == "MemoryError: tile too big"
    assert run.failures[9999].startswith("IndexError")  # an index outside the grid
    assert sorted(r.index for r in run.results) == sorted(set(todo) - {todo[1]})
    assert len(seen) == len(todo) + 1 and seen.count(None) == 2


# --- the tile task ------------------------------------------------------------------------------------------

def test_a_tile_inside_a_wide_gap_is_fitted_on_a_wider_window(tmp_path, synth, gdal_config):
    # tile (64, 64) of a 192 px scene lies entirely in a 96 px gap block: no known pixel in it
    store = _store(tmp_path, synth, gdal_config, size=192, block=(48, 144, 48, 144))
    tile = next(t for t in store.grid if (t.y, t.x) == (64, 64))
    _, known = store.read_window(tile.y, tile.x, tile.size)
    assert not known.any()
    result = fill_tile(str(store.path), tile.index)
    assert result.status == "filled" and result.window == 128
    pred = TileStore.open(store.path).read_tile(tile.index)
    assert pred.shape == (2, 64, 64) and np.isfinite(pred).all()
    info = np.asarray(store.group["tile_info"][tile.index])
    assert info[3] == 128  # the window side is recorded


def test_a_tile_without_known_context_is_not_fitted(tmp_path, synth, gdal_config):
    cfg = gdal_config.override({"fit.max_context": 1})
    store = _store(tmp_path, synth, cfg, size=192, block=(48, 144, 48, 144))
    tile = next(t for t in store.grid if (t.y, t.x) == (64, 64))
    result = fill_tile(str(store.path), tile.index)
    assert result.status == "no-context" and result.window == 64
    assert np.isnan(store.read_tile(tile.index)).all()


def test_context_never_exceeds_max_context(tmp_path, synth, gdal_config):
    cfg = gdal_config.override({"fit.max_context": 3})
    store = _store(tmp_path, synth, cfg, size=320, block=(20, 300, 20, 300))
    tile = next(t for t in store.grid if (t.y, t.x) == (128, 128))
    result = fill_tile(str(store.path), tile.index)
    assert result.window <= 3 * tile.size


def test_dip_tile_is_reproducible(tmp_path, synth, dip_config, monkeypatch):
    monkeypatch.setenv("TILEFILL_THREADS", "1")
    import torch

    before = torch.get_num_threads()
    try:
        store = _store(tmp_path, synth, dip_config)
        i = store.tiles_to_fit[0]
        r1 = fill_tile(str(store.path), i)
        first = store.read_tile(i)
        r2 = fill_tile(str(store.path), i)
        assert r1.status == r2.status == "filled" and r1.iterations == 2 and r1.device == "cpu"
        np.testing.assert_array_equal(store.read_tile(i), first)
        assert r1.final_loss == r2.final_loss and np.isfinite(r1.final_loss)
    finally:
        torch.set_num_threads(before)


# --- several tiles per task ---------------------------------------------------------------------------------

def test_tile_groups_keep_order_and_size():
    assert tile_groups([3, 4, 5, 9], 3) == [(3, 4, 5), (9,)]
    assert tile_groups([1, 2], 1) == [(1,), (2,)]
    assert tile_groups([], 4) == []
    with pytest.raises(ValueError):
        tile_groups([1], 0)


def test_tiles_fitted_together_match_tiles_fitted_alone(tmp_path, synth, dip_config, monkeypatch):
    """Same seeds, one grouped network: the tiles get the fits they get alone, up to rounding.

    Some weights of the skip network have an exactly zero gradient (a conv bias before BatchNorm;
    a BN scale before LeakyReLU and another BN), so the rounding of the sum decides their sign, and
    Adam's first steps, nearly sign steps, move them by a whole learning rate either way. With a
    tiny learning rate that cannot show, and a mixed-up seed, window or holdout would (other seeds
    give outputs about 0.4 apart). At the default rate the fits agree in loss (test_dip).
    """
    monkeypatch.setenv("TILEFILL_THREADS", "1")
    import torch

    from tilefill import _dip

    before = torch.get_num_threads()
    sizes = []
    real = _dip.fit_windows
    monkeypatch.setattr(_dip, "fit_windows", lambda windows, *a, **k: sizes.append(len(windows)) or real(windows, *a, **k))
    try:
        config = dip_config.override({"fit.learning_rate": 1e-6, "fit.validation": 0.05})
        alone = _store(tmp_path, synth, config, name="alone")
        together = _store(tmp_path, synth, config, name="together")
        todo = alone.tiles_to_fit
        assert len(todo) >= 4
        run_alone = run_tiles(Cluster(None), str(alone.path), todo)
        assert sizes == [1] * len(todo)
        sizes.clear()
        seen = []
        run_together = run_tiles(Cluster(None), str(together.path), todo, per_task=3, on_done=seen.append)
    finally:
        torch.set_num_threads(before)
    assert sizes == [len(g) for g in tile_groups(todo, 3)]  # one fit per task, all its tiles in it
    assert run_together.failures == {} and [r.index for r in run_together.results] == todo
    assert seen == run_together.results
    for a, b in zip(run_alone.results, run_together.results):
        assert b.status == "filled" and b.iterations == a.iterations == 2
        assert b.final_loss == pytest.approx(a.final_loss, rel=1e-3)
        np.testing.assert_allclose(together.read_tile(b.index), alone.read_tile(a.index), atol=2e-5)
        assert b.estimated_rmse == pytest.approx(a.estimated_rmse, rel=1e-3, nan_ok=True)  # NaN: no hidden pixel


def test_a_tile_needing_a_wider_window_is_fitted_beside_its_group(tmp_path, synth, gdal_config):
    store = _store(tmp_path, synth, gdal_config, size=192, block=(48, 144, 48, 144))
    wide = next(t for t in store.grid if (t.y, t.x) == (64, 64)).index
    plain = next(i for i in store.tiles_to_fit if i != wide)
    results = fill_tiles(str(store.path), [wide, plain])
    assert [(r.index, r.status, r.window) for r in results] == [(wide, "filled", 128), (plain, "filled", 64)]
    for i in (wide, plain):
        assert np.isfinite(TileStore.open(store.path).read_tile(i)).all()


def test_a_failing_task_fails_each_of_its_tiles(tmp_path, synth, gdal_config, monkeypatch):
    store = _store(tmp_path, synth, gdal_config)
    todo = store.tiles_to_fit[:4]
    real, calls = _schedule.fill_tiles, []

    def broken(path, indices):
        calls.append(tuple(indices))
        if todo[0] in indices:
            raise MemoryError("out of GPU memory")
        return real(path, indices)

    monkeypatch.setattr(_schedule, "fill_tiles", broken)
    run = run_tiles(Cluster(None), str(store.path), todo, per_task=2)
    assert run.failures == {todo[0]: "MemoryError: out of GPU memory", todo[1]: "MemoryError: out of GPU memory"}
    assert run.retried == {todo[0]: 1, todo[1]: 1}  # the task was tried once more
    assert calls == [tuple(todo[:2])] * 2 + [tuple(todo[2:])]
    assert sorted(r.index for r in run.results) == todo[2:]


def test_tiles_per_task_is_a_setting(tiny_config):
    assert tiny_config.engine.tiles_per_task == 1
    assert tiny_config.override({"engine.tiles_per_task": 8}).engine.tiles_per_task == 8
    with pytest.raises(TilefillError, match="tiles_per_task"):
        tiny_config.override({"engine.tiles_per_task": 0})


# --- thin gaps --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("width, reach", [(1, 1.0), (2, 1.0), (3, 2.0), (5, 3.0)])
def test_gap_reach_of_stripes(width, reach):
    from tilefill._fill import gap_reach

    known = np.ones((2, 64, 64), dtype=bool)
    for y in range(4, 60, 16):
        known[:, y:y + width] = False
    assert gap_reach(known) == reach
    known[1, 40, 40] = False  # a pixel missing in one band is a gap too, and 1 px from known ones
    assert gap_reach(known) == reach


def test_gap_reach_without_gaps_or_without_known_pixels():
    from tilefill._fill import gap_reach

    assert gap_reach(np.ones((1, 8, 8), dtype=bool)) == 0
    assert gap_reach(np.zeros((1, 8, 8), dtype=bool)) == float("inf")


def test_tiles_with_only_thin_gaps_get_the_classical_fill(tmp_path, synth, dip_config):
    """1 px stripes everywhere, and a 12 px band across the bottom tiles only."""
    from tilefill._classical import fill_classical

    config = dip_config.override({"fit.thin_gap_px": 1, "fit.blend_method": "gdal"})
    values = synth.to_range(synth.smooth_field(2, 128, 128), "uint16")
    gap = np.zeros((128, 128), dtype=bool)
    gap[5::16] = True
    gap[100:112] = True
    values[:, gap] = 0
    path = synth.write_geotiff(tmp_path / "thin.tif", values, nodata=0)
    with open_scene(path) as scene:
        grid = TileGrid(128, 128, 64, 32, scene.info.affine)
        store = build_store(scene, grid, config, tmp_path / "thin.zarr", footprint="full")
    run = run_tiles(Cluster(None), str(store.path), store.tiles_to_fit, per_task=len(store.grid))
    assert run.failures == {}
    by_tile = {r.index: r for r in run.results}
    wide = {t.index for t in grid if t.y + 64 > 100}
    assert wide and wide != set(by_tile)
    for t in grid:
        r = by_tile[t.index]
        if t.index in wide:
            assert r.iterations == 2  # a wide gap: DIP
        else:
            assert r.iterations == 0 and np.isnan(r.final_loss)
            image, known = store.read_window(t.y, t.x, t.size)
            np.testing.assert_allclose(store.read_tile(t.index), fill_classical("gdal", image, known), atol=1e-6)


def _fits_by_gap_kind(tmp_path, synth, dip_config, name, overrides):
    """Fit a 128 px scene of 64 px tiles: 1 px stripes everywhere, a 5 px stripe (reach 3) in the top tiles,
    a 12 px band (reach 6) in the bottom ones. Returns each tile's kind as the layout makes it (thin, narrow,
    or dip for the band) and each fitted tile's (iterations, filled tile)."""
    values = synth.to_range(synth.smooth_field(2, 128, 128), "uint16")
    gap = np.zeros((128, 128), dtype=bool)
    gap[5::16] = True
    gap[20:25] = True
    gap[100:112] = True
    values[:, gap] = 0
    path = synth.write_geotiff(tmp_path / f"{name}.tif", values, nodata=0)
    config = dip_config.override({"fit.thin_gap_px": 1, **overrides})
    with open_scene(path) as scene:
        grid = TileGrid(128, 128, 64, 32, scene.info.affine)
        store = build_store(scene, grid, config, tmp_path / f"{name}.zarr", footprint="full")
    run = run_tiles(Cluster(None), str(store.path), store.tiles_to_fit, per_task=1)
    assert run.failures == {}
    kinds = {t.index: "dip" if t.y + t.size > 100 else "narrow" if t.y < 25 else "thin" for t in grid}
    assert set(kinds.values()) == {"dip", "narrow", "thin"}
    return kinds, {r.index: (r.iterations, store.read_tile(r.index)) for r in run.results}


def test_tiles_with_narrow_gaps_are_fitted_with_the_narrow_input_noise(tmp_path, synth, dip_config):
    """Thin tiles get the partner, narrow ones the fit of ``fit.narrow_input_noise``, the others ``fit.input_noise``."""
    kinds, rule = _fits_by_gap_kind(tmp_path, synth, dip_config, "rule",
                                    {"fit.narrow_gap_px": 3, "fit.narrow_input_noise": 0.0})
    _, quiet = _fits_by_gap_kind(tmp_path, synth, dip_config, "quiet", {"fit.input_noise": 0.0})  # all narrow noise
    for i, kind in kinds.items():
        iterations, filled = rule[i]
        assert iterations == (0 if kind == "thin" else 2)
        same = np.allclose(filled, quiet[i][1], atol=1e-5)
        assert same == (kind != "dip"), (i, kind)


def test_noise_end_anneals_only_tiles_within_its_reach(tmp_path, synth, dip_config):
    """``experimental.noise_end`` anneals the input noise of DIP tiles whose gaps reach at most
    ``experimental.noise_end_max_reach``;
    narrow tiles keep their own constant noise, tiles with wider gaps (here the 12 px band) a constant one."""
    narrow = {"fit.narrow_gap_px": 3, "fit.narrow_input_noise": 0.05}
    _, constant = _fits_by_gap_kind(tmp_path, synth, dip_config, "constant", narrow)
    kinds, everywhere = _fits_by_gap_kind(tmp_path, synth, dip_config, "everywhere", {**narrow, "experimental.noise_end": 0.0})
    _, within = _fits_by_gap_kind(tmp_path, synth, dip_config, "within",
                                  {**narrow, "experimental.noise_end": 0.0, "experimental.noise_end_max_reach": 4})
    for i, kind in kinds.items():
        def same(fits):
            return np.allclose(fits[i][1], constant[i][1], atol=1e-5)
        assert same(everywhere) == (kind != "dip"), (i, kind)  # the band's tiles anneal, narrow ones do not
        assert same(within), (i, kind)  # the band reaches 6 px, beyond 4: constant noise there too


# --- a real LocalCluster ------------------------------------------------------------------------------------

def test_local_cluster_runs_tiles_and_collects_failures(tmp_path, synth, dip_config):
    store = _store(tmp_path, synth, dip_config)
    todo = store.tiles_to_fit[:4]
    seen = []
    with start_cluster(ClusterSpec(workers=2)) as cluster:
        assert cluster.client is not None and not cluster.gpu and cluster.resources is None
        assert cluster.description.startswith("2 CPU worker(s)")
        assert len(cluster.client.scheduler_info()["workers"]) == 2
        envs = cluster.client.run(lambda: (os.environ.get("TILEFILL_THREADS"), os.environ.get("OMP_NUM_THREADS")))
        assert all(e[0] == e[1] and int(e[0]) >= 1 for e in envs.values())
        # Ctrl-C and SIGTERM are the command's: a worker that stopped itself raced the scheduler's shutdown
        ignored = cluster.client.run(lambda: all(signal.getsignal(s) is signal.SIG_IGN
                                                 for s in (signal.SIGINT, signal.SIGTERM)))
        assert list(ignored.values()) == [True, True]
        # two tiles per task: the bad index is a task of its own and fails alone
        run = run_tiles(cluster, str(store.path), todo + [len(store.grid) + 5], per_task=2, on_done=seen.append)
        client = cluster.client
    assert client.status in ("closed", "closing")  # the context manager shut it down
    assert list(run.failures) == [len(store.grid) + 5] and "IndexError" in run.failures[len(store.grid) + 5]
    assert sorted(r.index for r in run.results) == sorted(todo)
    for r in run.results:
        assert r.status == "filled" and r.iterations == 2 and r.device == "cpu"
        assert not r.worker.endswith(f":{os.getpid()}")  # done in a worker process
    assert len(seen) == len(todo) + 1 and seen.count(None) == 1
    reopened = TileStore.open(store.path)
    for i in todo:
        assert reopened.tile_done(i) and np.isfinite(reopened.read_tile(i)).all()


class _Lines(logging.Handler):
    """The tilefill logger's messages, whatever the CLI's logging setup did to it in this process."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_busy_workers_are_not_taken_for_lost_ones_and_lost_ones_are(monkeypatch):
    """A loaded local cluster: each look at its workers finds them, while the client refreshes its cached view
    of the scheduler (with no worker in it) every 10 ms; the demo once warned "no Dask worker left" between two
    tiles of a healthy run. With the workers really gone, the warning comes and the run stops."""
    import dask

    from tilefill._cluster import scheduler_workers
    from tilefill._schedule import ClusterLost, TileJob

    def busy(store_path, indices):  # nested: pickled by value; a fit that holds its worker for a while
        import time

        end = time.time() + 1.5
        while time.time() < end:
            pass
        return [None] * len(indices)

    lines = _Lines()
    logger = logging.getLogger("tilefill")
    logger.addHandler(lines)
    monkeypatch.setattr(_schedule, "_run_tile_group", busy)
    monkeypatch.setattr(_schedule, "WATCH_EVERY", 0.0)  # look at the workers at every poll
    monkeypatch.setattr(_schedule, "POLL", 0.005)
    try:
        with dask.config.set({"distributed.client.scheduler-info-interval": "10ms"}), \
                start_cluster(ClusterSpec(workers=2, worker_wait=2)) as cluster:
            looks = []
            real = cluster.usable_workers
            monkeypatch.setattr(cluster, "usable_workers", lambda: looks.append(real()) or looks[-1])
            run = TileJob(cluster, "store.zarr", [0, 1, 2, 3]).submit().wait()
            assert len(run.results) == 4 and run.failures == {}
            assert len(looks) > 100 and set(looks) == {2}, looks  # every look saw both busy workers
            assert lines.lines == []
            cluster.client.cluster.scale(0)  # the workers go, and nothing brings them back
            deadline = time.monotonic() + 60
            while scheduler_workers(cluster.client) and time.monotonic() < deadline:
                time.sleep(0.1)
            with pytest.raises(ClusterLost, match="no Dask worker to run tiles for 2 s"):
                TileJob(cluster, "store.zarr", [4, 5]).submit().wait()
    finally:
        logger.removeHandler(lines)
    assert lines.lines == ["no Dask worker left to run tiles; waiting up to 2 s for workers to come back"]


GPU_SCRIPT = textwrap.dedent("""
    import json, os, sys

    def main():
        store_path, indices = sys.argv[1], json.loads(sys.argv[2])
        from tilefill import ClusterSpec, TilefillError
        from tilefill._cluster import start_cluster
        from tilefill._schedule import run_tiles

        out = {"torch_after_import": "torch" in sys.modules}
        with start_cluster(ClusterSpec(gpus=2), check_cuda=False) as cluster:
            client = cluster.client
            out["gpu"], out["resources"], out["description"] = cluster.gpu, cluster.resources, cluster.description
            out["visible"] = sorted(client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES")).values())
            out["threads"] = sorted(client.run(lambda: os.environ.get("TILEFILL_THREADS")).values())
            import signal
            ignored = client.run(lambda: [signal.getsignal(s) is signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM)])
            out["signals_ignored"] = sorted(ignored.values())
            out["worker_resources"] = [w.get("resources") for w in client.scheduler_info()["workers"].values()]
            run = run_tiles(cluster, store_path, indices)
            out["results"] = sorted((r.index, r.status, r.device) for r in run.results)
            out["failures"] = {str(k): v for k, v in run.failures.items()}
            out["workers_torch"] = sorted(client.run(lambda: "torch" in sys.modules).values())
            out["client_torch_in_run"] = "torch" in sys.modules
            out["dashboard"] = cluster.dashboard
            # the test lists this process tree's listening sockets and asks the scheduler's HTTP server
            print("READY", client.scheduler_info()["services"]["dashboard"], flush=True)
            sys.stdin.readline()
        out["client_torch_after"] = "torch" in sys.modules
        os.environ["CUDA_VISIBLE_DEVICES"] = "99"  # a device no machine has: refused on a GPU machine too
        try:  # with the CUDA check on, a worker without a GPU is refused
            with start_cluster(ClusterSpec(gpus=1)):
                out["check_cuda"] = "no error"
        except TilefillError as exc:
            out["check_cuda"] = str(exc)
        out["client_torch_end"] = "torch" in sys.modules
        print("RESULT " + json.dumps(out))

    if __name__ == "__main__":
        main()
""")


def test_gpu_workers_are_pinned_and_the_client_never_imports_torch(tmp_path, synth, dip_config):
    import urllib.error
    import urllib.request

    from conftest import LOOPBACK_ADDRESSES, listening_sockets

    store = _store(tmp_path, synth, dip_config)
    todo = store.tiles_to_fit[:2]
    script = tmp_path / "gpu_cluster.py"
    script.write_text(GPU_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    proc = subprocess.Popen([sys.executable, str(script), str(store.path), json.dumps(todo)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        ready = proc.stdout.readline()
        assert ready.startswith("READY "), ready + proc.stderr.read()[-3000:]
        listeners = listening_sockets(proc.pid)
        http = int(ready.split()[1])

        def status(path):
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{http}{path}", timeout=10).status
            except urllib.error.HTTPError as exc:
                return exc.code

        pages = {path: status(path) for path in ("/health", "/status", "/info/main/workers.html")}
        stdout, stderr = proc.communicate("\n", timeout=110)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    line = next(ln for ln in stdout.splitlines() if ln.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    # nothing listens beyond loopback: the scheduler (with its HTTP server) and both workers were seen
    assert len({pid for _, _, pid in listeners}) >= 3 and http in {port for _, port, _ in listeners}, listeners
    assert [a for a in listeners if a[0] not in LOOPBACK_ADDRESSES] == []
    # no dashboard unless asked for: the HTTP server answers health checks, and no page of the cluster
    assert out["dashboard"] is None and pages == {"/health": 200, "/status": 404, "/info/main/workers.html": 404}
    assert out["gpu"] is True and out["resources"] == {"GPU": 1}
    assert out["description"] == "2 GPU worker(s)"
    # one worker per GPU, each with its own device
    assert out["visible"] == ["0", "1"]
    assert out["threads"] == ["1", "1"]
    assert out["signals_ignored"] == [[True, True], [True, True]]  # SIGINT and SIGTERM, in each worker
    assert out["worker_resources"] == [{"GPU": 1}, {"GPU": 1}]
    # tile tasks ask for GPU=1 and still run (on CPU here)
    assert out["results"] == [[i, "filled", "cpu"] for i in sorted(todo)] and out["failures"] == {}
    # the workers imported torch to fit; the client never did (so it cannot have made a CUDA context)
    assert True in out["workers_torch"]
    assert not out["torch_after_import"] and not out["client_torch_in_run"] and not out["client_torch_after"]
    assert "sees no CUDA device" in out["check_cuda"]
    assert not out["client_torch_end"]
