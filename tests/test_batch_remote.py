"""``tilefill batch --output-dir s3://...``: outputs, done records, claims and the log in a bucket.

Against a real S3 server on 127.0.0.1 (moto's server mode, tests/servers.py): a batch from a bucket into a
bucket (outputs whole and identical to a local batch's, records, the log, reruns, --verify, damage), claims
(exclusive, renewed, stale ones taken over by one batch only, a lost claim publishes nothing), two real
``tilefill batch`` processes on one prefix with one killed by SIGKILL and restarted, and the bad inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from conftest import IN_PROCESS
from servers import (bucket_keys, claims_held, free_port, new_bucket, object_body, s3_client, s3_env, upload_tree,
                     uploads)
from tilefill import TilefillError, fill_batch
from tilefill._archive import ClaimLost
from tilefill._bucket import BucketOutputs, ObjectClaim, read_log
from tilefill._objstore import ObjectLocation, get_object, put_if_absent, replace_if_unchanged
from tilefill.cli import main

pytestmark = pytest.mark.timeout(180)

FAST = {"method": "gdal", "tiles.size": 64, "tiles.overlap": 32}
FAST_CLI = ["--method", "gdal", "--tile-size", "64", "--overlap", "32", "--workers", "0", "-q"]


@pytest.fixture
def s3(monkeypatch, tmp_path):
    """The local S3 server's environment as a user sets it; the working directory (where staging goes) in tmp."""
    env = s3_env()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    return env


