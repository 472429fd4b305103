"""A batch's output tree on object storage: outputs, done records, claims and the log in a bucket.

``tilefill batch ... --output-dir s3://bucket/prefix`` (also ``gs://``, ``az://``) keeps under the prefix what a
local batch keeps in its output tree::

    NAME.tif                  the restored scene, uploaded whole once finished (one PUT, or a multipart upload
                              that the store publishes at its completion): never a partial object under the key
    NAME.tif.quality.json     its sidecars, uploaded before it
    NAME.tif.done.json        its record (SHA-256, size and ETag of NAME.tif, the run key), written last: the
                              scene is done when this is there and NAME.tif has the recorded size and ETag
    NAME.tif.failed.json      instead, when the scene failed
    .NAME.tif.claim           while a batch works on the scene
    .tilefill-log/BATCH/N.jsonl   the batches' JSON-lines logs, one object per scene

Each scene is filled in a local staging folder of its own, ``.tilefill-staging/batch-<hash of the URL>/KEY/`` in the
working directory (its output, sidecars and work store, so that a rerun on this machine resumes it), made and
removed by the batch that holds its claim only, once the scene is published; a failed scene keeps it.

**Claims** are objects made by a create-only write (``If-None-Match: *``), which the store grants to one writer
only: never a listing followed by a write. A claim holds its batch's host, PID (and PID namespace), start and an
expiry, renewed every ``ttl / 4`` seconds by a write conditional on the claim's ETag (so a batch learns at once
that it lost its claim). A claim is stale when its expiry has passed, or at once when its process ran on this
host and is gone (a batch killed by SIGKILL); another batch takes it over only by a write conditional on the
stale claim's ETag (``If-Match``), so of two batches that find it stale one wins. A batch checks its claim
(one more conditional renewal) before it publishes an output: one that lost it (stalled past the ttl) publishes
nothing. Hosts' clocks must agree to well within the ttl (600 s by default), as NTP keeps them.

**The log**: an object cannot be appended to, and rewriting one log object whole at each update would cost the
square of its size. Each batch writes its records in small objects instead, one per scene settled (its tile
records and its scene record together) and one for the summary, under ``.tilefill-log/BATCH/`` (BATCH: its
start time, host, PID); :func:`read_log` reads them back in order. A batch killed midway loses only the records
of the scenes it had not settled, as a local log would. ``--log FILE`` keeps a local copy too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

from tilefill._archive import DONE_SUFFIX, ClaimLost, LocalOutputs, claimant, dead_here, holder_text
from tilefill._errors import TilefillError
from tilefill._objstore import (ObjectLocation, check_conditional_writes, delete_object, get_object, head_object,
                                put_if_absent, reason, replace_if_unchanged)
from tilefill._records import FAILED_SUFFIX, json_safe, utc_now
from tilefill._remote import RemotePath, upload

logger = logging.getLogger("tilefill")

LOG_PREFIX = ".tilefill-log"


def _put(store, key: str, data: bytes) -> dict:
    import obstore

    return obstore.put(store, key, data)


# --- claims ---------------------------------------------------------------------------------------------------

class ObjectClaim:
    """This batch's exclusive right to work on one scene, as an object created only if absent.

    Examples
    --------
    >>> claim = ObjectClaim.acquire(store, ".a.tif.claim", "s3://bucket/out/.a.tif.claim")  # doctest: +SKIP
    >>> if claim:  # None: another live batch works on it
    ...     claim.release()
    """

    def __init__(self, store, key: str, url: str, ttl: float, who: dict, version: dict):
        self.store, self.key, self.url, self.ttl = store, key, url, ttl
        self.lost = False
        self._who, self._version = who, version
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="tilefill-claim")

    @staticmethod
    def _body(who: dict, ttl: float) -> bytes:
        return json.dumps({**who, "ttl": ttl, "expires": time.time() + ttl, "renewed": utc_now()}).encode()

    @classmethod
    def acquire(cls, store, key: str, url: str, ttl: float) -> "ObjectClaim | None":
        """The claim, or None where another live batch holds it (or took over the same stale claim first)."""
        who = claimant()
        for _ in range(2):  # a claim released between our create and our read: create again
            version = put_if_absent(store, key, cls._body(who, ttl))
            if version is None:
                got = get_object(store, key)
                if got is None:
                    continue
                data, meta = got
                if not cls._stale(data, meta, ttl):
                    return None
                version = replace_if_unchanged(store, key, cls._body(who, ttl), meta)
                if version is None:  # renewed by its holder, or taken over by another batch first
                    return None
                logger.warning("taking over a stale claim on %s (%s)", url, cls._describe(data))
            claim = cls(store, key, url, ttl, who, version)
            claim._beat.start()
            return claim
        return None

    @staticmethod
    def _describe(data: bytes) -> str:
        try:
            return holder_text(json.loads(data))
        except ValueError:
            return "another batch"

    @staticmethod
    def _stale(data: bytes, meta: dict, ttl: float) -> bool:
        try:
            c = json.loads(data)
            expires = float(c["expires"])
        except (ValueError, KeyError, TypeError):  # not a claim tilefill wrote: stale once old
            return time.time() - meta["last_modified"].timestamp() > ttl
        return dead_here(c) or time.time() > expires

    @classmethod
    def holder(cls, store, key: str) -> str:
        got = get_object(store, key)
        return cls._describe(got[0]) if got else "another batch"

    def _renew(self) -> bool:
        with self._lock:
            if self.lost:
                return False
            version = replace_if_unchanged(self.store, self.key, self._body(self._who, self.ttl), self._version)
            if version is None:
                self.lost = True
                logger.warning("lost the claim %s: another batch took it over (this one stalled past the claim's "
                               "%g s)", self.url, self.ttl)
                return False
            self._version = version
            return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                if not self._renew():
                    return
            except Exception as exc:  # noqa: BLE001 - a blip: the claim holds until its expiry, try again
                logger.debug("renewing %s: %s", self.url, exc)

    def confirm(self) -> bool:
        """Renew the claim now: True while it is this batch's (checked before an output is published)."""
        return self._renew()

    def release(self) -> None:
        self._stop.set()
        with self._lock:
            if self.lost:
                return
            self.lost = True  # no renewal after this
            try:
                delete_object(self.store, self.key)
            except Exception as exc:  # noqa: BLE001 - left behind, it goes stale at its expiry
                logger.warning("could not release the claim %s (%s); it goes stale in %g s", self.url,
                               reason(exc), self.ttl)


