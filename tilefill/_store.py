"""Tile store: the scene, its gaps and every tile's prediction in one Zarr v3 store on disk.

Layout of ``<workdir>/tiles.zarr``::

    scene      float32 (bands, H, W)  bands scaled to [0, 1] from their known pixels; 0 elsewhere
    gaps       bool    (bands, H, W)  True = gap to fill (inside the footprint, no data or flagged)
    footprint  bool    (H, W)         the scene's footprint (see tilefill._scene)
    tiles      float32 (n_tiles, bands, T, T)  one chunk per tile: the fill's prediction in [0, 1]
    tile_info  float64 (n_tiles, 5)   one chunk per tile: final loss, seconds, iterations, window side,
                                      estimated gap RMSE (self-validation, [0, 1] units; NaN: none)

and, where DIP is blended with classical partners (``fit.blend_method``):

    hidden       bool    (bands, H, W)  known pixels no fit sees (``fit.validation``), drawn once for the
                                        scene (tilefill._distance_blend.SceneHoldout): the blend's weights
                                        and error estimates are measured there

and one chunk per tile of:

    partners     float32 (n_tiles, P, bands, T, T)  each partner's fill of the tile (at hidden pixels:
                                                    its fill made without them)
    tile_weights float64 (n_tiles, bands)           the tile's own partner weight (fixed or blend_auto)
    blend_stats  float64 (n_tiles, P + 1, bands, bins, 4)  the hidden pixels' blend statistics
                                                    (tilefill._distance_blend.BlendStats)

and, with guides (other dates of the place, ``--guide``; tilefill._guide):

    guides       float32 (G, bands, H, W)  each guide on the scene's grid, band for band, scaled to [0, 1]
                                           from its own known pixels; 0 where it has no data
    guides_known bool    (G, bands, H, W)  where each guide has data (its nodata, fill, gap masks and
                                           --mask-qa clouds are its gaps)
    guided_stats float64 (n_tiles, bands, bins, 11)  where DIP is blended: the hidden pixels a guide
                                           covers, their three-way blend statistics
                                           (tilefill._distance_blend.GuidedStats); ``partners`` then holds
                                           the guide's classical fill (``guide.partner``) last, NaN where no
                                           guide speaks

The scene arrays span the grid's extent (``TileGrid.extent``): the scene itself, padded where the
scene is smaller than one tile. The padding is collar: outside the footprint, so never known, never
a gap, never hidden and never written out (the mosaic crops it); a scene at least a tile wide and high
has none.

Attributes (``attrs["tilefill"]``) hold the scene's georeferencing (CRS WKT, transform), band
names, dtype and nodata, the grid, the full config, the per-band scaling and the run key (see
``tilefill._runkey``), so a run can be inspected, and picked up, from the store alone. Workers
write disjoint chunks only, and Zarr writes each chunk to a temporary file renamed into place,
so a worker killed mid-write leaves the old chunk or the new one, never half of one. A tile is
done once its ``tile_info`` chunk exists; it is written after the prediction. The done tiles are
found by one listing of ``tile_info``'s chunks (:meth:`TileStore.tiles_done`).

A store being built holds ``{"building": true, "run_key": ...}`` only: it is ours (it may be
replaced), but it has nothing to resume. A store is removed the same way round: that marker first,
then everything, so a removal cut short leaves a store that is ours and has nothing to resume.

Where it lives. A local folder (zarr's ``LocalStore``), or a prefix on object storage
(``s3://bucket/prefix/tiles.zarr``, ``gs://``, ``az://``: zarr's ``ObjectStore`` over obstore, with
credentials and endpoint from the environment, :mod:`tilefill._objstore`): :func:`zarr_store` picks
it from the location, and everything else is the same code. Workers open a store by its location
(a path or a URL), so on object storage they share nothing but the bucket. An object appears whole
at its PUT, so a chunk there is never half written either.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from tilefill._config import Config
from tilefill._distance_blend import HOLDOUT_CELL, HOLDOUT_SHIFT, SceneHoldout
from tilefill._errors import InputReadError, TilefillError
from tilefill._grid import TileGrid
from tilefill._remote import is_url
from tilefill._scene import Scene, SceneInfo, footprint_extents, footprint_window
from tilefill._version import __version__

if TYPE_CHECKING:
    from tilefill._guide import GuideSource

STRIP = 512  # rows read from the input at a time
# chunk side of the scene arrays: a 256 px tile window touches at most 4 chunks of 256 (with 512 px
# chunks, 4 chunks of 4x the size), and decoding them is most of a cheap tile's time
CHUNK_PX = 256
TILE_INFO_FIELDS = ("final_loss", "seconds", "iterations", "window", "estimated_rmse")
# The store is scratch, read a few times and removed after the write: its float arrays (scaled values, fills)
# are stored raw, its masks with zstd at level 1. Zarr's default (zstd level 3) compressed a scene chunk of
# noisy float32 only 1.8x, at 19 ms to encode and 4 ms to decode each 1 MB chunk (tens of seconds of a
# full scene's prepare, most of a cheap tile's reading); masks shrink 86x at 0.1 ms (benchmarks/datapath.py)
FLOAT_CODECS = None
MASK_CODECS = zarr.codecs.ZstdCodec(level=1)
# chunk files side by side in their array's folder ("c.12.0.0.0"), not a folder per index ("c/12/0/0/0"): each
# write made and each removal of the store walked 3-4 folders per chunk (the removal alone was a third of a
# small scene's write stage)
CHUNK_KEYS = {"name": "default", "separator": "."}
_TILE_CHUNK = re.compile(r"^c\.(\d+)\.0$")  # a per-tile array's chunk key (CHUNK_KEYS): c.INDEX.0


def store_location(where: str | Path) -> str | Path:
    """A tile store's location as its workers open it: a URL as it is (no trailing ``/``), a local path absolute
    (workers of an existing cluster have working directories of their own)."""
    if is_url(where):
        return str(where).rstrip("/")
    return Path(os.path.abspath(where))


def zarr_store(where: str | Path, *, read_only: bool = False):
    """The zarr store at a location: a local folder, or an object storage URL (``s3://bucket/prefix``: zarr's
    ``ObjectStore`` over obstore, set up from the environment, :meth:`tilefill._objstore.ObjectLocation.store`)."""
    if is_url(where):
        from zarr.storage import ObjectStore

        env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_STORE_ENV)))
        return ObjectStore(_object_store(str(where), env), read_only=read_only)
    return zarr.storage.LocalStore(where, read_only=read_only)


_STORE_ENV = ("AWS_", "GOOGLE_", "AZURE_")  # what an object store's client is made from


@lru_cache(maxsize=8)
def _object_store(url: str, env: tuple):
    """One obstore client per store and environment in a process: a worker's tasks reuse its connections."""
    from tilefill._objstore import ObjectLocation

    return ObjectLocation.parse(url).store()


