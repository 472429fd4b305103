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
from dataclasses import dataclass
from urllib.parse import urlsplit

from tilefill._errors import TilefillError

SCHEMES = ("s3", "gs", "az")


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

    def store(self):
        """An obstore store rooted at this prefix (one line, naming the URL, where obstore is missing)."""
        try:
            from obstore.store import AzureStore, GCSStore, S3Store
        except ImportError:
            raise TilefillError(f"{self.url}: writing to object storage needs obstore "
                                "(pip install 'tilefill[cloud]')") from None
        prefix = self.prefix or None
        if self.scheme == "s3":
            return S3Store(self.bucket, prefix=prefix, **_s3_options())
        if self.scheme == "gs":
            return GCSStore(self.bucket, prefix=prefix)
        return AzureStore(self.bucket, prefix=prefix)


def put_if_absent(store, key: str, data: bytes) -> bool:
    """Write ``data`` at ``key`` only if no object is there (S3 ``If-None-Match: *``); False if one was.

    Exclusive between machines on stores that implement the condition: AWS S3 (since August 2024), Google Cloud
    Storage and Azure Blob Storage (obstore sends their own preconditions), MinIO and moto. A store that ignores
    the header would let two writers both succeed, so never fall back to a listing followed by a write.
    """
    import obstore
    from obstore.exceptions import AlreadyExistsError, PreconditionError

    try:
        obstore.put(store, key, data, mode="create")
    except (AlreadyExistsError, PreconditionError):
        return False
    return True
