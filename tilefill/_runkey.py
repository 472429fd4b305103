"""The run key: one hash of everything that decides a run's tile predictions.

A key covers the input's content (every band file, mask, gap-mask and QA_PIXEL file and a
Landsat product's metadata, read in 1 MiB chunks through BLAKE2b, so a file rewritten in place
under the same name is caught), the parameters (the config less its ``output`` and ``blend``
sections, ``experimental.choose_partner`` and ``name``, which change how the mosaic and the GeoTIFF
are made but no tile, and less the speed settings of :func:`speed_settings`; the selected bands;
how each mask decides gaps, e.g. the QA_PIXEL bits; the footprint mode; the grid) and tilefill's
version. The tile store keeps the key in its attributes: a store is resumed only by a run with the
same key, and a store of another key is refused rather than mixed.

An object on a store (a scene by URL, :mod:`tilefill._remote`) is keyed by what one HEAD request
says of its content, its ETag (else its modification time), size and version, never by reading
it: the fill's windowed reads are the only reads of a remote scene.

Hashing reads the whole (local) input once. ``tilefill batch`` avoids that for scenes already done
by also keeping each file's size and modification time (:class:`InputFile`): when they and
the parameters are unchanged, the recorded key stands.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from tilefill._config import MOVED, Config
from tilefill._errors import TilefillError
from tilefill._grid import TileGrid
from tilefill._remote import is_url, object_identity, resolved
from tilefill._scene import Scene
from tilefill._version import __version__

if TYPE_CHECKING:
    from tilefill._guide import GuideSource

READ_BYTES = 1 << 20  # bytes read at a time when hashing an input file


@dataclass(frozen=True)
class InputFile:
    """One input file: where it is, its size and modification time, and the hash of its content."""

    path: str
    size: int
    mtime_ns: int
    digest: str

    def unchanged(self) -> bool:
        """Whether the file still has the recorded size and modification time (cheap, no read); an object on a
        store, the recorded ETag (one HEAD)."""
        if is_url(self.path):
            try:
                return remote_input(self.path).digest == self.digest
            except TilefillError:
                return False
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns) == (self.size, self.mtime_ns)


@dataclass(frozen=True)
class RunKey:
    """A run's key (``digest``), the hash of its parameters alone (``params``) and its input files.

    Examples
    --------
    >>> from tilefill._scene import open_scene
    >>> with open_scene("scene.tif") as scene:  # doctest: +SKIP
    ...     key = run_key(scene, load_config("fast"), grid, footprint="hull")
    >>> str(key)  # doctest: +SKIP
    '3f0c9a51d2e87b64'
    """

    digest: str
    params: str
    files: tuple[InputFile, ...]

    def __str__(self) -> str:
        return self.digest[:16]

    def to_dict(self) -> dict:
        return {"digest": self.digest, "params": self.params,
                "files": [vars(f) for f in self.files]}

    @classmethod
    def from_dict(cls, d: dict) -> "RunKey":
        return cls(d["digest"], d["params"], tuple(InputFile(**f) for f in d["files"]))


def _hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def file_digest(path: str | Path, algorithm: str = "blake2b") -> str:
    """Hash of a file's content, streamed in 1 MiB chunks: BLAKE2b (160 bit), or any ``hashlib`` name."""
    h = hashlib.blake2b(digest_size=20) if algorithm == "blake2b" else hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(READ_BYTES):
            h.update(block)
    return h.hexdigest()


def scene_files(scene: Scene) -> list[str]:
    """The files a scene is read from: band files, mask / gap-mask / QA files, Landsat metadata; each once, in order."""
    return list(dict.fromkeys(resolved(p) for p in scene.input_files))


def speed_settings(config: Config) -> dict:
    """The settings that decide how fast tiles are fitted, not what they are: ``engine.*`` and ``fit.device``.

    A run key leaves them out, so a work store resumes under other ones (a store begun on CPU
    workers finishes on a GPU, in bf16, 8 tiles per task); the resumed run fits its remaining
    tiles with its own.

    Examples
    --------
    >>> from tilefill import load_config
    >>> speed_settings(load_config("fast"))["engine.precision"]
    'fp32'
    """
    out = {f"engine.{k}": v for k, v in dataclasses.asdict(config.engine).items()}
    out["fit.device"] = config.fit.device
    return out


