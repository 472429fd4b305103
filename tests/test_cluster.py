"""An existing Dask cluster: real ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1.

One cluster (a scheduler, three single-threaded workers with one torch thread each) serves the
module: a clean run through ``--scheduler``; a run whose worker is killed with SIGKILL mid-tile;
a run whose ``tilefill`` process is killed with SIGKILL, then run again; a fault injected into
every tile; a batch (whose scenes must overlap). Outputs must equal the clean run's pixel for
pixel. Smaller clusters of their own check GPU resources, a worker whose torch is broken, every
worker killed (the run must stop, not hang), and a scheduler that speaks TLS only. Every process
is started in its own session and killed in a finalizer, whatever the test did.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from distributed import get_task_stream

from servers import DaskProcesses
from tilefill import ClusterSpec, TilefillError
from tilefill import _cluster
from tilefill._pipeline import default_store, worker_log_path
from tilefill._cluster import start_cluster
from tilefill._schedule import run_tiles
from tilefill.cli import main

pytestmark = pytest.mark.timeout(180)

TINY = str(Path(__file__).with_name("tiny.yaml"))
SIZE = 160  # 4 x 4 tiles of 64 px
FILL = ["--config", TINY, "--iterations", "40", "--seed", "3"]
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    procs = DaskProcesses(tmp_path_factory.mktemp("dask"))
    try:
        yield procs.start([[], [], []])
    finally:
        procs.close()


def _scene(path: Path, shift: int = 0) -> Path:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    values = np.stack([1000 + 300 * np.sin(xx / (9.0 + b) + shift) + 200 * np.cos(yy / 13.0) for b in range(2)])
    values = values.astype(np.uint16)
    values[:, (yy + xx // 8 + shift) % 24 < 4] = 0
    with rasterio.open(path, "w", driver="GTiff", dtype="uint16", count=2, height=SIZE, width=SIZE, nodata=0,
                       crs="EPSG:32633", transform=rasterio.Affine(30, 0, 500000, 0, -30, 4200000)) as ds:
        ds.write(values)
    return path


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return _scene(tmp_path_factory.mktemp("scene") / "scene.tif")


@pytest.fixture(scope="module")
def clean(cluster, scene, tmp_path_factory):
    """The scene filled by an uninterrupted run on the cluster, through --scheduler."""
    out = tmp_path_factory.mktemp("clean") / "clean.tif"
    res = CliRunner().invoke(main, [str(scene), "-o", str(out), *FILL, "--scheduler", cluster.address])
    assert res.exit_code == 0, res.output
    assert f"Dask cluster at {cluster.address}: 3 worker(s)" in res.output and "16 fitted" in res.output
    return _read(out)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tilefill.cli", *args]


def _wait_for_tiles(proc: subprocess.Popen, n: int, total: int = 16) -> list[str]:
    """Read the progress lines of a running ``tilefill`` until n tiles are done."""
    lines, done, deadline = [], 0, time.monotonic() + 90
    while done < n and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        m = re.match(rf"tiles (\d+)/{total}", line)
        done = int(m[1]) if m else done
    assert done >= n, "".join(lines)
    return lines


# --- connecting --------------------------------------------------------------------------------------------

def test_a_scheduler_that_does_not_answer_fails_fast_in_one_line(tmp_path, scene):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    out = tmp_path / "o.tif"
    for args, expect in [
        (["--scheduler", f"tcp://127.0.0.1:{port}"], f"no Dask scheduler answers at tcp://127.0.0.1:{port}"),
        (["--scheduler", "head-node"], "not a Dask scheduler address"),
        (["--scheduler-file", str(tmp_path / "none.json")], "not found"),
        (["--scheduler", f"tcp://127.0.0.1:{port}", "--workers", "2"], "an existing one (--scheduler) brings its own"),
    ]:
        start = time.monotonic()
        res = CliRunner().invoke(main, [str(scene), "-o", str(out), *FILL, *args])
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert res.output.strip().splitlines()[-1].startswith("Error: ") and expect in res.output, res.output
        assert time.monotonic() - start < 5
    assert not out.exists() and not default_store(out).exists()


def test_workers_that_cannot_see_the_work_store_are_named(tmp_path):
    class Client:  # two workers: this machine, and one that mounts another filesystem
        def run(self, fn, path, modules):
            return {"tcp://10.0.0.7:4000": fn(path.replace(str(tmp_path), "/elsewhere"), modules),
                    "tcp://10.0.0.8:4000": fn(path, modules)}

    cluster = _cluster.Cluster(Client())
    with pytest.raises(TilefillError, match=r"1 of 2 Dask worker\(s\) cannot see the work store .* tcp://10.0.0.7"):
        cluster.check_workers(tmp_path, torch=False)
    cluster.check_workers("/", torch=False)  # every worker sees /
    _cluster.Cluster(None).check_workers("/nowhere")  # in-process: nothing to check


def test_a_worker_that_cannot_import_torch_is_named_before_any_tile(tmp_path, scene):
    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("this torch build does not match the driver")\n')
    procs = DaskProcesses(tmp_path)
    try:
        procs.start([[]], env={"PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])})
        out = tmp_path / "out.tif"
        res = CliRunner().invoke(main, [str(scene), "-o", str(out), *FILL, "--scheduler-file", str(procs.file)])
    finally:
        procs.close()
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert re.fullmatch(r"Error: 1 of 1 Dask worker\(s\) cannot import torch \(e\.g\. tcp://127\.0\.0\.1:\d+: "
                        r"ImportError: this torch build does not match the driver\); install tilefill and torch on "
                        r"every worker", res.output.strip().splitlines()[-1]), res.output
    assert not out.exists() and not (tmp_path / "out.tif.failed.json").exists()


def test_gpu_workers_advertise_gpu_and_tiles_go_only_to_them(tmp_path, scene):
    procs = DaskProcesses(tmp_path)
    try:
        procs.start([["--resources", "GPU=1"], []])
        gpu_pid = next(pid for addr, pid in procs.worker_pids().items()
                       if procs.client.scheduler_info()["workers"][addr]["resources"].get("GPU"))
        from tilefill import load_config
        from tilefill._grid import TileGrid
        from tilefill._scene import open_scene
        from tilefill._store import build_store

        cfg = load_config(TINY, {"method": "gdal"})
        with open_scene(scene) as src:
            store = build_store(src, TileGrid(SIZE, SIZE, 64, 32), cfg, tmp_path / "tiles.zarr")
        with start_cluster(ClusterSpec(scheduler_file=procs.file)) as cluster:
            assert cluster.gpu and cluster.resources == {"GPU": 1}
            assert cluster.description.endswith("2 worker(s), 1 with a GPU (tiles run there only)")
            run = run_tiles(cluster, str(store.path), store.tiles_to_fit)
        assert not run.failures and len(run.results) == 16
        assert {int(r.worker.rsplit(":", 1)[1]) for r in run.results} == {gpu_pid}
        assert procs.client.scheduler_info()["workers"], "an existing cluster is left running"
    finally:
        procs.close()


# --- faults ------------------------------------------------------------------------------------------------

def test_a_worker_killed_mid_tile_costs_a_retry_not_the_scene(cluster, scene, clean, tmp_path):
    out = tmp_path / "out.tif"
    proc = subprocess.Popen(_cli(str(scene), "-o", str(out), *FILL, "--scheduler-file", str(cluster.file)),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        _wait_for_tiles(proc, 2)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # a worker busy with a tile right now
            busy = [a for a, keys in cluster.client.processing().items()
                    if any(str(k).startswith("tilefill-tile-") for k in keys)]
            if busy:
                break
            time.sleep(0.05)
        assert busy
        victim = cluster.worker_pids()[busy[0]]
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    retried = int(re.search(r"retried: (\d+) tile\(s\) ran again", err)[1])
    assert retried >= 1 and "16 fitted" in err
    np.testing.assert_array_equal(_read(out), clean)
    cluster.client.wait_for_workers(3, timeout=60)  # the nanny restarts the worker it lost
    assert victim not in cluster.worker_pids().values()
    print(f"\nworker pid {victim} killed mid-tile: {retried} tile(s) retried, the scene completed and equals the clean run")


def test_the_cli_killed_mid_run_then_run_again_skips_what_was_done(cluster, scene, clean, tmp_path):
    out = tmp_path / "out.tif"
    # a relative output: the workers, started elsewhere, must still find the work store
    cmd = _cli(str(scene), "-o", "out.tif", *FILL, "--scheduler", cluster.address)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=tmp_path)
    try:
        _wait_for_tiles(proc, 5)
        proc.send_signal(signal.SIGKILL)  # no handler, no cleanup: a power cut for the client
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert not out.exists() and default_store(out).is_dir()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    skipped = int(re.search(r"resuming run \w+: (\d+) of 16 tiles are already done", again.stderr)[1])
    fitted = int(re.search(r"(\d+) fitted", again.stderr)[1])
    assert 5 <= skipped < 16 and skipped + fitted == 16
    np.testing.assert_array_equal(_read(out), clean)
    assert not default_store(out).exists()
    print(f"\ntilefill killed (SIGKILL) after 5+ of 16 tiles: the rerun skipped {skipped}, fitted {fitted}")


def test_a_fault_in_every_tile_stops_the_run_and_its_tracebacks_go_to_the_log(cluster, scene, tmp_path):
    def break_tiles():  # in each worker: every fit fails after its window is read, as a broken device would
        import tilefill._fill

        def broken(*args, **kwargs):
            raise RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR")

        tilefill._fill.real_run_method_many = tilefill._fill.run_method_many
        tilefill._fill.run_method_many = broken

    def mend_tiles():
        import tilefill._fill

        tilefill._fill.run_method_many = tilefill._fill.real_run_method_many

    out = tmp_path / "out.tif"
    cluster.client.run(break_tiles)
    try:
        res = CliRunner().invoke(main, [str(scene), "-o", str(out), *FILL, "--scheduler", cluster.address])
    finally:
        cluster.client.run(mend_tiles)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("Error: stopped: 3 tile tasks in a row failed with the same error (RuntimeError: cuDNN "
                           "error: CUDNN_STATUS_INTERNAL_ERROR)"), last
    # workers tilefill did not start keep their own logs: the command writes the tracebacks beside the store
    log = worker_log_path(default_store(out))
    assert str(log) in last and log.read_text().count("Traceback (most recent call last)") >= 3
    assert "in broken" in log.read_text() and default_store(out).is_dir() and not out.exists()


def test_when_every_worker_is_gone_the_run_stops_and_the_rerun_resumes(tmp_path, scene):
    procs = DaskProcesses(tmp_path)
    try:
        procs.start([[]])
        out = tmp_path / "out.tif"
        cmd = _cli(str(scene), "-o", str(out), "--config", TINY, "--iterations", "10", "--scheduler-file",
                   str(procs.file), "--worker-wait", "5")
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        try:
            _wait_for_tiles(proc, 2)
            os.killpg(procs.procs[1].pid, signal.SIGKILL)  # the worker and its nanny: nothing restarts it
            killed = time.monotonic()
            _, err = proc.communicate(timeout=90)
            ended = time.monotonic() - killed
        finally:
            proc.kill()
        assert proc.returncode == 1 and "Traceback" not in err, err
        last = err.strip().splitlines()[-1]
        assert re.match(r"Error: no Dask worker to run tiles for 5 s: stopped with \d+ of 16 tiles of this run done; "
                        rf"they are kept in {re.escape(str(default_store(out)))}", last), last
        assert "waiting up to 5 s for workers to come back" in err
        assert not out.exists() and default_store(out).is_dir()
        procs.add_worker()
        procs.client.wait_for_workers(1, timeout=90)
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
    finally:
        procs.close()
    assert again.returncode == 0, again.stderr
    skipped = int(re.search(r"resuming run \w+: (\d+) of 16 tiles are already done", again.stderr)[1])
    assert skipped >= 2 and f"{16 - skipped} fitted" in again.stderr
    print(f"\nevery worker killed: the command ended {ended:.1f} s later (--worker-wait 5); the rerun on a new "
          f"worker skipped {skipped} of 16 tiles")


def _certificate(folder: Path) -> dict:
    """A self-signed certificate and key for 127.0.0.1, used as CA, server and client certificate (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tilefill-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return {"ca": str(folder / "cert.pem"), "cert": str(folder / "cert.pem"), "key": str(folder / "key.pem")}


def test_a_tls_cluster_is_reached_with_dasks_tls_settings(tmp_path, scene):
    pytest.importorskip("cryptography", reason="the test makes its certificate with cryptography")
    import dask

    tls = _certificate(tmp_path)
    procs = DaskProcesses(tmp_path, tls=tls)
    try:
        procs.start([[]])
        address = procs.address
        assert address.startswith("tls://127.0.0.1:")
        out = tmp_path / "out.tif"
        args = [str(scene), "-o", str(out), "--method", "gdal", "--config", TINY]
        plain = CliRunner().invoke(main, [*args, "--scheduler", address])
        tcp = CliRunner().invoke(main, [*args, "--scheduler", address.replace("tls://", "tcp://")])
        settings = {"distributed.comm.tls.ca-file": tls["ca"], "distributed.comm.tls.client.cert": tls["cert"],
                    "distributed.comm.tls.client.key": tls["key"]}
        with dask.config.set({**settings, "distributed.comm.require-encryption": True}):
            refused = CliRunner().invoke(main, [*args, "--scheduler", address.replace("tls://", "tcp://")])
        with dask.config.set(settings):
            secured = CliRunner().invoke(main, [*args, "--scheduler", address])
    finally:
        procs.close()
    assert plain.exit_code == 1 and plain.output.strip() == (
        f"Error: {address} uses TLS: set Dask's TLS settings for the client (distributed.comm.tls.ca-file, "
        ".client.cert, .client.key; see README, Running on a Dask cluster)"), plain.output
    assert tcp.exit_code == 1 and "(a scheduler that uses TLS is reached as tls://)" in tcp.output, tcp.output
    assert "Traceback" not in tcp.output and len(tcp.output.strip().splitlines()) == 1
    assert refused.exit_code == 1 and "requires encryption" in refused.output, refused.output
    assert secured.exit_code == 0, secured.output
    assert f"on Dask cluster at {address}: 1 worker(s)" in secured.output and out.is_file()


# --- a batch on the cluster ----------------------------------------------------------------------------------

def test_a_batch_runs_every_scene_on_the_one_cluster(cluster, tmp_path):
    for i in range(4):
        _scene((tmp_path / "archive" / f"s{i // 2}").mkdir(parents=True, exist_ok=True) or
               tmp_path / "archive" / f"s{i // 2}" / f"scene{i}.tif", shift=i)
    log = tmp_path / "batch.jsonl"
    start = time.monotonic()
    with get_task_stream(client=cluster.client) as stream:
        res = CliRunner().invoke(main, ["batch", str(tmp_path / "archive"), "--output-dir", str(tmp_path / "out"),
                                        "--config", TINY, "--iterations", "10", "--scheduler", cluster.address,
                                        "--log", str(log)])
    wall = time.monotonic() - start
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in log.read_text().splitlines()]
    tiles = [r for r in records if r["type"] == "tile"]
    assert len(tiles) == 4 * 16 and {r["status"] for r in tiles} == {"filled"}
    assert {int(r["worker"].rsplit(":", 1)[1]) for r in tiles} <= set(cluster.worker_pids().values())
    summary = records[-1]
    assert summary["type"] == "summary" and summary["done"] == 4 and summary["failed"] == 0
    assert summary["cluster"].startswith(f"Dask cluster at {cluster.address}")
    for i in range(4):
        assert (tmp_path / "out" / f"s{i // 2}" / f"scene{i}.tif.done.json").is_file()
    # scenes overlap: the next scene's tiles were queued, and ran, before the last tile of the one before ended
    spans = {}
    for task in stream.data:
        scene = re.search(r"\.(scene\d)\.tif\.tilefill\.zarr", str(task["key"]))[1]
        for ss in task["startstops"]:
            if ss["action"] == "compute":
                lo, hi = spans.get(scene, (ss["start"], ss["stop"]))
                spans[scene] = (min(lo, ss["start"]), max(hi, ss["stop"]))
    order = sorted(spans.values())
    overlaps = sum(nxt[0] < cur[1] for cur, nxt in zip(order, order[1:]))
    assert len(spans) == 4 and overlaps >= 1, spans
    print(f"\nbatch of 4 scenes ({SIZE} x {SIZE} px, 16 tiles of 10 iterations each) on 3 workers: {wall:.1f} s wall, "
          f"{overlaps} of 3 scene boundaries overlapped")
