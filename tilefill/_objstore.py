"""Object storage for what tilefill writes: the work store, outputs' records and claims (obstore).

Inputs are read through GDAL (``tilefill._remote``); what tilefill writes to a bucket goes through obstore, which
zarr v3 takes as a store (``zarr.storage.ObjectStore``) and which makes conditional writes (create only if absent,
replace only if unchanged) that exclusive claims need. Both read the same standard environment, so a user sets
credentials and an endpoint once: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
``AWS_REGION``, ``AWS_ENDPOINT_URL`` or GDAL's ``AWS_S3_ENDPOINT`` (host[:port]) with ``AWS_HTTPS=NO`` and
``AWS_VIRTUAL_HOSTING=FALSE`` for an S3-compatible store in-house, ``AWS_REQUEST_PAYER=requester``,
``AWS_NO_SIGN_REQUEST=YES``; ``GOOGLE_*`` for ``gs://``, ``AZURE_STORAGE_*`` for ``az://``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from tilefill._errors import TilefillError

SCHEMES = ("s3", "gs", "az")
# a probe's limits (a bad bucket, endpoint or credentials answer in one line within seconds, not after the
# minutes of retries a transient error gets during a run)
PROBE_CLIENT = {"connect_timeout": "5s", "timeout": "15s"}
PROBE_RETRY = {"max_retries": 1, "retry_timeout": timedelta(seconds=10),
               "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=1),
                           "base": 2}}


def _truthy(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return value.strip().upper() in ("1", "YES", "TRUE", "ON")


def _s3_options() -> dict:
    """obstore's S3 options from the environment GDAL reads too (obstore reads ``AWS_*`` itself; these are the
    GDAL spellings it does not know)."""
    opts: dict = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint and os.environ.get("AWS_S3_ENDPOINT"):
        host = os.environ["AWS_S3_ENDPOINT"]
        scheme = "http" if _truthy("AWS_HTTPS") is False else "https"
        endpoint = host if "://" in host else f"{scheme}://{host}"
    if endpoint:
        opts["endpoint"] = endpoint
        if endpoint.startswith("http://"):
            opts["client_options"] = {"allow_http": True}
    if _truthy("AWS_VIRTUAL_HOSTING") is False:
        opts["virtual_hosted_style_request"] = False
    if os.environ.get("AWS_REQUEST_PAYER", "").lower() == "requester":
        opts["request_payer"] = True
    if _truthy("AWS_NO_SIGN_REQUEST"):
        opts["skip_signature"] = True
    return opts


@dataclass(frozen=True)
class ObjectLocation:
    """A bucket and a key prefix in it, as a URL names them (``s3://bucket/prefix``)."""

    url: str
    scheme: str
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> "ObjectLocation":
        parts = urlsplit(str(url))
        if parts.scheme not in SCHEMES or not parts.netloc:
            raise TilefillError(f"{url}: not an object storage URL (s3://, gs:// or az:// with a bucket)")
        return cls(str(url).rstrip("/"), parts.scheme, parts.netloc, parts.path.strip("/"))

    def child(self, name: str) -> "ObjectLocation":
        name = name.strip("/")
        return ObjectLocation(f"{self.url}/{name}", self.scheme, self.bucket,
                              f"{self.prefix}/{name}" if self.prefix else name)

    def store(self, *, probe: bool = False):
        """An obstore store rooted at this prefix (one line, naming the URL, where obstore is missing).

        ``probe``: short timeouts and one retry (:data:`PROBE_CLIENT`, :data:`PROBE_RETRY`), for the checks made
        before a run; a run's own store keeps obstore's retries of transient errors.
        """
        try:
            from obstore.store import AzureStore, GCSStore, S3Store
        except ImportError:
            raise TilefillError(f"{self.url}: writing to object storage needs obstore "
                                "(pip install 'tilefill[cloud]')") from None
        prefix = self.prefix or None
        limits = {"client_options": dict(PROBE_CLIENT), "retry_config": PROBE_RETRY} if probe else {}
        if self.scheme == "s3":
            opts = _s3_options()
            if probe:
                limits["client_options"].update(opts.pop("client_options", {}))
            return S3Store(self.bucket, prefix=prefix, **opts, **limits)
        if self.scheme == "gs":
            return GCSStore(self.bucket, prefix=prefix, **limits)
        return AzureStore(self.bucket, prefix=prefix, **limits)

    def unreachable(self, key: str | None = None) -> str | None:
        """Why this prefix cannot be used, in a few words (no such bucket, no credentials, no answer, access
        denied), or None: one listing of the prefix, or with ``key`` one HEAD of the object there."""
        store = self.store(probe=True)  # first: where obstore is missing, it says what to install
        import obstore

        try:
            if key is None:
                obstore.list_with_delimiter(store)
            else:
                obstore.head(store, key)
        except FileNotFoundError:
            return f"nothing at {self.url}/{key}" if key else f"no bucket {self.bucket}"
        except Exception as exc:  # noqa: BLE001 - whatever the store says is the reason
            return reason(exc, self)
        return None


def reason(exc: BaseException, where: ObjectLocation | None = None) -> str:
    """An object store's error in a few words, with what to do where the cause is known (obstore's own messages
    run over many lines: the request, its retries and a debug dump)."""
    text = " ".join(str(exc).split())
    code = re.search(r"<Code>([^<]+)</Code>", text)
    code = code[1] if code else ""
    if code == "NoSuchBucket" and where is not None:
        return f"the bucket {where.bucket} does not exist"
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
                "ExpiredToken"):
        return f"access denied ({code}): check the credentials in the environment and their permissions"
    if "169.254.169.254" in text or "/latest/api/token" in text or "/latest/meta-data" in text \
            or "credential" in text.lower():
        return ("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_NO_SIGN_REQUEST=YES for a "
                "public bucket) in the environment")
    if "error sending request" in text or "connect" in text.lower() or "timed out" in text.lower() \
            or "dns error" in text.lower():
        url = re.search(r"(https?://[^/\s]+)", text)
        return f"no answer from the endpoint{' ' + url[1] if url else ''}"
    if code:
        return code
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return first[:200]


