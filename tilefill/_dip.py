"""The fill: Deep Image Prior (Ulyanov et al. 2018) as the paper configures it, and its engine.

A fresh "skip" hourglass network maps a fixed noise image z to the tile; its weights are
fitted to the tile's known pixels only, and its output supplies the missing ones. Nothing is
learned from other images: the network's structure is the prior.

With ``fit.input: context`` the same network sees the window itself instead of noise: its
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
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from tilefill._config import EngineConfig, FitConfig, NetworkConfig


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv with reflection padding, as the public DIP code builds it (no zero border)."""
    pad = (kernel - 1) // 2
    layers: list[nn.Module] = [nn.ReflectionPad2d(pad)] if pad else []
    layers.append(nn.Conv2d(cin * groups, cout * groups, kernel, stride=stride, padding=0, bias=True, groups=groups))
    return nn.Sequential(*layers)


def _bn_act(channels: int, slope: float, groups: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels * groups), nn.LeakyReLU(slope, inplace=True)]


def _group_cat(a: torch.Tensor, b: torch.Tensor, groups: int) -> torch.Tensor:
    """Concatenate channels network by network, so each group of channels stays one network's."""
    if groups == 1:
        return torch.cat([a, b], dim=1)
    n, _, h, w = a.shape
    return torch.cat([a.view(n, groups, -1, h, w), b.view(n, groups, -1, h, w)], dim=2).view(n, -1, h, w)


class _Level(nn.Module):
    """One level of the hourglass: concat(skip branch, deeper branch) -> conv stack."""

    def __init__(self, cin: int, level: int, cfg: NetworkConfig, groups: int):
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
            deeper.append(_Level(down, level + 1, cfg, groups))
        deeper.append(nn.Upsample(scale_factor=2, mode=cfg.upsample))
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

    Examples
    --------
    >>> from tilefill._config import NetworkConfig
    >>> net = SkipNet(4, 4, NetworkConfig())
    >>> sum(p.numel() for p in net.parameters())
    2966916
    """

    def __init__(self, cin: int, cout: int, cfg: NetworkConfig, groups: int = 1):
        super().__init__()
        self.groups = groups
        self.body = _Level(cin, 0, cfg, groups)
        self.head = nn.Sequential(_conv(cfg.channels_up[0], cout, 1, groups=groups), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    @classmethod
    def stacked(cls, cin: int, cout: int, cfg: NetworkConfig, seeds: list[int]) -> "SkipNet":
        """K networks in one grouped module, each initialised exactly as ``SkipNet`` is under its seed."""
        singles = []
        for seed in seeds:
            torch.manual_seed(seed)
            singles.append(cls(cin, cout, cfg))
        if len(seeds) == 1:
            return singles[0]
        net = cls(cin, cout, cfg, groups=len(seeds))
        with torch.no_grad():
            # every parameter and BN buffer stacks along dim 0, network after network
            for mine, theirs in zip(net.state_dict().values(), zip(*(s.state_dict().values() for s in singles))):
                if mine.ndim:
                    mine.copy_(torch.cat(theirs, 0))
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


@dataclass(frozen=True)
class Problem:
    """One network's job: a window (channels, H, W) in [0, 1], its known pixels, its seed.

    ``holdout``: known pixels kept out of the loss to score the fit; by default drawn from
    ``fit.validation`` and the seed.
    """

    image: np.ndarray
    known: np.ndarray
    seed: int
    holdout: np.ndarray | None = None


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


def pick_device(name: str = "auto") -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


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
    """Gap-shaped stripes hidden from one network's input each iteration (``fit.input: context``).

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


def _input(channels: int, height: int, width: int, fit: FitConfig, gen: torch.Generator) -> torch.Tensor:
    if fit.input == "meshgrid":
        ys, xs = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
        grid = torch.stack([xs, ys])  # the paper's appendix: a 2-channel meshgrid, repeated to fill the channels
        return grid[torch.arange(channels) % 2][None]
    return torch.rand((1, channels, height, width), generator=gen) * fit.input_scale


