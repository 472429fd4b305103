"""The data path at full scene size: read, tile into Zarr, fill on Dask, blend and write, against a plain copy.

Makes a synthetic full Landsat-size scene (default 8000 x 7000 x 4, uint16, simulated SLC-off stripes as
nodata 0; written strip by strip, never whole in memory). Then, per repeat, in this order:

* **plain copy**: the scene read strip by strip (512 rows) and written back as the GeoTIFF tilefill writes
  (tiled 512 px, deflate, predictor 2, all cores compressing), under the same GDAL cache: the floor any
  data path of this scene pays;
* **tilefill**, once per ``--config``: ``prepare_fill``, ``start_fit`` and ``finish_fill`` (what ``tilefill
  SCENE -o OUT`` runs) on a local cluster of ``--workers`` CPU workers started first (its start is timed
  apart), with ``--method`` as the fill: ``gdal`` (GDAL FillNodata, a few ms a tile) or ``noop`` (the
  window's values as they are: what is left is the data path alone, per tile).

With ``--s3`` the same run goes from and to object storage: a local S3 server (moto's server mode, ``moto[server]``
from the test extra, started on 127.0.0.1 and stopped at the end) holds the scene, the work store
(``--workdir s3://...``: zarr over obstore) and the output (written, then uploaded whole, as ``-o s3://...`` does:
the **upload** stage); the plain copy then reads the scene from the bucket and uploads its copy too. Comparing a
run with ``--s3`` to one without gives the object store's cost against local disk.

Each stage reports its seconds, the bytes its processes read and wrote (``/proc/PID/io``: ``rchar`` /
``wchar``, page cache included), and, from probes wrapped around the library's functions in the client and
in every worker (nothing is added to tilefill itself): the time in Zarr calls (opening arrays, reading,
writing), in the store's compression codecs (summed over threads), in GeoTIFF reads and writes, in the
fill itself; the tile stage its tasks, tiles and seconds per tile, and Dask's share: workers x wall less
the time inside the tasks (scheduling, transfer, idle workers). Peak memory is the largest process's
(``ru_maxrss`` of the client and of each worker); every output's pixels are hashed (the same hash before
and after a change means the same output, bit for bit). Medians over ``--repeats``; the ratio is
tilefill's wall (cluster start excluded, as a batch pays it once) over the plain copy's of the same repeat.

Usage
-----
    python benchmarks/datapath.py                                   # 8000 x 7000 x 4, fast, gdal, 2 workers
    python benchmarks/datapath.py --configs fast,default --repeats 3 --label after
    python benchmarks/datapath.py --method noop --workers 1,2,4 --configs fast   # overhead per tile
    python benchmarks/datapath.py --height 2000 --width 2000 --repeats 1
    python benchmarks/datapath.py --s3 --label s3        # the same, from and to the local S3 server

``PYTHONPATH=/path/to/other/checkout python benchmarks/datapath.py ...`` measures another version of
tilefill with the same benchmark (the report's ``meta.tilefill_path`` says which was imported).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import hashlib
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import uuid
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

import tilefill
from tilefill import __version__

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import git_commit  # noqa: E402
from tilefill._gaps import slc_off_mask  # noqa: E402

STRIP = 512
GDAL_CACHE_BYTES = 256 * 2**20  # tilefill's own while a scene is open (tilefill._scene.GDAL_CACHE_BYTES)


def make_scene(path: Path, height: int, width: int, bands: int = 4, seed: int = 0) -> float:
    """Write a smooth random uint16 scene with SLC-off stripes (nodata 0); returns the gap fraction."""
    rng = np.random.default_rng(seed)
    gap = slc_off_mask((height, width), seed=seed)
    profile = dict(driver="GTiff", dtype="uint16", count=bands, height=height, width=width, nodata=0,
                   crs="EPSG:32633", transform=Affine(30, 0, 300000, 0, -30, 4500000), tiled=True,
                   blockxsize=512, blockysize=512, compress="deflate", BIGTIFF="IF_SAFER")
    xs = np.arange(width) / width
    with rasterio.open(path, "w", **profile) as dst:
        for y in range(0, height, 512):
            h = min(512, height - y)
            ys = (np.arange(y, y + h) / height)[:, None]
            block = np.stack([8000 + 3000 * np.sin(6 * xs[None] + b) * np.cos(5 * ys + b)
                              + rng.normal(0, 150, (h, width)) for b in range(bands)])
            block = np.where(gap[y:y + h][None], 0, np.clip(block, 1, 65535)).astype(np.uint16)
            dst.write(block, window=rasterio.windows.Window(0, y, width, h))
    return float(gap.mean())


# ---------------------------------------------------------------------------------------------- measuring

def proc_io() -> dict:
    """This process's I/O counters: bytes through read and write calls (``rchar``, ``wchar``), and to disk."""
    out = {}
    with open("/proc/self/io") as f:
        for line in f:
            k, v = line.split(":")
            out[k] = int(v)
    return out


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def install_probes(noop: bool = False) -> list[str]:
    """Wrap timers around the library's Zarr, codec, GeoTIFF and fill calls in this process; returns what
    was wrapped. Idempotent. ``noop``: the fill returns each window's values as they are.

    Kept in this module so that it is pickled by value and runs in workers that do not have it.
    """
    import sys

    state = sys.modules.setdefault("_datapath_probes", type(sys)("_datapath_probes"))
    if getattr(state, "installed", None) is not None:
        return state.installed
    state.times = defaultdict(float)
    state.counts = defaultdict(int)
    times, counts = state.times, state.counts
    wrapped = []

    def timed(owner, name, key, nbytes=None):
        fn = getattr(owner, name, None)
        if fn is None:
            return

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                out = fn(*args, **kwargs)
            finally:
                times[key] += time.perf_counter() - t
                counts[key] += 1
            if nbytes is not None:
                counts[key + "_bytes"] += nbytes(args, out)
            return out

        setattr(owner, name, wrapper)
        wrapped.append(f"{getattr(owner, '__name__', owner)}.{name}")

    import zarr

    def got(args, out):
        return int(getattr(out, "nbytes", 0))

    def put(args, out):  # (array, selection, value)
        return int(getattr(np.asarray(args[2]), "nbytes", 0))

    # the selections every indexing form ends in (``a[...]`` and ``a.oindex[...]`` call one of them)
    timed(zarr.Array, "get_basic_selection", "zarr_read", got)
    timed(zarr.Array, "get_orthogonal_selection", "zarr_read", got)
    timed(zarr.Array, "set_basic_selection", "zarr_write", put)
    timed(zarr.Array, "set_orthogonal_selection", "zarr_write", put)
    timed(zarr.Group, "__getitem__", "zarr_open")
    timed(zarr, "open_group", "zarr_open")
    from zarr.codecs import blosc, zstd

    timed(zstd.ZstdCodec, "_encode_sync", "compress")
    timed(zstd.ZstdCodec, "_decode_sync", "decompress")
    timed(blosc.BloscCodec, "_encode_sync", "compress")
    timed(blosc.BloscCodec, "_decode_sync", "decompress")
    import tilefill._fill as fill_mod
    import tilefill._mosaic as mosaic
    import tilefill._pipeline as pipeline
    import tilefill._scene as scene_mod
    import tilefill._schedule as schedule
    import tilefill._store as store_mod

    if noop:
        def run_method_many(method, windows, config, holdouts=None, guides=None):
            info = {"final_loss": float("nan"), "iterations": 0, "device": "cpu"}
            return [fill_mod.WindowFill(image.copy(), info) for image, _known, _seed in windows]

        fill_mod.run_method_many = run_method_many
        wrapped.append("noop fill")
    timed(fill_mod, "run_method_many", "fill")
    timed(fill_mod, "classical_alone", "fill")
    timed(schedule, "_run_tile_group", "task")
    timed(scene_mod.Scene, "read", "geotiff_read", got)
    timed(pipeline, "run_key", "run_key")
    for name in ("_statistics_pass", "_write_pass", "_write_holdout", "_write_guides"):
        timed(store_mod, name, name.lstrip("_"))
    timed(mosaic, "_plan", "mosaic_plan")
    timed(mosaic._StripMosaic, "strip", "mosaic_strips")
    timed(mosaic, "_check_complete", "geotiff_readback")
    timed(mosaic, "_to_cog", "cog")
    open_output = getattr(mosaic, "_open_output", None)
    if open_output is not None:
        class TimedWriter:  # the output dataset, its write calls timed (GDAL compresses in them, and at close)
            def __init__(self, dst):
                self._dst = dst

            def __getattr__(self, name):
                return getattr(self._dst, name)

            def write(self, *args, **kwargs):
                t = time.perf_counter()
                try:
                    return self._dst.write(*args, **kwargs)
                finally:
                    times["geotiff_write"] += time.perf_counter() - t
                    counts["geotiff_write"] += 1

        def timed_open(*args, **kwargs):
            return TimedWriter(open_output(*args, **kwargs))

        mosaic._open_output = timed_open
        wrapped.append("_open_output")
    state.installed = wrapped
    return wrapped


