"""The archive side of a batch: which scenes to fill and where each output goes, which are done, and
which another batch has claimed.

Scenes come from globs, directory trees (GeoTIFFs; a folder holding a Landsat ``*_MTL.txt`` /
``.xml`` / ``.json`` or ``*_B<n>.TIF`` files is a Landsat product folder, one scene) and
manifest files (one path or URL per line; ``#`` comments and blank lines ignored; relative paths
are relative to the manifest). Scenes by URL (``s3://bucket/prefix/``, searched like a folder) and
STAC items (item collections, a STAC API search) are written flat: ``OUT/ITEM_ID.tif``,
``OUT/PRODUCT_ID.tif`` or ``OUT/NAME.tif``. The output tree mirrors the input below the common root of the
sources (``input_root`` pins it): ``archive/2010/a.tif`` -> ``OUT/2010/a.tif``; a Landsat folder
is named after its product ID: ``archive/2010/scene7/`` -> ``OUT/2010/LE07_L2SP_..._T1.tif``
(after the folder when its metadata cannot be read; that scene then fails, saying why).

Beside each output the batch keeps (hidden ones are transient):

    a.tif                  the restored scene
    a.tif.done.json        its record: SHA-256 and size of a.tif, the run key, the tiles
    a.tif.failed.json      instead of both, when the scene failed (the error, failed tiles)
    .a.tif.claim           while a batch works on the scene (host, pid, start)
    .a.tif.tilefill.zarr/  the work store, until the record is written (a rerun resumes it)

A scene is done when its output is present with the recorded size and the record's run key
still holds: the same parameters, and input files of the recorded size and modification time
(else their content is hashed again: a touched file with the same bytes stays done). With
guides (``--guide auto``) the key covers them too: a scene whose chosen guides changed is not
done; the record keeps the choice (``guide_choice``), so a rerun need not choose again.

Claims make concurrent batches safe: a scene is worked on only by the batch that created its
claim file (``O_CREAT | O_EXCL``, atomic even over NFS v3+). A live batch refreshes its claim's
modification time every ``claim_ttl / 4`` seconds; a claim whose process is gone (same host and
PID namespace) or that has not been refreshed for ``claim_ttl`` seconds is stale and is taken over.
A batch checks that its claim is still its own before it records a scene as done.

The batch sees records, claims and outputs through :class:`LocalOutputs`; an output tree in a
bucket is :class:`tilefill._bucket.BucketOutputs`, the same methods on object storage.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import socket
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from tilefill._config import Config
from tilefill._errors import TilefillError
from tilefill._grid import TileGrid
from tilefill._guide import open_guide
from tilefill._landsat import MTL_FILE, is_product_folder, product_id
from tilefill._remote import RemotePath, is_url
from tilefill._stac import StacItem, is_item_collection, read_items
from tilefill._records import utc_now, write_json
from tilefill._runkey import RunKey, file_digest, params_digest, run_key, scene_files
from tilefill._scene import open_scene
from tilefill._version import __version__

if TYPE_CHECKING:
    from tilefill._pipeline import FillReport

logger = logging.getLogger("tilefill")

DONE_SUFFIX = ".done.json"
CLAIM_TTL = 600.0  # seconds without a heartbeat after which another host's claim is stale
_MAGIC = set("*?[")


# --- what to fill ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchScene:
    """One scene of a batch: its input (a file or a Landsat folder, local or by URL, or a STAC item), its output,
    and where it was named."""

    path: Path | RemotePath | StacItem
    output: Path
    origin: str

    @property
    def is_product(self) -> bool:
        """Whether the scene is a Landsat product (a folder, an MTL or a STAC item): it has a QA_PIXEL band."""
        return isinstance(self.path, StacItem) or MTL_FILE.match(self.path.name) is not None or self.path.is_dir()


@dataclass(frozen=True)
class SourceProblem:
    """A source that yields no scene to fill: a failure (missing, unreadable ...) or a note (duplicate)."""

    source: str
    message: str
    failure: bool = True


def _is_geotiff(path: Path) -> bool:
    return path.suffix.lower() in (".tif", ".tiff")


def _walk(folder: Path, skip: Path) -> Iterator[Path]:
    """Scenes in a directory tree: Landsat product folders whole, other GeoTIFFs one by one."""
    if is_product_folder(folder):
        yield folder
        return
    for entry in sorted(folder.iterdir()):
        # hidden entries are work stores, claims and partial files (ours) or not meant to be read
        if entry.name.startswith(".") or entry.resolve() == skip:
            continue
        if entry.is_dir():
            yield from _walk(entry, skip)
        elif _is_geotiff(entry):
            yield entry


def _glob_anchor(pattern: str) -> Path:
    """The folder a glob searches below: its leading components without wildcards."""
    parts = []
    for part in Path(pattern).parts:
        if _MAGIC & set(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _readable(path: Path) -> bool:
    return os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0))


def _expand(path: Path, named: str, skip: Path) -> tuple[list[tuple[Path, str]], Path, list[SourceProblem]]:
    """(scenes with where they were named, the anchor of the mirror, problems) for one named path."""
    if not path.exists():
        return [], path.parent, [SourceProblem(named, f"{named}: {path} not found")]
    if not _readable(path):
        return [], path.parent, [SourceProblem(named, f"{named}: {path} is not readable (permissions)")]
    if path.is_dir() and not is_product_folder(path):
        found = [(p, named) for p in _walk(path, skip)]
        return found, path, [] if found else [SourceProblem(named, f"{named}: no GeoTIFF or Landsat folder in {path}")]
    return [(path, named)], path.parent, []


def _manifest_entries(manifest: Path) -> list[tuple[Path | str, str]]:
    if not manifest.is_file():
        raise TilefillError(f"manifest {manifest} not found")
    try:
        text = manifest.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise TilefillError(f"manifest {manifest} cannot be read ({exc.__class__.__name__}): one path per line") from None
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            if is_url(line):  # a scene on object storage or a web server
                out.append((line, f"{manifest.name} line {n}"))
                continue
            p = Path(line).expanduser()
            out.append((p if p.is_absolute() else manifest.parent / p, f"{manifest.name} line {n}"))
    return out


def _expand_remote(path: RemotePath, named: str) -> tuple[list[tuple[RemotePath, str]], list[SourceProblem]]:
    """Scenes under a URL: a raster, an MTL, a product folder (prefix), or a prefix searched for both."""
    from tilefill._remote import unreadable

    if MTL_FILE.match(path.name) or path.suffix.lower() in (".tif", ".tiff"):
        why = unreadable(str(path))
        return ([], [SourceProblem(named, f"{named}: {why}")]) if why else ([(path, named)], [])
    if not path.is_dir():
        why = unreadable(str(path)) or "nothing under that prefix"
        return [], [SourceProblem(named, f"{named}: {why}")]
    found = [(p, named) for p in _walk(RemotePath(str(path), "folder"), Path("/nonexistent"))]
    return found, [] if found else [SourceProblem(named, f"{named}: no GeoTIFF or Landsat folder under it")]


def _flat_scenes(flat, out_root: Path, problems: list[SourceProblem]) -> tuple[list[BatchScene], dict]:
    """Scenes by URL or STAC item, each written to ``OUT/NAME.tif``: the item ID, the product ID or the file name."""
    scenes: list[BatchScene] = []
    outputs: dict[Path, str] = {}
    for path, where in flat:
        if isinstance(path, StacItem):
            name = path.id + ".tif"
        elif path.is_dir() or MTL_FILE.match(path.name):
            name = (product_id(path) or path.name) + ".tif"
        else:
            name = path.name
        out = out_root / name
        if out in outputs:
            dup = outputs[out] == str(path)
            problems.append(SourceProblem(where, f"{where}: {path} is named again (first by {outputs[out]})"
                                          + (": filled once" if dup else f"; both would write {out}"),
                                          failure=not dup))
            continue
        outputs[out] = str(path)
        scenes.append(BatchScene(path, out, where))
    return scenes, outputs


def find_scenes(sources: Sequence[str | Path], output_dir: str | Path, *, manifest: str | Path | None = None,
                input_root: str | Path | None = None) -> tuple[list[BatchScene], list[SourceProblem]]:
    """The scenes named by globs, paths and a manifest, each with its output; and what could not be used.

    Examples
    --------
    >>> scenes, problems = find_scenes(["archive/**/*.tif"], "restored/")  # doctest: +SKIP
    >>> scenes[0].path, scenes[0].output  # doctest: +SKIP
    (PosixPath('/data/archive/2010/a.tif'), PosixPath('/data/restored/2010/a.tif'))
    """
    out_root = Path(output_dir).resolve()
    named: list[tuple[Path, str]] = []
    anchors: list[Path] = []
    problems: list[SourceProblem] = []
    # by URL or STAC: outputs named after the item ID, the product ID or the file (no tree to mirror)
    flat: list[tuple[Path | RemotePath | StacItem, str]] = []
    for src in sources:
        if isinstance(src, StacItem):
            flat.append((src, "STAC search"))
            continue
        src = str(src)
        if is_item_collection(src):
            try:
                flat += [(item, src) for item in read_items(src)]
            except TilefillError as exc:
                problems.append(SourceProblem(src, f"{src}: {exc}"))
            continue
        if is_url(src):
            found, probs = _expand_remote(RemotePath(src.rstrip("/") if src.endswith("/") else src), src)
            flat += found
            problems += probs
            continue
        if _MAGIC & set(src):
            matches = sorted(glob.glob(src, recursive=True))
            anchors.append(_glob_anchor(src).resolve())
            if not matches:
                problems.append(SourceProblem(src, f"{src}: no file matches"))
            for m in matches:
                found, _, probs = _expand(Path(m), src, out_root)
                named += found
                problems += probs
        else:
            found, anchor, probs = _expand(Path(src), src, out_root)
            named += found
            anchors.append(anchor.resolve())
            problems += probs
    if manifest is not None:
        for path, where in _manifest_entries(Path(manifest)):
            if isinstance(path, str):  # a URL
                found, probs = _expand_remote(RemotePath(path.rstrip("/")), where)
                flat += found
                problems += probs
                continue
            found, anchor, probs = _expand(path, where, out_root)
            named += found
            anchors.append(anchor.resolve())
            problems += probs
    scenes, outputs = _flat_scenes(flat, out_root, problems)
    if not named:
        return scenes, problems
    root = Path(input_root).resolve() if input_root else Path(os.path.commonpath([str(a) for a in anchors]))
    first: dict[Path, str] = {}
    for path, where in named:
        real = path.resolve()
        if real in first:
            problems.append(SourceProblem(where, f"{where}: {path} is named again (first by {first[real]}): filled once",
                                    failure=False))
            continue
        first[real] = where
        try:
            rel = real.relative_to(root)
        except ValueError:
            problems.append(SourceProblem(where, f"{where}: {path} lies outside the input root {root}"))
            continue
        # a product folder's output is named after its product ID, however the folder is named
        out = out_root / (rel.with_name((product_id(real) or rel.name) + ".tif") if real.is_dir() else rel)
        if out == real:
            problems.append(SourceProblem(where, f"{where}: the output would replace the input {path}; choose another "
                                           "--output-dir"))
        elif out in outputs:
            problems.append(SourceProblem(where, f"{where}: {path} and {outputs[out]} would both write {out}"))
        else:
            outputs[out] = str(real)
            scenes.append(BatchScene(real, out, where))
    return scenes, problems


def check_output_root(output_dir: str | Path) -> Path:
    """Create the output root if needed; refuse one that cannot be written, before any work."""
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise TilefillError(f"output root {root} is a file, not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TilefillError(f"output root {root} cannot be created ({exc.strerror or exc})") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise TilefillError(f"output root {root} is not writable")
    return root


# --- done records -----------------------------------------------------------------------------------------

def done_path(output: Path) -> Path:
    return output.with_name(output.name + DONE_SUFFIX)


def done_record(output: Path) -> dict | None:
    """The done record beside ``output``, or None when there is none (or it cannot be read)."""
    try:
        record = json.loads(done_path(output).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def done_state(scene: BatchScene, cfg: Config, bands, footprint: str, verify: bool = False,
                mask_qa=None, guides: Sequence[str | Path] = (), outputs: "LocalOutputs | None" = None
                ) -> tuple[bool, str]:
    """``(done, damage)``: whether the scene's output is there as recorded and the recorded run key still holds.

    Reads no pixel when the parameters and the input files' sizes and times are unchanged; an
    input touched or moved since is hashed again, and its record refreshed if the content matches.
    ``guides``: the scene's guides now; other guides than the record's give another key (not done).
    ``verify`` hashes the output again too. ``damage`` says how an output with a record differs
    from it (missing, another size, another SHA-256): it is not done, and is filled again.
    ``outputs``: where the records and outputs are (default: beside each output on a filesystem).
    """
    outputs = outputs or LOCAL
    record = outputs.record(scene.output)
    try:
        recorded = RunKey.from_dict(record["run_key"])
        sha256 = str(record["sha256"])
        int(record["size"])
    except (ValueError, KeyError, TypeError):
        return False, ""
    damage = outputs.damage(scene.output, record)
    if damage:
        return False, damage
    with open_scene(scene.path, bands=bands, mask_qa=mask_qa) as src, ExitStack() as stack:
        opened = []
        for path in guides:
            guide, source = open_guide(path, src, mask_qa=mask_qa)
            opened.append((stack.enter_context(guide), source))
        grid = TileGrid.from_scene(src.info, cfg)
        if params_digest(src, cfg, grid, footprint, opened) != recorded.params:
            return False, ""
        files = scene_files(src) + [f for guide, _source in opened for f in scene_files(guide)]
        key = None
        if not ([f.path for f in recorded.files] == files and all(f.unchanged() for f in recorded.files)):
            key = run_key(src, cfg, grid, footprint=footprint, guides=opened)
    if key is not None and key.digest != recorded.digest:
        return False, ""
    if verify and outputs.sha256(scene.output) != sha256:
        return False, "the output's SHA-256 differs from its record"
    if key is not None:
        outputs.write_record(scene.output, {**record, "run_key": key.to_dict()})
    return True, ""


def record_guide_choice(output: Path, guide_choice: dict, outputs: "LocalOutputs | None" = None) -> None:
    """Keep a new guide choice in a done scene's record (the same guides, chosen again from other candidates):
    the next run then finds its signature and need not choose again."""
    outputs = outputs or LOCAL
    record = outputs.record(output)
    if record is not None:
        outputs.write_record(output, {**record, "guide_choice": guide_choice})


def new_done_record(scene: BatchScene, report: FillReport, guide_choice: dict | None = None,
                    output: str | None = None) -> dict:
    """A scene's done record, from its finished (local) output: the output's checksum and size, the key it was
    filled under and, with ``--guide auto``, how its guides were chosen
    (:meth:`~tilefill._guide_choice.GuideChoice.to_dict`). ``output``: where it is published, if elsewhere."""
    if not all(f.unchanged() for f in report.run_key.files):
        raise TilefillError(f"{scene.path} changed while it was being filled; the next run fills it again")
    return {**({"guide_choice": guide_choice} if guide_choice else {}),
            "status": "done", "scene": str(scene.path), "output": output or str(scene.output),
            "sha256": file_digest(scene.output, "sha256"), "size": scene.output.stat().st_size,
            "run_key": report.run_key.to_dict(), "tilefill": __version__, "time": utc_now(),
            "tiles_fitted": report.tiles_fitted, "tiles_skipped": report.tiles_skipped,
            "seconds": round(report.seconds, 3)}


class LocalOutputs:
    """Where a batch keeps its outputs, done records and claims: beside each output, on a filesystem.

    :class:`tilefill._bucket.BucketOutputs` keeps them in a bucket; the batch sees both through these methods,
    each taking the output's path (for a bucket: its local staging path).
    """

    def where(self, output: Path) -> Path:
        """The output as the report and the log name it."""
        return output

    def record(self, output: Path) -> dict | None:
        return done_record(output)

    def write_record(self, output: Path, record: dict) -> None:
        write_json(done_path(output), record)

    def damage(self, output: Path, record: dict) -> str:
        """How the output differs from its record without reading it (missing, another size); "" if it does not."""
        try:
            actual = output.stat().st_size
        except FileNotFoundError:
            return "the output is missing"
        return f"the output has {actual} bytes, its record {record.get('size')}" if actual != record.get("size") \
            else ""

    def sha256(self, output: Path) -> str:
        return file_digest(output, "sha256")

    def claim(self, output: Path, ttl: float) -> "Claim | None":
        output.parent.mkdir(parents=True, exist_ok=True)
        return Claim.acquire(output, ttl)

    def holder(self, output: Path) -> str:
        return Claim.holder(claim_path(output))

    def remove_stale(self, output: Path) -> None:
        """Before a claimed scene is filled: the record first (an output without one claims nothing), then the output."""
        for stale in (done_path(output), output):
            stale.unlink(missing_ok=True)

    def publish(self, output: Path, record: dict, claim: "Claim") -> None:
        """The scene is done: its record is written (the output is in place already), while the claim is ours."""
        if not claim.confirm():
            raise ClaimLost(f"{output}: its claim was taken over by another batch while this one filled it; "
                            "not recorded")
        self.write_record(output, record)

    def publish_failure(self, output: Path) -> None:
        """``OUT.failed.json`` is written beside the output already."""

    def done_record_exists(self, output: Path) -> bool:
        return done_path(output).exists()

    def staged(self, scenes: list) -> list:
        """The scenes with the outputs they are filled into (here: where they go)."""
        return scenes

    def tidy(self, output: Path) -> None:
        """The scene is published: nothing to tidy up beside it."""

    def close(self) -> None:
        """The batch is over."""


LOCAL = LocalOutputs()


# --- claims -----------------------------------------------------------------------------------------------

class ClaimLost(TilefillError):
    """A batch's claim on a scene was taken over (as stale) while it filled the scene: it publishes nothing."""


