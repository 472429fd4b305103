"""tilefill's version, as installed (run keys and records carry it)."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("tilefill")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