def probe_snapshot() -> dict:
    """This process's probe sums, I/O counters and peak memory (pickled by value into workers)."""
    import sys

    state = sys.modules.get("_datapath_probes")
    return {"times": dict(getattr(state, "times", {})), "counts": dict(getattr(state, "counts", {})),
            "io": proc_io(), "peak_rss_gb": peak_rss_gb(), "pid": os.getpid()}


def _diff(after: dict, before: dict) -> dict:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


class StageMeter:
    """Snapshots of the client and the workers around each stage; :meth:`stage` gives what the stage spent."""

    def __init__(self, client):
        self.client = client

    def snapshot(self) -> dict:
        snaps = {"client": probe_snapshot()}
        if self.client is not None:
            snaps.update({w: s for w, s in self.client.run(probe_snapshot).items()})
        return snaps

    @staticmethod
    def stage(before: dict, after: dict, seconds: float) -> dict:
        out = {"seconds": round(seconds, 3)}
        times, counts = defaultdict(float), defaultdict(int)
        read = written = 0
        for who, a in after.items():
            b = before.get(who, {"times": {}, "counts": {}, "io": {}})
            for k, v in _diff(a["times"], b["times"]).items():
                times[k] += v
            for k, v in _diff(a["counts"], b["counts"]).items():
                counts[k] += v
            io = _diff(a["io"], b["io"])
            read += io.get("rchar", 0)
            written += io.get("wchar", 0)
        out["bytes_read_gb"] = round(read / 2**30, 3)
        out["bytes_written_gb"] = round(written / 2**30, 3)
        out["seconds_in"] = {k: round(v, 3) for k, v in sorted(times.items())}
        out["calls"] = dict(sorted(counts.items()))
        return out


