"""The GPU check (``benchmarks/gpu_check.py``) and what its first GPU run relies on, checked on a CPU.

The run gets one short call on a GPU machine and likely no second try, so what can be checked here is:
every step runs (``--cpu-smoke``) and says what it could not run without a GPU; a failing or stuck
step leaves its tails in the JSON and the next step still runs; the budget counts from the
process's start; what travels fits the device tool's limit; GPU workers get the machine's memory;
out-of-memory errors of cuDNN and cuBLAS are recognised; a group-size cap does not last forever.
"""

from __future__ import annotations

import doctest
import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tilefill import ClusterSpec
from tilefill import _cluster, _dip, _runtime
from tilefill._config import EngineConfig, FitConfig, NetworkConfig, load_config
from tilefill._dip import Problem, fit_problems
from tilefill._pipeline import worker_log_path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def gc():
    """benchmarks/gpu_check.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        assert module.IMPORT_ERROR is None
        yield module
    finally:
        sys.modules.pop("gpu_check", None)


@pytest.fixture
def clean(monkeypatch):
    """In-process runs: torch's threads and the environment as they were."""
    threads = torch.get_num_threads()
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    torch.set_num_threads(threads)


def _in_process(gc, out: Path, *args: str, started: float | None = None) -> dict:
    gc.main(["--cpu-smoke", "--budget", "900", "--out", str(out), *args],
            started=time.time() if started is None else started)
    return json.loads((out / "gpu_check.json").read_text())


# --- the whole run, at toy sizes ------------------------------------------------------------------------

def test_the_smoke_run_runs_every_step_and_says_what_needs_a_gpu(tmp_path):
    """``--cpu-smoke`` as the device would start it (a fresh process): every step, and the files that come back."""
    out = tmp_path / "gpu-check"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--budget", "900", "--out", str(out)],
                          capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["meta"]["cpu_smoke"] and not result["skipped"] and not result["errors"]
    assert all(s["status"] == "ok" and s["limit_s"] <= 150 for s in result["steps"].values())
    assert set(result["steps"]) == {"tiles", "ceilings", "reference", "engine-default", "engine-fast", "scene-tiles",
                                    "scene-minutes", "refits", "memory-split", "cli-fp32", "cli-bf16", "compile",
                                    "cudagraphs", "cli-bf16_channels_last", "cli-tiles_per_task_8", "cli-compile"}
    # what needs a GPU is said, not faked
    assert result["not_run"] == {
        "datasheet_peak": "not run: no GPU (no datasheet peak: shares of the measured matmul rate only)",
        "steady_peak_memory": "not run: no GPU (peak memory is the process's peak RSS, warm-up included)",
        "cudagraphs": "not run: no GPU (CUDA graphs)"}
    assert result["compile"]["reduce-overhead"] == {"not_run": "no GPU"}
    # the ceiling: a median of several samples
    c = result["ceilings"]
    assert len(c["bf16_matmul_samples"]) == c["samples"] == 3
    assert c["bf16_matmul_tflops"] == pytest.approx(float(np.median(c["bf16_matmul_samples"])), rel=1e-4)
    # (c) and (b): fast in its own layout (channels_last), bf16 with channels_last for both presets
    assert {(r["preset"], r["k"]) for r in result["reference"]} == {("fast", 1), ("default", 1)}
    engine = {(r["preset"], r["label"], r["k"]) for r in result["engine"]}
    assert engine == {(p, q, k) for k in (1, 2) for p, q in (
        ("fast", "fp32 + channels_last"), ("fast", "bf16 + channels_last"),
        ("default", "fp32"), ("default", "bf16"), ("default", "bf16 + channels_last"))}
    assert all(r["iterations_per_s"] > 0 and r["tflops"] > 0 and r["measured_peak_share"] > 0
               and r["datasheet_peak_share"] is None for r in result["engine"])
    assert set(result["speedups"]) == {"fast", "default"}
    # checks: refits equal under engine.deterministic, and timed; a group over its budget split 3 + 3 + 2
    refits = result["checks"]["refits"]
    assert refits["deterministic"]["bit_equal"] and refits["deterministic_slowdown"] > 0
    assert all(s > 0 for mode in ("deterministic", "default") for s in refits[mode]["sec_per_iteration"])
    assert result["checks"]["memory_split"]["networks_per_group"] == 3
    # (d): minutes from engine and pipeline rates
    assert {r["source"] for r in result["scene"]} == {"engine", "pipeline"}
    assert all(0 < r["dip_fits"] <= r["with_gaps"] <= r["grid"] and r["minutes"] > 0 for r in result["scene"])
    # (a): every CLI variant filled the crop; tiles/s less the first task where there is more than one
    cli = {r["variant"]: r for r in result["cli"]}
    assert set(cli) == {"fp32", "bf16", "bf16_channels_last", "tiles_per_task_8", "compile"}
    assert all(r["exit"] == 0 and -1 < r["gap_r2"] <= 1 and r["tiles_done"] == 4 and r["tiles_per_s"] > 0
               for r in cli.values())
    assert cli["fp32"]["first_task_excluded"] and cli["fp32"]["first_task_tiles"] == 1
    assert cli["fp32"]["tiles_per_s"] == pytest.approx(3 / (cli["fp32"]["worker_seconds"]
                                                            - cli["fp32"]["first_task_seconds"]), rel=1e-4)
    assert not cli["tiles_per_task_8"]["first_task_excluded"]  # its 4 tiles are one task
    assert cli["fp32"]["gap_r2_minus_fp32"] == 0 and cli["compile"]["gap_r2"] == cli["fp32"]["gap_r2"]
    # compile, like for like: two fits of each; paid once, then reused
    comp = result["compile"]["default"]
    assert len(comp["sec_per_iteration"]) == len(comp["uncompiled_sec_per_iteration"]) == 2
    assert comp["compile_seconds"] > 0 and comp["second_fit_compile_seconds"] == 0
    assert comp["speedup"] == pytest.approx(min(comp["uncompiled_sec_per_iteration"]) / min(comp["sec_per_iteration"]),
                                           rel=1e-4)  # the JSON keeps 6 decimals
    # the targets the smoke sizes reach (no K >= 8 for bf16's share; no datasheet on a CPU)
    assert set(result["targets"]) == {"engine_10x_reference_default", "scene_fast_minutes", "scene_default_minutes"}
    md = (out / "gpu_check.md").read_text()
    assert "## Targets" in md and "% of datasheet peak" in md and "| tiles_per_task_8 | 0 |" in md
    # what comes back from the device: at most 8 files, plain names, one folder down from $OUT
    files = sorted(p.name for p in out.iterdir())
    assert set(files) <= set(gc_out_files()) and len(files) <= 8 and "gpu_check.log" in files
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files)
    assert "engine-default" in (out / "gpu_check.log").read_text()  # everything printed is in the log