# --- the output tree ------------------------------------------------------------------------------------------

def staging_folder(url: str) -> Path:
    """Where a batch into ``url`` fills its scenes on this machine: the same for every batch into it, so that a
    rerun resumes a scene's work store."""
    return Path(".tilefill-staging") / f"batch-{hashlib.blake2b(url.rstrip('/').encode(), digest_size=8).hexdigest()}"


class BucketOutputs(LocalOutputs):
    """A batch's outputs, done records, claims and log under a bucket prefix; each scene filled in ``staging``.

    Made by :meth:`open`, which checks the store before any work.
    """

    def __init__(self, url: str, staging: Path | None = None):
        self.location = ObjectLocation.parse(url)
        self.store = self.location.store()
        self.staging = Path(os.path.abspath(staging or staging_folder(self.location.url)))

    @classmethod
    def open(cls, url: str, staging: Path | None = None) -> "BucketOutputs":
        """The outputs under ``url``, once the store has answered a create-only write and refused a second one
        (:func:`~tilefill._objstore.check_conditional_writes`): one line and nothing written where it did not."""
        outputs = cls(url, staging)
        check_conditional_writes(outputs.location)
        try:
            outputs.staging.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TilefillError(f"staging folder {outputs.staging} cannot be created ({exc.strerror or exc})") from None
        return outputs

    def staged(self, scenes: list) -> list:
        """The scenes with their outputs in staging folders of their own: ``STAGING/KEY/NAME.tif`` for the key
        ``KEY`` (``2010/a.tif``), as :func:`~tilefill._archive.find_scenes` named them ``STAGING/KEY``."""
        return [replace(s, output=s.output / s.output.name) for s in scenes]

    def key(self, output: Path) -> str:
        return output.parent.relative_to(self.staging).as_posix()

    def where(self, output: Path) -> RemotePath:
        return RemotePath(self.location.child(self.key(output)).url)

    def record(self, output: Path) -> dict | None:
        got = get_object(self.store, self.key(output) + DONE_SUFFIX)
        try:
            record = json.loads(got[0]) if got else None
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    def write_record(self, output: Path, record: dict) -> None:
        _put(self.store, self.key(output) + DONE_SUFFIX, json.dumps(json_safe(record), indent=2).encode())

    def damage(self, output: Path, record: dict) -> str:
        meta = head_object(self.store, self.key(output))
        if meta is None:
            return "the output is missing"
        if meta["size"] != record.get("size"):
            return f"the output has {meta['size']} bytes, its record {record.get('size')}"
        if record.get("etag") and meta.get("e_tag") != record["etag"]:
            return f"the output's ETag {meta.get('e_tag')} differs from its record's {record['etag']} (replaced since)"
        return ""

    def sha256(self, output: Path) -> str:
        import obstore

        digest = hashlib.sha256()
        for chunk in obstore.get(self.store, self.key(output)).stream(min_chunk_size=8 * 2**20):
            digest.update(memoryview(chunk))
        return digest.hexdigest()

    def claim(self, output: Path, ttl: float) -> ObjectClaim | None:
        key = self._claim_key(output)
        return ObjectClaim.acquire(self.store, key, self.location.child(key).url, ttl)

    def _claim_key(self, output: Path) -> str:
        key = self.key(output)
        head, _, name = key.rpartition("/")
        return f"{head}/.{name}.claim" if head else f".{name}.claim"

    def holder(self, output: Path) -> str:
        return ObjectClaim.holder(self.store, self._claim_key(output))

    def remove_stale(self, output: Path) -> None:
        """Before the claim's holder fills the scene: the record first (an output without one claims nothing), then
        the output; and what an earlier run left in its staging folder, which is made here, by the holder only."""
        key = self.key(output)
        for stale in (key + DONE_SUFFIX, key):
            delete_object(self.store, stale)
        _make_folder(output.parent)
        super().remove_stale(output)

    def tidy(self, output: Path) -> None:
        """The scene is published: remove its staging folder, and the folders above it that are left empty."""
        shutil.rmtree(output.parent, ignore_errors=True)
        folder = output.parent.parent
        while folder != self.staging.parent.parent:  # up to .tilefill-staging itself
            try:
                folder.rmdir()  # atomic, and only if empty: another batch's folders stay
            except OSError:
                break
            folder = folder.parent

    def _sidecars(self, output: Path) -> list[Path]:
        return sorted(p for p in output.parent.glob(output.name + ".*")
                      if p.is_file() and not p.name.endswith((DONE_SUFFIX, FAILED_SUFFIX)))

    def publish(self, output: Path, record: dict, claim: ObjectClaim) -> None:
        """Upload the sidecars, then the output, each whole, then its record; remove them from the staging folder.

        Only while the claim is this batch's: a batch that lost it publishes nothing (:class:`ClaimLost`).
        """
        if not claim.confirm():
            raise ClaimLost(f"{self.where(output)}: its claim was taken over by another batch while this one "
                            "filled it; not published")
        url, sidecars = str(self.where(output)), self._sidecars(output)
        for path in sidecars:
            upload(path, url + path.name[len(output.name):])
        upload(output, url)
        meta = head_object(self.store, self.key(output))
        self.write_record(output, {**record, "output": url, "etag": (meta or {}).get("e_tag")})
        delete_object(self.store, self.key(output) + FAILED_SUFFIX)  # an earlier failure is settled

    def publish_failure(self, output: Path) -> None:
        local = output.with_name(output.name + FAILED_SUFFIX)
        if local.is_file():
            _put(self.store, self.key(output) + FAILED_SUFFIX, local.read_bytes())

    def done_record_exists(self, output: Path) -> bool:
        return head_object(self.store, self.key(output) + DONE_SUFFIX) is not None

    def close(self) -> None:
        """The batch is over: remove the staging folder if it is left empty (rmdir: another batch's stays)."""
        for folder in (self.staging, self.staging.parent):
            try:
                folder.rmdir()
            except OSError:
                break

    def log(self) -> "ObjectLog":
        return ObjectLog(self.store, self.location.child(LOG_PREFIX).url)