def output_digest(path: Path) -> str:
    """BLAKE2b of the output's pixels, strip by strip (the same pixels, the same digest)."""
    h = hashlib.blake2b(digest_size=16)
    with rasterio.open(path) as ds:
        for y in range(0, ds.height, STRIP):
            h.update(np.ascontiguousarray(ds.read(window=Window(0, y, ds.width, min(STRIP, ds.height - y)))).data)
    return h.hexdigest()


def plain_copy(scene: Path | str, out: Path, upload_to: str | None = None) -> dict:
    """The scene read strip by strip and written as tilefill writes its output: the floor of any data path.

    ``scene`` may be a URL (read through GDAL, as tilefill reads it); ``upload_to``: a URL the copy is then
    uploaded to (timed apart, as ``upload_s``, and within ``seconds``).
    """
    from tilefill._remote import gdal_path, upload

    scene = gdal_path(scene)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
        t0 = time.perf_counter()
        read_s = write_s = 0.0
        with rasterio.open(scene) as src:
            profile = dict(driver="GTiff", dtype=src.dtypes[0], count=src.count, height=src.height,
                           width=src.width, crs=src.crs, transform=src.transform, nodata=src.nodata,
                           compress="deflate", predictor=2, BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS",
                           tiled=True, blockxsize=512, blockysize=512)
            with rasterio.open(out, "w", **profile) as dst:
                for y in range(0, src.height, STRIP):
                    win = Window(0, y, src.width, min(STRIP, src.height - y))
                    t = time.perf_counter()
                    values = src.read(window=win)
                    read_s += time.perf_counter() - t
                    t = time.perf_counter()
                    dst.write(values, window=win)
                    write_s += time.perf_counter() - t
        upload_s = time.perf_counter()
        if upload_to:
            upload(out, upload_to)
        upload_s = time.perf_counter() - upload_s
        total = time.perf_counter() - t0
    return {"seconds": round(total, 3), "read_s": round(read_s, 3), "write_s": round(write_s, 3),
            **({"upload_s": round(upload_s, 3)} if upload_to else {})}


