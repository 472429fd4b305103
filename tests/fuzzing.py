"""Damaged inputs made on disk from small real ones: for ``test_fuzz.py`` and ``benchmarks/fuzz_soak.py``.

A :class:`Case` is one small real input (a GeoTIFF scene, a gap mask beside it, a Landsat product folder of
Collection 2 with a QA band, or of Collection 1 with gzipped gap masks) with one thing done to one of its
files: cut at a byte, bytes flipped in the header or in the data blocks, an MTL line dropped or doubled, an
MTL value replaced by an absurd one (a negative number, NaN, a date like 2010-13-45, a path). :func:`check`
writes it into a fresh folder, runs ``tilefill`` on it as a user would (Click's runner, in this process) and
asserts the contract for bad input: a filled output, or exit 1 with one line ``Error: ...``; never a
traceback, never a partial output, never a work store left behind. :func:`cases` draws cases for hypothesis.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from click.testing import CliRunner
from hypothesis import strategies as st

from tilefill.cli import main

from conftest import TRANSFORM, smooth_field, stripe_mask, to_range, write_geotiff, write_landsat_product

# where a damaged file comes from: a GeoTIFF scene (striped uncompressed, or tiled deflate), its --mask, and
# the files of two Landsat product folders (c2: Collection 2 Level-2 ETM+ with QA_PIXEL, read with
# --mask-qa cloud; c1: Collection 1 Level-1 ETM+ with gzipped gap masks)
TARGETS = ("scene-raw", "scene-deflate", "mask", "c2-band", "c2-qa", "c2-mtl.txt", "c2-mtl.xml", "c2-mtl.json",
           "c1-band", "c1-gap-mask", "c1-mtl.txt")
BYTE_EDITS = ("truncate", "flip-header", "flip-data")
MTL_EDITS = ("truncate", "flip-header", "flip-data", "drop-line", "double-line", "absurd-value")
ABSURD = ("", "-1", "-32768", "NaN", "inf", "1e400", "2010-13-45", "0000-00-00", "99999999999999999999", "../x.TIF",
          "/etc/hostname", "sub/x.TIF", "..", "LE07_L2SP_044034_20100815_20200911_02_T1_SR_B9.TIF", "GROUP",
          '"', "\u00ff\u00fe", "L3XX", "LANDSAT_99", "ETM\u0000")
SIZE = 64  # px a side: one 64 px tile


@dataclass(frozen=True)
class Case:
    """One damaged input: which file (``target``), what was done to it (``edit``) and where.

    ``at``: where the file is cut, or the first flipped byte, or the MTL line edited (taken modulo the file's
    size or line count); ``flips``: the XOR masks of the bytes flipped from ``at`` on; ``absurd``: which of
    ``ABSURD`` replaces the line's value.
    """

    target: str
    edit: str
    at: int
    flips: tuple[int, ...] = (1,)
    absurd: int = 0

    def describe(self) -> str:
        how = {"truncate": f"cut at {self.at}", "drop-line": f"line {self.at} dropped",
               "double-line": f"line {self.at} doubled",
               "absurd-value": f"line {self.at} set to {ABSURD[self.absurd % len(ABSURD)]!r}"}.get(
            self.edit, f"{self.edit} at {self.at} ^ {list(self.flips)}")
        return f"{self.target}: {how}"


@st.composite
def cases(draw) -> Case:
    """A hypothesis strategy of :class:`Case`: every target and edit, positions anywhere in the file."""
    target = draw(st.sampled_from(TARGETS))
    edit = draw(st.sampled_from(MTL_EDITS if "mtl" in target else BYTE_EDITS))
    return Case(target, edit, draw(st.integers(0, 2**20)),
                tuple(draw(st.lists(st.integers(1, 255), min_size=1, max_size=8))), draw(st.integers(0, 99)))


# --- the real inputs the damage is done to ---------------------------------------------------------------------

def _scene_values() -> tuple[np.ndarray, np.ndarray]:
    values = to_range(smooth_field(2, SIZE, SIZE), "uint16")
    stripes = stripe_mask(SIZE, SIZE, period=16, width_px=2)
    return np.where(stripes[None], 0, values).astype(np.uint16), stripe_mask(SIZE, SIZE, period=16, width_px=2,
                                                                              shift=8)


def make_inputs(root: Path) -> Path:
    """Write every undamaged input under ``root`` (each target's folder, as :func:`check` copies it)."""
    values, mask = _scene_values()
    raw = root / "scene-raw"
    raw.mkdir(parents=True)
    write_geotiff(raw / "scene.tif", values, nodata=0)
    deflate = root / "scene-deflate"
    deflate.mkdir()
    with rasterio.open(deflate / "scene.tif", "w", driver="GTiff", height=SIZE, width=SIZE, count=2, dtype="uint16",
                       crs="EPSG:32633", transform=TRANSFORM, nodata=0, tiled=True, blockxsize=32, blockysize=32,
                       compress="deflate", predictor=2) as ds:
        ds.write(values)
    masked = root / "mask"
    shutil.copytree(raw, masked)
    write_geotiff(masked / "mask.tif", mask.astype(np.uint8))
    qa = np.full((SIZE, SIZE), 1 << 6, dtype=np.uint16)
    qa[20:26, 10:30] |= 1 << 3  # a cloud for --mask-qa cloud
    for fmt in ("txt", "xml", "json"):
        write_landsat_product(root, qa=qa, shape=(SIZE, SIZE), mtl=(fmt,), folder=f"c2-{fmt}")
    write_landsat_product(root, level="L1TP", collection=1, acquired="2005-06-01", shape=(SIZE, SIZE),
                          gap_masks={k: stripe_mask(SIZE, SIZE, period=16, width_px=2) for k in
                                     ("1", "2", "3", "4", "5", "7")}, gm_gzip=True, folder="c1")
    return root


def _folder_and_file(inputs: Path, target: str) -> tuple[Path, str]:
    """The input folder a target is copied from, and the file in it that is damaged (a glob)."""
    if target.startswith("scene"):
        return inputs / target, "scene.tif"
    if target == "mask":
        return inputs / "mask", "mask.tif"
    product, _, what = target.partition("-")
    if what.startswith("mtl"):
        return inputs / f"{product}-{what[4:]}" if product == "c2" else inputs / "c1", f"*_MTL.{what[4:]}"
    folder = inputs / ("c2-txt" if product == "c2" else "c1")
    return folder, {"band": "*_B1.TIF", "qa": "*_QA_PIXEL.TIF", "gap-mask": "gap_mask/*_GM_B1.TIF.gz"}[what]


def _args(case: Case, folder: Path, out: Path) -> list[str]:
    common = ["-o", str(out), "--method", "gdal", "--workers", "0", "--tile-size", "64", "--overlap", "32", "-q"]
    if case.target.startswith("scene"):
        return [str(folder / "scene.tif"), *common]
    if case.target == "mask":
        return [str(folder / "scene.tif"), "--mask", str(folder / "mask.tif"), *common]
    return [str(folder), *common, *(["--mask-qa", "cloud"] if case.target.startswith("c2") else [])]


def damage(data: bytes, case: Case, header_end: int) -> bytes:
    """``data`` with ``case``'s edit done: cut, flipped in ``[0, header_end)`` or after it, or an MTL line edited."""
    if case.edit == "truncate":
        return data[:case.at % max(len(data), 1)]
    if case.edit in ("flip-header", "flip-data"):
        lo, hi = (0, header_end) if case.edit == "flip-header" else (header_end, len(data))
        if hi <= lo:
            lo, hi = 0, len(data)
        out = bytearray(data)
        start = lo + case.at % (hi - lo)
        for i, x in enumerate(case.flips):
            if start + i < hi:
                out[start + i] ^= x
        return bytes(out)
    lines = data.decode("utf-8").split("\n")
    fields = [i for i, line in enumerate(lines) if re.search(r"=|<\w+>[^<]|\":", line)]
    i = fields[case.at % len(fields)]
    if case.edit == "drop-line":
        del lines[i]
    elif case.edit == "double-line":
        lines.insert(i, lines[i])
    else:
        value = ABSURD[case.absurd % len(ABSURD)]
        line = lines[i]
        if "=" in line:
            key = line.partition("=")[0]
            lines[i] = f'{key}= "{value}"' if '"' in line else f"{key}= {value}"
        elif line.lstrip().startswith("<"):
            lines[i] = re.sub(r">[^<]*<", f">{value}<", line, count=1)
        else:
            lines[i] = re.sub(r'(":\s*)"(?:[^"\\]|\\.)*"', lambda m: m.group(1) + '"' + value.replace('"', '\\"') + '"',
                              line, count=1)
    return "\n".join(lines).encode("utf-8", errors="surrogateescape")


def _header_end(path: Path, data: bytes) -> int:
    """Where a file's header ends: a GeoTIFF's first data block; a gzip's 10-byte header (the rest is the
    deflated stream GDAL reads through /vsigzip/); an MTL's first line."""
    if path.suffix.lower() == ".gz":
        return 10
    if path.suffix.lower() in (".tif", ".tiff"):
        with rasterio.open(path) as ds:
            item = ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1)
        return int(item) if item else len(data) // 2
    return data.find(b"\n") + 1 or len(data)