def run_parameters(scene: Scene, config: Config, grid: TileGrid, footprint: str,
                   guides: Sequence[tuple[Scene, GuideSource]] = ()) -> dict:
    """The parameters a key covers, as plain JSON-able values; with guides, how each is read too."""
    cfg = config.to_dict()
    if not guides:
        cfg.pop("guide")  # how a guide would enter decides nothing without one: keys without guides hold
    # each research knob is hashed in the section it lived in before ``experimental`` grouped them, so
    # that a key (and the store it guards) outlives the move; choose_partner falls with ``blend`` below
    moved = cfg.pop("experimental")
    for old, new in MOVED.items():
        section, leaf = old.split(".")
        cfg[section][leaf] = moved[new.split(".")[1]]
    # 0 (score at the end only) and an interval of the iterations or more score alike: one key for them
    fit = config.fit
    cfg["fit"]["check_every"] = min(fit.check_every or fit.iterations, fit.iterations)
    cfg.pop("output")  # decides how the GeoTIFF is written, which every run redoes; never a tile
    cfg.pop("blend")  # how the mosaic weighs the tiles' fills, decided after every tile is done
    cfg.pop("name")
    for key in speed_settings(config):  # speed, not method
        section, leaf = key.split(".")
        cfg[section].pop(leaf)
    cfg = {k: v for k, v in cfg.items() if v != {}}
    params = {
        "tilefill": __version__,
        "config": cfg,
        "bands": [[b.index, b.name] for b in scene.bands],
        "gaps": scene.gap_rules,  # e.g. which QA_PIXEL bits are gaps
        "footprint": footprint,
        "grid": {"height": grid.height, "width": grid.width, "size": grid.size, "overlap": grid.overlap},
    }
    if guides:
        params["guides"] = [{"bands": list(source.bands), "matched": source.matched, "reprojected": source.reprojected,
                             "gaps": guide.gap_rules} for guide, source in guides]
    return params


def params_digest(scene: Scene, config: Config, grid: TileGrid, footprint: str,
                  guides: Sequence[tuple[Scene, GuideSource]] = ()) -> str:
    return _hash(json.dumps(run_parameters(scene, config, grid, footprint, guides), sort_keys=True).encode())


def _input_files(scene: Scene) -> list[InputFile]:
    out = []
    for path in scene_files(scene):
        if is_url(path):
            out.append(remote_input(path))
            continue
        st = os.stat(path)
        out.append(InputFile(path, st.st_size, st.st_mtime_ns, file_digest(path)))
    return out


def remote_input(url: str) -> InputFile:
    """An object on a store, keyed by what the store says of its content (its ETag, else its modification
    time, with its size and version), read from one HEAD: no byte of it is read for the key, so a remote scene
    is read once, window by window, by the fill alone."""
    ident = object_identity(url)
    size = int(ident["content-length"] or -1)
    held = ident["etag"] or ident["last-modified"]
    if held is None:
        raise TilefillError(f"{url}: the store gives neither an ETag nor a modification time for it, so a run "
                            "cannot tell when it changes; copy it to a local file")
    return InputFile(url, size, 0, _hash(json.dumps(["object", held, size, ident["x-amz-version-id"]]).encode()))


def run_key(scene: Scene, config: Config, grid: TileGrid, *, footprint: str,
            guides: Sequence[tuple[Scene, GuideSource]] = ()) -> RunKey:
    """Hash the scene's files, its guides' files and the parameters into the run's key (reads every input byte
    once). A guide whose band files hold the scene's own content is refused: it is the scene, not another date."""
    params = params_digest(scene, config, grid, footprint, guides)
    files = _input_files(scene)
    bands = {resolved(b.path) for b in scene.bands}
    scene_content = {f.digest for f in files if f.path in bands}
    groups = [[f.digest for f in files]]
    for guide, source in guides:
        theirs = _input_files(guide)
        guide_bands = {resolved(b.path) for b in guide.bands}
        if {f.digest for f in theirs if f.path in guide_bands} == scene_content:
            raise TilefillError(f"guide {source.path} holds the scene's own pixels (its band files have the same "
                                "content): a guide is another acquisition of the same place")
        files += theirs
        groups.append([f.digest for f in theirs])
    # positions matter (which file is which band, which guide), paths do not (a moved archive keeps its keys)
    digest = _hash(json.dumps([params, *groups] if guides else [params, groups[0]]).encode())
    return RunKey(digest, params, tuple(files))