def gc_out_files() -> tuple[str, ...]:
    return ("gpu_check.json", "gpu_check.md", "gpu_check.log", "workers.log")


def test_a_failing_step_leaves_its_traceback_output_and_worker_log_tails_and_the_run_goes_on(gc, tmp_path, clean,
                                                                                           monkeypatch):
    def broken_split(report, args, ctx):
        for i in range(60):
            print(f"split line {i}")
        raise RuntimeError("the split went wrong")

    def failing_cli(report, argv, in_process, timeout):
        work = Path(argv[argv.index("--workdir") + 1])
        work.mkdir(parents=True, exist_ok=True)
        worker_log_path(work / "tiles.zarr").write_text("".join(f"worker line {i}\n" for i in range(100)))
        return 1, "".join(f"cli line {i}\n" for i in range(100))

    monkeypatch.setattr(gc, "check_memory_split", broken_split)
    monkeypatch.setattr(gc, "run_cli", failing_cli)
    out = tmp_path / "out"
    result = _in_process(gc, out, "--steps", "memory-split,refits,cli-fp32")
    split = result["errors"]["memory-split"]
    assert split["error"] == "RuntimeError: the split went wrong"
    assert "broken_split" in "".join(split["traceback"]) and split["traceback"][-1] == split["error"]
    assert split["output"] == [f"split line {i}" for i in range(20, 60)]  # the last 40 lines of the step
    assert "worker_log" not in split  # no workers in an in-process step
    assert result["steps"]["memory-split"]["status"] == "failed"
    assert result["checks"]["refits"]["deterministic"]["bit_equal"]
    cli = result["errors"]["cli-fp32"]
    assert cli["error"] == "CommandFailed: tilefill exited 1: cli line 99"
    assert cli["output"][-40:] == [f"cli line {i}" for i in range(60, 100)] and len(cli["output"]) == 40
    assert cli["worker_log"] == [f"worker line {i}" for i in range(60, 100)]
    assert result["cli"][0]["exit"] == 1 and result["steps"]["cli-fp32"]["status"] == "failed"
    # the whole worker log comes back too, and the markdown names the failures
    assert "worker line 0\n" in (out / "workers.log").read_text()
    assert "- failed cli-fp32: CommandFailed" in (out / "gpu_check.md").read_text()
    assert set(result["skipped"]) == set()