def _scene(path: Path, shift: int = 0) -> Path:
    """A 96 x 96 two-band uint16 GeoTIFF with tilted stripes of nodata (0)."""
    yy, xx = np.mgrid[0:96, 0:96]
    values = np.stack([100 + 60 * np.sin(xx / 9.0 + shift + b) + 40 * np.cos(yy / 13.0) for b in range(2)])
    values = values.astype("uint16")
    values[:, (yy + xx // 8 + shift) % 24 < 4] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", dtype="uint16", count=2, height=96, width=96, nodata=0,
                       crs="EPSG:32633", transform=rasterio.Affine(30, 0, 500000, 0, -30, 4200000)) as ds:
        ds.write(values)
    return path


def _archive(root: Path, n: int) -> Path:
    for i in range(n):
        _scene(root / f"s{i}.tif", shift=i)
    return root


def _outputs_whole_and_recorded(bucket: str, prefix: str) -> list[str]:
    """Every output under the prefix is a whole GeoTIFF with a record that names its bytes: the names of them."""
    keys = bucket_keys(bucket, prefix)
    tifs = [k for k in keys if k.endswith(".tif") and "/." not in k]
    for key in tifs:
        body = object_body(bucket, key)
        record = json.loads(object_body(bucket, key + ".done.json"))
        assert record["sha256"] == hashlib.sha256(body).hexdigest() and record["size"] == len(body), key
        with rasterio.MemoryFile(body) as mem, mem.open() as ds:
            assert ds.read().shape == (2, 96, 96) and not (ds.read() == 0).all()
    return tifs


# --- a batch into a bucket ------------------------------------------------------------------------------------

def test_a_batch_from_a_bucket_into_a_bucket(tmp_path, s3):
    source = upload_tree(_archive(tmp_path / "archive", 3), new_bucket(), "in")
    bucket = new_bucket()
    out = f"s3://{bucket}/restored"
    report = fill_batch([source + "/"], out, cluster=IN_PROCESS, overrides=FAST, progress=False)
    assert len(report.done) == 3 and not report.failed
    assert sorted(str(o.output) for o in report.done) == [f"{out}/s{i}.tif" for i in range(3)]
    # the outputs, each whole beside its record; no claim, no probe object, no staging left
    assert _outputs_whole_and_recorded(bucket, "restored/") == [f"restored/s{i}.tif" for i in range(3)]
    keys = bucket_keys(bucket)
    assert not [k for k in keys if k.endswith(".claim") or ".tilefill-probe" in k], keys
    assert not (tmp_path / ".tilefill-staging").exists()
    # bit for bit the outputs of the same batch into a local folder
    local = fill_batch([tmp_path / "archive"], tmp_path / "local", cluster=IN_PROCESS, overrides=FAST, progress=False)
    assert len(local.done) == 3
    for i in range(3):
        assert object_body(bucket, f"restored/s{i}.tif") == (tmp_path / "local" / f"s{i}.tif").read_bytes()
    record = json.loads(object_body(bucket, "restored/s0.tif.done.json"))
    assert record["output"] == f"{out}/s0.tif" and record["etag"]
    # the log: one object per scene settled and the summary, read back in order
    log = read_log(out)
    assert str(report.log).startswith(f"{out}/.tilefill-log/") and f"log: {report.log}" in str(report)
    assert [r["status"] for r in log if r["type"] == "scene"] == ["done"] * 3
    assert log[-1]["type"] == "summary" and log[-1]["done"] == 3
    assert {r["type"] for r in log} == {"tile", "scene", "summary"}

    # the rerun: every scene skipped without a claim; --verify hashes the objects again
    again = fill_batch([source], out, cluster=IN_PROCESS, overrides=FAST, progress=False, verify=True)
    assert len(again.skipped) == 3 and all(o.verified for o in again.skipped)
    # an output replaced by other bytes of the same size: damaged, filled again
    body = bytearray(object_body(bucket, "restored/s1.tif"))
    body[-1] ^= 0xFF
    s3_client().put_object(Bucket=bucket, Key="restored/s1.tif", Body=bytes(body))
    third = fill_batch([source], out, cluster=IN_PROCESS, overrides=FAST, progress=False)
    assert [Path(o.scene).name for o in third.done] == ["s1.tif"] and "ETag" in third.done[0].damaged
    assert object_body(bucket, "restored/s1.tif") == (tmp_path / "local" / "s1.tif").read_bytes()


def test_a_local_archive_into_a_bucket_mirrors_its_tree_and_sidecars_go_beside(tmp_path, s3):
    _scene(tmp_path / "archive" / "2010" / "a.tif")
    _scene(tmp_path / "archive" / "b.tif", shift=3)
    bucket = new_bucket()
    report = fill_batch([tmp_path / "archive"], f"s3://{bucket}/x/y/", cluster=IN_PROCESS, progress=False,
                        overrides=FAST)
    assert len(report.done) == 2
    assert _outputs_whole_and_recorded(bucket, "x/y/") == ["x/y/2010/a.tif", "x/y/b.tif"]


# --- claims ----------------------------------------------------------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_claims_are_exclusive_renewed_and_taken_over_once_when_stale(s3):
    store = ObjectLocation.parse(f"s3://{new_bucket()}/out").store()
    first = ObjectClaim.acquire(store, ".a.tif.claim", "s3://b/out/.a.tif.claim", ttl=0.6)
    assert first is not None and ObjectClaim.acquire(store, ".a.tif.claim", "u", ttl=0.6) is None
    etag = get_object(store, ".a.tif.claim")[1]["e_tag"]
    time.sleep(0.9)  # past the ttl, but the heartbeat renewed it (a new ETag)
    assert ObjectClaim.acquire(store, ".a.tif.claim", "u", ttl=0.6) is None
    assert get_object(store, ".a.tif.claim")[1]["e_tag"] != etag
    assert "pid" in ObjectClaim.holder(store, ".a.tif.claim")
    first.release()
    assert get_object(store, ".a.tif.claim") is None

    # a claim whose process on this host is gone (SIGKILL) is stale at once; one that expired, after its ttl
    from tilefill._archive import claimant

    dead = {**claimant(), "pid": _dead_pid(), "ttl": 600, "expires": time.time() + 600}
    expired = {**claimant(), "host": "elsewhere", "ttl": 1, "expires": time.time() - 1}
    live = {**claimant(), "host": "elsewhere", "ttl": 600, "expires": time.time() + 600}
    for key, body in ((".dead.claim", dead), (".expired.claim", expired), (".live.claim", live)):
        assert put_if_absent(store, key, json.dumps(body).encode())
    taken = {key: ObjectClaim.acquire(store, key, key, ttl=60) for key in (".dead.claim", ".expired.claim",
                                                                          ".live.claim")}
    assert taken[".live.claim"] is None and taken[".dead.claim"] and taken[".expired.claim"]
    for claim in taken.values():
        if claim:
            claim.release()

    # two batches that find one stale claim: the takeover is a write conditional on its ETag, so one wins
    assert put_if_absent(store, ".x.claim", json.dumps(dead).encode())
    data, meta = get_object(store, ".x.claim")
    won = [replace_if_unchanged(store, ".x.claim", json.dumps({**claimant(), "n": n}).encode(), meta)
           for n in range(2)]
    assert won[0] is not None and won[1] is None


def test_a_batch_that_lost_its_claim_publishes_nothing(tmp_path, s3):
    bucket = new_bucket()
    outputs = BucketOutputs.open(f"s3://{bucket}/out", staging=tmp_path / "staging")
    out = outputs.staging / "a.tif" / "a.tif"  # a scene filled in its own staging folder
    claim = outputs.claim(out, ttl=600)
    _scene(out)
    data, meta = get_object(outputs.store, ".a.tif.claim")
    assert replace_if_unchanged(outputs.store, ".a.tif.claim", b'{"taken": "over"}', meta)  # another batch's now
    with pytest.raises(ClaimLost, match="taken over by another batch"):
        outputs.publish(out, {"status": "done"}, claim)
    assert claim.lost and bucket_keys(bucket) == ["out/.a.tif.claim"]
    claim.release()  # a lost claim is not ours to delete
    assert bucket_keys(bucket) == ["out/.a.tif.claim"]


# --- two batches on one prefix, one killed and restarted ------------------------------------------------------

def _batch_proc(source: str, out: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tilefill.cli", "batch", source, "--output-dir", out, *FAST_CLI,
                             "--log", str(log)], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TILEFILL_THREADS": "1"})


def _versioned_bucket() -> str:
    """A bucket that keeps every version of a key: how many times an output was uploaded is counted, not inferred."""
    bucket = new_bucket()
    s3_client().put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return bucket


def _kill_mid_scene(proc: subprocess.Popen, bucket: str, prefix: str) -> list[str]:
    """SIGKILL ``proc`` while it holds claims on scenes it has not uploaded yet (so not between an upload and its
    record, after which a rerun could only fill the scene again): the claims it held, [] if it ended first."""
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        held = claims_held(bucket, prefix, proc.pid)
        keys = set(bucket_keys(bucket, prefix))
        if held and not [k for k in held if k.replace("/.", "/").removesuffix(".claim") in keys]:
            proc.send_signal(signal.SIGKILL)
            return held
        time.sleep(0.05)
    return []


def test_two_batches_on_one_prefix_one_killed_and_restarted_fill_each_scene_once(tmp_path, s3):
    n = 6
    source = upload_tree(_archive(tmp_path / "archive", n), new_bucket(), "in")
    bucket = _versioned_bucket()
    out = f"s3://{bucket}/night"
    one, two = _batch_proc(source, out, tmp_path / "one.jsonl"), _batch_proc(source, out, tmp_path / "two.jsonl")
    killed_holding = _kill_mid_scene(one, bucket, "night/")
    one.wait(30)
    assert two.wait(150) == 0, two.stderr.read()
    assert killed_holding, "the first batch finished before it could be killed holding a claim"
    done_before = {k.removesuffix(".done.json") for k in bucket_keys(bucket, "night/") if k.endswith(".done.json")}
    again = _batch_proc(source, out, tmp_path / "again.jsonl")  # the killed batch, restarted
    assert again.wait(150) == 0, again.stderr.read()

    # every scene uploaded exactly once (the bucket keeps every version), whole, with its record; no claim left
    assert {i: uploads(bucket, f"night/s{i}.tif") for i in range(n)} == {i: 1 for i in range(n)}
    assert _outputs_whole_and_recorded(bucket, "night/") == [f"night/s{i}.tif" for i in range(n)]
    assert not [k for k in bucket_keys(bucket) if k.endswith(".claim")]
    assert not (tmp_path / ".tilefill-staging").exists()  # the killed batch's scene folder: resumed, then removed
    logged: dict[str, int] = {}
    for name in ("one", "two", "again"):  # the killed batch's log lacks the scene it was killed on
        for r in (json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()):
            if r["type"] == "scene":
                assert r["status"] in ("done", "skipped", "claimed"), r
                logged[r["scene"]] = logged.get(r["scene"], 0) + (r["status"] == "done")
    assert max(logged.values()) == 1
    # the restarted batch skipped exactly what was done before it, and filled the rest
    rerun = [r for r in map(json.loads, (tmp_path / "again.jsonl").read_text().splitlines()) if r["type"] == "scene"]
    assert {r["scene"].replace(f"{source}/", "night/") for r in rerun if r["status"] == "skipped"} == done_before
    assert {r["status"] for r in rerun} <= {"skipped", "done"} and len(rerun) == n
    # the log in the bucket holds the same records as the local logs of the batches that were not killed
    for proc, name in ((two, "two"), (again, "again")):
        local = [r for r in map(json.loads, (tmp_path / f"{name}.jsonl").read_text().splitlines())]
        remote = [r for r in read_log(out) if f"-{proc.pid}-" in r["batch"]]
        assert [(r["type"], r.get("scene"), r.get("status")) for r in remote] == \
            [(r["type"], r.get("scene"), r.get("status")) for r in local]


# --- bad input -------------------------------------------------------------------------------------------------

def _bad(tmp_path, out: str) -> str:
    """The one line a batch into ``out`` ends with, within 30 s, exiting non-zero, leaving no staging folder."""
    source = tmp_path / "archive"
    _archive(source, 1)
    start = time.monotonic()
    res = CliRunner().invoke(main, ["batch", str(source), "--output-dir", out, *FAST_CLI])
    took = time.monotonic() - start
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code != 0 and len(lines) == 1 and "Traceback" not in res.output, res.output
    assert took < 30
    assert not (tmp_path / ".tilefill-staging").exists()
    return lines[0]


def test_an_output_bucket_that_does_not_exist(tmp_path, s3):
    line = _bad(tmp_path, "s3://tf-no-such-bucket/out")
    assert "s3://tf-no-such-bucket/out" in line and "the bucket tf-no-such-bucket does not exist" in line


def test_no_credentials(tmp_path, s3, monkeypatch):
    bucket = new_bucket()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    line = _bad(tmp_path, f"s3://{bucket}/out")
    assert "credentials" in line and not bucket_keys(bucket)


def test_an_unreachable_endpoint(tmp_path, s3, monkeypatch):
    monkeypatch.setenv("AWS_S3_ENDPOINT", f"127.0.0.1:{free_port()}")
    line = _bad(tmp_path, "s3://bucket/out")
    assert "no answer from the endpoint" in line


def test_obstore_missing(tmp_path, s3, monkeypatch):
    bucket = new_bucket()
    monkeypatch.setitem(sys.modules, "obstore", None)  # import obstore raises ImportError, as where it is missing
    monkeypatch.setitem(sys.modules, "obstore.store", None)
    line = _bad(tmp_path, f"s3://{bucket}/out")
    assert "pip install 'tilefill[cloud]'" in line and not bucket_keys(bucket)


# an S3 endpoint that ignores conditional writes, as some S3-compatible stores do: moto behind a proxy that drops
# the If-None-Match and If-Match headers
_FORGETFUL_PROXY = """
import http.client, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
upstream, port = sys.argv[1], int(sys.argv[2])
class Proxy(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def _forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("if-none-match", "if-match")}
        conn = http.client.HTTPConnection(upstream, timeout=30)
        conn.request(self.command, self.path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward
ThreadingHTTPServer(("127.0.0.1", port), Proxy).serve_forever()
"""


def test_a_store_that_grants_a_second_create_is_refused(tmp_path, s3, monkeypatch):
    import socket

    bucket, port = new_bucket(), free_port()
    script = tmp_path / "proxy.py"
    script.write_text(_FORGETFUL_PROXY)
    proxy = subprocess.Popen([sys.executable, str(script), s3["AWS_S3_ENDPOINT"], str(port)])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        monkeypatch.setenv("AWS_S3_ENDPOINT", f"127.0.0.1:{port}")
        line = _bad(tmp_path, f"s3://{bucket}/out")
    finally:
        proxy.terminate()
        proxy.wait(10)
    assert "accepted a second create-only write" in line and "If-None-Match" in line
    assert not bucket_keys(bucket)  # the probe's object removed, nothing else written


def test_a_log_by_url_is_refused(tmp_path, s3):
    with pytest.raises(TilefillError, match="give a local file"):
        fill_batch([tmp_path], f"s3://{new_bucket()}/out", log="s3://b/log.jsonl", cluster=IN_PROCESS)
