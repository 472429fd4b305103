"""The fit engine's parts, each on its own: inputs, tracker, runtime (compile cache, memory split, flags).

All on the CPU with the tiny network; what only a GPU can show (speed, real out-of-memory errors,
bit-equal refits under ``engine.deterministic``) is checked by ``benchmarks/gpu_check.py``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from tilefill._config import EngineConfig, ExperimentalConfig, FitConfig, NetworkConfig
from tilefill import _dip
from tilefill._dip import (ContextInput, FitTracker, FixedInput, Problem, SkipNet, fit_dip, fit_problems,
                           network_memory)
from tilefill._runtime import DeterministicReflectionPad2d, Runtime, get_runtime, make_deterministic

pytestmark = pytest.mark.timeout(120)
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _problems(n=3, size=64, bands=2, seed=11):
    rng = np.random.default_rng(seed)
    return [Problem(rng.random((bands, size, size), dtype=np.float32), rng.random((bands, size, size)) > 0.3,
                    seed=100 + i) for i in range(n)]


def _fit(iterations=3, **kw):
    return FitConfig(iterations=iterations, device="cpu", **kw)


def _target_mask(problems):
    target = torch.from_numpy(np.concatenate([np.where(p.known, p.image, 0) for p in problems]))[None]
    mask = torch.from_numpy(np.concatenate([p.known for p in problems]).astype(np.float32))[None]
    return target, mask


# --- inputs ---------------------------------------------------------------------------------------------

def test_fixed_input_gives_each_network_its_own_streams():
    """z and the per-iteration noise come from each network's seed: in a group, what it would see alone."""
    probs = _problems(3)
    fit = _fit(input_noise=0.1)
    group = FixedInput(probs, fit, *_target_mask(probs))
    alone = FixedInput(probs[2:], fit, *_target_mask(probs[2:]))
    torch.testing.assert_close(group.z[:, 4:6], alone.z, rtol=0, atol=0)
    for _ in range(3):  # three iterations' inputs, noise included
        torch.testing.assert_close(group.next()[:, 4:6], alone.next(), rtol=0, atol=0)
    assert not torch.equal(group.z[:, 0:2], group.z[:, 2:4])  # other seeds, other inputs
    quiet = FixedInput(probs, _fit(input_noise=0.0), *_target_mask(probs))
    assert quiet.next() is quiet.z


def test_fixed_input_loss_is_each_networks_masked_mean():
    probs = _problems(2)
    target, mask = _target_mask(probs)
    inputs = FixedInput(probs, _fit(), target, mask)
    out = torch.rand_like(target)
    loss = inputs.loss(out)
    for i in range(2):
        sl = slice(2 * i, 2 * i + 2)
        expected = float(((out[:, sl] - target[:, sl]) ** 2 * mask[:, sl]).mean())
        assert float(loss[i]) == pytest.approx(expected, rel=1e-6)
    changed = out.clone()
    changed[mask == 0] = 7.0  # unknown pixels never reach the loss
    torch.testing.assert_close(inputs.loss(changed), loss)


def test_context_input_loss_counts_only_the_stripes_hidden_this_iteration():
    probs = _problems(2)
    target, mask = _target_mask(probs)
    inputs = ContextInput(probs, _fit(), target, mask, experimental=ExperimentalConfig(input="context"))
    x = inputs.next()
    assert x.shape == (1, 2 * 2 * 2, 64, 64)  # per network: its bands, then their visibility
    hidden = inputs.hidden
    assert hidden.sum() > 0 and not bool((hidden * (1 - mask)).any())  # known pixels only
    out = torch.rand_like(target)
    loss = inputs.loss(out)
    elsewhere = out.clone()
    elsewhere[hidden == 0] = 0.0
    torch.testing.assert_close(inputs.loss(elsewhere), loss)
    there = out.clone()
    there[hidden > 0] += 0.3
    assert bool((inputs.loss(there) > loss).all())
    # the stripes are hidden from the input: where hidden, the input holds the pre-fill, not the pixel
    visible = x.view(2, 2, 2, 64, 64)[:, 1]
    assert torch.equal(visible, (mask - hidden).view(2, 2, 64, 64))


# --- tracker --------------------------------------------------------------------------------------------

def test_tracker_averages_the_second_half_only():
    fit = _fit(10, ema=0.9)
    tracker = FitTracker(fit, k=1, c=1, target=torch.zeros(1, 1, 4, 4))
    for it in range(10):
        value = 100.0 if it < 5 else 0.25  # the first half is far off, and must not count
        assert not tracker.step(it, lambda: torch.full((1, 1, 4, 4), value))
    torch.testing.assert_close(tracker.result(), torch.full((1, 1, 4, 4), 0.25))
    assert FitTracker(_fit(10), k=1, c=1, target=torch.zeros(1, 1, 4, 4)).result() is None  # nothing kept


