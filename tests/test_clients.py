"""Clusters made in Python: ``fill_scene(client=...)``, Dask's default client, and the secured SLURM recipe.

Real processes on 127.0.0.1 speaking TLS with temporary certificates (``Security.temporary()``):
a ``LocalCluster`` whose client is passed as ``client=`` or is the current default client; and
dask-jobqueue's ``SLURMCluster`` made from ``configs/clusters/slurm.yaml`` with ``security=True``
(no SLURM needed): its job script, the sockets its scheduler listens on, and a tilefill run on
workers started from that very job script.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from conftest import LOOPBACK_ADDRESSES, listening_sockets, smooth_field, stripe_mask, to_range, write_geotiff
from tilefill import ClusterSpec, TilefillError, fill_scene

ROOT = Path(__file__).resolve().parents[1]
FAST = {"method": "gdal", "tile_size": 64, "overlap": 32}


@pytest.fixture
def scene(tmp_path):
    values = to_range(smooth_field(2, 96, 96), "uint16")
    values[:, stripe_mask(96, 96, period=16, width_px=3)] = 0
    return write_geotiff(tmp_path / "scene.tif", values, nodata=0)


@pytest.fixture
def reference(scene, tmp_path):
    out = tmp_path / "reference.tif"
    fill_scene(scene, out, cluster=ClusterSpec(workers=0), **FAST)
    with rasterio.open(out) as ds:
        return ds.read()


def _pixels(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def test_a_tls_local_cluster_is_used_through_its_client_or_as_the_default_client(scene, reference, tmp_path):
    from distributed import Client, LocalCluster
    from distributed.security import Security

    security = Security.temporary()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, protocol="tls://", host="127.0.0.1",
                      security=security, dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        with Client(cluster, security=security, set_as_default=False) as client:
            report = fill_scene(scene, tmp_path / "given.tif", client=client, **FAST)
            assert "(the caller's client)" in report.cluster and client.status == "running"  # left open
            with pytest.raises(TilefillError, match="either client= .* or cluster="):
                fill_scene(scene, tmp_path / "both.tif", client=client, cluster=ClusterSpec(workers=1), **FAST)
        assert np.array_equal(_pixels(tmp_path / "given.tif"), reference)
        with Client(cluster, security=security):  # the current default client, as dask-aware libraries use it
            report = fill_scene(scene, tmp_path / "default.tif", **FAST)
            assert "(the caller's client)" in report.cluster and cluster.scheduler_address in report.cluster
        assert np.array_equal(_pixels(tmp_path / "default.tif"), reference)
    # a ClusterSpec still starts tilefill's own cluster, whatever default client there was
    report = fill_scene(scene, tmp_path / "own.tif", cluster=ClusterSpec(workers=0), **FAST)
    assert "caller" not in report.cluster


def test_the_slurm_recipe_speaks_tls_listens_on_one_interface_and_runs_tilefill(scene, reference, tmp_path,
                                                                                monkeypatch):
    jobqueue = pytest.importorskip("dask_jobqueue")
    import dask
    from distributed import Client

    recipe = yaml.safe_load((ROOT / "configs" / "clusters" / "slurm.yaml").read_text())
    settings = recipe["jobqueue"]["slurm"]
    assert settings["scheduler-options"]["dashboard_address"].startswith("127.0.0.1:")
    shared = tmp_path / "dask-tls"
    shared.mkdir(mode=0o700)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    # as the recipe says, less what a test machine lacks: no GPU (its resources), no venv to source, and the
    # loopback as "the cluster network"; the dashboard on a free port of the loopback
    local = {**settings, "shared-temp-directory": str(shared), "interface": "lo", "job-script-prologue": [],
             "worker-extra-args": [], "scheduler-options": {"dashboard_address": "127.0.0.1:0"}}
    settings_set = dask.config.set({f"jobqueue.slurm.{k}": v for k, v in local.items()})
    cluster = jobqueue.SLURMCluster(security=True)
    worker = None
    try:
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        script = cluster.job_script()
        assert "#SBATCH --gres=gpu:1" in script and address in script
        for flag in ("--tls-ca-file", "--tls-cert", "--tls-key"):
            path = script.split(flag, 1)[1].split()[0]
            assert path.startswith(str(shared)) and Path(path).is_file(), flag
            assert Path(path).stat().st_mode & 0o077 == 0, f"{path} is readable by others"
        # the scheduler and its dashboard run in this process: every socket it listens on is on the loopback
        port = int(address.rsplit(":", 1)[1])
        sockets = listening_sockets(os.getpid())
        assert any(p == port for _ip, p, _pid in sockets)
        assert all(ip in LOOPBACK_ADDRESSES for ip, _p, _pid in sockets), sockets
        # a worker started from the job script itself (bash ignores the #SBATCH lines), as SLURM would
        job = tmp_path / "job.sh"
        job.write_text(script)
        worker = subprocess.Popen(["bash", str(job)], start_new_session=True, cwd=tmp_path,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with Client(cluster, set_as_default=False) as client:
            report = fill_scene(scene, tmp_path / "slurm.tif", client=client, **FAST)
        assert address in report.cluster
        assert np.array_equal(_pixels(tmp_path / "slurm.tif"), reference)
        # a plain tcp:// client is refused by this scheduler
        with pytest.raises(TilefillError, match="uses TLS|TLS"):
            fill_scene(scene, tmp_path / "tcp.tif", cluster=ClusterSpec(scheduler=address.replace("tls", "tcp")),
                       **FAST)
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(30)
        cluster.close()
        settings_set.__exit__(None, None, None)
