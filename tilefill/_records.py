"""What a run writes beside its output besides the raster: JSON records, written atomically.

``OUT.failed.json`` (a failed run: :func:`write_failure`), the quality sidecars' names
(:func:`quality_path`), and the JSON helpers that the pipeline, the batch's done records and its
log share.
"""

from __future__ import annotations

import json
import math
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tilefill._version import __version__

FAILED_SUFFIX = ".failed.json"


def utc_now() -> str:
    """The time now in UTC, to the second (ISO 8601): what every record and log line is stamped with."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def failure_path(output: str | Path) -> Path:
    """Where a failed run's report goes: ``OUT.failed.json`` beside the output it did not write."""
    output = Path(output)
    return output.with_name(output.name + FAILED_SUFFIX)


def quality_path(output: str | Path, suffix: str = ".quality.json") -> Path:
    """The quality sidecars of an output: ``OUT.quality.json`` (per tile), ``OUT.quality.tif`` (per pixel)."""
    output = Path(output)
    return output.with_name(output.name + suffix)


def json_safe(value: Any) -> Any:
    """Plain JSON: NaN and infinities become null, paths and other objects their text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def write_json(path: Path, data: dict) -> None:
    """Write a JSON file atomically: a reader sees the old file or the whole new one (a full disk: neither)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps(json_safe(data), indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # a folder turned read-only keeps it; the error that matters is the one raised
        raise


def write_failure(output: Path, scene: str | Path, error: str, **details) -> Path:
    """Write ``OUT.failed.json``: the scene, the error in one line, and any details (failed tiles ...)."""
    path = failure_path(output)
    write_json(path, {"status": "failed", "scene": str(scene), "output": str(output), "error": error,
                      "tilefill": __version__, "time": utc_now(),
                      **details})
    return path