# ---------------------------------------------------------------------------------------------- object storage

def local_s3(folder: Path) -> tuple[dict, subprocess.Popen]:
    """A moto S3 server on a free port of 127.0.0.1 and the environment GDAL and obstore read it with (test
    credentials); the caller stops the process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(folder / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("the local S3 server (moto[server], in the test extra) did not start")
            time.sleep(0.1)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_S3_ENDPOINT": f"127.0.0.1:{port}", "AWS_HTTPS": "NO",
           "AWS_VIRTUAL_HOSTING": "FALSE"}
    return env, proc


def new_bucket(env: dict) -> str:
    """A bucket on the local S3 server (moto takes an unsigned PUT of the bucket)."""
    from urllib.request import Request, urlopen

    name = f"datapath-{uuid.uuid4().hex[:8]}"
    with urlopen(Request(f"http://{env['AWS_S3_ENDPOINT']}/{name}", method="PUT"), timeout=30):
        pass
    return name


# ---------------------------------------------------------------------------------------------- one run

def run_tilefill(scene: Path | str, tmp: Path, config: str, workers: int, method: str, sets: list[str],
                 bucket: str | None = None) -> dict:
    """One full run of tilefill's three stages on a fresh cluster, measured stage by stage.

    ``bucket``: the work store goes to ``s3://BUCKET/work-...`` and the output is uploaded to ``s3://BUCKET/...``
    after the write (the **upload** stage), as ``tilefill SCENE -o s3://... --workdir s3://...`` does.
    """
    from tilefill._cluster import LazyCluster
    from tilefill._clusterspec import ClusterSpec
    from tilefill._config import with_shortcuts
    from tilefill._pipeline import checked_config, finish_fill, prepare_fill, start_fit
    from tilefill._remote import upload

    overrides = dict(s.split("=", 1) for s in sets)
    cfg = checked_config(config, with_shortcuts(overrides, method="gdal" if method == "noop" else method))
    out = tmp / f"out-{config}-{workers}.tif"
    out.unlink(missing_ok=True)
    local_store = tmp / f"work-{config}-{workers}" / "tiles.zarr"
    local_store.parent.mkdir(parents=True, exist_ok=True)
    store_path = f"s3://{bucket}/work-{config}-{workers}/tiles.zarr" if bucket else local_store
    install_probes()
    log = local_store.with_suffix(".log")
    with LazyCluster(ClusterSpec(workers=workers), device="cpu", worker_log=log) as clusters:
        t = time.perf_counter()
        cluster = clusters.get()
        cluster.client.run(install_probes, method == "noop")
        cluster_s = time.perf_counter() - t
        meter = StageMeter(cluster.client)
        stages = {}
        s0 = meter.snapshot()
        start = time.perf_counter()
        prep = prepare_fill(scene, out, cfg, store_path=store_path, keep_store=False, start=start)
        t1 = time.perf_counter()
        s1 = meter.snapshot()
        job = start_fit(prep, clusters, progress=False)
        run = job.wait() if job else None
        t2 = time.perf_counter()
        s2 = meter.snapshot()
        report = finish_fill(prep, run, clusters)
        t3 = time.perf_counter()
        s3 = meter.snapshot()
        stages["prepare"] = meter.stage(s0, s1, t1 - start)
        stages["tiles"] = meter.stage(s1, s2, t2 - t1)
        stages["write"] = meter.stage(s2, s3, t3 - t2)
        if bucket and report.ok:  # -o s3://...: the finished output (and its sidecars) uploaded whole
            for path in sorted(tmp.glob(out.name + "*")):
                upload(path, f"s3://{bucket}/{path.name}")
            t4 = time.perf_counter()
            s4 = meter.snapshot()
            stages["upload"] = meter.stage(s3, s4, t4 - t3)
            s3 = s4
        peaks = {who: s["peak_rss_gb"] for who, s in s3.items()}
    if not report.ok:
        raise SystemExit(report.message)
    tiles = stages["tiles"]
    n_tiles = len(prep.todo)
    tasks = tiles["calls"].get("task", 0)
    task_s = tiles["seconds_in"].get("task", 0.0)
    fill_s = tiles["seconds_in"].get("fill", 0.0)
    tiles.update(tasks=tasks, tiles=n_tiles,
                 seconds_per_tile=round(tiles["seconds"] / max(n_tiles, 1), 5),
                 worker_seconds_per_tile=round(workers * tiles["seconds"] / max(n_tiles, 1), 5),
                 fill_seconds_per_tile=round(fill_s / max(n_tiles, 1), 5),
                 overhead_seconds_per_tile=round((workers * tiles["seconds"] - fill_s) / max(n_tiles, 1), 5),
                 dask_seconds=round(workers * tiles["seconds"] - task_s, 3))
    total = sum(stage["seconds"] for stage in stages.values())
    return {"config": config, "method": method, "workers": workers, "tiles_in_grid": len(prep.grid),
            "tiles_fitted": n_tiles, "cluster_start_s": round(cluster_s, 3), "seconds": round(total, 3),
            "stages": stages, "peak_rss_gb": round(max(peaks.values()), 3),
            "peak_rss_sum_gb": round(sum(peaks.values()), 3), "output_digest": output_digest(out),
            "load_average": os.getloadavg()}


def _median_run(runs: list[dict]) -> dict:
    """Medians over repeats of a run's figures (the stage breakdown of the median run by wall)."""
    mid = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
    return {"seconds": statistics.median(r["seconds"] for r in runs),
            "stages_s": {k: statistics.median(r["stages"][k]["seconds"] for r in runs) for k in mid["stages"]},
            "peak_rss_gb": max(r["peak_rss_gb"] for r in runs),
            "ratio_to_copy": statistics.median(r["ratio_to_copy"] for r in runs),
            "median_run": mid, "output_digests": sorted({r["output_digest"] for r in runs})}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--height", type=int, default=8000)
    ap.add_argument("--width", type=int, default=7000)
    ap.add_argument("--workers", default="2", help="comma-separated worker counts, each run apart")
    ap.add_argument("--configs", default="fast", help="comma-separated presets (their tiling), e.g. fast,default")
    ap.add_argument("--method", default="gdal", help="the fill: gdal, another classical method, or noop")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--label", default="", help="a name for the report file, e.g. before / after")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--scene", help="the synthetic scene's file: made there if missing, reused if there (the same "
                                    "height and width); by default made in a temporary folder")
    ap.add_argument("--s3", action="store_true", help="read the scene from, keep the work store in and write the "
                    "output to a local S3 server (moto, started on 127.0.0.1 and stopped at the end)")
    args = ap.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    configs = args.configs.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"datapath-{args.method}-{'-'.join(configs)}-{args.width}x{args.height}{'-s3' if args.s3 else ''}"
    report = out / f"{name}{'-' + args.label if args.label else ''}-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        tmp = Path(tmp)
        scene = Path(args.scene) if args.scene else tmp / "scene.tif"
        t = time.perf_counter()
        if scene.exists():
            with rasterio.open(scene) as ds:
                if (ds.height, ds.width) != (args.height, args.width):
                    raise SystemExit(f"{scene} is {ds.width} x {ds.height}, not {args.width} x {args.height}")
                frac = float((ds.read(1, out_shape=(1000, 1000)) == 0).mean())  # a look, for the record
        else:
            frac = make_scene(scene, args.height, args.width)
            print(f"made {args.width} x {args.height} x 4 uint16 scene ({100 * frac:.1f}% gaps) in "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
        source, bucket, server, saved = scene, None, None, {}
        if args.s3:
            from tilefill._remote import upload

            env, server = local_s3(tmp)
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)  # before the cluster starts: its workers read the bucket with it
            bucket = new_bucket(env)
            source = f"s3://{bucket}/scenes/{scene.name}"
            upload(scene, source)
            print(f"scene uploaded to {source} on the local S3 server {env['AWS_S3_ENDPOINT']}", flush=True)
        try:
            copies, runs = _repeats(args, source, tmp, configs, workers, bucket, report, argv, frac)
        finally:
            if server is not None:
                server.terminate()
                server.wait(30)
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    _write_report(report, args, argv, workers, configs, frac, copies, runs, final=True)


