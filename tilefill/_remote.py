"""Inputs by URL: scenes, product folders, MTL files and STAC items on object storage or HTTP.

``s3://``, ``gs://``, ``az://`` and ``http(s)://`` are read by GDAL itself, through its virtual
file systems (``/vsis3/``, ``/vsigs/``, ``/vsiaz/``, ``/vsicurl/``): rasters window by window
(a COG's internal tiles, HTTP range requests), never whole downloads. Credentials and options
come only from the environment GDAL reads (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_REQUEST_PAYER=requester``, ``AWS_S3_ENDPOINT``,
``AWS_HTTPS``, ``AWS_VIRTUAL_HOSTING``, ``GOOGLE_APPLICATION_CREDENTIALS``,
``AZURE_STORAGE_CONNECTION_STRING``, ``GDAL_HTTP_*``, ...), never from the command line, so that
they stay out of shell histories, process listings and logs.

Files that are not rasters (an MTL, a STAC item) and folder listings (a product folder's
prefix) go through the same GDAL functions (``VSIReadDir``, ``VSIIngestFile``), called on the
GDAL library rasterio has loaded: one client, one set of credentials, one set of options.
:class:`RemotePath` gives a URL the few ``pathlib`` methods the readers of product folders use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath

from tilefill._errors import TilefillError

# URL scheme -> GDAL virtual file system; http(s) keeps the whole URL after /vsicurl/
VSI_PREFIXES = {"s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/", "http": "/vsicurl/", "https": "/vsicurl/"}
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$")
_VSIGZIP = "/vsigzip/"
# the most bytes of a text file (an MTL, a STAC item or item collection) read into memory
MAX_TEXT_BYTES = 64 * 2**20
# GDAL's cache of remote bytes (CPL_VSIL_CURL_CACHE_SIZE) unless the environment sets it: a fill makes three passes
# over a scene (its extent, the store, the mosaic's known pixels), and with GDAL's default of 16 MB a scene larger
# than its block cache was downloaded three times. A full Landsat scene's bands are a few hundred MB compressed.
REMOTE_CACHE_MAX = 2**30


def is_url(value) -> bool:
    """Whether ``value`` is a URL (``scheme://...``), possibly behind ``/vsigzip/``."""
    text = str(value)
    if text.startswith(_VSIGZIP):
        text = text[len(_VSIGZIP):]
    return isinstance(value, (str, RemotePath)) and _URL.match(text) is not None


def gdal_path(value) -> str:
    """The path GDAL opens for ``value``: a URL mapped to its ``/vsi...`` form, anything else as it is.

    Raises :class:`~tilefill._errors.TilefillError` for a URL scheme GDAL cannot read.

    Examples
    --------
    >>> gdal_path("s3://landsat-pds/c1/L8/scene_B4.TIF")
    '/vsis3/landsat-pds/c1/L8/scene_B4.TIF'
    >>> gdal_path("https://example.org/scene.tif")
    '/vsicurl/https://example.org/scene.tif'
    >>> gdal_path("/vsigzip/s3://bucket/GM_B4.TIF.gz")
    '/vsigzip//vsis3/bucket/GM_B4.TIF.gz'
    """
    text = str(value)
    if text.startswith(_VSIGZIP) and is_url(text):
        return _VSIGZIP + gdal_path(text[len(_VSIGZIP):])
    m = _URL.match(text)
    if m is None:
        return text
    scheme = m["scheme"].lower()
    if scheme not in VSI_PREFIXES:
        raise TilefillError(f"{text}: tilefill cannot read {scheme}:// URLs; it reads "
                            f"{', '.join(s + '://' for s in VSI_PREFIXES)} (through GDAL) and local paths")
    prefix = VSI_PREFIXES[scheme]
    _size_remote_cache()
    if prefix == "/vsicurl/":
        return prefix + text
    if not m["rest"] or m["rest"].startswith("/"):
        raise TilefillError(f"{text}: no bucket in the URL ({scheme}://BUCKET/KEY)")
    return prefix + m["rest"]


@lru_cache(maxsize=1)
def _size_remote_cache() -> int | None:
    """Give GDAL's cache of remote bytes room for a scene, before this process reads its first URL (GDAL sizes
    that cache once, at its first remote read): 1 GiB or an eighth of the memory, whichever is less. The bytes it
    holds are the scene's, read once; ``CPL_VSIL_CURL_CACHE_SIZE`` in the environment takes precedence."""
    if "CPL_VSIL_CURL_CACHE_SIZE" in os.environ:
        return None
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - a platform without sysconf
        memory = 8 * REMOTE_CACHE_MAX
    size = int(min(REMOTE_CACHE_MAX, memory // 8))
    _gdal().CPLSetConfigOption(b"CPL_VSIL_CURL_CACHE_SIZE", str(size).encode())
    return size


# --- GDAL's virtual file functions, on the library rasterio loaded -------------------------------------------

def _loaded_gdal() -> str | None:
    """The GDAL library this process has loaded (rasterio's own: a wheel bundles one), found by its mapping."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(None, 1)[-1]
                if "libgdal" in os.path.basename(path):
                    return path
    except OSError:
        pass
    return None


@lru_cache(maxsize=1)
def _gdal() -> ctypes.CDLL:
    import rasterio  # noqa: F401  (loads GDAL)

    here = os.path.dirname(os.path.dirname(rasterio.__file__))
    candidates = [_loaded_gdal(),
                  *sorted(glob.glob(os.path.join(here, "rasterio.libs", "*gdal*"))),
                  *sorted(glob.glob(os.path.join(here, "rasterio", ".dylibs", "libgdal*"))),
                  ctypes.util.find_library("gdal")]
    for path in filter(None, candidates):
        try:
            lib = ctypes.CDLL(path)
            break
        except OSError:
            continue
    else:  # pragma: no cover - a rasterio without a findable GDAL
        raise TilefillError("cannot find the GDAL library rasterio uses, needed to list and read files by URL; "
                            "give local paths")
    lib.VSIOpenDir.restype = ctypes.c_void_p
    lib.VSIOpenDir.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
    lib.VSIGetNextDirEntry.restype = ctypes.POINTER(_DirEntry)
    lib.VSIGetNextDirEntry.argtypes = [ctypes.c_void_p]
    lib.VSICloseDir.argtypes = [ctypes.c_void_p]
    lib.CSLDestroy.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
    lib.VSIIngestFile.restype = ctypes.c_int
    lib.VSIIngestFile.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p),
                                  ctypes.POINTER(ctypes.c_uint64), ctypes.c_int64]
    lib.VSIFree.argtypes = [ctypes.c_void_p]
    lib.VSIGetFileMetadata.restype = ctypes.POINTER(ctypes.c_char_p)
    lib.VSIGetFileMetadata.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)]
    lib.CPLGetLastErrorMsg.restype = ctypes.c_char_p
    lib.CPLSetConfigOption.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    lib.CPLSetConfigOption.restype = None
    lib.CPLErrorReset.restype = None
    lib.VSIErrorReset.restype = None
    lib.VSIGetLastErrorMsg.restype = ctypes.c_char_p
    lib.VSIFOpenExL.restype = ctypes.c_void_p
    lib.VSIFOpenExL.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
    lib.VSIFCloseL.argtypes = [ctypes.c_void_p]
    lib.VSIFCloseL.restype = ctypes.c_int
    lib.VSIFWriteL.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p]
    lib.VSIFWriteL.restype = ctypes.c_size_t
    lib.VSIStatExL.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
    lib.VSIStatExL.restype = ctypes.c_int
    return lib


def _strings(array) -> list[str]:
    out = []
    if array:
        i = 0
        while array[i] is not None:
            out.append(array[i].decode("utf-8", "replace"))
            i += 1
    return out


def _last_error() -> str:
    msg = _gdal().CPLGetLastErrorMsg()
    return " ".join((msg or b"").decode("utf-8", "replace").split())[:300]


def _env():
    # credentials and options from the environment only; the block cache of a scene stays as the scene sets it
    import rasterio

    return rasterio.Env()


class _DirEntry(ctypes.Structure):
    # GDAL's VSIDIREntry (cpl_vsi.h): the same layout on every platform
    _fields_ = [("name", ctypes.c_char_p), ("mode", ctypes.c_int), ("size", ctypes.c_uint64),
                ("mtime", ctypes.c_int64), ("mode_known", ctypes.c_char), ("size_known", ctypes.c_char),
                ("mtime_known", ctypes.c_char), ("extra", ctypes.POINTER(ctypes.c_char_p))]


_S_IFMT, _S_IFDIR = 0o170000, 0o040000


def list_dir(url: str) -> list[tuple[str, bool]]:
    """``(name, is_folder)`` of what lies directly under a URL prefix, from one listing (GDAL's ``VSIOpenDir``)."""
    lib = _gdal()
    out = []
    with _env():
        lib.CPLErrorReset()
        handle = lib.VSIOpenDir(gdal_path(url.rstrip("/")).encode(), 0, None)
        if not handle:
            return []
        try:
            while entry := lib.VSIGetNextDirEntry(handle):
                e = entry.contents
                name = e.name.decode("utf-8", "replace")
                if name not in (".", ".."):
                    out.append((name, bool(e.mode_known != b"\0") and (e.mode & _S_IFMT) == _S_IFDIR))
        finally:
            lib.VSICloseDir(handle)
    return sorted(out)


def exists(url: str) -> bool:
    """Whether an object (or a prefix with objects under it) is at ``url``."""
    buf = ctypes.create_string_buffer(512)  # VSIStatBufL, whatever the platform's layout; only the result is used
    with _env():
        return _gdal().VSIStatExL(gdal_path(url).encode(), buf, 0) == 0


def _open(url: str):
    """A GDAL file handle for ``url``, or None and why not (GDAL's own line: HTTP status, credentials, ...)."""
    lib = _gdal()
    path = gdal_path(url).encode()
    lib.VSIErrorReset()
    lib.CPLErrorReset()
    # VSIFOpenExL says why a request failed (credentials, connection, HTTP status) but opens a missing
    # object lazily; the stat says whether it is there
    fp = lib.VSIFOpenExL(path, b"rb", 1)
    if fp and lib.VSIStatExL(path, ctypes.create_string_buffer(512), 0) == 0:
        return fp, ""
    if fp:
        lib.VSIFCloseL(fp)
    msg = (lib.VSIGetLastErrorMsg() or b"").decode("utf-8", "replace") or _last_error()
    return None, explain(msg) or "no such bucket or object, or no access to it"


def explain(gdal_message: str) -> str:
    """GDAL's line on a failed remote request, with what to do where the cause is known."""
    msg = " ".join(gdal_message.split())[:300]
    if "AWS_SECRET_ACCESS_KEY" in msg or "AWS_NO_SIGN_REQUEST" in msg:
        return ("no AWS credentials in the environment: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                "AWS_PROFILE, or AWS_NO_SIGN_REQUEST=YES for a public bucket")
    if re.search(r"response code[^:]*: 0$", msg) or "Could not connect" in msg or "Failed to connect" in msg \
            or "Could not resolve" in msg or "Connection refused" in msg:
        return f"no answer from the endpoint ({msg})"
    return msg


def unreadable(url: str) -> str | None:
    """Why the object at ``url`` cannot be opened (not found, access denied, no credentials, no answer), or None."""
    with _env():
        fp, why = _open(url)
        if fp:
            _gdal().VSIFCloseL(fp)
    return None if fp else why


def read_bytes(url: str, what: str = "file") -> bytes:
    """The whole of a small file at ``url`` (an MTL, a STAC item): one line naming it and GDAL's reason if it fails."""
    lib = _gdal()
    data = ctypes.c_void_p()
    size = ctypes.c_uint64()
    with _env():
        fp, why = _open(url)
        if not fp:
            raise TilefillError(f"cannot read the {what} {url} ({why})")
        try:
            ok = lib.VSIIngestFile(fp, None, ctypes.byref(data), ctypes.byref(size), MAX_TEXT_BYTES)
            reason = _last_error()
        finally:
            lib.VSIFCloseL(fp)
    try:
        if not ok:
            raise TilefillError(f"cannot read the {what} {url} ({reason or 'a failed read'})")
        return ctypes.string_at(data, size.value)
    finally:
        if data:
            lib.VSIFree(data)


UPLOAD_BLOCK = 8 * 2**20


def upload(local: Path, url: str) -> None:
    """Copy a finished local file to ``url`` through GDAL: no object appears under ``url`` until it is whole.

    S3 (and GCS, Azure) show an object only once its upload completes: GDAL sends a file smaller than its chunk
    size (``CPL_VSIS3_CHUNK_SIZE``, 50 MB) in one PUT at close, a larger one as a multipart upload that the store
    publishes, all at once, at its completion; a failure aborts it. Raises a one-line error naming ``url``.
    """
    lib = _gdal()
    with _env():
        lib.VSIErrorReset()
        lib.CPLErrorReset()
        fp = lib.VSIFOpenExL(gdal_path(url).encode(), b"wb", 1)
        if not fp:
            why = explain((lib.VSIGetLastErrorMsg() or b"").decode("utf-8", "replace") or _last_error())
            raise TilefillError(f"cannot write {url} ({why or 'the store refused it'})")
        written, failed = 0, False
        try:
            with open(local, "rb") as f:
                while block := f.read(UPLOAD_BLOCK):
                    if lib.VSIFWriteL(block, 1, len(block), fp) != len(block):
                        failed = True
                        break
                    written += len(block)
        finally:
            failed = lib.VSIFCloseL(fp) != 0 or failed  # the PUT, or the multipart upload's completion
        if failed:
            why = explain((lib.VSIGetLastErrorMsg() or b"").decode("utf-8", "replace") or _last_error())
            raise TilefillError(f"cannot write {url} ({why or 'the upload failed'}); nothing is left under that key")


def object_identity(url: str) -> dict:
    """What the store says identifies an object's content, without reading it: its size, ETag and modification
    time from the response headers (S3, GCS, Azure and HTTP servers send them on a HEAD)."""
    lib = _gdal()
    with _env():
        lib.CPLErrorReset()
        headers = lib.VSIGetFileMetadata(gdal_path(url).encode(), b"HEADERS", None)
        reason = _last_error()
    try:
        pairs = [s.partition("=") for s in _strings(headers)]
    finally:
        lib.CSLDestroy(headers)
    found = {k.strip().lower(): v.strip() for k, _, v in pairs}
    if not found:
        raise TilefillError(f"cannot read {url} ({reason or 'the store sent no headers for it'})")
    return {k: found.get(k) for k in ("content-length", "etag", "last-modified", "x-amz-version-id")}


# --- a URL that behaves like the Path the product readers use ------------------------------------------------

@dataclass(frozen=True)
class RemotePath:
    """A file or folder (prefix) by URL, with the ``pathlib`` methods the readers of product folders use.

    There are no links on object storage, so :meth:`resolve` is the path itself and a file named
    in a folder's metadata stays in that folder when its name has no ``/`` (which the readers check).
    """

    url: str
    # "file" or "folder" where a listing said so (saves a request per entry), else None
    kind: str | None = field(default=None, compare=False)

    def __post_init__(self):
        gdal_path(self.url)  # refuse a scheme GDAL cannot read at once

    def __str__(self) -> str:
        return self.url

    def __fspath__(self) -> str:  # rasterio.open and the like: the GDAL path
        return gdal_path(self.url)

    @property
    def _pure(self) -> PurePosixPath:
        m = _URL.match(self.url)
        return PurePosixPath("/" + m["rest"].rstrip("/"))

    @property
    def name(self) -> str:
        return self._pure.name

    @property
    def stem(self) -> str:
        return self._pure.stem

    @property
    def suffix(self) -> str:
        return self._pure.suffix

    @property
    def parent(self) -> "RemotePath":
        base = self.url.rstrip("/")
        return RemotePath(base[: base.rfind("/")]) if base.count("/") > 3 else self

    def __truediv__(self, name: str) -> "RemotePath":
        return RemotePath(self.url.rstrip("/") + "/" + str(name))

    def __lt__(self, other) -> bool:
        return str(self) < str(other)

    def resolve(self) -> "RemotePath":
        return self

    def is_relative_to(self, other) -> bool:
        return (self.url.rstrip("/") + "/").startswith(str(other).rstrip("/") + "/")

    def relative_to(self, other) -> PurePosixPath:
        if not self.is_relative_to(other):
            raise ValueError(f"{self} is not under {other}")
        return PurePosixPath(self.url.rstrip("/")[len(str(other).rstrip("/")) + 1:])

    def iterdir(self):
        base = self.url.rstrip("/")
        return [RemotePath(f"{base}/{n}", "folder" if folder else "file") for n, folder in list_dir(self.url)]

    def exists(self) -> bool:
        return exists(self.url)

    def is_dir(self) -> bool:
        # a prefix is a folder when something is listed under it (object stores have no empty folders)
        return self.kind == "folder" if self.kind else bool(list_dir(self.url))

    def is_file(self) -> bool:
        if self.kind:
            return self.kind == "file"
        return not self.url.endswith("/") and exists(self.url)

    def read_bytes(self) -> bytes:
        return read_bytes(self.url)

    def read_text(self, errors: str = "strict") -> str:
        return self.read_bytes().decode("utf-8", errors)


def as_path(value) -> Path | RemotePath:
    """A local path as :class:`~pathlib.Path`, a URL as :class:`RemotePath`."""
    if isinstance(value, RemotePath):
        return value
    return RemotePath(str(value)) if is_url(value) else Path(value)


def resolved(path) -> str:
    """A path as a run key and duplicate checks compare it: a URL as it is, a local path absolute and resolved."""
    return str(path) if is_url(path) else str(Path(path).resolve())


def url_join(base: str, href: str) -> str:
    """``href`` (absolute, or relative to the document at ``base``, as STAC links are) as a URL or local path."""
    if is_url(href) or os.path.isabs(href):
        return href
    if is_url(base):
        m = _URL.match(base)
        host, _, path = m["rest"].partition("/")
        return f"{m['scheme']}://{host}{os.path.normpath(os.path.join(os.path.dirname('/' + path), href))}"
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(base)), href))