def test_a_step_past_its_limit_is_stopped_and_the_next_step_runs(gc, tmp_path, clean, monkeypatch):
    def stuck(report, args, ctx):
        print("refitting ...")
        time.sleep(60)

    monkeypatch.setattr(gc, "check_refits", stuck)
    t = time.monotonic()
    result = _in_process(gc, tmp_path, "--steps", "refits,memory-split", "--step-timeout", "3")
    assert time.monotonic() - t < 40
    assert result["steps"]["refits"]["status"] == "timed out" and result["steps"]["refits"]["limit_s"] == 3
    assert result["errors"]["refits"]["error"] == "StepTimeout: the step ran past its 3 s limit"
    assert result["errors"]["refits"]["output"][-1] == "refitting ..." and "stuck" in "".join(
        result["errors"]["refits"]["traceback"])
    assert result["checks"]["memory_split"]["networks_per_group"] == 3


def test_the_budget_counts_from_the_process_start(gc, tmp_path, clean):
    """A process that started 1000 s ago has no budget of 900 s left: every step is skipped, and said so."""
    result = _in_process(gc, tmp_path, started=time.time() - 1000)
    assert result["elapsed_s"] >= 1000 and not result["steps"] and not result["errors"]
    assert "tiles" in result["skipped"] and "cli-compile" in result["skipped"]
    assert all(v.startswith("budget: -") for v in result["skipped"].values())
    # process_start is when the process started, not when it is asked
    code = (f"import sys, time; sys.path.insert(0, {str(SCRIPT.parent)!r}); time.sleep(1.5); "
            "from gpu_check import process_start; print(time.time() - process_start())")
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                               cwd=ROOT).stdout.split()[-1])
    assert age >= 1.5


