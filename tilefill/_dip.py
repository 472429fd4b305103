"""The fill: Deep Image Prior (Ulyanov et al. 2018) as the paper configures it, and its engine.

A fresh "skip" hourglass network maps a fixed noise image z to the tile; its weights are
fitted to the tile's known pixels only, and its output supplies the missing ones. Nothing is
learned from other images: the network's structure is the prior.

With ``experimental.input: context`` the same network sees the window itself instead of noise: its
known pixels, its gaps pre-filled by normalised convolution, and a visibility mask. Every
iteration more gap-shaped stripes of known pixels are hidden from that input, and the loss is
the error on them: the network learns, from this window alone, to predict a stripe from what
surrounds it, and then predicts the real gaps from the whole window.

The engine fits K independent networks at once as one module whose convolutions are grouped
(``groups=K``) and whose BatchNorm channels belong to one network each: the K networks share
no weight, no statistic and no gradient, yet run as one kernel per layer, which is what fills
a GPU. K counts ensemble members, bands fitted one at a time, and tiles batched together;
with K = 1 it is the paper's plain loop. Each network is initialised, fed z and noise from its
own seed, so a network fitted in a batch matches the same network fitted alone.

A fit is three parts, each testable alone: an input strategy (:class:`FixedInput` for noise and
meshgrid, :class:`ContextInput`) says what the networks see each iteration and what their loss
counts; a :class:`FitTracker` keeps the EMA of the outputs, the validation on hidden pixels,
the patience and each network's best output; and a plain loop (:func:`_fit_group`) steps Adam.
Where and how the loop runs (device, precision, compiled network, memory) is the process's
:class:`~tilefill._runtime.Runtime`; :func:`fit_problems` splits a group that would not fit the
GPU's memory into sub-groups, and halves a sub-group that runs out of it.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
from torch import nn

from tilefill._config import EngineConfig, ExperimentalConfig, FitConfig, NetworkConfig
from tilefill._runtime import AUTOCAST, Runtime, get_runtime, network_key


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv with reflection padding, as the public DIP code builds it (no zero border)."""
    pad = (kernel - 1) // 2
    layers: list[nn.Module] = [nn.ReflectionPad2d(pad)] if pad else []
    layers.append(nn.Conv2d(cin * groups, cout * groups, kernel, stride=stride, padding=0, bias=True, groups=groups))
    return nn.Sequential(*layers)


def _bn_act(channels: int, slope: float, groups: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels * groups), nn.LeakyReLU(slope, inplace=True)]


def _group_cat(a: torch.Tensor, b: torch.Tensor, groups: int) -> torch.Tensor:
    """Concatenate channels network by network, so each group of channels stays one network's.

    A pure copy, so every way of doing it gives the same values: views for the default layout,
    chunks for channels_last (whose strides forbid the views, and which this keeps channels_last).
    """
    if groups == 1:
        return torch.cat([a, b], dim=1)
    if not a.is_contiguous():
        return torch.cat([t for pair in zip(a.chunk(groups, 1), b.chunk(groups, 1)) for t in pair], dim=1)
    n, _, h, w = a.shape
    return torch.cat([a.view(n, groups, -1, h, w), b.view(n, groups, -1, h, w)], dim=2).view(n, -1, h, w)