def test_tracker_keeps_each_networks_best_and_stops_when_all_stall():
    """Two networks, scored on hidden pixels every iteration: each keeps its own best output."""
    fit = _fit(10, check_every=1)
    target = torch.zeros(1, 2, 2, 2)
    tracker = FitTracker(fit, k=2, c=1, target=target, held=torch.ones(1, 2, 2, 2), patience=2)
    # network 0 is best at iteration 0, network 1 at iteration 2; both worse afterwards
    errors = [(0.1, 0.5), (0.2, 0.4), (0.3, 0.05), (0.4, 0.3), (0.5, 0.35)]
    stops = []
    for it, (e0, e1) in enumerate(errors):
        out = torch.stack([torch.full((2, 2), e0), torch.full((2, 2), e1)])[None]
        stops.append(tracker.step(it, lambda out=out: out))
    assert stops == [False, False, False, False, True]  # both went 2 checks without a better score
    best = tracker.result()
    assert float(best[0, 0, 0, 0]) == pytest.approx(0.1) and float(best[0, 1, 0, 0]) == pytest.approx(0.05)
    np.testing.assert_allclose(tracker.best_rmse.numpy()[:, 0], [0.1, 0.05], rtol=1e-6)


def test_tracker_scores_the_ema_when_there_is_one():
    fit = _fit(4, ema=0.5, check_every=4)
    tracker = FitTracker(fit, k=1, c=1, target=torch.zeros(1, 1, 2, 2), held=torch.ones(1, 1, 2, 2))
    for it in range(4):
        tracker.step(it, lambda it=it: torch.full((1, 1, 2, 2), float(it)))
    # EMA over iterations 2 and 3: 0.5 * 2 + 0.5 * 3 = 2.5, and that is what was scored and kept
    assert float(tracker.best_rmse[0, 0]) == pytest.approx(2.5)
    assert float(tracker.result()[0, 0, 0, 0]) == pytest.approx(2.5)


# --- runtime: devices, flags, compile cache -------------------------------------------------------------

def test_runtime_is_made_once_per_process_and_engine():
    a = get_runtime(EngineConfig(), "cpu")
    assert a is get_runtime(EngineConfig(), "cpu") and a.device == CPU
    b = get_runtime(EngineConfig(precision="bf16"), "cpu")
    assert b is not a and b.autocast_dtype == torch.bfloat16 and a.autocast_dtype is None


