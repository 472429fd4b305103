"""The work store on object storage (``--workdir s3://bucket/prefix``), against real servers on 127.0.0.1.

A moto S3 server (tests/servers.py) and a Dask cluster of real ``dask scheduler`` / ``dask worker``
processes whose working and scratch folders are their own: they share nothing but the bucket. A scene
from the bucket is filled into the bucket bit for bit as from and to local files; a worker killed
mid-tile costs a retry; the command killed mid-run, run again, resumes from the bucket and fits only
the tiles whose ``tile_info`` chunk is not there. The store's own rules hold there as on a disk (the
run key, a store being built, objects not ours), the done tiles are found by one listing, a worker
that cannot reach the bucket is named before any tile, and bad ``--workdir`` URLs fail in one line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from servers import DaskProcesses, free_port, new_bucket, s3_client, s3_env
from tilefill import ClusterSpec, TilefillError, fill_scene
from tilefill._objstore import ObjectLocation
from tilefill._store import TileStore
from tilefill.cli import main

pytestmark = pytest.mark.timeout(240)

TINY = str(Path(__file__).with_name("tiny.yaml"))
SIZE = 160  # 4 x 4 tiles of 64 px
FILL = ["--config", TINY, "--iterations", "40", "--seed", "3"]


@pytest.fixture(scope="module")
def s3env():
    """The local S3 server's environment, in this process (as a user sets it) and for the workers."""
    env = s3_env()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


class Workers(DaskProcesses):
    """A scheduler and workers as real processes, each worker in a working folder and a scratch folder of its
    own (``homes``): no folder is common to two of them. Killed as process groups at the end."""

    def __init__(self, folder: Path):
        super().__init__(folder)
        self.homes: list[Path] = []

    def start(self, envs: list[dict]) -> "Workers":
        """One worker per environment in ``envs`` (laid over this process's; None unsets a variable)."""
        super().start([])
        for n, env in enumerate(envs):
            home = self.folder / f"machine{n}"
            (home / "cwd").mkdir(parents=True)
            (home / "scratch").mkdir()
            self.homes.append(home / "cwd")
            self.add_worker(["--local-directory", str(home / "scratch")], {"TMPDIR": str(home / "scratch"), **env},
                            cwd=home / "cwd", name=f"m{n}")
        self.client.wait_for_workers(len(envs), timeout=90)
        return self


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3env):
    procs = Workers(tmp_path_factory.mktemp("machines"))
    try:
        yield procs.start([{}, {}])
    finally:
        procs.close()


