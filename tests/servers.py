"""Real servers on 127.0.0.1 for the tests of inputs by URL: an S3-compatible store and a plain HTTP server.

* :func:`s3_server`: moto's server mode (``moto[server]``, a real HTTP process speaking the S3 API),
  started once per test session on a free port of 127.0.0.1 and stopped at exit. :func:`s3_env` is
  the environment GDAL reads it with (``AWS_S3_ENDPOINT``, ``AWS_HTTPS=NO``,
  ``AWS_VIRTUAL_HOSTING=FALSE``, test credentials).
* :class:`HttpServer`: ``http.server`` in a thread, bound to 127.0.0.1, serving a folder with HTTP
  range requests (what GDAL's ``/vsicurl/`` reads a COG's tiles with), counting the bytes it sends.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from functools import lru_cache
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

LOCALHOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


@lru_cache(maxsize=1)
def s3_server() -> str:
    """``host:port`` of a moto S3 server on 127.0.0.1 (started on first use; skips the test where moto is missing)."""
    pytest.importorskip("moto.server", reason='moto[server] is in the test extra: pip install -e ".[test]"')
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", LOCALHOST, "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    atexit.register(lambda: (proc.terminate(), proc.wait(10)))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection((LOCALHOST, port), timeout=0.5).close()
            return f"{LOCALHOST}:{port}"
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("moto's server exited at start")
            time.sleep(0.1)
    raise RuntimeError("moto's server did not start within 30 s")


def s3_env(endpoint: str | None = None) -> dict:
    """The environment GDAL (and boto3, for the tests' uploads) reads the local S3 server with."""
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1", "AWS_S3_ENDPOINT": endpoint or s3_server(), "AWS_HTTPS": "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE", "AWS_NO_SIGN_REQUEST": "NO"}


def s3_client():
    import boto3

    env = s3_env()
    return boto3.client("s3", endpoint_url=f"http://{env['AWS_S3_ENDPOINT']}", region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def bucket_keys(bucket: str, prefix: str = "") -> list[str]:
    """Every key under ``prefix`` in a bucket of the local S3 server, sorted."""
    pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def object_body(bucket: str, key: str) -> bytes:
    return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()


def uploads(bucket: str, key: str) -> int:
    """How many times ``key`` was written, in a versioned bucket: its versions."""
    versions = s3_client().list_object_versions(Bucket=bucket, Prefix=key).get("Versions", [])
    return sum(v["Key"] == key for v in versions)


def claims_held(bucket: str, prefix: str, pid: int) -> list[str]:
    """The batch claims (``.NAME.claim`` objects) under ``prefix`` that process ``pid`` holds."""
    held = []
    for key in bucket_keys(bucket, prefix):
        if key.endswith(".claim"):
            try:
                if json.loads(object_body(bucket, key)).get("pid") == pid:
                    held.append(key)
            except Exception:  # noqa: BLE001 - released between the listing and the read
                pass
    return held


def new_bucket() -> str:
    """A bucket of its own per test: GDAL caches what it learnt of an object for the process's life."""
    name = f"tf-{uuid.uuid4().hex[:12]}"
    s3_client().create_bucket(Bucket=name)
    return name


def upload_tree(folder: Path, bucket: str, prefix: str) -> str:
    """Upload every file under ``folder`` to ``s3://bucket/prefix/...``; return that URL."""
    client = s3_client()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{bucket}/{prefix}"


class _RangeHandler(SimpleHTTPRequestHandler):
    """Files of one folder, with ``Range: bytes=a-b`` answered by 206 as object stores and CDNs do."""

    def log_message(self, *args):  # quiet
        pass

    def send_head(self):
        path = Path(self.translate_path(self.path))
        rng = self.headers.get("Range")
        if not path.is_file() or not rng:
            return super().send_head()
        m = re.match(r"bytes=(\d+)-(\d*)$", rng.strip())
        size = path.stat().st_size
        if not m or int(m[1]) >= size:
            self.send_error(416)
            return None
        start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
        f = open(path, "rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Last-Modified", self.date_time_string(int(path.stat().st_mtime)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._remaining = end - start + 1
        return f

    def copyfile(self, source, outputfile):
        remaining = getattr(self, "_remaining", None)
        sent = 0
        while remaining is None or sent < remaining:
            block = source.read(65536 if remaining is None else min(65536, remaining - sent))
            if not block:
                break
            outputfile.write(block)
            sent += len(block)
        type(self.server).bytes_sent += sent
        self._remaining = None


class _CountingServer(ThreadingHTTPServer):
    daemon_threads = True
    bytes_sent = 0


class _Handler(_RangeHandler):
    def do_GET(self):
        if self.path == "/__bytes_sent__":  # the tests' question: how many bytes of files were sent so far
            body = str(self.server.bytes_sent).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


class HttpServer:
    """A plain HTTP server on 127.0.0.1 serving ``root`` with range requests, in a process of its own.

    Its own process, not a thread: rasterio calls GDAL without releasing the GIL, so a server thread in
    the test's process could not answer GDAL's requests. ``url`` is its base; ``bytes_sent`` what it sent.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.port = free_port()
        self.url = f"http://{LOCALHOST}:{self.port}"
        self._proc = None

    @property
    def bytes_sent(self) -> int:
        from urllib.request import urlopen

        with urlopen(f"{self.url}/__bytes_sent__", timeout=10) as r:
            return int(r.read())

    def __enter__(self) -> "HttpServer":
        self._proc = subprocess.Popen([sys.executable, __file__, str(self.root), str(self.port)])
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((LOCALHOST, self.port), timeout=0.5).close()
                return self
            except OSError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise RuntimeError("the HTTP server did not start")
                time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self._proc.terminate()
        self._proc.wait(10)


def clear_gdal_cache() -> None:
    """Forget what GDAL learnt of remote files (sizes, listings, cached blocks), as a new process would."""
    from tilefill._remote import _gdal

    _gdal().VSICurlClearCache()


def env_set(values: dict) -> dict:
    """Set ``values`` in os.environ (None: unset); return what was there, for :func:`env_restore`."""
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    return old


env_restore = env_set


if __name__ == "__main__":  # python servers.py ROOT PORT: the HTTP server's process
    _root, _port = sys.argv[1], int(sys.argv[2])
    _CountingServer((LOCALHOST, _port), lambda *a, **kw: _Handler(*a, directory=_root, **kw)).serve_forever()


WORKER_ENV = {"TILEFILL_THREADS": "1", "OMP_NUM_THREADS": "1"}  # a test worker takes one core's worth


class DaskProcesses:
    """A scheduler and workers as real processes, each in its own session (killed as a group).

    ``tls``: ``{"ca": ..., "cert": ..., "key": ...}`` files for a cluster that speaks TLS only.
    """

    def __init__(self, folder: Path, tls: dict | None = None):
        self.folder = folder
        self.file = folder / "scheduler.json"
        self.procs: list[subprocess.Popen] = []
        self.client = None
        self.tls = tls
        self._tls_args = ["--tls-ca-file", tls["ca"], "--tls-cert", tls["cert"], "--tls-key", tls["key"]] if tls else []

    def _spawn(self, args: list[str], name: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "w")
        env = {k: v for k, v in {**os.environ, **WORKER_ENV, **(env or {})}.items() if v is not None}  # None: unset
        proc = subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True, cwd=cwd or self.folder)
        self.procs.append(proc)
        return proc

    def add_worker(self, extra: list[str] = (), env: dict | None = None, *, cwd: Path | None = None,
                   name: str | None = None) -> subprocess.Popen:
        """One more ``dask worker`` (with its nanny), in a session of its own (``cwd``: its working folder)."""
        n = len(self.procs) - 1
        return self._spawn(["worker", "--scheduler-file", str(self.file), "--nthreads", "1", "--no-dashboard",
                            "--host", "127.0.0.1", "--name", name or f"w{n}", "--death-timeout", "60",
                            *self._tls_args, *extra], f"worker{n}", env, cwd)

    def start(self, workers: list[list[str]], env: dict | None = None) -> "DaskProcesses":
        from distributed import Client
        from distributed.security import Security

        tls = ["--protocol", "tls", *self._tls_args] if self.tls else []
        self._spawn(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
                     str(self.file), "--idle-timeout", "600", *tls], "scheduler")
        deadline = time.monotonic() + 60
        while not self.file.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.file.is_file(), (self.folder / "scheduler.log").read_text()
        for extra in workers:
            self.add_worker(extra, env)
        security = Security(tls_ca_file=self.tls["ca"], tls_client_cert=self.tls["cert"],
                            tls_client_key=self.tls["key"], require_encryption=True) if self.tls else None
        self.client = Client(scheduler_file=str(self.file), set_as_default=False, timeout=30, security=security)
        if workers:
            self.client.wait_for_workers(len(workers), timeout=90)
        return self

    @property
    def address(self) -> str:
        return json.loads(self.file.read_text())["address"]

    def worker_pids(self) -> dict[str, int]:
        return self.client.run(os.getpid)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