def claim_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.claim")


def _pid_namespace() -> str:
    """This process's PID namespace (containers on one host have their own): a PID names a process only within it."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def claimant() -> dict:
    """Who holds a claim: the host, the PID (and its namespace) and the start time."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_ns": _pid_namespace(), "started": utc_now()}


def holder_text(claim: dict) -> str:
    try:
        return f"pid {claim['pid']} on {claim['host']} since {claim['started']}"
    except (KeyError, TypeError):
        return "another batch"


def dead_here(claim: dict) -> bool:
    """Whether a claim's process is known to be gone: it ran on this host, in this PID namespace, and is no more."""
    return (claim.get("host") == socket.gethostname() and claim.get("pid_ns", _pid_namespace()) == _pid_namespace()
            and not _pid_alive(int(claim.get("pid", -1))))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class Claim:
    """This batch's exclusive right to work on one scene, as a file created with ``O_EXCL``.

    Examples
    --------
    >>> claim = Claim.acquire(Path("restored/a.tif"))  # doctest: +SKIP
    >>> if claim:  # None: another live batch works on it
    ...     with claim:
    ...         ...
    """

    def __init__(self, path: Path, ttl: float):
        self.path, self.ttl = path, ttl
        self._text = ""
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)

    @classmethod
    def acquire(cls, output: Path, ttl: float = CLAIM_TTL) -> "Claim | None":
        path = claim_path(output)
        for _ in range(2):  # a stale claim is broken once, then ours is created
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not cls._break_if_stale(path, ttl):
                    return None
                continue
            text = json.dumps(claimant())
            with os.fdopen(fd, "w") as f:
                f.write(text)
            claim = cls(path, ttl)
            claim._text = text
            claim._beat.start()
            return claim
        return None

    @staticmethod
    def holder(path: Path) -> str:
        try:
            return holder_text(json.loads(path.read_text()))
        except (OSError, ValueError):
            return "another batch"

    def confirm(self) -> bool:
        """Whether the claim is still this batch's (not taken over as stale): checked before an output is published."""
        try:
            return self.path.read_text() == self._text
        except OSError:
            return False

    @staticmethod
    def _stale(path: Path, text: str, ttl: float) -> bool:
        try:
            age = time.time() - path.stat().st_mtime
            c = json.loads(text)
        except FileNotFoundError:
            return False
        except (ValueError, TypeError):  # a claim being written: stale only if it stays unreadable
            return age > ttl
        if isinstance(c, dict) and dead_here(c):
            return True
        return age > ttl

    @classmethod
    def _break_if_stale(cls, path: Path, ttl: float) -> bool:
        """Remove a stale claim; False if it is live. One breaker at a time, under a second O_EXCL file."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            return True
        if not cls._stale(path, text, ttl):
            return False
        lock = path.with_name(path.name + ".break")
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:  # a breaker that died holding the lock must not block the scene forever
                if time.time() - lock.stat().st_mtime > 60:
                    lock.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            return False
        try:
            # still the claim judged stale, not one a faster breaker has made since
            if path.exists() and path.read_text() == text:
                logger.warning("taking over a stale claim on %s (%s)", path.name, cls.holder(path))
                path.unlink()
            return True
        finally:
            os.close(fd)
            lock.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