def _scene(path: Path) -> Path:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    values = np.stack([1000 + 300 * np.sin(xx / (9.0 + b)) + 200 * np.cos(yy / 13.0) for b in range(2)])
    values = values.astype(np.uint16)
    values[:, (yy + xx // 8) % 24 < 4] = 0
    with rasterio.open(path, "w", driver="GTiff", dtype="uint16", count=2, height=SIZE, width=SIZE, nodata=0,
                       crs="EPSG:32633", transform=rasterio.Affine(30, 0, 500000, 0, -30, 4200000), tiled=True,
                       blockxsize=64, blockysize=64) as ds:
        ds.write(values)
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory, s3env):
    """The scene on disk and in a bucket of its own: ``(path, bucket, url)``."""
    path = _scene(tmp_path_factory.mktemp("scene") / "scene.tif")
    bucket = new_bucket()
    s3_client().upload_file(str(path), bucket, "scenes/scene.tif")
    return path, bucket, f"s3://{bucket}/scenes/scene.tif"


@pytest.fixture(scope="module")
def clean(cluster, scene, tmp_path_factory):
    """The same run from and to local files, on the same workers: the output's bytes and its sidecars' names."""
    out = tmp_path_factory.mktemp("clean") / "clean.tif"
    res = CliRunner().invoke(main, [str(scene[0]), "-o", str(out), *FILL, "--scheduler", cluster.address])
    assert res.exit_code == 0, res.output
    assert "16 fitted" in res.output
    return out.read_bytes(), sorted(p.name[len("clean.tif"):] for p in out.parent.glob("clean.tif.*"))


def _keys(bucket: str, prefix: str = "") -> dict[str, str]:
    """Every object under ``prefix``: key -> ETag (one listing per thousand keys)."""
    out, token = {}, None
    client = s3_client()
    while True:
        page = client.list_objects_v2(Bucket=bucket, Prefix=prefix, **({"ContinuationToken": token} if token else {}))
        out.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
        if not page.get("IsTruncated"):
            return out
        token = page["NextContinuationToken"]


def _done_chunks(bucket: str, work: str) -> set[int]:
    """The tiles whose ``tile_info`` chunk is in the bucket (what marks a tile done)."""
    keys = _keys(bucket, f"{work}/tiles.zarr/tile_info/")
    return {int(m[1]) for m in (re.search(r"/c\.(\d+)\.0$", k) for k in keys) if m}


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tilefill.cli", *args]


# --- a scene from a bucket into a bucket, by workers that share nothing else ---------------------------------

def test_workers_sharing_only_the_bucket_fill_a_scene_from_it_into_it_as_from_local_files(
        cluster, scene, clean, tmp_path, monkeypatch):
    _path, bucket, url = scene
    client_home = tmp_path / "client"
    client_home.mkdir()
    monkeypatch.chdir(client_home)
    res = CliRunner().invoke(main, [url, "-o", f"s3://{bucket}/out/scene.tif", *FILL, "--scheduler",
                                    cluster.address, "--workdir", f"s3://{bucket}/work"])
    assert res.exit_code == 0, res.output
    assert "16 fitted" in res.output and f"work store kept at s3://{bucket}/work/tiles.zarr" in res.output
    body = s3_client().get_object(Bucket=bucket, Key="out/scene.tif")["Body"].read()
    assert body == clean[0], "the output differs from the same run from and to local files"
    keys = _keys(bucket)
    assert sorted(k for k in keys if k.startswith("out/")) == [f"out/scene.tif{s}" for s in ["", *clean[1]]]
    assert _done_chunks(bucket, "work") == set(range(16))
    assert any(k.startswith("work/tiles.zarr/tiles/c.") for k in keys)
    # nothing of the run on any local disk: the workers' working and scratch folders hold nothing of it, and the
    # command's folder holds nothing once the output is uploaded
    for home in cluster.homes:
        assert _files(home) == [], f"{home}: {_files(home)}"
        assert not [p for p in home.parent.rglob("*") if "zarr" in p.name or p.suffix == ".tif"]
    assert _files(client_home) == []


def test_a_worker_killed_mid_tile_costs_a_retry_and_the_scene_completes(cluster, scene, clean, tmp_path):
    _path, bucket, url = scene
    work = "killed-worker"
    proc = subprocess.Popen(_cli(url, "-o", f"s3://{bucket}/{work}.tif", *FILL, "--scheduler", cluster.address,
                                 "--workdir", f"s3://{bucket}/{work}"),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 90
        while len(_done_chunks(bucket, work)) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        busy = []
        while not busy and time.monotonic() < deadline:  # a worker fitting a tile right now
            busy = [a for a, keys in cluster.client.processing().items()
                    if any(str(k).startswith("tilefill-tile-") for k in keys)]
            time.sleep(0.05)
        assert busy, "no tile was running"
        done_at_kill = len(_done_chunks(bucket, work))
        victim = cluster.worker_pids()[busy[0]]
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=150)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert done_at_kill < 16 and "16 fitted" in err
    assert int(re.search(r"retried: (\d+) tile\(s\) ran again", err)[1]) >= 1
    assert s3_client().get_object(Bucket=bucket, Key=f"{work}.tif")["Body"].read() == clean[0]
    cluster.client.wait_for_workers(2, timeout=60)  # the nanny restarts the worker it lost, as on one machine
    assert victim not in cluster.worker_pids().values()


def test_the_command_killed_mid_run_resumes_from_the_bucket_and_fits_only_what_was_not_done(
        cluster, scene, clean, tmp_path):
    _path, bucket, url = scene
    work = "killed-command"
    cmd = _cli(url, "-o", f"s3://{bucket}/{work}.tif", *FILL, "--scheduler", cluster.address,
               "--workdir", f"s3://{bucket}/{work}")
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 90
        while len(_done_chunks(bucket, work)) < 5 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # no handler, no cleanup: a power cut for the machine running the command
        proc.wait(timeout=30)
    finally:
        proc.kill()
    # a task already running finishes on its worker: wait until the bucket stops changing
    before, stable_since = _keys(bucket, f"{work}/"), time.monotonic()
    while time.monotonic() - stable_since < 4:
        time.sleep(0.5)
        now = _keys(bucket, f"{work}/")
        if now != before:
            before, stable_since = now, time.monotonic()
    done = _done_chunks(bucket, work)
    assert 5 <= len(done) < 16, done
    assert not s3_client().list_objects_v2(Bucket=bucket, Prefix=f"{work}.tif").get("Contents")
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    skipped = int(re.search(r"resuming run \w+: (\d+) of 16 tiles are already done", again.stderr)[1])
    fitted = int(re.search(r"(\d+) fitted", again.stderr)[1])
    assert skipped == len(done) and fitted == 16 - len(done), again.stderr
    after = _keys(bucket, f"{work}/tiles.zarr/tile_info/")
    chunks = [k for k in before if "/tile_info/c." in k]
    assert {k: before[k] for k in chunks} == {k: after.get(k) for k in chunks}, "a done tile's chunk was written again"
    assert s3_client().get_object(Bucket=bucket, Key=f"{work}.tif")["Body"].read() == clean[0]
    assert not [p for p in tmp_path.rglob("*") if "zarr" in p.name], "the store lives in the bucket only"


def test_a_worker_that_cannot_reach_the_bucket_is_named_before_any_tile(tmp_path, scene, s3env):
    path, bucket, _url = scene
    closed = free_port()
    procs = Workers(tmp_path / "machines")
    (tmp_path / "machines").mkdir()
    try:
        procs.start([{}, {"AWS_S3_ENDPOINT": f"127.0.0.1:{closed}"}])
        bad = next(a for a, w in procs.client.scheduler_info()["workers"].items() if w["name"] == "m1")
        out = tmp_path / "out.tif"
        start = time.monotonic()
        res = CliRunner().invoke(main, [str(path), "-o", str(out), "--method", "gdal", "--scheduler", procs.address,
                                        "--workdir", f"s3://{bucket}/unreached"])
    finally:
        procs.close()
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    last = res.output.strip().splitlines()[-1]
    assert last == (f"Error: 1 of 2 Dask worker(s) cannot reach the work store s3://{bucket}/unreached/tiles.zarr "
                    f"(e.g. {bad}: no answer from the endpoint http://127.0.0.1:{closed}); give every worker the "
                    "bucket's credentials and endpoint in its environment (AWS_*, see docs/remote.md)"), res.output
    assert time.monotonic() - start < 30
    assert _done_chunks(bucket, "unreached") == set() and not out.exists()


# --- the store's rules, on object storage ---------------------------------------------------------------------

GDAL = dict(method="gdal", tile_size=64, overlap=32, cluster=ClusterSpec(workers=0))


def test_the_done_tiles_are_one_listing_and_a_read_of_their_chunks(scene, tmp_path, monkeypatch):
    from zarr.storage import ObjectStore

    path, bucket, _url = scene
    fill_scene(path, tmp_path / "o.tif", workdir=f"s3://{bucket}/listed", **GDAL)
    client = s3_client()
    for i in (1, 5, 6, 14):  # these tiles not done (as if their tasks never ran)
        client.delete_object(Bucket=bucket, Key=f"listed/tiles.zarr/tile_info/c.{i}.0")
    store = TileStore.open(f"s3://{bucket}/listed/tiles.zarr")
    store.array("tile_info")  # its metadata, read once per open store
    calls = {"list_dir": 0, "get": [], "exists": 0}
    real_list, real_get, real_exists = ObjectStore.list_dir, ObjectStore.get, ObjectStore.exists

    def list_dir(self, prefix):
        calls["list_dir"] += 1
        return real_list(self, prefix)

    async def get(self, key, *args, **kw):
        calls["get"].append(key)
        return await real_get(self, key, *args, **kw)

    async def exists(self, key):
        calls["exists"] += 1
        return await real_exists(self, key)

    monkeypatch.setattr(ObjectStore, "list_dir", list_dir)
    monkeypatch.setattr(ObjectStore, "get", get)
    monkeypatch.setattr(ObjectStore, "exists", exists)
    done = store.tiles_done(store.tiles_to_fit)
    assert done == [i for i in store.tiles_to_fit if i not in (1, 5, 6, 14)]
    assert calls["list_dir"] == 1 and calls["exists"] == 0
    assert sorted(calls["get"]) == sorted(f"tile_info/c.{i}.0" for i in done), "a request per done tile's chunk only"
    # the resuming run fits exactly those four again
    again = fill_scene(path, tmp_path / "o.tif", workdir=f"s3://{bucket}/listed", overwrite=True, **GDAL)
    assert again.tiles_skipped == len(done) and {t.index for t in again.tiles if t.status != "skipped"} == {1, 5, 6, 14}


def test_a_store_being_built_another_runs_store_and_objects_not_ours_are_treated_as_on_a_disk(scene, tmp_path):
    path, bucket, _url = scene
    client = s3_client()
    work = f"s3://{bucket}/rules"
    first = fill_scene(path, tmp_path / "a.tif", workdir=work, **GDAL)
    # another run (another seed): refused, the store untouched; --restart replaces it
    before = _keys(bucket, "rules/")
    with pytest.raises(TilefillError, match=rf"work store {work}/tiles.zarr holds another run .* pass --restart"):
        fill_scene(path, tmp_path / "b.tif", workdir=work, seed=7, **GDAL)
    assert _keys(bucket, "rules/") == before and not (tmp_path / "b.tif").exists()
    fill_scene(path, tmp_path / "b.tif", workdir=work, seed=7, restart=True, **GDAL)
    assert json.loads(client.get_object(Bucket=bucket, Key="rules/tiles.zarr/zarr.json")["Body"].read())[
        "attributes"]["tilefill"]["run_key"] != first.run_key.digest
    # a store whose build was cut short holds the marker only: not resumed, replaced
    doc = {"zarr_format": 3, "node_type": "group",
           "attributes": {"tilefill": {"building": True, "run_key": first.run_key.digest}}}
    client.put_object(Bucket=bucket, Key="rules/tiles.zarr/zarr.json", Body=json.dumps(doc).encode())
    rebuilt = fill_scene(path, tmp_path / "a.tif", workdir=work, overwrite=True, **GDAL)
    assert rebuilt.tiles_skipped == 0 and rebuilt.tiles_fitted == first.tiles_fitted
    assert (tmp_path / "a.tif").exists()
    # objects that are not a tilefill store are never deleted
    client.put_object(Bucket=bucket, Key="theirs/tiles.zarr/data.bin", Body=b"precious")
    with pytest.raises(TilefillError, match=rf"work store s3://{bucket}/theirs/tiles.zarr exists and is not a "
                                            "tilefill store; choose another --workdir"):
        fill_scene(path, tmp_path / "c.tif", workdir=f"s3://{bucket}/theirs", **GDAL)
    assert list(_keys(bucket, "theirs/")) == ["theirs/tiles.zarr/data.bin"]


# --- bad --workdir URLs: one line, within 30 s, nothing written ----------------------------------------------

def _bad_workdir(tmp_path: Path, workdir: str, env: dict | None = None, expect: str = "") -> str:
    scene = _scene(tmp_path / "scene.tif")
    out = tmp_path / "out" / "o.tif"
    out.parent.mkdir()
    old = {k: os.environ.get(k) for k in (env or {})}
    for k, v in (env or {}).items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    start = time.monotonic()
    try:
        res = CliRunner().invoke(main, [str(scene), "-o", str(out), "--workers", "0", "--method", "gdal", "-q",
                                        "--workdir", workdir])
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert expect in lines[0], lines[0]
    assert time.monotonic() - start < 30 and _files(out.parent) == []
    return lines[0]


def test_a_workdir_bucket_that_does_not_exist(tmp_path, s3env):
    line = _bad_workdir(tmp_path, "s3://tf-no-such-bucket-here/work")
    assert line == ("Error: work store s3://tf-no-such-bucket-here/work: the bucket tf-no-such-bucket-here "
                    "does not exist")


def test_a_workdir_without_credentials(tmp_path, s3env):
    bucket = new_bucket()
    # no keys in the environment: obstore asks the instance metadata service (here: a closed port, as off EC2)
    _bad_workdir(tmp_path, f"s3://{bucket}/work", {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None,
                                                   "AWS_METADATA_ENDPOINT": f"http://127.0.0.1:{free_port()}"},
                 expect=f"work store s3://{bucket}/work: no credentials: set AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY")
    assert _keys(bucket) == {}


def test_a_workdir_at_an_endpoint_that_does_not_answer(tmp_path, s3env):
    port = free_port()
    _bad_workdir(tmp_path, "s3://any-bucket/work", {"AWS_S3_ENDPOINT": f"127.0.0.1:{port}"},
                 expect=f"work store s3://any-bucket/work: no answer from the endpoint http://127.0.0.1:{port}")


@pytest.mark.parametrize("url", ["s3://", "s3:///work", "https://example.org/work"])
def test_a_workdir_url_without_a_bucket_or_of_another_scheme(tmp_path, url):
    _bad_workdir(tmp_path, url, expect="not an object storage URL (s3://, gs:// or az:// with a bucket)")


def test_a_workdir_url_without_obstore_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "obstore", None)
    monkeypatch.setitem(sys.modules, "obstore.store", None)
    _bad_workdir(tmp_path, "s3://bucket/work", expect="needs obstore (pip install 'tilefill[cloud]')")