async def _list_dir(store, prefix: str) -> list[str]:
    # the listing is made inside the coroutine: zarr's ObjectStore starts its request where it is called
    return [name async for name in store.list_dir(prefix)]


@dataclass(frozen=True)
class Scaling:
    """Per-band linear map between the input's units and the network's [0, 1]."""

    lo: tuple[float, ...]
    hi: tuple[float, ...]

    def _arrays(self, bands: int):
        lo = np.asarray(self.lo, dtype=np.float64).reshape(bands, 1, 1)
        hi = np.asarray(self.hi, dtype=np.float64).reshape(bands, 1, 1)
        return lo, hi - lo

    def forward(self, values: np.ndarray) -> np.ndarray:
        """``values`` (bands, h, w) in [0, 1] units, float32 (exact for integer inputs up to 24 bits)."""
        lo, span = self._arrays(values.shape[0])
        out = values.astype(np.float32)
        out -= lo.astype(np.float32)
        out /= span.astype(np.float32)
        return out

    def inverse_at(self, scaled: np.ndarray, where: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
        """Values of ``scaled`` (bands, h, w) at the bool mask ``where``, back in the input's units (in the mask's
        order: band by band). ``weight``: ``scaled`` is a weighted sum, divided by it (nonzero at ``where``) first.

        One band at a time and only where asked: 3x faster than indexing the bands of every pixel, and 5x
        faster than dividing a whole strip (its temporaries' first touch is most of the cost).
        """
        lo, hi = np.asarray(self.lo, dtype=np.float64), np.asarray(self.hi, dtype=np.float64)
        out = []
        for b in range(scaled.shape[0]):
            v = scaled[b][where[b]]
            if weight is not None:
                v = v / weight[b][where[b]]
            out.append(v.astype(np.float64) * (hi[b] - lo[b]) + lo[b])
        return np.concatenate(out)


class TileStore:
    """A run's Zarr store. Create it with :func:`build_store`, reopen it with :meth:`open`."""

    def __init__(self, group: zarr.Group, path: str | Path):
        self.group = group
        self.path = path
        meta = group.attrs["tilefill"]
        self.meta = meta
        self.info = SceneInfo.from_attrs(meta["scene"])
        self.config: Config = Config.from_dict(meta["config"])
        self.grid = TileGrid(self.info.height, self.info.width, meta["grid"]["size"], meta["grid"]["overlap"],
                             self.info.affine, crs=self.info.crs_wkt, multiple=self.config.network.multiple)
        self.scaling = Scaling(tuple(meta["scaling"]["lo"]), tuple(meta["scaling"]["hi"]))

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "TileStore":
        """The store at a local path or a URL (:func:`zarr_store`)."""
        path = store_location(path)
        try:
            group = zarr.open_group(zarr_store(path, read_only=mode == "r"), mode=mode, zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise TilefillError(f"no tile store at {path}") from None
        if "tilefill" not in group.attrs:
            raise TilefillError(f"{path} is a Zarr store but not a tilefill tile store")
        if group.attrs["tilefill"].get("building"):
            raise TilefillError(f"tile store {path} was never finished (its build was interrupted)")
        return cls(group, path)

    @property
    def tiles_to_fit(self) -> list[int]:
        return list(self.meta["tiles_to_fit"])

    def array(self, name: str) -> zarr.Array:
        """One of the store's arrays, its metadata read once per open store (a task reads several windows)."""
        arrays = self.__dict__.setdefault("_arrays", {})
        if name not in arrays:
            arrays[name] = self.group[name]
        return arrays[name]

    @cached_property
    def _members(self) -> frozenset:
        return frozenset(self.group.array_keys())

    def read_hidden(self, y: int, x: int, side: int) -> np.ndarray | None:
        """The scene's hidden pixels in a square window (bands, side, side); None if the store has none."""
        return self.read_block(y, x, side, side, hidden=True).get("hidden")

    def read_window(self, y: int, x: int, side: int) -> tuple[np.ndarray, np.ndarray]:
        """Scaled values and the known-pixel mask of a square window: float32 and bool (bands, side, side)."""
        block = self.read_block(y, x, side, side)
        return block["image"], block["known"]

    def read_block(self, y: int, x: int, height: int, width: int, *, hidden: bool = False,
                   guides: bool = False) -> dict:
        """The scene arrays over rows [y, y + height) and columns [x, x + width), in one read each.

        ``image`` (scaled values, float32) and ``known`` (bool), (bands, height, width); with ``hidden``,
        the hidden pixels (where the store has them); with ``guides``, ``guides`` and ``guides_known``,
        (G, bands, height, width) (where it has guides).
        """
        rows, cols = slice(y, y + height), slice(x, x + width)
        gaps = np.asarray(self.array("gaps")[:, rows, cols])
        inside = np.asarray(self.array("footprint")[rows, cols])
        out = {"image": np.asarray(self.array("scene")[:, rows, cols]), "known": ~gaps & inside[None]}
        if hidden and "hidden" in self._members:
            out["hidden"] = np.asarray(self.array("hidden")[:, rows, cols])
        if guides and self.guide_count:
            out["guides"] = np.asarray(self.array("guides")[:, :, rows, cols])
            out["guides_known"] = np.asarray(self.array("guides_known")[:, :, rows, cols])
        return out

    @property
    def guide_count(self) -> int:
        """How many guides the store holds (0: the scene is filled from itself)."""
        return self.array("guides").shape[0] if "guides" in self._members else 0

    def read_guides(self, y: int, x: int, side: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Every guide's scaled values and known pixels in a square window, (G, bands, side, side); None without."""
        if not self.guide_count:
            return None
        block = self.read_block(y, x, side, side, guides=True)
        return block["guides"], block["guides_known"]

    @property
    def has_partners(self) -> bool:
        """Whether tiles keep their classical partners' fills apart from DIP's (the mosaic blends them)."""
        return "partners" in self._members

    @property
    def guided(self) -> bool:
        """Whether tiles keep a guide's classical fill beside DIP's and its partners' (last of ``partners``)."""
        return "guided_stats" in self._members

    def write_tile(self, index: int, prediction: np.ndarray, info: dict, *, partners: np.ndarray | None = None,
                   weights: np.ndarray | None = None, stats: np.ndarray | None = None,
                   guided_stats: np.ndarray | None = None) -> None:
        """Write a tile's chunks; ``tile_info`` last, since it marks the tile done."""
        self.write_tiles([index], [prediction], [info], partners=None if partners is None else [partners],
                         weights=None if weights is None else [weights], stats=None if stats is None else [stats],
                         guided_stats=None if guided_stats is None else [guided_stats])

    def write_tiles(self, indices: Sequence[int], predictions: Sequence[np.ndarray], infos: Sequence[dict], *,
                    partners: Sequence[np.ndarray] | None = None, weights: Sequence[np.ndarray] | None = None,
                    stats: Sequence[np.ndarray] | None = None,
                    guided_stats: Sequence[np.ndarray] | None = None) -> None:
        """Write several tiles' chunks, one write per array; the ``tile_info`` chunks last, once every other
        chunk of every tile is written: a tile counts as done only then, so an interrupted task leaves its
        tiles done or to do, never half written."""
        if not len(indices):
            return
        at = (np.asarray(indices, dtype=np.int64),)
        self.array("tiles").set_orthogonal_selection(at, np.stack(predictions).astype(np.float32))
        if self.has_partners:
            self.array("partners").set_orthogonal_selection(at, np.stack(partners).astype(np.float32))
            self.array("tile_weights").set_orthogonal_selection(at, np.stack(weights))
            self.array("blend_stats").set_orthogonal_selection(at, np.stack(stats))
            if self.guided:
                self.array("guided_stats").set_orthogonal_selection(at, np.stack(guided_stats))
        self.array("tile_info").set_orthogonal_selection(
            at, np.array([[float(info.get(k, np.nan)) for k in TILE_INFO_FIELDS] for info in infos]))

    def read_partners(self, index: int) -> np.ndarray:
        """(P, bands, T, T): each classical partner's fill of the tile."""
        return np.asarray(self.array("partners")[index])

    def tile_weights(self) -> np.ndarray:
        """(n_tiles, bands): each tile's own partner weight; NaN for tiles not fitted."""
        return np.asarray(self.array("tile_weights")[:])

    def blend_stats(self) -> np.ndarray:
        """(n_tiles, P + 1, bands, bins, 4): every tile's hidden-pixel statistics; NaN for tiles not fitted."""
        return np.asarray(self.array("blend_stats")[:])

    def guided_stats(self) -> np.ndarray:
        """(n_tiles, bands, bins, 11): every tile's statistics of the hidden pixels a guide covers."""
        return np.asarray(self.array("guided_stats")[:])

    def tile_info(self, index: int) -> dict:
        """A finished tile's statistics (``TILE_INFO_FIELDS``); NaN where not recorded."""
        return dict(zip(TILE_INFO_FIELDS, np.asarray(self.array("tile_info")[index]).tolist()))

    def tile_infos(self, indices: Sequence[int]) -> dict[int, dict]:
        """The statistics of those of ``indices`` that are done (``TILE_INFO_FIELDS``), in one read of their rows
        (their chunks only)."""
        if not len(indices):
            return {}
        rows = np.asarray(self.array("tile_info").get_orthogonal_selection((np.asarray(indices, dtype=np.int64),)))
        seconds = TILE_INFO_FIELDS.index("seconds")
        # seconds is written for every finished tile; final_loss is NaN for the classical fills
        return {i: dict(zip(TILE_INFO_FIELDS, row.tolist())) for i, row in zip(indices, rows)
                if np.isfinite(row[seconds])}

    def tile_done(self, index: int) -> bool:
        return bool(np.isfinite(self.array("tile_info")[index, TILE_INFO_FIELDS.index("seconds")]))

    def listed_done(self) -> frozenset[int]:
        """The tiles whose ``tile_info`` chunk exists, from one listing of that array's chunks (on object storage
        one LIST request per thousand tiles, not a request per tile)."""
        names = sync(_list_dir(self.group.store, _join(self.group.path, "tile_info")))
        return frozenset(int(m[1]) for m in map(_TILE_CHUNK.match, names) if m)

    def tiles_done(self, indices) -> list[int]:
        """Those of ``indices`` already done: one listing of ``tile_info``'s chunks, then one read of those."""
        return list(self.done_infos(indices))

    def done_infos(self, indices) -> dict[int, dict]:
        """The statistics of those of ``indices`` already done, in the order of ``indices`` (:meth:`tiles_done`)."""
        listed = self.listed_done()
        return self.tile_infos([i for i in indices if i in listed])

    def read_tile(self, index: int) -> np.ndarray:
        return np.asarray(self.array("tiles")[index])

    def read_tiles(self, indices: Sequence[int]) -> np.ndarray:
        """(n, bands, T, T): the predictions of several tiles, in one read."""
        return np.asarray(self.array("tiles").get_orthogonal_selection((np.asarray(indices, dtype=np.int64),)))

    def read_partners_of(self, indices: Sequence[int]) -> np.ndarray:
        """(n, P, bands, T, T): the partners' fills of several tiles, in one read."""
        return np.asarray(self.array("partners").get_orthogonal_selection((np.asarray(indices, dtype=np.int64),)))


class WindowReader:
    """The square windows a task's tiles are fitted on, read a block at a time.

    The windows of tiles side by side in one row of the grid (a task's tiles are consecutive) lie in
    one rectangle: it is read once (``TileStore.read_block``, each array in one read) and each window cut
    from it, a copy (a fill may write into its window). A window beyond the blocks (a tile fitted on a
    wider window for context) is read on its own. ``hidden`` / ``guides``: read those arrays too.
    """

    def __init__(self, store: TileStore, indices: Sequence[int], *, hidden: bool = False, guides: bool = False):
        self.store, self.hidden, self.guides = store, hidden, guides
        grid = store.grid
        runs: list[list] = []  # tiles of one grid row with consecutive columns
        for i in sorted(set(indices)):
            tile = grid[i]
            if runs and runs[-1][-1].row == tile.row and runs[-1][-1].col + 1 == tile.col:
                runs[-1].append(tile)
            else:
                runs.append([tile])
        self._blocks = [(run[0].y, run[0].x, run[0].size, run[-1].x + run[-1].size - run[0].x) for run in runs]
        self._read: dict[int, dict] = {}

    def _block(self, y: int, x: int, side: int) -> tuple[dict, int, int] | None:
        for k, (by, bx, bh, bw) in enumerate(self._blocks):
            if by <= y and y + side <= by + bh and bx <= x and x + side <= bx + bw:
                if k not in self._read:
                    self._read[k] = self.store.read_block(by, bx, bh, bw, hidden=self.hidden, guides=self.guides)
                return self._read[k], y - by, x - bx
        return None

    def window(self, y: int, x: int, side: int) -> dict:
        """The arrays of ``read_block`` over one square window (copies)."""
        found = self._block(y, x, side)
        if found is None:
            return self.store.read_block(y, x, side, side, hidden=self.hidden, guides=self.guides)
        block, oy, ox = found
        return {k: v[..., oy:oy + side, ox:ox + side].copy() for k, v in block.items()}

def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def _read_meta(store) -> dict | None:
    """``attrs["tilefill"]`` of the tile store in a zarr store; None if there is none or it is not ours. (An
    object store that does not answer raises: it is not taken for an empty one.)"""
    try:
        raw = sync(store.get("zarr.json", prototype=default_buffer_prototype()))
        return json.loads(raw.to_bytes()).get("attributes", {})["tilefill"]
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None


def _occupied(where: str | Path, store) -> bool:
    """Whether something is at the location (a local folder counts even when empty, as it always has)."""
    return not sync(store.is_empty("")) if is_url(where) else Path(where).exists()


def _mark_building(store, run_key: str | None) -> None:
    """Make the store's root say ``building``: ours, nothing to resume (see the module's docstring)."""
    doc = {"zarr_format": 3, "node_type": "group",
           "attributes": {"tilefill": {"version": __version__, "building": True, "run_key": run_key}}}
    sync(store.set("zarr.json", default_buffer_prototype().buffer.from_bytes(json.dumps(doc).encode())))


def remove_store(where: str | Path) -> None:
    """Remove the tile store at a local path or URL (nothing there: nothing to do): the ``building`` marker first,
    so a removal cut short leaves a store a later run replaces rather than one it would try to resume."""
    store = zarr_store(store_location(where))
    if not _occupied(where, store):
        return
    _mark_building(store, None)
    sync(store.delete_dir(""))


def resumable_store(path: str | Path, run_key: str, *, restart: bool = False,
                    config: Config | None = None) -> TileStore | None:
    """The store at ``path`` if it holds this run's finished tiles; None if there is nothing to resume.

    A complete store made under another key is refused: its tiles belong to another input or
    other parameters, and mixing them would write a scene neither run asked for. ``restart``
    discards whatever is there (:func:`build_store` replaces it). ``config``: the resuming run's,
    whose speed settings (``engine.*``, ``fit.device``: not in the key) the remaining tiles get.

    Examples
    --------
    >>> store = resumable_store("work/tiles.zarr", str(key))  # doctest: +SKIP
    >>> store.tiles_done(store.tiles_to_fit)  # doctest: +SKIP
    """
    path = store_location(path)
    meta = _read_meta(zarr_store(path, read_only=True))
    if restart or meta is None or meta.get("building"):
        return None
    if meta.get("run_key") != run_key:
        old = (meta.get("run_key") or "none")[:16]
        raise TilefillError(
            f"work store {path} holds another run (key {old}, this run {run_key[:16]}: the input or the parameters "
            "changed); pass --restart (or delete it) to start over, or choose another --workdir")
    store = TileStore.open(path, mode="r+")
    if config is not None:
        from tilefill._runkey import speed_settings

        store.config = store.config.override(speed_settings(config))
        store.meta = {**store.meta, "config": store.config.to_dict()}
        store.group.attrs["tilefill"] = store.meta  # what the workers read
    return store


def _create_or_replace(path: str | Path, run_key: str | None) -> zarr.Group:
    store = zarr_store(path)
    if _occupied(path, store):
        # Only ever delete what is recognisably our own store, never a user's folder or objects.
        if _read_meta(store) is None:
            raise TilefillError(f"work store {path} exists and is not a tilefill store; choose another --workdir")
        remove_store(path)
    # ours from the first byte: an interrupted build can be recognised and replaced
    _mark_building(store, run_key)
    return zarr.open_group(store, mode="r+", zarr_format=3)


def _create(group: zarr.Group, name: str, **kwargs) -> zarr.Array:
    """One of the store's arrays, its chunk files side by side (:data:`CHUNK_KEYS`)."""
    return group.create_array(name, chunk_key_encoding=CHUNK_KEYS, **kwargs)


def _write_holdout(group: zarr.Group, holdout: SceneHoldout, height: int, width: int) -> None:
    """The scene's hidden pixels (``height`` x ``width``, the scene's: none in the padding), strip by strip from
    the gaps just written."""
    gaps_arr, fp_arr = group["gaps"], group["footprint"]
    hidden = _create(group, "hidden", shape=gaps_arr.shape, chunks=(gaps_arr.shape[0], CHUNK_PX, CHUNK_PX),
                     dtype="bool", fill_value=False, compressors=MASK_CODECS)
    above = np.zeros((HOLDOUT_SHIFT, width), dtype=bool)
    for y in range(0, height, STRIP):
        rows = slice(y, min(y + STRIP, height))
        gaps = np.asarray(gaps_arr[:, rows, :width])
        known = ~gaps & np.asarray(fp_arr[rows, :width])[None]
        any_gap = gaps.any(axis=0)
        hidden[:, rows, :width] = known & holdout.strip(y, any_gap, above)[None]
        above = np.concatenate([above, any_gap])[-HOLDOUT_SHIFT:]


@dataclass(frozen=True)
class _Extent:
    """What the statistics pass finds: each band's range over its known pixels, and the footprint's
    column range ``[left, right]`` per row."""

    scaling: Scaling
    left: np.ndarray
    right: np.ndarray

    def is_full(self, width: int) -> bool:
        return bool((self.left <= 0).all() and (self.right >= width - 1).all())


def _statistics_pass(scene: Scene, footprint: str) -> _Extent:
    """First pass over the input: each band's known range (for the scaling) and each row's data extent (for
    the footprint hull, or the whole raster with ``footprint="full"``)."""
    bands, height, width = scene.shape
    lo = np.full(bands, np.inf)
    hi = np.full(bands, -np.inf)
    first = np.full(height, -1, dtype=np.int64)
    last = np.full(height, -1, dtype=np.int64)
    for win in scene.strips(STRIP):
        values = scene.read(win)
        data = scene.has_data(win, values)
        flagged = scene.flagged(win)
        known = data & ~flagged if flagged is not None else data
        for b in range(bands):
            v = values[b][known[b]]
            if v.size:
                lo[b] = min(lo[b], float(v.min()))
                hi[b] = max(hi[b], float(v.max()))
        # pixels an explicit mask flags are inside the scene by definition: they widen the hull
        rows_any = (data | flagged).any(axis=0) if flagged is not None and scene.flags_mark_footprint else data.any(axis=0)
        has = rows_any.any(axis=1)
        y = win.row_off
        first[y:y + win.height][has] = np.argmax(rows_any[has], axis=1)
        last[y:y + win.height][has] = width - 1 - np.argmax(rows_any[has, ::-1], axis=1)
    if not np.isfinite(lo).all():
        empty = [scene.info.band_names[b] for b in np.flatnonzero(~np.isfinite(lo))]
        source = os.path.dirname(str(scene.info.sources[0])) if scene.product else scene.info.sources[0]  # a URL keeps its //
        raise TilefillError(f"no known pixel in band(s) {', '.join(empty)} of {source}: nothing to fill from")
    hi = np.where(hi > lo, hi, lo + 1)  # a constant band still maps to [0, 1]
    scaling = Scaling(tuple(lo.tolist()), tuple(hi.tolist()))
    if footprint == "full":
        return _Extent(scaling, np.zeros(height, dtype=np.int64), np.full(height, width - 1, dtype=np.int64))
    return _Extent(scaling, *footprint_extents(first, last))


def _create_layout(group: zarr.Group, shape: tuple[int, int, int], grid: TileGrid, config: Config,
                   guides: int = 0) -> None:
    """The store's arrays (see the module's layout), empty: the scene's, and one chunk per tile of the others."""
    bands, height, width = shape
    chunk = (bands, CHUNK_PX, CHUNK_PX)
    floats = dict(dtype="float32", compressors=FLOAT_CODECS)
    masks = dict(dtype="bool", fill_value=False, compressors=MASK_CODECS)
    _create(group, "scene", shape=shape, chunks=chunk, fill_value=0.0, **floats)
    if guides:
        _create(group, "guides", shape=(guides, *shape), chunks=(1, *chunk), fill_value=0.0, **floats)
        _create(group, "guides_known", shape=(guides, *shape), chunks=(1, *chunk), **masks)
    _create(group, "gaps", shape=shape, chunks=chunk, **masks)
    _create(group, "footprint", shape=(height, width), chunks=(CHUNK_PX, CHUNK_PX), **masks)
    size, n = grid.size, len(grid)
    # "chunk exists" means "tile done": keep chunks even when they hold only the fill value
    _create(group, "tiles", shape=(n, bands, size, size), chunks=(1, bands, size, size), fill_value=np.nan,
            config={"write_empty_chunks": True}, **floats)
    _create(group, "tile_info", shape=(n, len(TILE_INFO_FIELDS)), chunks=(1, len(TILE_INFO_FIELDS)),
            dtype="float64", fill_value=np.nan, config={"write_empty_chunks": True})
    if config.method == "dip" and config.fit.blends:
        from tilefill._distance_blend import N_BINS

        partners = len(config.fit.blend_methods) + bool(guides)  # the guide's fill last
        if guides:
            _create(group, "guided_stats", shape=(n, bands, N_BINS, 11), chunks=(1, bands, N_BINS, 11),
                    dtype="float64", fill_value=np.nan)
        _create(group, "partners", shape=(n, partners, bands, size, size), chunks=(1, partners, bands, size, size),
                fill_value=np.nan, **floats)
        _create(group, "tile_weights", shape=(n, bands), chunks=(1, bands), dtype="float64", fill_value=np.nan)
        classical = len(config.fit.blend_methods)
        _create(group, "blend_stats", shape=(n, classical + 1, bands, N_BINS, 4),
                chunks=(1, classical + 1, bands, N_BINS, 4), dtype="float64", fill_value=np.nan)


@dataclass
class _Written:
    """What the write pass counts on its way: the gap pixels, per row and tile column the rows that hold
    one, and (for the hidden pixels) the holdout's candidate cells and the pixels known in every band."""

    gap_pixels: int
    col_gap_rows: np.ndarray
    cell_candidates: np.ndarray | None
    known_everywhere: int = 0


class _WriteBehind:
    """The store's writes of one strip in a thread while the next strip is read and worked: at most one strip
    waits (memory stays a strip or two), and a write's error surfaces at the next submit or on leaving."""

    def __enter__(self) -> "_WriteBehind":
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tilefill-store-write")
        self._pending = None
        return self

    def submit(self, fn, *args) -> None:
        if self._pending is not None:
            self._pending.result()
        self._pending = self._pool.submit(fn, *args)

    def __exit__(self, *exc) -> None:
        try:
            if self._pending is not None and exc[0] is None:
                self._pending.result()
        finally:
            self._pool.shutdown(wait=True)  # never leave a write running into a store being removed


def _write_pass(scene: Scene, group: zarr.Group, extent: _Extent, grid: TileGrid, holdout: bool) -> _Written:
    """Second pass over the input: the scaled scene, its gaps and footprint into the store, strip by strip (into
    the scene's part of arrays padded to the grid's extent)."""
    _bands, height, width = scene.shape
    scene_arr, gaps_arr, fp_arr = group["scene"], group["gaps"], group["footprint"]
    out = _Written(0, np.zeros((grid.extent[0], len(grid.col_starts)), dtype=np.int64),
                   np.zeros((-(-height // HOLDOUT_CELL), -(-width // HOLDOUT_CELL)), np.int64) if holdout else None)
    above = np.zeros((HOLDOUT_SHIFT, width), dtype=bool)

    def store(y: int, h: int, scaled: np.ndarray, gaps: np.ndarray, inside: np.ndarray) -> None:
        scene_arr[:, y:y + h, :width] = scaled
        gaps_arr[:, y:y + h, :width] = gaps
        fp_arr[y:y + h, :width] = inside

    with _WriteBehind() as behind:
        for win in scene.strips(STRIP):
            y, h = win.row_off, win.height
            values = scene.read(win)
            data = scene.has_data(win, values)
            flagged = scene.flagged(win)
            inside = footprint_window(extent.left, extent.right, y, h, width)
            gaps = inside[None] & (~data | (flagged if flagged is not None else False))
            known = inside[None] & ~gaps
            scaled = extent.scaling.forward(values)
            scaled[~known] = 0  # gap pixels hold whatever the input had: nodata, NaN
            behind.submit(store, y, h, scaled, gaps, inside)
            any_gap = gaps.any(axis=0)
            out.gap_pixels += int(gaps.sum())
            if holdout:
                SceneHoldout.count(SceneHoldout.shapes(any_gap, above) & inside, y, out.cell_candidates)
                out.known_everywhere += int(known.all(axis=0).sum())
                above = np.concatenate([above, any_gap])[-HOLDOUT_SHIFT:]
            for c, x in enumerate(grid.col_starts):
                out.col_gap_rows[y:y + h, c] = any_gap[:, x:x + grid.size].sum(axis=1)
    return out


def _guide_known(guide: Scene, win, values: np.ndarray) -> np.ndarray:
    """Where a guide has data in a window: not its nodata, fill or flagged pixels (a guide is never assumed clean)."""
    known = guide.has_data(win, values)
    flagged = guide.flagged(win)
    return known & ~flagged if flagged is not None else known


def _write_guides(guides: Sequence[Scene], group: zarr.Group) -> list[dict]:
    """Each guide into the store, scaled by its own known range: a statistics pass, then a write pass.

    Returns, per guide, its scaling and how many of the scene's gap pixels it covers (band-pixels).
    """
    out = []
    gaps_arr = group["gaps"]
    for g, guide in enumerate(guides):
        bands = guide.shape[0]
        lo, hi = np.full(bands, np.inf), np.full(bands, -np.inf)
        for win in guide.strips(STRIP):
            values = guide.read(win)
            known = _guide_known(guide, win, values)
            for b in range(bands):
                if known[b].any():
                    v = values[b][known[b]]
                    lo[b], hi[b] = min(lo[b], float(v.min())), max(hi[b], float(v.max()))
        lo = np.where(np.isfinite(lo), lo, 0.0)
        hi = np.where(np.isfinite(hi) & (hi > lo), hi, lo + 1)
        scaling = Scaling(tuple(lo.tolist()), tuple(hi.tolist()))
        covered = 0
        for win in guide.strips(STRIP):
            y, h = win.row_off, win.height
            values = guide.read(win)
            known = _guide_known(guide, win, values)
            scaled = scaling.forward(values)
            scaled[~known] = 0
            w = scaled.shape[-1]  # the scene's width: the store's arrays may be padded beyond it
            group["guides"][g, :, y:y + h, :w] = scaled
            group["guides_known"][g, :, y:y + h, :w] = known
            covered += int((known & np.asarray(gaps_arr[:, y:y + h, :w])).sum())
        out.append({"scaling": {"lo": list(scaling.lo), "hi": list(scaling.hi)}, "gap_pixels_covered": covered})
    return out


def _tiles_to_fit(grid: TileGrid, col_gap_rows: np.ndarray, keep_known: bool) -> list[int]:
    """The tiles with a gap pixel (every tile, for the full reconstruction that replaces known pixels too)."""
    if not keep_known:
        return [t.index for t in grid]
    cum = np.concatenate([np.zeros((1, col_gap_rows.shape[1]), dtype=np.int64), np.cumsum(col_gap_rows, axis=0)])
    return [t.index for t in grid if cum[t.y + grid.size, t.col] - cum[t.y, t.col] > 0]


def build_store(scene: Scene, grid: TileGrid, config: Config, path: str | Path, *, footprint: str = "hull",
                run_key: str | None = None, guides: Sequence[tuple[Scene, GuideSource]] = ()) -> TileStore:
    """Read the scene in strips, find gaps and footprint, and write the tile store.

    Two passes over the input, each holding one strip of ``STRIP`` rows: the first finds each
    band's range over its known pixels and each row's data extent (for the footprint hull),
    the second writes the scaled scene and the masks. Then the scene's hidden pixels (with
    ``fit.validation``, where DIP is blended) and the tiles to fit. ``run_key`` (see
    ``tilefill._runkey``) is kept in the attributes, for :func:`resumable_store`. ``guides``: other dates
    of the place, open on the scene's grid (:func:`tilefill._guide.open_guide`), each read in two more
    passes.

    Examples
    --------
    >>> from tilefill._scene import open_scene
    >>> with open_scene("scene.tif") as scene:  # doctest: +SKIP
    ...     grid = TileGrid.from_scene(scene.info, load_config("fast"))
    ...     store = build_store(scene, grid, load_config("fast"), "work/tiles.zarr")
    """
    if footprint not in ("hull", "full"):
        raise TilefillError(f"footprint must be 'hull' or 'full', not {footprint!r}")
    extent = _statistics_pass(scene, footprint)
    path = store_location(path)
    group = _create_or_replace(path, run_key)
    _create_layout(group, (scene.shape[0], *grid.extent), grid, config, len(guides))
    holdout = config.method == "dip" and config.fit.blends and config.fit.validation > 0
    try:
        written = _write_pass(scene, group, extent, grid, holdout)
        guide_meta = [{**vars(source), **stored}
                      for (_guide, source), stored in zip(guides, _write_guides([g for g, _s in guides], group))]
    except InputReadError:  # an input that fails to read (a guide, a file changed since the first pass)
        try:
            remove_store(path)  # ours, half built: nothing in it to resume
        except Exception:  # noqa: BLE001 - the input's error is the one to report; a rerun replaces the store
            pass
        raise
    if holdout:
        height, width = scene.shape[1:]
        _write_holdout(group, SceneHoldout((height, width), share=config.fit.validation,
                                           cell_candidates=written.cell_candidates, known=written.known_everywhere,
                                           seed=config.fit.seed), height, width)
    group.attrs["tilefill"] = {
        "version": __version__,
        "run_key": run_key,
        "scene": scene.info.to_attrs(),
        "grid": {"size": grid.size, "overlap": grid.overlap, "shape": list(grid.shape)},
        "config": config.to_dict(),
        "scaling": {"lo": list(extent.scaling.lo), "hi": list(extent.scaling.hi)},
        "footprint": footprint,
        "gap_pixels": written.gap_pixels,
        "guides": guide_meta,
        "footprint_is_full": extent.is_full(scene.shape[2]),
        "tiles_to_fit": _tiles_to_fit(grid, written.col_gap_rows, config.fit.keep_known),
        "tile_info_fields": list(TILE_INFO_FIELDS),
        # GeoZarr-style georeferencing so other tools can place the arrays
        "proj:wkt2": scene.info.crs_wkt,
        "spatial:transform": list(scene.info.transform),
    }
    return TileStore(group, path)