def check_location(url: str, what: str = "work store") -> ObjectLocation:
    """``url`` parsed and reached once (a listing), or one line saying why not: a scheme without a bucket, obstore
    missing, no such bucket, no credentials, no answer from the endpoint."""
    try:
        location = ObjectLocation.parse(url)
    except TilefillError as exc:
        raise TilefillError(f"{what} {exc}") from None
    why = location.unreachable()
    if why is not None:
        raise TilefillError(f"{what} {location.url}: {why}")
    return location


def put_if_absent(store, key: str, data: bytes) -> dict | None:
    """Write ``data`` at ``key`` only if no object is there (S3 ``If-None-Match: *``): the new object's version
    (``{"e_tag": ..., "version": ...}``, for :func:`replace_if_unchanged`), or None if one was there.

    Exclusive between machines on stores that implement the condition: AWS S3 (since August 2024), Google Cloud
    Storage and Azure Blob Storage (obstore sends their own preconditions), MinIO and moto. A store that ignores
    the header would let two writers both succeed, so never fall back to a listing followed by a write.
    """
    import obstore
    from obstore.exceptions import AlreadyExistsError, PreconditionError

    try:
        return obstore.put(store, key, data, mode="create")
    except (AlreadyExistsError, PreconditionError):
        return None


def _condition(version: dict) -> dict:
    # S3 and Azure compare the ETag, GCS the generation (obstore's "version"); send what the store gave
    return {k: version[k] for k in ("e_tag", "version") if version.get(k)}


def replace_if_unchanged(store, key: str, data: bytes, version: dict) -> dict | None:
    """Replace the object at ``key`` only if it is still the one of ``version`` (S3 ``If-Match: ETAG``, GCS
    ``ifGenerationMatch``): the new object's version, or None if it was replaced or removed since."""
    import obstore
    from obstore.exceptions import NotFoundError, PreconditionError

    try:
        return obstore.put(store, key, data, mode=_condition(version))
    except (PreconditionError, NotFoundError, FileNotFoundError):
        return None


def get_object(store, key: str) -> tuple[bytes, dict] | None:
    """The bytes of a small object and its metadata (size, ``e_tag``, ``version``, ``last_modified``), or None."""
    import obstore

    try:
        got = obstore.get(store, key)
        return bytes(got.bytes()), got.meta
    except FileNotFoundError:
        return None


def head_object(store, key: str) -> dict | None:
    """An object's metadata (size, ``e_tag``, ``version``, ``last_modified``) without its bytes, or None."""
    import obstore

    try:
        return obstore.head(store, key)
    except FileNotFoundError:
        return None


def delete_object(store, key: str) -> None:
    """Remove the object at ``key``; one that is not there is fine."""
    import obstore

    try:
        obstore.delete(store, key)
    except FileNotFoundError:
        pass


PROBE_PREFIX = ".tilefill-probe"


def check_conditional_writes(location: ObjectLocation, timeout: float = 30.0) -> None:
    """Before a batch writes anything there: the bucket exists, the credentials may write, the endpoint answers
    and the store refuses a second create-only write of one key (else claims could not be exclusive).

    Writes, refuses and deletes one object under ``.tilefill-probe/``. Raises one line naming the URL, within
    ``timeout`` seconds whatever the network does.
    """
    import threading
    import uuid

    store = location.store(probe=True)
    key = f"{PROBE_PREFIX}/{uuid.uuid4().hex}"
    outcome: list = []

    def probe() -> None:
        try:
            first = put_if_absent(store, key, b"probe")
            second = put_if_absent(store, key, b"probe again") if first else None
            delete_object(store, key)
            outcome.append(bool(first) and second is not None)
        except Exception as exc:  # noqa: BLE001 - said in one line below
            outcome.append(exc)

    worker = threading.Thread(target=probe, daemon=True, name="tilefill-store-probe")
    worker.start()
    worker.join(timeout)
    if not outcome:
        raise TilefillError(f"{location.url}: no answer from the endpoint within {timeout:.0f} s")
    if isinstance(outcome[0], BaseException):
        raise TilefillError(f"{location.url}: cannot write there ({reason(outcome[0], location)})")
    if outcome[0]:
        raise TilefillError(f"{location.url}: the store accepted a second create-only write of one key (it ignores "
                            "If-None-Match), so two batches could claim one scene; write to a store that honours "
                            "conditional writes (AWS S3, Google Cloud Storage, Azure Blob Storage, MinIO)")