def _readable(path: Path) -> bool:
    with rasterio.open(path) as ds:
        ds.read()
    return True


def check(case: Case, inputs: Path, workdir: Path | None = None) -> tuple[str, str]:
    """Run ``tilefill`` on ``case`` (made from the inputs of :func:`make_inputs`); assert the contract.

    Returns ``("filled", "")`` or ``("refused", the error line)``. Raises AssertionError, naming the case,
    where the contract is broken.
    """
    root = Path(tempfile.mkdtemp(prefix="case-", dir=workdir))
    try:
        source, pattern = _folder_and_file(inputs, case.target)
        folder = root / source.name
        shutil.copytree(source, folder)
        path = next(folder.glob(pattern))
        data = path.read_bytes()
        path.write_bytes(damage(data, case, _header_end(path, data)))
        out = root / "out.tif"
        res = CliRunner().invoke(main, _args(case, folder, out))
        what = f"{case.describe()} (exit {res.exit_code}):\n{res.output}"
        assert res.exception is None or isinstance(res.exception, SystemExit), \
            f"{what}\n{type(res.exception).__name__}: {res.exception}"
        assert "Traceback" not in res.output, what
        left = sorted(p.name for p in root.rglob("*") if "partial" in p.name or p.name.endswith(".tilefill.zarr"))
        assert not left, f"{what}\nleft behind: {left}"
        lines = [line for line in res.output.splitlines() if line.strip()]
        if res.exit_code == 0:
            assert out.is_file() and _readable(out), what
            assert not [line for line in lines if not line.startswith("warning: ")], what
            return "filled", ""
        assert res.exit_code == 1 and not out.exists(), what
        assert len(lines) == 1 and lines[0].startswith("Error: "), what
        # the line names the input: the damaged file, its folder, or the product (whose ID names its files)
        names = (path.name, folder.name, *re.findall(r"L[CEOTM]0\d_L[12]\w{2}_\d{6}_\d{8}_\d{8}_\d\d_T1", path.name))
        assert any(n in lines[0] for n in names), f"{what}\nnames none of {names}"
        return "refused", lines[0][len("Error: "):]
    finally:
        shutil.rmtree(root, ignore_errors=True)


# the kinds of refusal a soak counts: the first pattern a line matches names it
KINDS = (
    ("cannot read the input's pixels", r"^cannot read .*: (band|opening it)"),
    ("not a raster GDAL can read", r"not a raster GDAL can read"),
    ("metadata file unreadable", r"cannot read the metadata file|closes no group"),
    ("metadata field missing or unreadable", r"no \w+ in \w+; not a Landsat|cannot be read$|neither LANDSAT_METADATA"),
    ("file name out of the folder", r"is not a file name|outside the product folder"),
    ("not on the scene's grid", r"not on the scene's grid|px but the scene is|ground control points only"),
    ("band file missing", r"not in the folder|is in the folder \(|names no band file"),
    ("bands disagree", r"bands (of different|on different)"),
    ("no known pixel", r"no known pixel"),
    ("unsupported data", r"unsupported data type|bands have different"),
    ("two products", r"mixes two products"),
    ("sensor, band or QA condition unknown", r"sensor .* is not one|has no band|--mask-qa"),
    ("tile size too small", r"tile size must be at least"),
)


def kind_of(line: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, line):
            return kind
    return "other: " + re.sub(r"\S*/\S*|\d+", "_", line)[:80]