def _repeats(args, source, tmp: Path, configs, workers, bucket, report, argv, frac):
    """Every repeat: the plain copy, then tilefill once per config and worker count (the report rewritten after
    each run)."""
    runs, copies = defaultdict(list), []
    for rep in range(args.repeats):
        copy = plain_copy(source, tmp / "copy.tif", f"s3://{bucket}/copy.tif" if bucket else None)
        copies.append(copy)
        print(f"repeat {rep + 1}: plain copy {copy['seconds']:.1f} s", flush=True)
        for config in configs:
            for w in workers:
                r = run_tilefill(source, tmp, config, w, args.method, args.set, bucket)
                r["ratio_to_copy"] = round(r["seconds"] / copy["seconds"], 2)
                runs[f"{config}/{w}"].append(r)
                st = r["stages"]
                print(f"repeat {rep + 1}: {config} {args.method} {w} worker(s): {r['seconds']:.1f} s "
                      f"({r['ratio_to_copy']:.1f}x the copy; prepare {st['prepare']['seconds']:.1f}, tiles "
                      f"{st['tiles']['seconds']:.1f} [{st['tiles']['tasks']} tasks, "
                      f"{1000 * st['tiles']['overhead_seconds_per_tile']:.1f} ms overhead per tile-worker], "
                      f"write {st['write']['seconds']:.1f}"
                      + (f", upload {st['upload']['seconds']:.1f}" if "upload" in st else "")
                      + f"), peak {r['peak_rss_gb']:.2f} GB", flush=True)
                for stage, v in st.items():
                    print(f"    {stage}: " + ", ".join(f"{k} {x:.2f}" for k, x in v["seconds_in"].items()),
                          flush=True)
                _write_report(report, args, argv, workers, configs, frac, copies, runs)
    return copies, runs