def test_a_missing_package_still_leaves_a_report_saying_which(tmp_path):
    code = ("import runpy, sys; sys.modules['zarr'] = None; "
            f"sys.argv = ['gpu_check.py', '--out', {str(tmp_path)!r}]; runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "gpu_check: cannot import what the check needs: ModuleNotFoundError: import of zarr halted; None in sys.modules"]
    start = json.loads((tmp_path / "gpu_check.json").read_text())["errors"]["start"]
    assert start["traceback"][-2:] == ["    import zarr", start["error"]]


def test_the_watchdog_saves_the_report_says_where_it_stopped_and_ends_the_cli_run(gc, tmp_path):
    report = gc.Report(tmp_path, {"device": "cpu"}, started=time.time() - 500)
    report.step = "cli-fp32"
    report.child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    capture = gc.Capture(None)
    capture.keep("fitting tile 3\nfitting tile 4\n")
    codes = []
    gc.Watchdog(report, capture, at=time.time(), exit=codes.append).fire()
    assert codes == [3] and report.child.wait(timeout=10) != 0  # the CLI run's process group was killed
    dog = json.loads((tmp_path / "gpu_check.json").read_text())["errors"]["watchdog"]
    assert dog["step"] == "cli-fp32" and dog["error"].startswith("the run was still going 50")
    assert dog["output"] == ["fitting tile 3", "fitting tile 4"]
    assert "test_the_watchdog_saves_the_report" in "".join(dog["traceback"])  # the main thread's stack


def test_the_cli_runs_get_the_environment_of_the_start(gc, tmp_path, monkeypatch):
    """CUBLAS_WORKSPACE_CONFIG, set by the check for its own deterministic refits, does not leak into the CLI."""
    seen = {}
    real = subprocess.Popen

    def popen(cmd, **kw):
        seen.update(kw["env"])
        return real([sys.executable, "-m", "tilefill.cli", "--help"], **kw)

    monkeypatch.delitem(gc.ENV_AT_START, "CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    monkeypatch.setattr(gc.subprocess, "Popen", popen)
    code, out = gc.run_cli(gc.Report(tmp_path, {}, time.time()), ["--help"], in_process=False, timeout=120)
    assert code == 0 and "Usage" in out
    assert "CUBLAS_WORKSPACE_CONFIG" not in seen and seen["PYTHONUNBUFFERED"] == "1"


# --- the figures' parts ---------------------------------------------------------------------------------

def test_labels_say_what_ran_and_datasheet_peaks_are_found_by_name(gc):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    labels = [lbl for lbl, _ in gc.engine_variants(load_config("default"), cuda)]
    assert labels == ["fp32 (TF32 convs)", "bf16", "bf16 + channels_last"]
    assert [lbl for lbl, _ in gc.engine_variants(load_config("fast"), cpu)] == ["fp32 + channels_last",
                                                                                "bf16 + channels_last"]
    assert gc.label(EngineConfig(tf32=False), cuda) == "fp32"
    assert gc.datasheet_peaks("NVIDIA H100 80GB HBM3") == {"bf16": 989.4, "tf32": 494.7}
    assert gc.datasheet_peaks("NVIDIA H100 PCIe")["bf16"] == 756.5
    assert gc.datasheet_peaks("NVIDIA H200")["bf16"] == 989.4 and gc.datasheet_peaks("NVIDIA H200 NVL")["bf16"] == 835.5
    assert gc.datasheet_peaks("Tesla T4") is None


def test_targets_state_the_bf16_share_against_both_peaks(gc, tmp_path):
    report = gc.Report(tmp_path, {}, time.time())
    row = {"preset": "default", "precision": "bf16", "k": 16, "label": "bf16 + channels_last", "tiles_per_s": 2.0,
           "measured_peak_share": 0.5, "datasheet_peak_share": 0.38}
    report.data["engine"] = [row, {**row, "k": 4, "measured_peak_share": 0.9, "datasheet_peak_share": 0.7}]
    gc.evaluate_targets(report)
    t = report.data["targets"]
    assert t["bf16_k8_share_of_measured_peak"]["met"] and t["bf16_k8_share_of_measured_peak"]["measured"] == 0.5
    assert not t["bf16_k8_share_of_datasheet_peak"]["met"]  # K=4 does not count
    assert t["bf16_k8_share_of_datasheet_peak"]["at"] == "K=16 bf16 + channels_last"


class _Store:
    def __init__(self, seconds: dict[int, float]):
        self.seconds, self.tiles_to_fit = seconds, sorted(seconds)

    def tiles_done(self, indices):
        return [i for i in indices if i in self.seconds]

    def tile_info(self, i):
        return {"seconds": self.seconds[i]}


def test_pipeline_tiles_per_second_leave_out_the_first_task(gc):
    # task (0, 1) carried autotuning: 10 s a tile; the rest 1 s a tile, two tiles a task
    rate = gc.pipeline_rate(_Store({0: 10.0, 1: 10.0, 2: 1.0, 3: 1.0, 5: 1.0, 6: 1.0}), per_task=2)
    assert rate["tiles_per_s"] == 1.0 and rate["first_task_tiles"] == 2 and rate["first_task_seconds"] == 20
    assert rate["tiles_per_s_with_first"] == pytest.approx(6 / 24) and rate["first_task_excluded"]
    one = gc.pipeline_rate(_Store({0: 2.0, 1: 2.0}), per_task=8)  # one task: nothing left to leave it out of
    assert one["tiles_per_s"] == 0.5 and not one["first_task_excluded"]


# --- what travels ---------------------------------------------------------------------------------------

def test_the_travel_check_refuses_over_the_limit(gc):
    MiB = 2**20
    fits = {"tracked files": 25 * MiB, "carried .gpucheck": 35 * MiB}
    assert gc.check_travel(fits) == 60 * MiB
    with pytest.raises(gc.TravelTooLarge, match=r"60\.0 MiB, over 60 MiB \(carried \.gpucheck 35\.0, tracked files "
                                                r"25\.0, untracked files git does not ignore 0\.0 MiB\)"):
        gc.check_travel({**fits, "untracked files git does not ignore": 1024})


def test_the_repository_as_it_stands_travels_within_60_mib(gc):
    """Tracked and untracked files as they are, and what --prepare carries: the recorded wheel sizes and the
    sample, or a prepared .gpucheck's own files where one exists."""
    parts = gc.travel_parts(ROOT, [])
    prepared = ROOT / ".gpucheck" / "manifest.json"
    if prepared.is_file():
        files = json.loads(prepared.read_text())["files"]
        parts["carried .gpucheck"] = gc.folder_size(ROOT / ".gpucheck")
        assert sum(files.values()) <= parts["carried .gpucheck"]
    else:
        parts["carried .gpucheck"] = sum(size for _, size in gc.WHEELS.values()) + gc.SAMPLE_BYTES
    total = gc.check_travel(parts)
    assert parts["tracked files"] > 1e6 and total <= 60 * 2**20, parts


def test_the_pinned_wheels_satisfy_tilefills_requirements(gc):
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")
    deps = {Requirement(d).name.lower(): Requirement(d) for d in
            tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    for name, (version, size) in gc.WHEELS.items():
        if name in deps:
            assert deps[name].specifier.contains(version), (name, version, str(deps[name]))
        assert 1000 < size < 25e6
    # the packages tilefill itself needs that the GPU image lacks (the device tool's KINDS.md)
    assert {"dask", "distributed", "rasterio", "zarr"} <= set(gc.WHEELS)


def _git_repo(path: Path) -> Path:
    path.mkdir()
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    (path / ".gitignore").write_text(".gpucheck/\n")
    (path / "code.py").write_bytes(b"x" * 5000)
    subprocess.run(["git", "-C", str(path), "add", "."], check=True)
    return path


def _fake_download(sizes: dict[str, int]):
    def download(pins, dest):
        for pin in pins:
            name, version = pin.split("==")
            whl = dest / f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-py3-none-any.whl"
            with open(whl, "wb") as f:
                f.truncate(sizes.get(name, 1000))  # sparse: its size without the bytes
    return download


def test_prepare_writes_the_manifest_prints_the_device_call_and_refuses_over_the_limit(gc, tmp_path, capsys):
    repo = _git_repo(tmp_path / "repo")
    folder = repo / ".gpucheck"
    (folder / "wheels").mkdir(parents=True)
    (folder / "wheels" / "rasterio-1.4.4-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(b"old")
    done = gc.prepare(folder, root=repo, download=_fake_download({"rasterio": 20 * 2**20}))
    wheels = sorted(p.name for p in (folder / "wheels").iterdir())
    assert len(wheels) == len(gc.WHEELS) and "rasterio-1.4.4-cp312-cp312-manylinux_2_28_x86_64.whl" not in wheels
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["files"]["wheels/rasterio-1.4.3-py3-none-any.whl"] == 20 * 2**20
    assert manifest["files"]["landsat8.tif"] == (folder / "landsat8.tif").stat().st_size
    assert done["parts"]["tracked files"] == 5000 + len(".gpucheck/\n")
    assert done["parts"]["carried .gpucheck"] == gc.folder_size(folder) and done["total"] < 30 * 2**20
    printed = capsys.readouterr().out
    assert done["command"] in printed and '[".gpucheck"]' in printed and "timeout_s: 540" in printed
    assert done["carry"] == [".gpucheck"] and done["timeout_s"] == 540
    # over 60 MiB: refused in one line
    with pytest.raises(SystemExit, match=r"^--prepare: what would travel to the GPU machine is 7\d\.\d MiB, over 60"):
        gc.prepare(folder, root=repo, download=_fake_download({"rasterio": 70 * 2**20}))
    # a folder git does not ignore would travel twice; one outside the checkout cannot be carried
    with pytest.raises(SystemExit, match="not ignored by git"):
        gc.prepare(repo / "prepared", root=repo, download=_fake_download({}))
    with pytest.raises(SystemExit, match="not inside the repository"):
        gc.prepare(tmp_path / "elsewhere", root=repo, download=_fake_download({}))


def test_the_device_command_fits_the_device_tool(gc):
    cmd = gc.device_command(".gpucheck")
    assert len(cmd) <= 2000 and cmd.count(".gpucheck/") == 2 and "--out $OUT/gpu-check" in cmd
    assert gc.DEVICE_TIMEOUT_S <= 600 and gc.BUDGET + gc.HARD_STOP + 60 <= gc.DEVICE_TIMEOUT_S
    assert gc.OUT_FILES == gc_out_files() and len(gc.OUT_FILES) <= 8


# --- the GPU worker's host memory -----------------------------------------------------------------------

def test_gpu_workers_get_the_machines_memory_not_a_cpu_workers_share(monkeypatch):
    import logging

    from distributed.system import MEMORY_LIMIT
    from distributed.worker_memory import parse_memory_limit

    assert _cluster.gpu_worker_memory_limit(2, total=128 * 2**30) == 64 * 2**30
    assert _cluster.gpu_worker_memory_limit(1) == MEMORY_LIMIT
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # one "GPU" worker on this CPU machine
    with _cluster.start_cluster(ClusterSpec(gpus=1), check_cuda=False) as cluster:
        workers = cluster.client.scheduler_info(n_workers=-1)["workers"].values()
        assert [w["memory_limit"] for w in workers] == [MEMORY_LIMIT]
    # what the nanny took before: a one-thread worker's share of the cores (1/16 on a 16-core GPU machine)
    default = parse_memory_limit("auto", 1, total_cores=16, logger=logging.getLogger("test"))
    assert default == pytest.approx(MEMORY_LIMIT / 16, rel=0.01) and default < _cluster.gpu_worker_memory_limit(1)


# --- out of memory, and what is learned from it ---------------------------------------------------------

NET = NetworkConfig(channels_down=(4,) * 5, channels_up=(4,) * 5, channels_skip=(2,) * 5)


@pytest.mark.parametrize("message", ["cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
                                     "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
                                     "cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED",
                                     "CUDA error: out of memory"])
def test_library_allocation_failures_are_out_of_memory_and_halve_the_group(monkeypatch, message):
    real = _dip._fit_group
    tried = []

    def fit_group(group, *a, **kw):
        tried.append(len(group))
        if len(group) > 2:
            raise RuntimeError(message)
        return real(group, *a, **kw)

    monkeypatch.setattr(_dip, "_fit_group", fit_group)
    img = np.random.default_rng(0).random((2, 64, 64), dtype=np.float32)
    rt = _runtime.Runtime(EngineConfig(), torch.device("cpu"))
    res = fit_problems([Problem(img, np.ones_like(img, bool), s) for s in range(4)], NET, FitConfig(iterations=2),
                       runtime=rt)
    assert tried == [4, 2, 2] and len(res) == 4 and res[0].networks_per_group == 2
    assert list(rt.caps.values()) == [[2, _runtime.CAP_FITS]]


def test_other_errors_are_not_out_of_memory(monkeypatch):
    def fit_group(*a, **kw):
        raise RuntimeError("bad shape")

    monkeypatch.setattr(_dip, "_fit_group", fit_group)
    img = np.zeros((2, 64, 64), np.float32)
    with pytest.raises(RuntimeError, match="bad shape"):
        fit_problems([Problem(img, np.ones_like(img, bool), 0)] * 2, NET, FitConfig(iterations=1),
                     runtime=_runtime.Runtime(EngineConfig(), torch.device("cpu")))


def test_a_learned_group_cap_runs_out_and_full_groups_are_tried_again():
    rt = _runtime.Runtime(EngineConfig(), torch.device("cpu"))
    rt.learn_cap("k", 4)
    sizes = [rt.group_sizes(8, per_network=1, key="k") for _ in range(_runtime.CAP_FITS + 1)]
    assert sizes[:_runtime.CAP_FITS] == [[4, 4]] * _runtime.CAP_FITS and sizes[-1] == [8] and not rt.caps
    rt.learn_cap("k", 4)
    rt.learn_cap("k", 2)  # a smaller one that fitted after another failure: the smaller, its life renewed
    assert rt.caps["k"] == [2, _runtime.CAP_FITS]


@pytest.mark.parametrize("obj", [_runtime.Runtime.group_sizes, _dip._out_of_memory,
                                 _cluster.gpu_worker_memory_limit])
def test_docstring_examples_run(obj):
    module = sys.modules[obj.__module__]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = doctest.DocTestFinder().find(obj, obj.__name__, globs=vars(module).copy())
    assert tests and tests[0].examples
    for test in tests:
        runner.run(test, out=lambda _s: None)
    assert runner.summarize(verbose=False).failed == 0
