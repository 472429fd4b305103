"""What every benchmark report says of the code it measured (no torch import: the I/O benchmarks use it too)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit() -> str:
    """The short commit of the tilefill being measured, ``+changes`` where its package differs from that commit
    (the code a ``PYTHONPATH`` points at, not this folder's); ``?`` outside a git checkout."""
    import tilefill

    here = Path(tilefill.__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "tilefill"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + ("+changes" if dirty else "")
