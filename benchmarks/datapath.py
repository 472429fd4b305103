"""The data path at full scene size: read, tile into Zarr, blend and write, with the fit made cheap.

Makes a synthetic full Landsat-size scene (default 8000 x 7000 x 4, uint16, simulated SLC-off
stripes as nodata 0; written strip by strip, never whole in memory), then runs
`tilefill SCENE -o OUT --method gdal` under `/usr/bin/time -v` and reports wall time, peak
memory (the largest process: GNU time reports the maximum over the process and its waited-for
children) and, from tilefill's report, the time of each stage. GDAL FillNodata stands in for the
fit: the point is what reading, tiling, scheduling, blending and writing cost.

Usage
-----
    python benchmarks/datapath.py                       # 8000 x 7000 x 4
    python benchmarks/datapath.py --height 2000 --width 2000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from tilefill import __version__
from tilefill._gaps import slc_off_mask


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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--height", type=int, default=8000)
    ap.add_argument("--width", type=int, default=7000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--method", default="gdal")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        tmp = Path(tmp)
        scene = tmp / "scene.tif"
        t = time.perf_counter()
        frac = make_scene(scene, args.height, args.width)
        print(f"made {args.width} x {args.height} x 4 uint16 scene ({100 * frac:.1f}% gaps) in "
              f"{time.perf_counter() - t:.0f} s", flush=True)
        cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "tilefill.cli", str(scene), "-o", str(tmp / "out.tif"),
               "--method", args.method, "--workers", str(args.workers), "--workdir", str(tmp / "work")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        err = proc.stderr
        if proc.returncode:
            raise SystemExit(err[-3000:])
        wall = re.search(r"Elapsed \(wall clock\) time.*: (.+)", err).group(1)
        rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1))
        stages = {m.group(1): float(m.group(2)) for m in re.finditer(r"stage (\w+): ([\d.]+) s", err)}
        result = {"meta": {"tilefill": __version__, "machine": f"{platform.node()} {os.cpu_count()} cores",
                           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                           "device": "cpu", "height": args.height, "width": args.width, "bands": 4,
                           "dtype": "uint16", "method": args.method, "workers": args.workers, "gap_fraction": frac},
                  "wall": wall, "peak_rss_gb": rss_kb / 2**20, "stages_s": stages,
                  "input_gb": args.height * args.width * 4 * 2 / 2**30}
        print(err[err.find("wrote"):err.find("Command being timed")].strip())
        print(json.dumps(result, indent=1))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"datapath-{args.width}x{args.height}-{dt.datetime.now():%Y%m%d-%H%M%S}.json").write_text(
            json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
