"""Worker idle time between the scenes of a batch: what overlapping the scenes buys.

Makes N small synthetic scenes (4 bands, uint16, SLC-off stripes as nodata 0), starts a local Dask
cluster of its own (loopback, one thread per worker) and runs ``tilefill.fill_batch`` on it through
``scheduler=``, with a tiny network so that it takes minutes. The scheduler's task stream gives
every tile task's start and stop on each worker; from them:

- ``idle_between_scenes_s``: per worker, the gap between its last tile of scene k and its first tile
  of scene k+1 (0 when it started k+1 before finishing k), summed over workers and boundaries;
- ``all_idle_between_scenes_s``: per boundary, the time no worker ran a tile (last end of scene k to
  first start of scene k+1), summed;
- ``idle_total_s``: per worker, the time without a tile between the batch's first tile and its last.

It uses the public API only, so the same script measures another checkout of tilefill: run it with
``PYTHONPATH`` pointing there (``--label before``) and here (``--label after``).

Usage
-----
    PYTHONPATH=/path/to/old/checkout python benchmarks/studies/batch_overlap.py --label before
    python benchmarks/studies/batch_overlap.py --label after
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

ROOT = Path(__file__).resolve().parents[2]  # the repository (this script is in benchmarks/studies/)
TINY = ROOT / "tests" / "tiny.yaml"


def make_scene(path: Path, size: int, seed: int) -> None:
    """A smooth uint16 scene with noise and SLC-off-like stripes (nodata 0)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    bands = np.stack([8000 + 3000 * np.sin(6 * xx + b + seed) * np.cos(5 * yy + b) + rng.normal(0, 150, xx.shape)
                      for b in range(4)])
    rows = np.arange(size)[:, None] - np.tan(np.deg2rad(12)) * np.arange(size)[None]
    gap = np.mod(rows + 7 * seed, 33) < 4
    values = np.where(gap[None], 0, np.clip(bands, 1, 65535)).astype(np.uint16)
    with rasterio.open(path, "w", driver="GTiff", dtype="uint16", count=4, height=size, width=size, nodata=0,
                       crs="EPSG:32633", transform=Affine(30, 0, 300000, 0, -30, 4500000)) as dst:
        dst.write(values)


def _on(address: str) -> dict:
    """``fill_batch``'s keyword for an existing scheduler; the "before" checkout predates ClusterSpec."""
    import tilefill

    spec = getattr(tilefill, "ClusterSpec", None)
    return {"cluster": spec(scheduler=address)} if spec else {"scheduler": address}


def idle_times(tasks: list[dict], order: list[str]) -> dict:
    """Idle figures from the task stream (see the module docstring); ``order``: the scenes' names, in batch order."""
    spans: dict[str, dict[str, list[tuple[float, float]]]] = {}  # worker -> scene -> compute intervals
    for task in tasks:
        scene = re.search(r"-\.(.+?)\.tilefill\.zarr-", str(task["key"]))
        for ss in task["startstops"]:
            if scene and ss["action"] == "compute":
                spans.setdefault(task["worker"], {}).setdefault(scene[1], []).append((ss["start"], ss["stop"]))
    everything = [iv for per_scene in spans.values() for ivs in per_scene.values() for iv in ivs]
    first, last = min(s for s, _ in everything), max(e for _, e in everything)
    between, per_boundary, idle_total, busy = 0.0, [], 0.0, 0.0
    for per_scene in spans.values():
        work = sum(e - s for ivs in per_scene.values() for s, e in ivs)
        busy += work
        idle_total += (last - first) - work
        for cur, nxt in zip(order, order[1:]):
            if cur in per_scene and nxt in per_scene:
                between += max(0.0, min(s for s, _ in per_scene[nxt]) - max(e for _, e in per_scene[cur]))
    for cur, nxt in zip(order, order[1:]):
        ends = [e for per_scene in spans.values() for s, e in per_scene.get(cur, [])]
        starts = [s for per_scene in spans.values() for s, e in per_scene.get(nxt, [])]
        per_boundary.append(round(max(0.0, min(starts) - max(ends)), 3))
    return {"idle_between_scenes_s": round(between, 3), "all_idle_between_scenes_s": round(sum(per_boundary), 3),
            "all_idle_per_boundary_s": per_boundary, "idle_total_s": round(idle_total, 3), "busy_s": round(busy, 3),
            "tiles": len(tasks), "workers": len(spans), "first_to_last_tile_s": round(last - first, 3)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=6)
    ap.add_argument("--size", type=int, default=192, help="scene side in px")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--config", default=str(TINY), help="preset or YAML (default: the tests' tiny network)")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--label", default="run", help="names the report: before, after ...")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "reports"))
    args = ap.parse_args(argv)

    import tilefill
    from distributed import Client, LocalCluster, get_task_stream

    code = Path(tilefill.__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = [f"scene{i:02d}.tif" for i in range(args.scenes)]  # the batch's order
        (tmp / "in").mkdir()
        for i, name in enumerate(names):
            make_scene(tmp / "in" / name, args.size, i)
        load_before = os.getloadavg()
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None, env={"TILEFILL_THREADS": "1", "OMP_NUM_THREADS": "1"}) as cluster, \
                Client(cluster) as client:
            start = time.perf_counter()
            with get_task_stream(client=client) as stream:
                report = tilefill.fill_batch([tmp / "in"], tmp / "out", config=args.config,
                                             overrides={"fit.iterations": args.iterations},
                                             progress=False, **_on(cluster.scheduler_address))
            wall = time.perf_counter() - start
            tasks = stream.data
    if report.failed or len(report.done) != args.scenes:
        raise SystemExit(f"the batch did not fill every scene:\n{report}")
    result = {"meta": {"label": args.label, "tilefill": str(code), "commit": commit,
                       "machine": f"{platform.node()}: {os.cpu_count()} cores, shared with other jobs",
                       "load_average_before": [round(x, 2) for x in load_before],
                       "load_average_after": [round(x, 2) for x in os.getloadavg()],
                       "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
              "params": {"scenes": args.scenes, "size": args.size, "bands": 4, "workers": args.workers,
                         "config": Path(args.config).name, "iterations": args.iterations},
              "wall_s": round(wall, 3), "tiles_fitted": sum(s.tiles_fitted for s in report.done),
              **idle_times(tasks, names)}
    print(json.dumps(result, indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"batch-overlap-{args.label}.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