class _Level(nn.Module):
    """One level of the hourglass: concat(skip branch, deeper branch) -> conv stack."""

    def __init__(self, cin: int, level: int, cfg: NetworkConfig, groups: int, upsample: str):
        super().__init__()
        down, up, skip = cfg.channels_down[level], cfg.channels_up[level], cfg.channels_skip[level]
        slope, g = cfg.leaky_slope, groups
        last = level == cfg.levels - 1
        self.groups = groups
        self.skip = nn.Sequential(_conv(cin, skip, cfg.kernel_skip, groups=g), *_bn_act(skip, slope, g)) if skip else None
        deeper: list[nn.Module] = [
            _conv(cin, down, cfg.kernel_down, stride=2, groups=g),
            *_bn_act(down, slope, g),
            _conv(down, down, cfg.kernel_down, groups=g),
            *_bn_act(down, slope, g),
        ]
        if not last:
            deeper.append(_Level(down, level + 1, cfg, groups, upsample))
        deeper.append(nn.Upsample(scale_factor=2, mode=upsample))
        self.deeper = nn.Sequential(*deeper)
        k = down if last else cfg.channels_up[level + 1]
        self.after = nn.Sequential(
            nn.BatchNorm2d((skip + k) * g),
            _conv(skip + k, up, cfg.kernel_up, groups=g),
            *_bn_act(up, slope, g),
            _conv(up, up, 1, groups=g),
            *_bn_act(up, slope, g),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep = self.deeper(x)
        if self.skip is not None:
            deep = _group_cat(self.skip(x), deep, self.groups)
        return self.after(deep)


class SkipNet(nn.Module):
    """The DIP skip network: ``cin`` channels in, ``cout`` out, sigmoid output; ``groups`` nets side by side.

    ``upsample``: ``nearest`` (the paper's) or ``bilinear`` (``experimental.upsample``).

    Examples
    --------
    >>> from tilefill._config import NetworkConfig
    >>> net = SkipNet(4, 4, NetworkConfig())
    >>> sum(p.numel() for p in net.parameters())
    2966916
    """

    def __init__(self, cin: int, cout: int, cfg: NetworkConfig, groups: int = 1, upsample: str = "nearest"):
        super().__init__()
        self.groups = groups
        self.body = _Level(cin, 0, cfg, groups, upsample)
        self.head = nn.Sequential(_conv(cfg.channels_up[0], cout, 1, groups=groups), nn.Sigmoid())

    def forward(self, x: torch.Tensor, autocast: torch.dtype | None = None) -> torch.Tensor:
        """The output in [0, 1]; ``autocast`` (bf16, fp16) runs the body in that precision.

        The 1x1 output layer and its sigmoid always run in fp32: in bf16 the sigmoid's output
        moves in steps of 0.004 near 1, and the loss, the EMA and the prediction that fills the
        gaps would inherit them. It costs ``cout / channels`` of one body layer.
        """
        if autocast is None:
            return self.head(self.body(x))
        with torch.autocast(x.device.type, dtype=autocast):
            features = self.body(x)
        return self.head(features.float())

    @classmethod
    def stacked(cls, cin: int, cout: int, cfg: NetworkConfig, seeds: list[int], upsample: str = "nearest"
                ) -> "SkipNet":
        """K networks in one grouped module, each initialised exactly as ``SkipNet`` is under its seed."""
        singles = []
        for seed in seeds:
            torch.manual_seed(seed)
            singles.append(cls(cin, cout, cfg, upsample=upsample))
        if len(seeds) == 1:
            return singles[0]
        with torch.device("meta"):  # no initialisation of its own: every value is copied from the singles
            net = cls(cin, cout, cfg, groups=len(seeds), upsample=upsample)
        net = net.to_empty(device="cpu")
        with torch.no_grad():
            # every parameter and BN buffer stacks along dim 0, network after network; counters are shared
            for mine, theirs in zip(net.state_dict().values(), zip(*(s.state_dict().values() for s in singles))):
                mine.copy_(torch.cat(theirs, 0) if mine.ndim else theirs[0])
        return net


def flops_per_iteration(cin: int, cout: int, cfg: NetworkConfig, height: int, width: int) -> float:
    """FLOPs of one training iteration (forward + backward = 3x the forward's 2*MACs) of one network."""
    macs = 0

    def hook(mod, inp, out):
        nonlocal macs
        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
        macs += out.numel() * k

    net = SkipNet(cin, cout, cfg)
    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        net(torch.zeros(1, cin, height, width))
    for h in handles:
        h.remove()
    return 3 * 2 * float(macs)


# The estimate's margin over what it counts (autograd's saved tensors, parameters, Adam's state):
# the backward's transient gradients, cuDNN workspaces, allocator rounding. A guess until measured
# on a GPU: benchmarks/gpu_check.py reports measured peak / estimate for every group size.
MEMORY_MARGIN = 1.3


@functools.lru_cache(maxsize=32)
def _saved_bytes(cin: int, cout: int, cfg: NetworkConfig, precision: str, device: str) -> tuple[float, int]:
    """(bytes autograd saves per input pixel, parameter count) of one network, counted on a 64 px input.

    Every feature map scales with the window's area, so one small forward measures any size. On a
    GPU it runs there, in the precision's autocast (what it saves is that device's). On a CPU it
    runs in fp32 for every precision: CPU autocast saves other dtypes than CUDA's, and emulated
    bf16 takes seconds; fp32 over-counts a half-precision fit (by 1.6x on this CPU's autocast).
    """
    on_gpu = device != "cpu"
    net = SkipNet(cin, cout, cfg).to(device)
    sizes: dict = {}

    def pack(t):
        sizes[(t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(torch.rand(1, cin, 64, 64, device=device), AUTOCAST[precision] if on_gpu else None)
    return sum(sizes.values()) / (64 * 64), sum(p.numel() for p in net.parameters())


def network_memory(cin: int, cout: int, cfg: NetworkConfig, height: int, width: int, precision: str = "fp32",
                   device: str = "cpu") -> int:
    """Device memory one network's fit takes, in bytes (an estimate, with :data:`MEMORY_MARGIN`).

    What autograd saves for the backward (per pixel, as measured by :func:`_saved_bytes` on
    ``device``), the parameters with their gradients and Adam's two moments (fp32), and the
    window's fp32 buffers (input, target, masks, EMA, best output).

    Examples
    --------
    >>> from tilefill._config import NetworkConfig
    >>> round(network_memory(4, 4, NetworkConfig(), 256, 256) / 2**30)  # the paper's network, 256 px: about 1 GiB
    1
    """
    per_px, params = _saved_bytes(cin, cout, cfg, precision, str(torch.device(device).type))
    buffers = 8 * 4 * (cin + cout) * height * width
    return int(MEMORY_MARGIN * (per_px * height * width + 16 * params + buffers))


@dataclass(frozen=True)
class Problem:
    """One network's job: a window (channels, H, W) in [0, 1], its known pixels, its seed.

    ``holdout``: known pixels kept out of the loss to score the fit; by default drawn from
    ``fit.validation`` and the seed. ``guides``: other dates of the window, which the network takes
    as :class:`GuidedInput` describes.
    """

    image: np.ndarray
    known: np.ndarray
    seed: int
    holdout: np.ndarray | None = None
    # other dates of the window (G, channels, H, W) in [0, 1], their own gaps filled, and where they carried
    # data: fitted with GuidedInput
    guides: np.ndarray | None = None
    guides_known: np.ndarray | None = None


@dataclass(frozen=True)
class DipResult:
    """What one fit returns: the prediction over the whole window and how the fit went."""

    prediction: np.ndarray  # float32 (bands, H, W) in [0, 1]
    final_loss: float
    iterations: int
    seconds: float
    device: str
    # RMSE on known pixels hidden from the fit (fit.validation > 0), per band, in [0, 1] units:
    # an estimate of the gap RMSE made without ground truth; NaN when not measured
    validation_rmse: tuple[float, ...] = field(default=())
    compile_seconds: float = 0.0  # of ``seconds``, spent in torch.compile (first fits of a shape in a process)
    networks_per_group: int = 0  # the most networks fitted at once (fewer than asked: memory split them)


def holdout_mask(known: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Known pixels hidden from the fit to score it: gap-shaped, about ``share`` of the known pixels.

    The window's own gaps, moved half a scan period down, make the hidden shapes: stripes as wide
    as the real ones, so that the error there speaks for the error in the real gaps (thin hidden
    lines would flatter every smooth interpolator). Random 32 px cells of them are kept, to hide
    about ``share``. A window without gaps hides tilted stripes ~8 px wide instead.
    """
    from tilefill._gaps import stripe_mask_with_fraction

    bands, h, w = known.shape
    gaps = ~known.all(axis=0)
    shapes = np.zeros_like(gaps)
    for shift in (16, 8, 24, 5):  # half an SLC scan period first; others where gaps repeat on it
        shapes = np.roll(gaps, shift, axis=0) & ~gaps
        if shapes.sum() >= 0.02 * h * w:
            break
    else:
        shapes = stripe_mask_with_fraction((h, w), 0.25, seed=seed) & ~gaps
    candidates = shapes.sum()
    if not candidates:
        return np.zeros_like(known)
    p = min(1.0, share * known.all(axis=0).sum() / candidates)
    rng = np.random.default_rng(seed)
    cells = rng.random((-(-h // 32), -(-w // 32))) < p
    keep = np.kron(cells, np.ones((32, 32), dtype=bool))[:h, :w]
    return known & (shapes & keep)[None]


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of every channel, reflected at the border (radius 3 sigma, < the side)."""
    radius = min(int(3 * sigma), min(x.shape[-2:]) - 1)
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-taps ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(x.shape[1], 1, 1, 1)
    n = x.shape[1]
    x = nn.functional.conv2d(nn.functional.pad(x, (radius, radius, 0, 0), mode="reflect"), k, groups=n)
    return nn.functional.conv2d(nn.functional.pad(x, (0, 0, radius, radius), mode="reflect"), k.transpose(2, 3),
                                groups=n)


def _push_pull(values: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Mean of the visible pixels at the finest 2x pyramid level that has any: a fill for any hole size."""
    levels = []
    num, den = values * visible, visible
    while min(num.shape[-2:]) > 1:
        levels.append((num, den))
        num, den = (nn.functional.avg_pool2d(t, 2, ceil_mode=True) for t in (num, den))
    fill = num / den.clamp(min=1e-8)
    for num, den in reversed(levels):
        up = nn.functional.interpolate(fill, size=num.shape[-2:], mode="nearest")
        fill = num / den.clamp(min=1e-8) * (den > 0) + up * (den == 0)
    return fill


def context_fill(values: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """The context input's first guess: visible pixels kept, holes by normalised convolution.

    A hole pixel takes the Gaussian-weighted mean of the visible pixels at the finest scale
    (sigma 1.5, 3, 6, 12 px) that reaches one; pixels further than that (a cloud) take the
    pyramid mean of :func:`_push_pull`. Cheap enough to run every iteration on every network.
    """
    out = _push_pull(values, visible)
    for sigma in (12.0, 6.0, 3.0, 1.5):  # coarse to fine: the finest scale that reaches a pixel wins
        den = _blur(visible, sigma)
        ok = den > 1e-3
        out = torch.where(ok, _blur(values * visible, sigma) / den.clamp(min=1e-6), out)
    return torch.where(visible > 0, values, out)


class _ContextStripes:
    """Gap-shaped stripes hidden from one network's input each iteration (``experimental.input: context``).

    The window's own gaps, moved down by a random 4-28 rows (inside one SLC scan period, so
    the stripes fall between the real ones), kept in random 32 px cells (half of them). A window
    without gaps moves tilted stripes ~8 px wide instead. Drawn from the network's own seed.
    """

    def __init__(self, known: np.ndarray, seed: int, device: torch.device):
        from tilefill._gaps import stripe_mask_with_fraction

        gaps = ~known.all(axis=0)
        if not gaps.any():
            gaps = stripe_mask_with_fraction(gaps.shape, 0.25, seed=seed)
        self.gaps = torch.from_numpy(gaps).to(device)
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        h, w = gaps.shape
        self.cells = (-(-h // 32), -(-w // 32))

    def draw(self) -> torch.Tensor:
        shift = int(torch.randint(4, 29, (1,), generator=self.gen))
        keep = torch.rand(self.cells, generator=self.gen) < 0.5
        keep = keep.repeat_interleave(32, 0).repeat_interleave(32, 1)[:self.gaps.shape[0], :self.gaps.shape[1]]
        return torch.roll(self.gaps, shift, dims=0) & ~self.gaps & keep.to(self.gaps.device)


def _input(channels: int, height: int, width: int, fit: FitConfig, kind: str, gen: torch.Generator
           ) -> torch.Tensor:
    if kind == "meshgrid":
        ys, xs = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
        grid = torch.stack([xs, ys])  # the paper's appendix: a 2-channel meshgrid, repeated to fill the channels
        return grid[torch.arange(channels) % 2][None]
    return torch.rand((1, channels, height, width), generator=gen) * fit.input_scale


class FitInputs:
    """What K networks see each iteration and which pixels their loss counts: one input kind.

    ``target`` and ``mask`` are (1, K*C, H, W): the windows' values (0 where unknown) and the
    pixels the fit may learn from. ``z`` is what the networks see when they predict the gaps.
    ``experimental``: its ``input`` (one kind) and ``noise_end``.
    """

    channels_in = 1  # the network's input channels per band
    stride = 1  # iterations between predictions averaged into the EMA

    @classmethod
    def channels(cls, problems: list[Problem]) -> tuple[int, int]:
        """The network's (input, output) channels for these problems."""
        return cls.channels_in * problems[0].image.shape[0], problems[0].image.shape[0]

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        """The windows' values (1, K*C, H, W) from the networks' output."""
        return out

    def __init__(self, problems: list[Problem], fit: FitConfig, target: torch.Tensor, mask: torch.Tensor,
                 memory_format: torch.memory_format = torch.contiguous_format,
                 experimental: ExperimentalConfig = ExperimentalConfig()):
        self.k, self.c = len(problems), problems[0].image.shape[0]
        self.fit, self.target, self.mask, self.memory_format = fit, target, mask, memory_format
        self.experimental = experimental
        self.z: torch.Tensor

    def next(self) -> torch.Tensor:
        """This iteration's input."""
        raise NotImplementedError

    def loss(self, out: torch.Tensor) -> torch.Tensor:
        """Each network's loss on this iteration's output: (K,)."""
        raise NotImplementedError

    def smoothed(self, losses: torch.Tensor, per_net: torch.Tensor) -> torch.Tensor:
        """The running loss each network reports, after this iteration's ``per_net``."""
        return per_net

    def prediction(self, out: torch.Tensor, forward: Callable) -> torch.Tensor:
        """Each network's current prediction of its window (fp32), given this iteration's output."""
        return out.detach()

    def final(self, forward: Callable) -> torch.Tensor:
        """The prediction from ``z`` alone: the paper's output, BatchNorm still in training mode."""
        return forward(self.z)


class FixedInput(FitInputs):
    """The paper's input: a fixed z per network (noise, or the meshgrid), plus fresh noise each iteration.

    z comes from the network's seed; the per-iteration noise from its own stream (seed + 1) on
    the device, so a network fitted in a group sees what it would see alone. The loss is each
    network's own mean over its elements, the public DIP code's ``mse(out * mask, img * mask)``.
    """

    def __init__(self, problems, fit, target, mask, memory_format=torch.contiguous_format,
                 experimental=ExperimentalConfig()):
        super().__init__(problems, fit, target, mask, memory_format, experimental)
        dev, (c, h, w) = target.device, problems[0].image.shape
        gens = [torch.Generator(device="cpu").manual_seed(p.seed) for p in problems]
        self.z = torch.cat([_input(c, h, w, fit, experimental.input, g) for g in gens], dim=1).to(dev).contiguous(
            memory_format=memory_format)
        self.noise_gens = [torch.Generator(device=dev).manual_seed(p.seed + 1) for p in problems] \
            if fit.input_noise else []
        self.it = 0

    def next(self) -> torch.Tensor:
        if not self.noise_gens:
            return self.z
        _, _, h, w = self.z.shape
        dev = self.z.device
        noise = torch.cat([torch.randn((1, self.c, h, w), generator=g, device=dev) for g in self.noise_gens], dim=1)
        sigma = self.fit.input_noise * _cosine_share(self.experimental.noise_end, self.it, self.fit.iterations)
        self.it += 1
        return self.z + noise * sigma

    def loss(self, out: torch.Tensor) -> torch.Tensor:
        # summing the networks' means keeps every network's gradient its own
        return ((out * self.mask - self.target * self.mask) ** 2).reshape(self.k, -1).mean(dim=1)


class ContextInput(FitInputs):
    """``experimental.input: context``: the window itself, gaps pre-filled, plus its visibility mask.

    Each iteration more gap-shaped stripes of known pixels (:class:`_ContextStripes`, from the
    network's seed + 3) are hidden from that input, and the loss is each network's mean error
    on them. The prediction is a separate pass over the whole window (``z``), taken every
    ``stride`` iterations for the EMA.
    """

    channels_in = 2
    stride = 5

    def __init__(self, problems, fit, target, mask, memory_format=torch.contiguous_format,
                 experimental=ExperimentalConfig()):
        super().__init__(problems, fit, target, mask, memory_format, experimental)
        self.stripes = [_ContextStripes(p.known, p.seed + 3, target.device) for p in problems]
        self.z = _group_cat(context_fill(target, mask), mask, self.k).contiguous(memory_format=memory_format)
        self.hidden = torch.zeros_like(mask)

    def next(self) -> torch.Tensor:
        # hide more gap-shaped stripes of known pixels; the network learns to predict them from around
        draws = torch.stack([st.draw() for st in self.stripes]).repeat_interleave(self.c, 0)[None]
        self.hidden = draws.to(self.mask.dtype) * self.mask
        visible = self.mask - self.hidden
        return _group_cat(context_fill(self.target, visible), visible, self.k).contiguous(
            memory_format=self.memory_format)

    def loss(self, out: torch.Tensor) -> torch.Tensor:
        hid = self.hidden.reshape(self.k, -1)
        return ((out - self.target) ** 2 * self.hidden).reshape(self.k, -1).sum(dim=1) / hid.sum(dim=1).clamp(min=1)

    def smoothed(self, losses: torch.Tensor, per_net: torch.Tensor) -> torch.Tensor:
        # one iteration's stripes are few, and now and then none: a smoothed loss, kept where none
        has = self.hidden.reshape(self.k, -1).sum(dim=1) > 0
        smooth = torch.where(torch.isnan(losses), per_net, 0.9 * losses + 0.1 * per_net)
        return torch.where(has, smooth, losses)

    def prediction(self, out: torch.Tensor, forward: Callable) -> torch.Tensor:
        with torch.no_grad():
            return forward(self.z)


class GuidedInput(FixedInput):
    """The paper's input, and a window's other dates (guides) in its output: DIP draws a local linear map from each.

    The network sees z as in the paper. Its output holds, per band, an offset ``b`` and per guide a gain
    ``a_g`` (each a sigmoid output), and the window is ``b + sum_g (4 a_g - 2) * (guide_g - 0.5)``: the
    gain and offset of a local linear map from each guide, drawn by DIP as images, so that the guide's
    texture reaches the gaps through a smooth gain. The guides come with their own gaps filled
    (:func:`tilefill._fill.network_guides`), so the offset keeps one meaning everywhere; where no guide
    has data the window is the offset and a smooth guess. Measured on real Landsat pairs (Taizhou,
    Nanjing; 192 px crops) beside the guide fed to the network as input (its texture then filled the gaps
    with copies of other places: gap r2 down to -3.5), the guide in the input as well as the output
    (0.03-0.1 lower where the guide had gaps), and the guide's holes left in (the pixels no guide
    covered lost 0.2 r2 against DIP alone).
    """

    @classmethod
    def channels(cls, problems: list[Problem]) -> tuple[int, int]:
        g, c = problems[0].guides.shape[:2]
        return c, c * (1 + g)

    def __init__(self, problems, fit, target, mask, memory_format=torch.contiguous_format,
                 experimental=ExperimentalConfig()):
        super().__init__(problems, fit, target, mask, memory_format, experimental)
        self.g = problems[0].guides.shape[0]
        self.centred = torch.from_numpy(np.stack([p.guides for p in problems]).astype(np.float32) - 0.5).to(
            target.device)  # (K, G, C, H, W)

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        _, _, h, w = out.shape
        parts = out.reshape(self.k, 1 + self.g, self.c, h, w)
        gain = 4 * parts[:, 1:] - 2
        return (parts[:, 0] + (gain * self.centred).sum(dim=1)).reshape(1, self.k * self.c, h, w)


INPUTS = {"noise": FixedInput, "meshgrid": FixedInput, "context": ContextInput}


def input_kind(experimental: ExperimentalConfig, problems: list[Problem]) -> type[FitInputs]:
    """What the networks of these problems see: their guides where they have some, else ``experimental.input``."""
    return GuidedInput if problems[0].guides is not None else INPUTS[experimental.input]


class FitTracker:
    """A fit's outputs over its iterations, per network: their EMA, validation, patience, the best one.

    ``fit.ema``: an exponential average of the predictions over the second half of the fit (one
    step every ``stride`` iterations, of decay ``ema ** stride``). With hidden pixels (``held``,
    1 where a known pixel is kept out of the loss), at the end and every ``fit.check_every`` iterations
    (:meth:`FitConfig.scored_at`) the prediction (the EMA's, when there is one) is scored there by RMSE
    per band; each network keeps the prediction that scored best, and :meth:`step` says stop once every
    network went ``patience`` checks without a better score (``experimental.patience``; 0: never).

    Examples
    --------
    >>> t = FitTracker(FitConfig(iterations=4, ema=0.5), k=1, c=1, target=torch.zeros(1, 1, 2, 2))
    >>> [t.step(it, lambda: torch.full((1, 1, 2, 2), float(it))) for it in range(4)]
    [False, False, False, False]
    >>> float(t.result()[0, 0, 0, 0])  # 0.5 * 2 + 0.5 * 3
    2.5
    """

    def __init__(self, fit: FitConfig, k: int, c: int, target: torch.Tensor, held: torch.Tensor | None = None,
                 stride: int = 1, patience: int = 0):
        dev = target.device
        self.fit, self.k, self.c, self.target, self.held, self.stride = fit, k, c, target, held, stride
        self.patience = patience
        self.ema: torch.Tensor | None = None
        self.best_score = torch.full((k,), float("inf"), device=dev)
        self.best_rmse = torch.full((k, c), float("nan"), device=dev)  # that score per band
        self.best_out: torch.Tensor | None = None
        self.stale = torch.zeros(k, dtype=torch.long, device=dev)
        # networks with hidden pixels: the others are not scored, and give what they give alone
        self.scored = (held.reshape(k, -1).sum(-1) > 0) if held is not None else torch.zeros(k, dtype=torch.bool,
                                                                                             device=dev)

    def step(self, it: int, prediction: Callable[[], torch.Tensor]) -> bool:
        """After iteration ``it`` (from 0): average and score as due; True when the fit should stop.

        ``prediction()`` gives the networks' current prediction; it is called only when needed.
        """
        fit, done = self.fit, it + 1
        # average the second half: the first outputs are far off
        if fit.ema and it >= fit.iterations // 2 and (it % self.stride == 0 or done == fit.iterations):
            step = prediction()
            decay = fit.ema ** self.stride
            self.ema = step.clone() if self.ema is None else self.ema.mul_(decay).add_(step, alpha=1 - decay)
        if self.held is None or not fit.scored_at(done) or (fit.ema and self.ema is None):
            return False
        current = self.ema if self.ema is not None else prediction()
        k, c, held = self.k, self.c, self.held
        sq = ((current - self.target) ** 2 * held).reshape(k, c, -1).sum(-1)
        err = sq / held.reshape(k, c, -1).sum(-1).clamp(min=1)
        rmse = err.sqrt()
        score = rmse.mean(dim=1)
        better = (score < self.best_score) & self.scored
        self.best_score = torch.where(better, score, self.best_score)
        self.best_rmse[better] = rmse[better]
        if self.best_out is None:
            self.best_out = current.clone()
        else:  # each network keeps its own best output
            sel = better.repeat_interleave(c).view(1, k * c, 1, 1)
            self.best_out = torch.where(sel, current, self.best_out)
        self.stale = torch.where(better, torch.zeros_like(self.stale), self.stale + 1)
        # a network without hidden pixels has no say in stopping
        return bool(self.patience and bool(((self.stale >= self.patience) | ~self.scored).all()))

    def result(self, plain: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Each network's output that predicted its hidden pixels best, else its EMA, else ``plain()``
        (None without it)."""
        if self.best_out is not None and bool(self.scored.all()):
            return self.best_out  # no plain pass needed: every network has its best
        other = self.ema if self.ema is not None else plain() if plain is not None else None
        if self.best_out is None:
            return other
        sel = self.scored.repeat_interleave(self.c).view(1, self.k * self.c, 1, 1)
        return torch.where(sel, self.best_out, other)


def learning_rate(fit: FitConfig, it: int, lr_end: float = 1.0) -> float:
    """The learning rate of iteration ``it`` (from 0): ``fit.learning_rate`` down to ``lr_end`` of it
    along a half cosine (``experimental.lr_end``; constant where it is 1).

    Examples
    --------
    >>> from tilefill._config import FitConfig
    >>> fit = FitConfig(iterations=101, learning_rate=0.01)
    >>> [round(learning_rate(fit, i, lr_end=0.1), 4) for i in (0, 50, 100)]
    [0.01, 0.0055, 0.001]
    """
    return fit.learning_rate * _cosine_share(lr_end, it, fit.iterations)


def _cosine_share(end: float, it: int, iterations: int) -> float:
    """1 at iteration 0 down to ``end`` at the last one, along a half cosine."""
    last = max(iterations - 1, 1)
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(it, last) / last))


def _fit_group(problems: list[Problem], network: NetworkConfig, fit: FitConfig, experimental: ExperimentalConfig,
               rt: Runtime, on_iteration: Callable[[int], None] | None = None) -> list[DipResult]:
    """The plain loop: K same-sized problems in one grouped network, on the runtime's device."""
    c, h, w = problems[0].image.shape
    k = len(problems)
    dev = rt.device
    rt.activate()
    kind = input_kind(experimental, problems)
    cin, cout = kind.channels(problems)
    upsample = experimental.upsample
    net, model = rt.network(lambda: SkipNet.stacked(cin, cout, network, [p.seed for p in problems], upsample),
                            network_key(network, cin, cout, k, h, w, upsample))
    held = [p.holdout if p.holdout is not None else
            holdout_mask(p.known, fit.validation, p.seed + 2) if fit.validation else np.zeros_like(p.known)
            for p in problems]
    train = np.concatenate([p.known & ~hd for p, hd in zip(problems, held)])
    # unknown pixels never reach the loss, whatever they hold (even NaN)
    target = torch.from_numpy(np.concatenate([np.where(p.known, p.image, 0) for p in problems]).astype(np.float32))
    target, mask = target[None].to(dev), torch.from_numpy(train.astype(np.float32))[None].to(dev)
    held_t = torch.from_numpy(np.concatenate(held).astype(np.float32))[None].to(dev) if any(h.any() for h in held) else None
    inputs = kind(problems, fit, target, mask, rt.memory_format, experimental)
    tracker = FitTracker(fit, k, c, target, held_t, inputs.stride, experimental.patience)
    # fused: one kernel for all parameters (CPU and GPU); the per-parameter loop cost a slim network 6% of its
    # CPU iteration (128 px, one thread: 35.4 -> 33.2 ms, benchmarks/iteration_cost.py)
    opt = torch.optim.Adam(net.parameters(), lr=fit.learning_rate, fused=True)
    scaler = rt.grad_scaler()

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = rt.call(model, x)
        out = out if out.is_contiguous() else out.contiguous()  # channels_last: the loss and EMA in one layout
        return inputs.decode(out)

    losses = torch.full((k,), float("nan"), device=dev)
    done = 0
    for it in range(fit.iterations):
        if experimental.lr_end != 1:
            opt.param_groups[0]["lr"] = learning_rate(fit, it, experimental.lr_end)
        opt.zero_grad(set_to_none=True)
        out = forward(inputs.next())
        per_net = inputs.loss(out)
        with rt.compiling(model, "backward"):
            scaler.scale(per_net.sum()).backward()
        scaler.step(opt)
        scaler.update()
        losses = inputs.smoothed(losses, per_net.detach())
        done = it + 1
        stop = tracker.step(it, lambda: inputs.prediction(out, forward))
        if on_iteration is not None:
            on_iteration(done)
        if stop:
            break
    with torch.no_grad():
        final = tracker.result(lambda: inputs.final(forward))
    rt.synchronize()
    final = final[0].cpu().numpy().reshape(k, c, h, w).astype(np.float32)
    losses = losses.cpu().numpy()
    val = tracker.best_rmse.cpu().numpy()
    return [DipResult(final[i], float(losses[i]), done, 0.0, str(dev), tuple(float(v) for v in val[i]))
            for i in range(k)]


# how libraries report a failed allocation as text: CUDA ("CUDA error: out of memory"), cuBLAS and cuDNN
# ("CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", cuDNN 9's "..._DEVICE_ALLOCATION_FAILED")
_OUT_OF_MEMORY_TEXT = ("out of memory", "alloc_failed", "allocation_failed", "cudaerrormemoryallocation")


def _out_of_memory(exc: BaseException) -> bool:
    """A device allocation failed: the caching allocator's error, or a library's that reports it as text.

    >>> [_out_of_memory(RuntimeError(m)) for m in ("cuDNN error: CUDNN_STATUS_ALLOC_FAILED", "bad shape")]
    [True, False]
    """
    text = str(exc).lower()
    return isinstance(exc, torch.cuda.OutOfMemoryError) or any(t in text for t in _OUT_OF_MEMORY_TEXT)


def fit_problems(problems: list[Problem], network: NetworkConfig, fit: FitConfig, *,
                 experimental: ExperimentalConfig | None = None, engine: EngineConfig | None = None,
                 device: str | torch.device | None = None, runtime: Runtime | None = None,
                 on_iteration: Callable[[int], None] | None = None) -> list[DipResult]:
    """Fit one DIP network per problem, all at once (grouped convolutions); same-sized windows only.

    ``experimental`` (default: every research knob off) holds one input kind.

    ``runtime`` (default: this process's for ``engine`` and ``device``, else ``fit.device``) says
    where and how. A group larger than the GPU's memory budget is fitted in sub-groups that fit
    (estimated by :func:`network_memory`), in order; a sub-group that runs out of memory anyway
    is halved and fitted again, and the runtime remembers the size that fitted. Each result's
    ``seconds`` is the wall time of the whole call. ``on_iteration(n)`` is called after each
    iteration n (from 1) of each (sub-)group: benchmarks time the loop with it.

    Examples
    --------
    >>> import numpy as np
    >>> from tilefill._config import NetworkConfig, FitConfig
    >>> img = np.random.default_rng(0).random((2, 64, 64), dtype=np.float32)
    >>> net = NetworkConfig(channels_down=(4,) * 5, channels_up=(4,) * 5, channels_skip=(2,) * 5)
    >>> probs = [Problem(img, np.ones_like(img, dtype=bool), seed) for seed in (1, 2)]
    >>> [r.prediction.shape for r in fit_problems(probs, net, FitConfig(iterations=2))]
    [(2, 64, 64), (2, 64, 64)]
    """
    experimental = experimental or ExperimentalConfig()
    if len(experimental.inputs) > 1:
        raise ValueError("fit_problems fits one input kind; fit_windows splits experimental.input = 'noise+context'")
    rt = runtime or get_runtime(engine, device if device is not None else fit.device)
    shapes = {p.image.shape for p in problems}
    if len(shapes) != 1:
        raise ValueError(f"problems fitted together must share one shape, got {sorted(shapes)}")
    c, h, w = shapes.pop()
    if len({None if p.guides is None else p.guides.shape for p in problems}) != 1:
        raise ValueError("problems fitted together must all have guides of one shape, or none")
    cin, cout = input_kind(experimental, problems).channels(problems)
    start, compiled = time.perf_counter(), rt.compile_seconds
    key = (network, cin, h, w)
    budget = rt.budget()
    per_network = network_memory(cin, cout, network, h, w, rt.engine.precision, rt.device.type) \
        if budget is not None else 0
    sizes = rt.group_sizes(len(problems), per_network, key, budget)
    pending = [problems[sum(sizes[:i]):sum(sizes[:i + 1])] for i in range(len(sizes))]
    results: list[DipResult] = []
    largest = 0
    while pending:
        group = pending.pop(0)
        try:
            results += _fit_group(group, network, fit, experimental, rt, on_iteration)
            largest = max(largest, len(group))
            continue
        except RuntimeError as exc:  # out of the handler before the retry: its traceback holds the fit's tensors
            if not _out_of_memory(exc):
                raise
        if len(group) == 1:
            raise RuntimeError(f"one network on a {h} x {w} window needs more GPU memory than is free: use smaller "
                               "tiles (--tile-size) or a smaller network")
        rt.release()
        half = math.ceil(len(group) / 2)
        rt.learn_cap(key, half)
        pending[:0] = [group[:half], group[half:]]
    seconds, compiled = time.perf_counter() - start, rt.compile_seconds - compiled
    return [replace(r, seconds=seconds, compile_seconds=compiled, networks_per_group=largest) for r in results]


def fit_dip(image: np.ndarray, known: np.ndarray, network: NetworkConfig, fit: FitConfig, *, seed: int = 0,
            experimental: ExperimentalConfig | None = None, device: str | torch.device | None = None,
            engine: EngineConfig | None = None, holdout: np.ndarray | None = None,
            runtime: Runtime | None = None) -> DipResult:
    """Fit DIP to the known pixels of one window and return its prediction.

    All bands in one network (the paper's composite), or one network per band with
    ``fit.per_band``; ``experimental.ensemble`` networks with different seeds are averaged.

    Parameters
    ----------
    image : ndarray, float32 (bands, H, W)
        Values scaled to [0, 1]; gap pixels may hold anything.
    known : ndarray, bool (bands, H, W)
        True where a pixel is known and enters the loss.
    network, fit : NetworkConfig, FitConfig
        The architecture and the optimisation settings.
    seed : int
        Seeds the weights, z and the per-iteration noise, so a fit is reproducible.
    experimental : ExperimentalConfig, optional
        The research knobs (default: all off, the paper's fit).
    device, engine, runtime
        Where and how it runs: ``runtime``, else this process's runtime for ``engine`` (default
        settings) and ``device`` (default ``fit.device``); see :mod:`tilefill._runtime`.

    Examples
    --------
    >>> import numpy as np
    >>> from tilefill._config import NetworkConfig, FitConfig
    >>> img = np.random.default_rng(0).random((2, 64, 64), dtype=np.float32)
    >>> known = np.ones_like(img, dtype=bool)
    >>> net = NetworkConfig(channels_down=(4,) * 5, channels_up=(4,) * 5, channels_skip=(2,) * 5)
    >>> res = fit_dip(img, known, net, FitConfig(iterations=2), seed=1)
    >>> res.prediction.shape
    (2, 64, 64)
    """
    if image.ndim != 3 or image.shape != known.shape:
        raise ValueError("image and known must both be (bands, H, W)")
    return fit_windows([(image, known, seed)], network, fit, experimental=experimental, engine=engine,
                       device=device, holdouts=None if holdout is None else [holdout], runtime=runtime)[0]


def fit_windows(windows: list[tuple[np.ndarray, np.ndarray, int]], network: NetworkConfig, fit: FitConfig, *,
                experimental: ExperimentalConfig | None = None, engine: EngineConfig | None = None,
                device: str | torch.device | None = None, holdouts: list[np.ndarray] | None = None,
                runtime: Runtime | None = None, guides: list[tuple[np.ndarray, np.ndarray]] | None = None
                ) -> list[DipResult]:
    """Fit several same-sized windows ``(image, known, seed)`` together; one result per window.

    Each window becomes ``ensemble`` problems per input kind (``experimental.input: noise+context`` fits
    both kinds; x bands, with ``per_band``). Problems of one kind are fitted in one grouped
    network; a window's members are averaged back into its prediction. All members of a window
    share its hidden pixels (``holdouts``, or drawn from ``fit.validation`` and the window's
    seed), so the validation RMSE reported is the averaged prediction's own. ``guides``: per window,
    its other dates ``(values (G, bands, H, W), known)``, one shape for all, fitted as
    :class:`GuidedInput` says.
    """
    experimental = experimental or ExperimentalConfig()
    ensemble = experimental.ensemble
    bands = windows[0][0].shape[0]
    split = range(bands) if fit.per_band else [slice(None)]
    kinds = experimental.inputs
    if holdouts is None:
        holdouts = [holdout_mask(known, fit.validation, seed + 2) if fit.validation else None
                    for _image, known, seed in windows]
    members: list[list[np.ndarray]] = [[] for _ in windows]
    results: list[list[DipResult]] = [[] for _ in windows]
    for q, kind in enumerate(kinds):
        problems = []
        for w, (image, known, seed) in enumerate(windows):
            hold = holdouts[w]
            for m in range(ensemble):
                for j, b in enumerate(split):
                    sl = slice(b, b + 1) if fit.per_band else b
                    guide = guides[w] if guides is not None else None
                    problems.append(Problem(image[sl], known[sl], seed + 7919 * j + 104_729 * m + 1_000_033 * q,
                                            None if hold is None else hold[sl],
                                            None if guide is None else guide[0][:, sl],
                                            None if guide is None else guide[1][:, sl]))
        fitted = fit_problems(problems, network, fit, experimental=replace(experimental, input=kind), engine=engine,
                              device=device, runtime=runtime)
        per_window = len(split) * ensemble
        for w in range(len(windows)):
            rs = fitted[w * per_window:(w + 1) * per_window]
            results[w] += rs
            members[w] += [np.concatenate([r.prediction for r in rs[m * len(split):(m + 1) * len(split)]])
                           for m in range(ensemble)]
    out = []
    for w, (image, _known, _seed) in enumerate(windows):
        rs, prediction = results[w], np.mean(members[w], axis=0).astype(np.float32)
        hold = holdouts[w]
        if hold is not None and hold.any():
            validation = tuple(float(np.sqrt(np.mean((prediction[b] - image[b])[hold[b]] ** 2))) if hold[b].any()
                               else float("nan") for b in range(bands))
        else:
            validation = (float("nan"),) * bands
        # seconds: each kind is one call of fit_problems, run one after another
        firsts = rs[::len(split) * ensemble]
        out.append(DipResult(prediction, float(np.mean([r.final_loss for r in rs])), rs[0].iterations,
                             sum(r.seconds for r in firsts), rs[0].device, validation,
                             sum(r.compile_seconds for r in firsts), max(r.networks_per_group for r in rs)))
    return out