def fit_problems(problems: list[Problem], network: NetworkConfig, fit: FitConfig, *,
                 engine: EngineConfig | None = None, device: str | torch.device | None = None) -> list[DipResult]:
    """Fit one DIP network per problem, all at once (grouped convolutions); same-sized windows only.

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
    if "+" in fit.input:
        raise ValueError("fit_problems fits one input kind; fit_windows splits fit.input = 'noise+context'")
    engine = engine or EngineConfig()
    dev = device if isinstance(device, torch.device) else pick_device(device or fit.device)
    shapes = {p.image.shape for p in problems}
    if len(shapes) != 1:
        raise ValueError(f"problems fitted together must share one shape, got {sorted(shapes)}")
    c, h, w = shapes.pop()
    k = len(problems)
    start = time.perf_counter()
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = engine.tf32
        torch.backends.cudnn.allow_tf32 = engine.tf32
        torch.backends.cudnn.benchmark = True

    context = fit.input == "context"
    gens = [torch.Generator(device="cpu").manual_seed(p.seed) for p in problems]
    # the context input is the window itself plus its visibility mask: twice the channels
    net = SkipNet.stacked(2 * c if context else c, c, network, [p.seed for p in problems]).to(dev)
    z = None if context else torch.cat([_input(c, h, w, fit, g) for g in gens], dim=1).to(dev)
    # per-network noise streams, so a batched network sees what it would see alone
    noisy = fit.input_noise and not context
    noise_gens = [torch.Generator(device=dev).manual_seed(p.seed + 1) for p in problems] if noisy else []
    held = [p.holdout if p.holdout is not None else
            holdout_mask(p.known, fit.validation, p.seed + 2) if fit.validation else np.zeros_like(p.known)
            for p in problems]
    train = np.concatenate([p.known & ~hd for p, hd in zip(problems, held)])
    # unknown pixels never reach the loss, whatever they hold (even NaN)
    target = torch.from_numpy(np.concatenate([np.where(p.known, p.image, 0) for p in problems]).astype(np.float32))
    target, mask = target[None].to(dev), torch.from_numpy(train.astype(np.float32))[None].to(dev)
    held_t = torch.from_numpy(np.concatenate(held).astype(np.float32))[None].to(dev) if any(h.any() for h in held) else None
    memory = torch.channels_last if engine.channels_last else torch.contiguous_format
    if context:
        stripes = [_ContextStripes(p.known, p.seed + 3, dev) for p in problems]
        z = _group_cat(context_fill(target, mask), mask, k)  # what the network sees when it predicts the gaps
    net = net.to(memory_format=memory)
    z = z.contiguous(memory_format=memory)
    model = torch.compile(net) if engine.compile else net
    opt = torch.optim.Adam(net.parameters(), lr=fit.learning_rate)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(engine.precision)
    scaler = torch.amp.GradScaler(dev.type, enabled=engine.precision == "fp16")

    def forward(x):
        ctx = torch.autocast(dev.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
        with ctx:
            return model(x).float()

    ema = None
    # context: the prediction is a separate forward pass of the whole window, run every few
    # iterations in the second half (each one an average step of decay ema ** stride)
    stride = 5 if context else 1
    # per network: best validation RMSE (mean over its bands), that RMSE per band, its output then
    best_score = torch.full((k,), float("inf"), device=dev)
    best_rmse = torch.full((k, c), float("nan"), device=dev)
    best_out = None
    stale = torch.zeros(k, dtype=torch.long, device=dev)
    losses = torch.full((k,), float("nan"), device=dev)
    done = 0
    for it in range(fit.iterations):
        opt.zero_grad(set_to_none=True)
        if context:
            # hide more gap-shaped stripes of known pixels; the network learns to predict them from around
            hid = torch.stack([st.draw() for st in stripes]).repeat_interleave(c, 0)[None].to(mask.dtype) * mask
            visible = mask - hid
            x = _group_cat(context_fill(target, visible), visible, k).contiguous(memory_format=memory)
        elif fit.input_noise:
            noise = torch.cat([torch.randn((1, c, h, w), generator=g, device=dev) for g in noise_gens], dim=1)
            x = z + noise * fit.input_noise
        else:
            x = z
        out = forward(x)
        if context:  # each network's mean over the pixels it had to predict
            per_net = ((out - target) ** 2 * hid).view(k, -1).sum(dim=1) / hid.view(k, -1).sum(dim=1).clamp(min=1)
        else:
            # each network's own mean over its elements (the public DIP code's mse(out * mask, img * mask));
            # summing them keeps every network's gradient its own
            per_net = ((out * mask - target * mask) ** 2).view(k, -1).mean(dim=1)
        scaler.scale(per_net.sum()).backward()
        scaler.step(opt)
        scaler.update()
        if context:  # a smoothed loss: one iteration's stripes are few, and now and then none
            has = hid.view(k, -1).sum(dim=1) > 0
            smooth = torch.where(torch.isnan(losses), per_net.detach(), 0.9 * losses + 0.1 * per_net.detach())
            losses = torch.where(has, smooth, losses)
        else:
            losses = per_net.detach()
        done = it + 1
        # average the second half: the first outputs are far off
        if fit.ema and it >= fit.iterations // 2 and (it % stride == 0 or done == fit.iterations):
            if context:
                with torch.no_grad():
                    step = forward(z)
            else:
                step = out.detach()
            decay = fit.ema ** stride
            ema = step.clone() if ema is None else ema.mul_(decay).add_(step, alpha=1 - decay)
        if held_t is not None and (done % fit.check_every == 0 or done == fit.iterations) and (
                ema is not None or not fit.ema):
            if ema is not None:
                current = ema
            elif context:
                with torch.no_grad():
                    current = forward(z)
            else:
                current = out.detach()
            err = ((current - target) ** 2 * held_t).view(k, c, -1).sum(-1) / held_t.view(k, c, -1).sum(-1).clamp(min=1)
            rmse = err.sqrt()
            score = rmse.mean(dim=1)
            better = score < best_score
            best_score = torch.where(better, score, best_score)
            best_rmse[better] = rmse[better]
            if best_out is None:
                best_out = current.clone()
            else:  # each network keeps its own best output
                sel = better.repeat_interleave(c).view(1, k * c, 1, 1)
                best_out = torch.where(sel, current, best_out)
            stale = torch.where(better, torch.zeros_like(stale), stale + 1)
            if fit.patience and bool((stale >= fit.patience).all()):
                break
    with torch.no_grad():
        if best_out is not None:
            final = best_out  # the output that predicted the hidden pixels best
        elif ema is not None:
            final = ema
        else:
            final = forward(z)  # the paper: output from z alone (no noise), BatchNorm still in training mode
    if dev.type == "cuda":
        torch.cuda.synchronize()
    final = final[0].cpu().numpy().reshape(k, c, h, w).astype(np.float32)
    seconds = time.perf_counter() - start
    losses = losses.cpu().numpy()
    val = best_rmse.cpu().numpy()
    return [DipResult(final[i], float(losses[i]), done, seconds, str(dev), tuple(float(v) for v in val[i]))
            for i in range(k)]


def fit_dip(image: np.ndarray, known: np.ndarray, network: NetworkConfig, fit: FitConfig, *, seed: int = 0,
            device: str | torch.device | None = None, engine: EngineConfig | None = None,
            holdout: np.ndarray | None = None) -> DipResult:
    """Fit DIP to the known pixels of one window and return its prediction.

    All bands in one network (the paper's composite), or one network per band with
    ``fit.per_band``; ``fit.ensemble`` networks with different seeds are averaged.

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
    return fit_windows([(image, known, seed)], network, fit, engine=engine, device=device,
                       holdouts=None if holdout is None else [holdout])[0]


def fit_windows(windows: list[tuple[np.ndarray, np.ndarray, int]], network: NetworkConfig, fit: FitConfig, *,
                engine: EngineConfig | None = None, device: str | torch.device | None = None,
                holdouts: list[np.ndarray] | None = None) -> list[DipResult]:
    """Fit several same-sized windows ``(image, known, seed)`` together; one result per window.

    Each window becomes ``ensemble`` problems per input kind (``fit.input: noise+context`` fits
    both kinds; x bands, with ``per_band``). Problems of one kind are fitted in one grouped
    network; a window's members are averaged back into its prediction. All members of a window
    share its hidden pixels (``holdouts``, or drawn from ``fit.validation`` and the window's
    seed), so the validation RMSE reported is the averaged prediction's own.
    """
    bands = windows[0][0].shape[0]
    split = range(bands) if fit.per_band else [slice(None)]
    kinds = fit.input.split("+")
    if holdouts is None:
        holdouts = [holdout_mask(known, fit.validation, seed + 2) if fit.validation else None
                    for _image, known, seed in windows]
    members: list[list[np.ndarray]] = [[] for _ in windows]
    results: list[list[DipResult]] = [[] for _ in windows]
    for q, kind in enumerate(kinds):
        problems = []
        for w, (image, known, seed) in enumerate(windows):
            hold = holdouts[w]
            for m in range(fit.ensemble):
                for j, b in enumerate(split):
                    sl = slice(b, b + 1) if fit.per_band else b
                    problems.append(Problem(image[sl], known[sl], seed + 7919 * j + 104_729 * m + 1_000_033 * q,
                                            None if hold is None else hold[sl]))
        fitted = fit_problems(problems, network, replace(fit, input=kind), engine=engine, device=device)
        per_window = len(split) * fit.ensemble
        for w in range(len(windows)):
            rs = fitted[w * per_window:(w + 1) * per_window]
            results[w] += rs
            members[w] += [np.concatenate([r.prediction for r in rs[m * len(split):(m + 1) * len(split)]])
                           for m in range(fit.ensemble)]
    out = []
    for w, (image, _known, _seed) in enumerate(windows):
        rs, prediction = results[w], np.mean(members[w], axis=0).astype(np.float32)
        hold = holdouts[w]
        if hold is not None and hold.any():
            validation = tuple(float(np.sqrt(np.mean((prediction[b] - image[b])[hold[b]] ** 2))) if hold[b].any()
                               else float("nan") for b in range(bands))
        else:
            validation = (float("nan"),) * bands
        # seconds: each kind is one grouped fit, run one after another
        seconds = sum(r.seconds for r in rs[::len(split) * fit.ensemble])
        out.append(DipResult(prediction, float(np.mean([r.final_loss for r in rs])), rs[0].iterations, seconds,
                             rs[0].device, validation))
    return out