def test_deterministic_flags_on_a_cuda_runtime(monkeypatch):
    """The flags a CUDA runtime sets (torch's backend switches; no CUDA call, so this runs anywhere)."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
              torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        Runtime(EngineConfig(deterministic=True, tf32=False), torch.device("cuda")).activate()
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        Runtime(EngineConfig(), torch.device("cuda")).activate()  # the next task's engine: autotuned again
        assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[:2]
        torch.use_deterministic_algorithms(before[2], warn_only=before[3])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[4:]


def test_deterministic_padding_is_reflection_padding():
    x = torch.rand(2, 3, 9, 7, requires_grad=True)
    y = x.detach().clone().requires_grad_(True)
    ref, det = nn.ReflectionPad2d(1)(x), DeterministicReflectionPad2d(1)(y)
    assert torch.equal(ref, det)
    weight = torch.rand_like(ref)
    (ref * weight).sum().backward()
    (det * weight).sum().backward()
    torch.testing.assert_close(x.grad, y.grad)
    assert torch.equal(nn.ReflectionPad2d(2)(x), DeterministicReflectionPad2d(2)(x))
    net = make_deterministic(SkipNet(2, 2, NetworkConfig(channels_down=(4,) * 5, channels_up=(4,) * 5,
                                                          channels_skip=(2,) * 5)))
    mods = list(net.modules())
    assert not any(isinstance(m, nn.ReflectionPad2d) for m in mods)
    assert any(isinstance(m, DeterministicReflectionPad2d) for m in mods)


def test_compiled_network_is_compiled_once_per_shape_and_reinitialised(tiny_network):
    """Later fits of a shape reuse the compiled network, their own initialisation copied in place."""
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    rt = Runtime(EngineConfig(compile=True), CPU, backend=counting)
    img, known = _problems(1, bands=3)[0].image, _problems(1, bands=3)[0].known
    first = fit_dip(img, known, tiny_network, _fit(3), seed=1, runtime=rt)
    compiled = len(graphs)
    assert compiled >= 1 and first.compile_seconds > 0
    second = fit_dip(img, known, tiny_network, _fit(3), seed=2, runtime=rt)
    assert len(graphs) == compiled and second.compile_seconds == 0  # nothing traced or compiled again
    assert len(rt.compiled) == 1
    plain = fit_dip(img, known, tiny_network, _fit(3), seed=2, runtime=Runtime(EngineConfig(), CPU))
    np.testing.assert_array_equal(second.prediction, plain.prediction)  # seed 2's fit, not seed 1's continued


# --- memory ---------------------------------------------------------------------------------------------

def test_network_memory_scales_with_the_window_and_the_network():
    paper = NetworkConfig()
    at256 = network_memory(4, 4, paper, 256, 256)
    # autograd saves ~0.7 GB per 256 px tile for the paper's network in fp32
    assert 0.7e9 < at256 < 1.5e9
    assert network_memory(4, 4, paper, 512, 512) == pytest.approx(4 * at256, rel=0.05)
    small = network_memory(4, 4, NetworkConfig(channels_down=(32,) * 5, channels_up=(32,) * 5,
                                               channels_skip=(32,) * 5), 256, 256)
    assert small < at256 / 3


def test_group_sizes_fit_the_budget_evenly_and_in_order():
    rt = Runtime(EngineConfig(), CPU)
    assert rt.group_sizes(10, per_network=3, budget=None) == [10]  # no bound on a CPU
    assert rt.group_sizes(10, per_network=3, budget=10) == [3, 3, 2, 2]  # 3 fit: 4 groups, even
    assert rt.group_sizes(4, per_network=3, budget=1) == [1, 1, 1, 1]  # at least one network per group
    rt.learn_cap(("k",), 2)
    assert rt.group_sizes(5, per_network=1, key=("k",), budget=100) == [2, 2, 1]


def test_a_group_over_the_memory_budget_is_fitted_in_sub_groups(tiny_network):
    probs = _problems(5)
    fit = _fit(3, learning_rate=1e-6)  # Adam's rounding amplification kept small: the fits can be compared
    per = network_memory(2, 2, tiny_network, 64, 64)
    split = fit_problems(probs, tiny_network, fit, runtime=Runtime(EngineConfig(), CPU, memory_budget=2 * per))
    whole = fit_problems(probs, tiny_network, fit, runtime=Runtime(EngineConfig(), CPU))
    assert [r.networks_per_group for r in split] == [2] * 5 and whole[0].networks_per_group == 5
    for a, b in zip(split, whole):
        np.testing.assert_allclose(a.prediction, b.prediction, atol=1e-4)


def test_out_of_memory_halves_the_group_and_the_runtime_remembers(tiny_network, monkeypatch):
    real, sizes = _dip._fit_group, []

    def fake_gpu(problems, network, fit, experimental, rt, on_iteration=None):  # room for 2 networks at a time
        sizes.append(len(problems))
        if len(problems) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real(problems, network, fit, experimental, rt, on_iteration)

    monkeypatch.setattr(_dip, "_fit_group", fake_gpu)
    probs = _problems(5)
    fit = _fit(2, learning_rate=1e-6)
    rt = Runtime(EngineConfig(), CPU)
    results = fit_problems(probs, tiny_network, fit, runtime=rt)
    assert sizes == [5, 3, 2, 1, 2]  # 5 -> 3 + 2 -> (2 + 1) + 2, in order
    alone = fit_problems(probs[2:3], tiny_network, fit, runtime=Runtime(EngineConfig(), CPU))
    np.testing.assert_allclose(results[2].prediction, alone[0].prediction, atol=1e-4)  # each result its own
    sizes.clear()
    fit_problems(probs, tiny_network, fit, runtime=rt)
    assert sizes == [2, 2, 1]  # learnt: no out-of-memory error again

    def no_room(problems, network, fit, experimental, rt, on_iteration=None):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(_dip, "_fit_group", no_room)
    with pytest.raises(RuntimeError, match="one network on a 64 x 64 window needs more GPU memory"):
        fit_problems(probs[:1], tiny_network, fit, runtime=Runtime(EngineConfig(), CPU))


# --- engine options on the CPU --------------------------------------------------------------------------

def _loss_ratio(tiny_network, engine, input_kind="noise"):
    probs = _problems(3)
    fit, kind = _fit(40), ExperimentalConfig(input=input_kind)
    a = fit_problems(probs, tiny_network, fit, experimental=kind, runtime=Runtime(EngineConfig(), CPU))
    b = fit_problems(probs, tiny_network, fit, experimental=kind, runtime=Runtime(engine, CPU))
    return [r.final_loss / q.final_loss for r, q in zip(b, a)]


@pytest.mark.parametrize("input_kind", ["noise", "context"])
def test_channels_last_fits_like_the_default_layout(tiny_network, input_kind):
    """channels_last failed every tile (a ``.view`` of its strides); grouped, it now fits as the default does."""
    ratios = _loss_ratio(tiny_network, EngineConfig(channels_last=True), input_kind)
    assert all(0.85 < r < 1.15 for r in ratios), ratios
    net = SkipNet.stacked(2 * 2, 2, tiny_network, [1, 2, 3])
    x = torch.rand(1, 12, 64, 64)
    with torch.no_grad():
        ref = net(x)
        out = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_fp16_fits_with_loss_scaling(tiny_network):
    img, known = _problems(1, bands=3)[0].image, _problems(1, bands=3)[0].known
    engine = EngineConfig(precision="fp16")
    short = fit_dip(img, known, tiny_network, _fit(1), seed=0, engine=engine)
    long = fit_dip(img, known, tiny_network, _fit(40), seed=0, engine=engine)
    assert np.isfinite(long.prediction).all() and long.final_loss < 0.9 * short.final_loss
