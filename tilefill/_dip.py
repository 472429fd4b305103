"""The fill: Deep Image Prior (Ulyanov et al. 2018) as the paper configures it.

A fresh "skip" hourglass network maps a fixed noise image z to the tile; its weights are
fitted to the tile's known pixels only, and its output supplies the missing ones. Nothing is
learned from other images: the network's structure is the prior.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tilefill._config import FitConfig, NetworkConfig


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Conv with reflection padding, as the public DIP code builds it (no zero border)."""
    pad = (kernel - 1) // 2
    layers: list[nn.Module] = [nn.ReflectionPad2d(pad)] if pad else []
    layers.append(nn.Conv2d(cin, cout, kernel, stride=stride, padding=0, bias=True))
    return nn.Sequential(*layers)


def _bn_act(channels: int, slope: float) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.LeakyReLU(slope, inplace=True)]


class _Level(nn.Module):
    """One level of the hourglass: concat(skip branch, deeper branch) -> conv stack."""

    def __init__(self, cin: int, level: int, cfg: NetworkConfig):
        super().__init__()
        down, up, skip = cfg.channels_down[level], cfg.channels_up[level], cfg.channels_skip[level]
        slope = cfg.leaky_slope
        last = level == cfg.levels - 1
        self.skip = (
            nn.Sequential(_conv(cin, skip, cfg.kernel_skip), *_bn_act(skip, slope)) if skip else None
        )
        deeper: list[nn.Module] = [
            _conv(cin, down, cfg.kernel_down, stride=2),
            *_bn_act(down, slope),
            _conv(down, down, cfg.kernel_down),
            *_bn_act(down, slope),
        ]
        if not last:
            deeper.append(_Level(down, level + 1, cfg))
        deeper.append(nn.Upsample(scale_factor=2, mode=cfg.upsample))
        self.deeper = nn.Sequential(*deeper)
        k = down if last else cfg.channels_up[level + 1]
        self.after = nn.Sequential(
            nn.BatchNorm2d(skip + k),
            _conv(skip + k, up, cfg.kernel_up),
            *_bn_act(up, slope),
            _conv(up, up, 1),
            *_bn_act(up, slope),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep = self.deeper(x)
        if self.skip is not None:
            deep = torch.cat([self.skip(x), deep], dim=1)
        return self.after(deep)


class SkipNet(nn.Module):
    """The DIP skip network: ``bands`` channels in, ``bands`` channels out, sigmoid output.

    Examples
    --------
    >>> from tilefill._config import NetworkConfig
    >>> net = SkipNet(4, 4, NetworkConfig())
    >>> sum(p.numel() for p in net.parameters())
    2966916
    """

    def __init__(self, cin: int, cout: int, cfg: NetworkConfig):
        super().__init__()
        self.body = _Level(cin, 0, cfg)
        self.head = nn.Sequential(_conv(cfg.channels_up[0], cout, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass(frozen=True)
class DipResult:
    """What one fit returns: the prediction over the whole window and how the fit went."""

    prediction: np.ndarray  # float32 (bands, H, W) in [0, 1]
    final_loss: float
    iterations: int
    seconds: float
    device: str


def pick_device(name: str = "auto") -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _fit_one(image: np.ndarray, known: np.ndarray, net_cfg: NetworkConfig, fit: FitConfig, seed: int,
             device: torch.device) -> tuple[np.ndarray, float]:
    bands, height, width = image.shape
    gen = torch.Generator(device="cpu").manual_seed(seed)
    torch.manual_seed(seed)  # weight initialisation
    net = SkipNet(bands, bands, net_cfg).to(device)
    z = (torch.rand((1, bands, height, width), generator=gen) * fit.input_scale).to(device)
    # unknown pixels never reach the loss, whatever they hold (even NaN)
    target = torch.from_numpy(np.where(known, image, 0).astype(np.float32))[None].to(device)
    mask = torch.from_numpy(np.ascontiguousarray(known, dtype=np.float32))[None].to(device)
    opt = torch.optim.Adam(net.parameters(), lr=fit.learning_rate)
    noise = torch.empty_like(z)
    loss = torch.zeros(())
    for _ in range(fit.iterations):
        opt.zero_grad(set_to_none=True)
        x = z + noise.normal_(0.0, fit.input_noise) if fit.input_noise else z
        out = net(x)
        # mean over every element, as the public DIP code does: mse(out * mask, img * mask)
        loss = torch.mean((out * mask - target) ** 2)
        loss.backward()
        opt.step()
    with torch.no_grad():  # the final output comes from z alone; BN stays in training mode
        out = net(z)
    return out[0].float().cpu().numpy(), float(loss.detach().cpu())


def fit_dip(image: np.ndarray, known: np.ndarray, network: NetworkConfig, fit: FitConfig, *, seed: int = 0,
            device: str | torch.device | None = None) -> DipResult:
    """Fit a fresh DIP network to the known pixels of one window and return its prediction.

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
    dev = device if isinstance(device, torch.device) else pick_device(device or fit.device)
    start = time.perf_counter()
    if fit.per_band:
        parts = [_fit_one(image[b:b + 1], known[b:b + 1], network, fit, seed + 7919 * b, dev) for b in range(image.shape[0])]
        prediction = np.concatenate([p for p, _ in parts])
        loss = float(np.mean([l for _, l in parts]))
    else:
        prediction, loss = _fit_one(image, known, network, fit, seed, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return DipResult(prediction.astype(np.float32), loss, fit.iterations, time.perf_counter() - start, str(dev))