def _write_report(path: Path, args, argv, workers, configs, frac, copies, runs, final: bool = False) -> None:
    """The JSON report, rewritten after every run (an interrupted benchmark keeps what it measured)."""
    result = {
        "meta": {"tilefill": __version__, "tilefill_path": str(Path(tilefill.__file__).parent),
                 "commit": git_commit(), "machine": f"{platform.node()} {os.cpu_count()} cores",
                 "load_average_at_end": os.getloadavg(),
                 "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "device": "cpu (no GPU)",
                 "height": args.height, "width": args.width, "bands": 4, "dtype": "uint16",
                 "method": args.method, "workers": workers, "configs": configs, "sets": args.set,
                 "repeats": args.repeats, "repeats_done": len(copies), "gap_fraction": frac,
                 "storage": "local S3 server (moto) on 127.0.0.1: scene, work store, output" if args.s3 else
                            "local disk",
                 "input_gb": args.height * args.width * 4 * 2 / 2**30,
                 "command": "python benchmarks/datapath.py " + " ".join(argv if argv is not None else
                                                                         os.sys.argv[1:])},
        "plain_copy": {"seconds": statistics.median(c["seconds"] for c in copies), "repeats": copies},
        "runs": {k: _median_run(v) for k, v in runs.items()},
        "all_runs": runs,
    }
    path.write_text(json.dumps(result, indent=1))
    if final:
        print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "median_run"}
                          for k, v in result["runs"].items()}, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
