"""Choosing guides in an archive (``tilefill batch --guide auto``): which other dates fill a scene best.

The archive holds the candidates: every 16 days a scene of the same WRS-2 path/row (8 with two
Landsats flying). For each scene of a batch, :class:`GuideChooser` takes the batch's *other inputs*
(never a filled output, so the choice does not depend on the order scenes are filled in) that

- show the same place: the same WRS-2 path/row, as a Landsat product's MTL or a Landsat scene or
  product ID in the name gives it; without one on either side, bounds that overlap at least
  :data:`MIN_OVERLAP` of the scene's;
- were acquired within ``window`` days of it (dates: :func:`tilefill._guide.acquisition`);
- are accepted as its guide: bands matched by name or position, overlapping, not the scene itself
  (:func:`tilefill._guide.open_guide`, the rule ``--guide`` applies).

A scene whose name carries a Landsat ID of another path/row, or dated beyond the window, is passed
over without being opened; the others' metadata is read once per chooser. The eligible candidates
are ranked by ``score = covered * (1 - days_apart / (2 * window))``: ``covered``, the share of
the scene's gap pixels where the candidate has data in every band (its own nodata, fill, gap
masks and ``--mask-qa`` clouds are its gaps), discounted for time apart, to half at the window's
edge. The first ``count`` with ``covered > 0`` are its guides (ties: the nearer date, then the
path). A scene without a date, without gaps or without a candidate is filled from itself, and
the choice's ``note`` says why.

Cost. ``covered`` is measured on a lattice of the scene's pixels, every ``stride``-th row and
column (``stride``, a power of two, keeps about :data:`LATTICE_SIDE` points per side: 1 for a
scene of that size or smaller, 32 for a Landsat scene), read through the guide's view on the
scene's grid: only the lattice's rows are read (a striped GeoTIFF reads 1/``stride`` of its
strips; a tiled one decodes each tile once), each scene's lattice once per batch where the
grids agree (:data:`CACHED` of them kept). A choice is kept in the scene's done record with the
:attr:`GuideChoice.signature` of what decided it (the parameters, and the size and modification
time of the scene's and every eligible candidate's files): a rerun whose signature still holds
reads no pixel to choose.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Sequence

import numpy as np
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from tilefill._errors import TilefillError
from tilefill._guide import acquisition, landsat_name, open_guide
from tilefill._scene import Scene, SceneInfo, footprint_extents, footprint_window, open_scene

DEFAULT_WINDOW = 48  # days: three Landsat-7 revisits, or six with a second Landsat
DEFAULT_COUNT = 2
MIN_OVERLAP = 0.5  # share of the scene's bounds a candidate without a path/row must overlap
LATTICE_SIDE = 256  # lattice points per side of a scene, about
CACHED = 64  # lattices kept per chooser (a path/row's scenes are found together)
RULE = "covered*(1-days/(2*window))"  # the ranking, as the records name it


@dataclass(frozen=True)
class Acquisition:
    """What the choice knows of a scene from its metadata alone (no pixel read)."""

    path: str
    acquired: date | None
    date_from: str  # "MTL", "DATE_ACQUIRED tag", "file name" or ""
    wrs: tuple[int, int] | None  # WRS-2 (path, row)
    crs_wkt: str | None
    bounds: tuple[float, float, float, float]  # left, bottom, right, top in its own CRS
    shape: tuple[int, int]
    files: tuple[tuple[str, int, int], ...]  # (path, size, mtime_ns) of every input file
    error: str = ""  # why it cannot be read: it is no candidate


@dataclass(frozen=True)
class Candidate:
    """One candidate guide of a scene: how far apart, how much of the gaps it covers, its score.

    ``refused``: why it cannot guide the scene (bands, overlap ...); empty when it can.
    """

    path: str
    days_apart: int
    covered: float = 0.0
    score: float = 0.0
    refused: str = ""


@dataclass(frozen=True)
class GuideChoice:
    """The guides chosen for one scene (best first), the candidates ranked, and why.

    ``gap_share``: the share of the scene's footprint lattice that is gap; ``seconds``: what choosing
    took; ``reused``: taken from the scene's done record (its signature still held), nothing read.
    """

    scene: str
    guides: tuple[str, ...]
    note: str
    candidates: tuple[Candidate, ...] = ()
    signature: str = ""
    stride: int = 0
    gap_share: float | None = None
    seconds: float = 0.0
    reused: bool = False
    rule: str = RULE

    def to_dict(self) -> dict:
        d = asdict(self)
        d["guides"], d["candidates"] = list(self.guides), [asdict(c) for c in self.candidates]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GuideChoice":
        return cls(**{**d, "guides": tuple(d["guides"]), "candidates": tuple(Candidate(**c) for c in d["candidates"])})


def _bounds(info: SceneInfo) -> tuple[float, float, float, float]:
    a = info.affine
    xs = [a.c, a.c + a.a * info.width, a.c + a.b * info.height, a.c + a.a * info.width + a.b * info.height]
    ys = [a.f, a.f + a.e * info.height, a.f + a.d * info.width, a.f + a.d * info.width + a.e * info.height]
    return min(xs), min(ys), max(xs), max(ys)


def _file_stats(paths: Sequence[str]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((str(Path(p).resolve()), st.st_size, st.st_mtime_ns))
    return tuple(out)


def _overlap_share(target: Acquisition, other: Acquisition) -> float:
    """The share of ``target``'s bounds that ``other``'s cover (in the target's CRS)."""
    from rasterio.crs import CRS

    if target.crs_wkt is None or other.crs_wkt is None:  # no georeferencing: the same raster size, or nothing
        return 1.0 if target.crs_wkt == other.crs_wkt and target.shape == other.shape else 0.0
    left, bottom, right, top = other.bounds
    if other.crs_wkt != target.crs_wkt:
        left, bottom, right, top = transform_bounds(CRS.from_wkt(other.crs_wkt), CRS.from_wkt(target.crs_wkt),
                                                    left, bottom, right, top)
    t_left, t_bottom, t_right, t_top = target.bounds
    w = max(0.0, min(right, t_right) - max(left, t_left))
    h = max(0.0, min(top, t_top) - max(bottom, t_bottom))
    area = (t_right - t_left) * (t_top - t_bottom)
    return w * h / area if area > 0 else 0.0


def lattice_stride(height: int, width: int) -> int:
    """Every how many rows and columns coverage is sampled: a power of two, about :data:`LATTICE_SIDE` points a side.

    Examples
    --------
    >>> lattice_stride(61, 61), lattice_stride(7001, 8121)
    (1, 32)
    """
    stride = 1
    while max(height, width) > LATTICE_SIDE * stride:
        stride *= 2
    return stride


@dataclass(frozen=True)
class _Lattice:
    """A scene's pixels on a lattice: where each is known in every band, and (for a target) each lattice row's
    first and last data column at full resolution (its footprint hull)."""

    known: np.ndarray  # bool (rows, cols)
    first: np.ndarray
    last: np.ndarray


def _read_lattice(scene: Scene, stride: int) -> _Lattice:
    """Read ``scene`` on its lattice: rows ``stride // 2``, ``+ stride`` ... (whole, for the hull), columns alike."""
    height, width = scene.info.height, scene.info.width
    rows = np.arange(stride // 2, height, stride)
    cols = slice(stride // 2, None, stride)
    # consecutive rows are read as strips; spaced ones one row at a time
    windows = [Window(0, y, width, min(256, height - y)) for y in range(0, height, 256)] if stride == 1 else \
        [Window(0, int(y), width, 1) for y in rows]
    known, first, last = [], [], []
    for win in windows:
        values = scene.read(win)
        data = scene.has_data(win, values)
        flagged = scene.flagged(win)
        good = data & ~flagged if flagged is not None else data
        known.append(good.all(axis=0)[:, cols])
        any_data = data.any(axis=0)
        has = any_data.any(axis=1)
        first.append(np.where(has, np.argmax(any_data, axis=1), -1))
        last.append(np.where(has, width - 1 - np.argmax(any_data[:, ::-1], axis=1), -1))
    return _Lattice(np.concatenate(known), np.concatenate(first), np.concatenate(last))


class GuideChooser:
    """Chooses each scene's guides among an archive's scenes (see the module's rule).

    Parameters
    ----------
    scenes : list of str or Path
        The archive: every input of the batch (GeoTIFFs and Landsat product folders).
    window : float
        Days apart a guide may be acquired, at most.
    count : int
        Guides per scene, at most.
    bands : str or list, optional
        The batch's band selection (the scenes'; guides are matched to them).
    footprint : {"hull", "full"}
        How a scene's footprint is found: its gaps lie inside it.

    Examples
    --------
    >>> chooser = GuideChooser(["archive/LE07_..._20100815.tif", "archive/LT05_..._20100807.tif"])  # doctest: +SKIP
    >>> choice = chooser.choose("archive/LE07_..._20100815.tif")  # doctest: +SKIP
    >>> choice.guides, choice.note  # doctest: +SKIP
    (('archive/LT05_..._20100807.tif',), '1 of 1 candidate(s) chosen')
    """

    def __init__(self, scenes: Sequence[str | Path], *, window: float = DEFAULT_WINDOW, count: int = DEFAULT_COUNT,
                 bands=None, footprint: str = "hull"):
        if window < 0:
            raise TilefillError(f"--guide-window must be at least 0 days, not {window}")
        if count < 1:
            raise TilefillError(f"--guides must be at least 1, not {count}")
        self.scenes = [str(Path(s).resolve()) for s in scenes]
        self.window, self.count, self.bands, self.footprint = window, count, bands, footprint
        # the scenes by the path/row and date a Landsat ID in their name gives: a target's candidates are found
        # among its path/row's and the unnamed ones (opened once each), not by opening the whole archive
        self._named: dict[str, date] = {}
        self._by_wrs: dict[tuple[int, int], list[str]] = {}
        self._unnamed: list[str] = []
        for path in self.scenes:
            named = landsat_name(Path(path).name)
            if named:
                self._named[path] = named[1]
                self._by_wrs.setdefault(named[0], []).append(path)
            else:
                self._unnamed.append(path)
        self._meta: dict[tuple[str, str], Acquisition] = {}
        self._lattices: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    # -- metadata --------------------------------------------------------------------------------------------

    def acquisition(self, path: str | Path, mask_qa=None, *, as_target: bool = True) -> Acquisition:
        """What the scene's metadata says (date, path/row, bounds, files), read once per chooser.

        ``as_target``: with the batch's band selection (the scene is filled); else with its own bands (it is
        a candidate: its bands are matched to the scene's later, by :func:`~tilefill._guide.open_guide`).
        """
        path = str(Path(path).resolve())
        bands = self.bands if as_target else None
        key = (path, str(mask_qa), str(bands))
        with self._lock:
            if key in self._meta:
                return self._meta[key]
        try:
            with open_scene(path, bands=bands, mask_qa=mask_qa if Path(path).is_dir() else None) as src:
                info = src.info
                when, where = acquisition(info, path, product=src.product is not None)
                named = landsat_name(src.product.product_id) if src.product else None
                named = named or landsat_name(Path(path).name)
                meta = Acquisition(path, when, where, named[0] if named else None, info.crs_wkt, _bounds(info),
                                   (info.height, info.width), _file_stats(src.input_files))
        except (TilefillError, OSError) as exc:
            meta = Acquisition(path, None, "", None, None, (0, 0, 0, 0), (0, 0), (), error=str(exc))
        with self._lock:
            self._meta[key] = meta
        return meta

    def eligible(self, target: Acquisition, mask_qa=None) -> list[tuple[Acquisition, int]]:
        """The other scenes of the target's footprint acquired within the window, and their days apart (metadata)."""
        out = []
        if target.wrs:  # a name with another path/row, or dated beyond the window, is passed over unopened
            named = [p for p in self._by_wrs.get(target.wrs, [])
                     if abs((self._named[p] - target.acquired).days) <= self.window]
            pool = named + self._unnamed
        else:
            pool = self.scenes
        for path in pool:
            if path == target.path:
                continue
            other = self.acquisition(path, mask_qa, as_target=False)
            if other.error or other.acquired is None:
                continue
            days = abs((other.acquired - target.acquired).days)
            if days > self.window:
                continue
            same_place = (other.wrs == target.wrs if other.wrs and target.wrs
                          else _overlap_share(target, other) >= MIN_OVERLAP)
            if same_place:
                out.append((other, days))
        return out

    def signature(self, target: Acquisition, eligible: Sequence[tuple[Acquisition, int]], mask_qa=None) -> str:
        """What decides the choice, hashed: the rule's parameters and the files of the scene and its candidates."""
        parts = {"rule": RULE, "window": self.window, "count": self.count, "bands": str(self.bands),
                 "mask_qa": str(mask_qa), "footprint": self.footprint, "min_overlap": MIN_OVERLAP,
                 "scene": target.files, "candidates": sorted([c.path, c.files] for c, _d in eligible)}
        return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=16).hexdigest()

    # -- the choice ------------------------------------------------------------------------------------------

    def choose(self, scene: str | Path, *, mask_qa=None, recorded: dict | None = None) -> GuideChoice:
        """The guides of ``scene``, best first, and why.

        ``mask_qa``: the scene's QA_PIXEL conditions (as it is filled with; candidates in Landsat product
        folders take them too). ``recorded``: the choice kept in the scene's done record
        (:meth:`GuideChoice.to_dict`): taken as it is when its signature still holds.
        """
        start = time.perf_counter()
        target = self.acquisition(scene, mask_qa)
        path = target.path
        if target.error:
            return GuideChoice(path, (), f"filled from itself: its metadata cannot be read ({target.error})")
        if target.acquired is None:
            return GuideChoice(path, (), "filled from itself: no acquisition date (no MTL, no DATE_ACQUIRED tag, "
                                         "no Landsat scene or product ID in its name)")
        eligible = self.eligible(target, mask_qa)
        signature = self.signature(target, eligible, mask_qa)
        if recorded and recorded.get("signature") == signature:
            try:
                return GuideChoice.from_dict({**recorded, "reused": True, "seconds": time.perf_counter() - start})
            except (TypeError, KeyError):
                pass  # a record of another layout: choose again
        where = f"{target.wrs[0]:03d}/{target.wrs[1]:03d}" if target.wrs else "its footprint"
        if not eligible:
            return GuideChoice(path, (), f"filled from itself: no other scene of path/row {where} within "
                                         f"{self.window:g} days", signature=signature,
                               seconds=time.perf_counter() - start)
        candidates, stride, gap_share = self._rank(target, eligible, mask_qa)
        usable = [c for c in candidates if not c.refused and c.covered > 0]
        chosen = tuple(c.path for c in usable[:self.count])
        if chosen:
            note = f"{len(chosen)} of {len(eligible)} candidate(s) chosen"
        elif gap_share == 0:
            note = "no gap pixel: nothing to guide"
        elif not any(not c.refused for c in candidates):
            note = (f"filled from itself: none of its {len(eligible)} candidate(s) can guide it (" +
                    "; ".join(f"{Path(c.path).name}: {c.refused}" for c in candidates[:3]) + ")")
        else:
            note = f"filled from itself: none of its {len(eligible)} candidate(s) has data at its gap pixels"
        return GuideChoice(path, chosen, note, tuple(candidates), signature, stride, gap_share,
                           time.perf_counter() - start)

    def _rank(self, target: Acquisition, eligible, mask_qa) -> tuple[list[Candidate], int, float]:
        stride = lattice_stride(*target.shape)
        out = []
        with open_scene(target.path, bands=self.bands, mask_qa=mask_qa if Path(target.path).is_dir() else None) as src:
            own = self._lattice(src, target.path, stride)
            inside = np.ones_like(own.known)
            if self.footprint == "hull":
                left, right = footprint_extents(own.first, own.last)
                inside = footprint_window(left, right, 0, len(own.first), src.info.width)[:, stride // 2::stride]
            gaps = inside & ~own.known
            n_gaps, n_inside = int(gaps.sum()), int(inside.sum())
            gap_share = n_gaps / n_inside if n_inside else 0.0
            for other, days in sorted(eligible, key=lambda cd: (cd[1], cd[0].path)):
                if not n_gaps:
                    out.append(Candidate(other.path, days))
                    continue
                try:
                    with ExitStack() as stack:
                        guide, _source = open_guide(other.path, src, mask_qa=mask_qa)
                        stack.enter_context(guide)
                        theirs = self._lattice(guide, other.path, stride)
                except TilefillError as exc:
                    out.append(Candidate(other.path, days, refused=str(exc)))
                    continue
                covered = int((gaps & theirs.known).sum()) / n_gaps
                discount = 1 - days / (2 * self.window) if self.window else 1.0
                out.append(Candidate(other.path, days, round(covered, 6), round(covered * discount, 6)))
        out.sort(key=lambda c: (bool(c.refused), -c.score, c.days_apart, c.path))
        return out, stride, round(gap_share, 6)

    def _lattice(self, scene: Scene, path: str, stride: int) -> _Lattice:
        """A scene's lattice on the grid it is read on; kept while the same scene is read on the same grid."""
        info = scene.info
        key = (path, tuple((b.path, b.index) for b in scene.bands), tuple(scene.gap_rules), info.crs_wkt,
               info.transform, info.height, info.width, stride)
        with self._lock:
            if key in self._lattices:
                self._lattices.move_to_end(key)
                return self._lattices[key]
        lattice = _read_lattice(scene, stride)
        with self._lock:
            self._lattices[key] = lattice
            while len(self._lattices) > CACHED:
                self._lattices.popitem(last=False)
        return lattice
