"""The fuzzed readers' soak: thousands of damaged inputs through ``tilefill``, counted by outcome.

The same property as ``tests/test_fuzz.py`` (``tests/fuzzing.py``: a small real GeoTIFF, mask, Landsat band,
gap mask, QA band or MTL file cut at a byte, flipped in its header or data blocks, or an MTL line dropped,
doubled or given an absurd value; each run as a user would, asserting a filled output or one line
``Error: ...`` naming the file, exit 1, no traceback, no partial output, no work store left), drawn by
hypothesis from a seed, for many more examples than the default test run takes. A broken contract stops the
soak; hypothesis shrinks it to the smallest case, which the report gives. Writes ``fuzz-soak-SEED.json`` and
``.md``: examples tried, outcomes by kind and by target, seconds.

    python benchmarks/fuzz_soak.py --examples 10000 --seed 1 --out benchmarks/reports
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

import fuzzing  # noqa: E402
from _meta import git_commit  # noqa: E402
from tilefill._version import __version__  # noqa: E402


@contextmanager
def _c_stderr(path: Path):
    """What C code writes to file descriptor 2 meanwhile (Click's runner only sees Python's sys.stderr): its lines."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines += [line for line in sink.read().decode(errors="replace").splitlines() if line.strip()]


def soak(examples: int, seed_value: int, workdir: Path) -> dict:
    inputs = fuzzing.make_inputs(workdir / "inputs")
    kinds: Counter = Counter()
    by_target: dict = defaultdict(Counter)
    example_line: dict = {}
    broken: list[str] = []
    c_noise: list[str] = []

    @seed(seed_value)
    @settings(max_examples=examples, database=None, deadline=None, print_blob=False,
              phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck))
    @given(fuzzing.cases())
    def one(case):
        try:
            with _c_stderr(workdir / "stderr.txt") as printed:
                outcome, line = fuzzing.check(case, inputs, workdir)
        except AssertionError as exc:
            broken.append(str(exc)[:2000])
            raise
        if printed:  # a C library (GDAL's libgeotiff) wrote to the terminal itself, past Python
            c_noise.append(f"{case.describe()}: {printed[0][:200]}")
        kind = outcome if outcome == "filled" else fuzzing.kind_of(line)
        kinds[kind] += 1
        by_target[case.target][kind] += 1
        example_line.setdefault(kind, line.replace(str(workdir), "TMP"))

    start = time.perf_counter()
    failure = None
    try:
        one()
    except Exception as exc:  # hypothesis re-raises the smallest broken case
        failure = f"{type(exc).__name__}: {str(exc)[:2000]}"
    return {"examples": sum(kinds.values()), "asked": examples, "seed": seed_value,
            "seconds": round(time.perf_counter() - start, 1), "tracebacks_or_partials": len(broken),
            "failure": failure, "first_broken": broken[:1], "outcomes": dict(kinds.most_common()),
            "c_library_stderr": {"examples": len(c_noise), "first": c_noise[:5]},
            "by_target": {t: dict(c.most_common()) for t, c in sorted(by_target.items())},
            "example_lines": example_line,
            "meta": {"tilefill": __version__, "commit": git_commit(),
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
                     "machine": platform.machine(), "cpus": os.cpu_count(),
                     "settings": {"examples": examples, "seed": seed_value, "method": "gdal", "tile": 64}}}


def markdown(report: dict) -> str:
    lines = [f"# Fuzzed readers: {report['examples']} damaged inputs (seed {report['seed']})", "",
             f"{report['seconds']} s on {report['meta']['cpus']} CPU cores (shared), tilefill "
             f"{report['meta']['tilefill']} at {report['meta'].get('commit')}; "
             f"broken contracts (a traceback, a partial output, a store left, a line naming no file): "
             f"{report['tracebacks_or_partials']}. Examples where a C library also wrote to the terminal itself (past "
             f"Python, e.g. libgeotiff on a damaged unit code): {report['c_library_stderr']['examples']}.", "",
             "| outcome | examples | an example line |", "|---|---|---|"]
    for kind, n in report["outcomes"].items():
        lines.append(f"| {kind} | {n} | {report['example_lines'].get(kind, '')[:160].replace('|', '/')} |")
    lines += ["", "| damaged file | " + " | ".join(report["outcomes"]) + " |",
              "|---|" + "---|" * len(report["outcomes"])]
    for target, counts in report["by_target"].items():
        lines.append(f"| {target} | " + " | ".join(str(counts.get(k, 0)) for k in report["outcomes"]) + " |")
    if report["failure"]:
        lines += ["", "## Broken", "", "```text", report["failure"], "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=10000, help="damaged inputs to try (default 10000)")
    parser.add_argument("--seed", type=int, default=1, help="hypothesis's seed: the same seed draws the same inputs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder of the report")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tilefill-soak-") as tmp:
        report = soak(args.examples, args.seed, Path(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"fuzz-soak-{args.seed}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    sys.exit(1 if report["failure"] else 0)


if __name__ == "__main__":
    main()