def test_the_probe_names_each_cause_in_a_few_words(s3env, monkeypatch):
    bucket = new_bucket()
    assert ObjectLocation.parse(f"s3://{bucket}/w").unreachable() is None
    assert ObjectLocation.parse(f"s3://{bucket}/w").unreachable("zarr.json") == f"nothing at s3://{bucket}/w/zarr.json"
    assert ObjectLocation.parse("s3://tf-not-there/w").unreachable() == "the bucket tf-not-there does not exist"
    monkeypatch.setenv("AWS_S3_ENDPOINT", f"127.0.0.1:{free_port()}")
    assert ObjectLocation.parse(f"s3://{bucket}/w").unreachable().startswith("no answer from the endpoint http://")


def test_a_tile_that_fails_on_the_store_names_the_cause_in_one_line():
    """obstore's errors run over many lines (the request, its retries, a debug dump): a tile's cause is a few words."""
    from obstore.exceptions import GenericError

    from tilefill._schedule import _cause

    exc = GenericError("Generic S3 error: Error performing PUT http://10.0.0.9:9000/b/w/tiles.zarr/tiles/c.3.0.0.0 in "
                       "3ms - HTTP error: error sending request\n\nDebug source:\nGeneric {\n    store: \"S3\",\n}")
    assert _cause(exc) == "GenericError: no answer from the endpoint http://10.0.0.9:9000"
    assert _cause(MemoryError("tile 3 too big")) == "MemoryError: tile 3 too big"