# --- the log --------------------------------------------------------------------------------------------------

def _make_folder(folder: Path) -> None:
    # another batch into the same URL may remove a shared parent left empty at the same moment: try again
    for attempt in range(3):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return
        except FileNotFoundError:
            if attempt == 2:
                raise


def batch_id() -> str:
    """A batch's name in the log: its start (UTC, so that names sort by it), host and PID."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{socket.gethostname()}-{os.getpid()}-" \
           f"{uuid.uuid4().hex[:4]}"


class ObjectLog:
    """A batch's JSON-lines log on object storage: one object per :meth:`write` (a scene's records, a summary)."""

    def __init__(self, store, url: str):
        self.batch = batch_id()
        self.store, self.url = store, f"{url}/{self.batch}"
        self._prefix = f"{LOG_PREFIX}/{self.batch}/"
        self._count = 0
        self._lock = threading.Lock()
        self._warned = False

    def write(self, *records: dict) -> None:
        body = "".join(json.dumps(json_safe({"time": utc_now(), "batch": self.batch, **r})) + "\n" for r in records)
        with self._lock:
            self._count += 1
            key = f"{self._prefix}{self._count:06d}.jsonl"
        try:
            _put(self.store, key, body.encode())
        except Exception as exc:  # noqa: BLE001 - the log never stops the batch; the local log and report stay
            if not self._warned:
                self._warned = True
                logger.warning("cannot write the log to %s (%s)", self.url, reason(exc))

    def close(self) -> None:
        pass


def read_log(url: str) -> list[dict]:
    """The log records of every batch under an output prefix (``s3://bucket/prefix``), or of one batch
    (``s3://bucket/prefix/.tilefill-log/BATCH``), batch by batch in start order, each in its order."""
    import obstore

    location = ObjectLocation.parse(url)
    if f"/{LOG_PREFIX}" not in "/" + location.prefix:
        location = location.child(LOG_PREFIX)
    store = location.store()
    keys = sorted(meta["path"] for chunk in obstore.list(store) for meta in chunk if meta["path"].endswith(".jsonl"))
    records = []
    for key in keys:
        got = get_object(store, key)
        if got:
            records += [json.loads(line) for line in got[0].decode().splitlines() if line.strip()]
    return records
