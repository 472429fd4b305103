"""Every setting of a run, in one typed place.

A :class:`Config` is built from a preset in ``configs/*.yaml`` (``default``, ``fast`` for CPUs,
``paper`` the paper's method), a user's own YAML file, and overrides from the CLI or the Python API.
Sections mirror the pipeline: ``network`` (the DIP skip network), ``fit`` (the optimisation of one
tile), ``engine`` (how fits run on the device), ``tiles`` (the grid), ``blend`` (how the mosaic weighs
DIP against its classical partner), ``output`` (the GeoTIFF) and ``experimental`` (research knobs,
off in every preset).

Every setting is declared with :func:`setting`: its default, a one-line doc and a tier, ``user``
(what a user may change), ``expert`` (the paper's hyperparameters and the presets' recipe) or
``experimental``. :func:`settings_reference` lists them all; the documentation's configuration
reference is generated from it, and a test fails when a setting lacks its doc or tier.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import yaml

from tilefill._distance_blend import N_BINS as N_DISTANCE_BINS
from tilefill._errors import TilefillError

CLASSICAL = ("gdal", "biharmonic", "telea", "ns", "kriging")
GUIDED = ("llhm", "nspi")  # classical fills from a second date (tilefill._multitemporal)
TIERS = ("user", "expert", "experimental")


def setting(default: Any = MISSING, doc: str = "", *, tier: str, factory: Callable[[], Any] | None = None):
    """A config field with its one-line ``doc`` and ``tier`` (see :data:`TIERS`) in the field's metadata.

    Examples
    --------
    >>> f = setting(1500, "Adam steps per tile fit.", tier="user")
    >>> f.default, f.metadata["tier"]
    (1500, 'user')
    """
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {', '.join(TIERS)}, not {tier!r}")
    metadata = {"doc": doc, "tier": tier}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class NetworkConfig:
    """The DIP "skip" hourglass (Ulyanov et al. 2018, as in the paper's appendix)."""

    channels_down: tuple[int, ...] = setting((128, 128, 128, 128, 128), "Channels of each level's "
                                             "downsampling branch, from the finest level.", tier="expert")
    channels_up: tuple[int, ...] = setting((128, 128, 128, 128, 128), "Channels of each level's upsampling "
                                           "branch, from the finest level.", tier="expert")
    channels_skip: tuple[int, ...] = setting((128, 128, 128, 128, 128), "Channels of each level's skip "
                                             "connection (0: none).", tier="expert")
    kernel_down: int = setting(3, "Kernel side of the downsampling convolutions.", tier="expert")
    kernel_up: int = setting(3, "Kernel side of the upsampling convolutions.", tier="expert")
    kernel_skip: int = setting(1, "Kernel side of the skip convolutions.", tier="expert")
    leaky_slope: float = setting(0.2, "Negative slope of the LeakyReLU activations.", tier="expert")

    def __post_init__(self):
        levels = {len(self.channels_down), len(self.channels_up), len(self.channels_skip)}
        if len(levels) != 1:
            raise TilefillError("network: channels_down, channels_up and channels_skip need one entry per level")

    @property
    def levels(self) -> int:
        return len(self.channels_down)

    @property
    def multiple(self) -> int:
        """What a tile's side must divide by: each level halves it."""
        return 2 ** self.levels


@dataclass(frozen=True)
class FitConfig:
    """How one tile is fitted."""

    iterations: int = setting(1500, "Adam steps per tile fit.", tier="user")
    learning_rate: float = setting(0.01, "Adam's learning rate.", tier="expert")
    input_scale: float = setting(0.1, "The network's input z is drawn from U(0, input_scale), one channel per "
                                 "band.", tier="expert")
    input_noise: float = setting(0.1, "sigma_p: N(0, sigma_p^2) noise added to z every iteration.", tier="expert")
    per_band: bool = setting(False, "Fit one network per band instead of all bands in one (the paper's "
                             "composite).", tier="user")
    seed: int = setting(0, "Seed of the fits (each tile's is derived from it).", tier="user")
    keep_known: bool = setting(True, "Keep known pixels exactly; false: the paper's full reconstruction replaces "
                               "them too.", tier="user")
    min_known_fraction: float = setting(0.05, "A tile with fewer known pixels than this share is fitted on a wider "
                                        "window (x2, x4, ...).", tier="expert")
    max_context: int = setting(4, "The widest such window, in tile sides.", tier="expert")
    device: str = setting("auto", "Where fits run: auto, cpu or cuda.", tier="user")
    ema: float = setting(0.0, "Decay of an exponential average of the outputs over the fit's second half "
                         "(0: the last output).", tier="expert")
    validation: float = setting(0.0, "Share of known pixels hidden in gap-shaped stripes to score the fit "
                                "without ground truth (0: none).", tier="expert")
    check_every: int = setting(0, "Iterations between scores on the hidden pixels, each network keeping its "
                               "best-scored output (0: once, at the end).", tier="expert")
    classical_blend: float = setting(0.0, "Weight of blend_method's fill averaged into the prediction.",
                                     tier="expert")
    blend_method: str | tuple[str, ...] = setting("gdal", "The classical partner (gdal, biharmonic, telea, ns, "
                                                  "kriging), or a list of them; the first fills thin-gap tiles.",
                                                  tier="expert")
    blend_auto: bool = setting(False, "Choose each band's blend weight on the hidden pixels, in tiles whose gaps "
                               "reach at most blend_auto_max_reach px.", tier="expert")
    blend_auto_max_reach: float = setting(3.5, "The widest gap reach (px) at which blend_auto chooses the weight.",
                                          tier="expert")
    # on 1-2 px stripes a classical fill beats DIP and costs no fit
    thin_gap_px: float = setting(0.0, "A tile whose gaps all lie within this many px of a known pixel is filled "
                                 "by blend_method alone, without a fit (0: never).", tier="expert")
    # less noise on z fits the known pixels sooner, which narrow stripes reward and wide gaps punish
    narrow_gap_px: float = setting(0.0, "A tile whose gaps all lie within this many px of a known pixel is "
                                   "fitted with narrow_input_noise (0: never).", tier="expert")
    narrow_input_noise: float = setting(0.1, "sigma_p of the tiles narrow_gap_px selects.", tier="expert")

    def __post_init__(self):
        if not 0 <= self.ema < 1:
            raise TilefillError("fit.ema must be in [0, 1)")
        if not 0 <= self.validation < 0.5:
            raise TilefillError("fit.validation must be in [0, 0.5)")
        if not 0 <= self.classical_blend <= 1:
            raise TilefillError("fit.classical_blend must be in [0, 1]")
        methods = self.blend_methods
        bad = [m for m in methods if m not in CLASSICAL]
        if bad or not methods or len(set(methods)) != len(methods):
            raise TilefillError(f"fit.blend_method must be a classical method ({', '.join(CLASSICAL)}) or a list of "
                                f"distinct ones, not {self.blend_method!r}")
        if min(self.thin_gap_px, self.blend_auto_max_reach, self.narrow_gap_px) < 0:
            raise TilefillError("fit.thin_gap_px, fit.blend_auto_max_reach and fit.narrow_gap_px must be at least 0")
        if min(self.input_noise, self.narrow_input_noise) < 0:
            raise TilefillError("fit.input_noise and fit.narrow_input_noise must be at least 0")
        if self.blend_auto and not self.validation:
            raise TilefillError("fit.blend_auto needs fit.validation > 0 (the hidden pixels choose the weight)")
        if self.check_every < 0:
            raise TilefillError("fit.check_every must be at least 0 (0: score once, at the end)")
        if self.iterations < 1:
            raise TilefillError(f"iterations must be at least 1, not {self.iterations}")
        if self.learning_rate <= 0:
            raise TilefillError(f"learning_rate must be positive, not {self.learning_rate}")
        if not 0 <= self.min_known_fraction < 1:
            raise TilefillError("fit.min_known_fraction must be in [0, 1)")
        if self.max_context < 1:
            raise TilefillError("fit.max_context must be at least 1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise TilefillError(f"fit.device must be auto, cpu or cuda, not {self.device!r}")

    @property
    def blend_methods(self) -> tuple[str, ...]:
        """The classical partners, first the one used alone on thin-gap tiles."""
        return (self.blend_method,) if isinstance(self.blend_method, str) else tuple(self.blend_method)

    @property
    def blends(self) -> bool:
        """Whether a classical partner is computed beside DIP (blended at a fixed, chosen or fitted weight)."""
        return bool(self.classical_blend or self.blend_auto or self.validation)

    def scored_at(self, done: int) -> bool:
        """Whether the fit scores its hidden pixels after ``done`` iterations: every ``check_every``, and at the end.

        Examples
        --------
        >>> [n for n in range(1, 11) if FitConfig(iterations=10).scored_at(n)]
        [10]
        >>> [n for n in range(1, 11) if FitConfig(iterations=10, check_every=4).scored_at(n)]
        [4, 8, 10]
        """
        return done == self.iterations or bool(self.check_every and done % self.check_every == 0)


@dataclass(frozen=True)
class BlendConfig:
    """How the mosaic averages DIP with its classical partner (``fit.blend_method``).

    ``weights: fixed`` takes each tile's weight (``fit.classical_blend``, or the one ``fit.blend_auto``
    chose). ``weights: distance`` fits one weight per band and per distance of the pixel to known data
    (bins 1, 2, 3, 4-5, 6-8, 9-16, 17-32, 33+ px) on the scene's hidden pixels (``fit.validation``), scored
    on the mosaic itself. ``prior_pixels``: hidden pixels a bin needs to count as much as its prior:
    ``prior_curve``'s weight for the bin, or without a curve the previous bin's weight (bin 1's:
    ``fit.classical_blend``). ``prior_curve``: the weights per bin measured on the real gaps of other
    scenes, one list of 8 for every partner or one per partner of ``fit.blend_method``. Decided after
    the fits: changing any of these reuses a kept work store.
    """

    weights: str = setting("fixed", "fixed: each tile's own weight; distance: weights per band and distance to "
                           "known data, fitted on the scene's hidden pixels.", tier="expert")
    prior_pixels: float = setting(200.0, "Hidden pixels a distance bin needs to count as much as its prior weight.",
                                  tier="expert")
    prior_curve: tuple = setting((), "The prior weight per distance bin (8 values), or one such list per partner.",
                                 tier="expert")
    trust_features: bool = setting(True, "The error map weighs each pixel's disagreement between fills, the guide's "
                                   "and the local texture beside the distance curve, fitted on the hidden pixels; "
                                   "false: the curve alone.", tier="expert")

    def __post_init__(self):
        if self.weights not in ("fixed", "distance"):
            raise TilefillError(f"blend.weights must be fixed or distance, not {self.weights!r}")
        if self.prior_pixels < 0:
            raise TilefillError("blend.prior_pixels must be at least 0")
        curve = self.prior_curve or ()
        rows = curve if curve and isinstance(curve[0], (list, tuple)) else ((curve,) if curve else ())
        if any(len(r) != N_DISTANCE_BINS or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in r)
               for r in rows):
            raise TilefillError(f"blend.prior_curve must be {N_DISTANCE_BINS} weights in [0, 1] (one per distance "
                                f"bin), or one such list per partner of fit.blend_method")
        object.__setattr__(self, "prior_curve", tuple(tuple(float(v) for v in r) for r in rows))

    def curve(self, partners: int):
        """``prior_curve`` for the first ``partners`` partners, (partners, bins), or None without a curve."""
        if not self.prior_curve:
            return None
        rows = self.prior_curve * partners if len(self.prior_curve) == 1 else self.prior_curve[:partners]
        return np.asarray(rows, dtype=np.float64)


@dataclass(frozen=True)
class EngineConfig:
    """How the fits run on the device: numerics, batching, memory. Speed, not method: none of these
    settings is part of the run key, so a work store resumes under other engine settings."""

    # the network's 1x1 output layer and sigmoid, the loss, the EMA and the prediction stay fp32
    precision: str = setting("fp32", "Autocast of the network's body: fp32, bf16 or fp16.", tier="user")
    tf32: bool = setting(True, "TF32 matmuls and convolutions on Ampere and later GPUs.", tier="expert")
    channels_last: bool = setting(False, "NHWC memory layout for the network.", tier="expert")
    compile: bool = setting(False, "torch.compile the network, once per worker process and input shape.",
                            tier="expert")
    # aot_eager traces the same graphs without generating code: minutes faster to compile on a CPU
    compile_backend: str = setting("inductor", "torch.compile's backend (inductor generates kernels; aot_eager "
                                   "does not).", tier="expert")
    # small tiles alone leave a GPU idle
    tiles_per_task: int = setting(1, "Tiles per task, fitted together as one grouped network (a classical method's "
                                 "tasks take at least 16, each tile filled alone).", tier="user")
    deterministic: bool = setting(False, "Reproducible GPU fits (no cuDNN autotuning, deterministic kernels); "
                                  "slower. CPU fits are so already.", tier="user")
    memory_fraction: float = setting(0.9, "Share of a GPU's memory one task's networks may take; a larger group "
                                     "is fitted in sub-groups.", tier="expert")

    def __post_init__(self):
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise TilefillError(f"engine.precision must be fp32, bf16 or fp16, not {self.precision!r}")
        if self.tiles_per_task < 1:
            raise TilefillError(f"engine.tiles_per_task must be at least 1, not {self.tiles_per_task}")
        if not isinstance(self.compile_backend, str) or not self.compile_backend:
            raise TilefillError(f"engine.compile_backend must name a torch.compile backend, not {self.compile_backend!r}")
        if not 0 < self.memory_fraction <= 1:
            raise TilefillError(f"engine.memory_fraction must be in (0, 1], not {self.memory_fraction}")


@dataclass(frozen=True)
class TileConfig:
    """The overlapping tile grid (sides and overlap are checked by Config, which knows what the network's
    levels need)."""

    size: int = setting(256, "Tile side in px, a multiple of 2 ** network levels.", tier="user")
    overlap: int = setting(32, "Overlap between neighbouring tiles in px, a multiple of 2 ** network levels.",
                           tier="user")


@dataclass(frozen=True)
class OutputConfig:
    """How the restored scene is written."""

    cog: bool = setting(False, "Write a Cloud Optimized GeoTIFF.", tier="user")
    compress: str = setting("deflate", "GeoTIFF compression (a GDAL name: deflate, lzw, zstd, none ...).",
                            tier="user")
    blocksize: int = setting(512, "GeoTIFF block side in px, a multiple of 16.", tier="user")
    quality_sidecar: bool = setting(True, "Write OUT.quality.json (each tile's estimated gap RMSE) and, with "
                                    "distance weights, OUT.quality.tif beside the output.", tier="user")

    def __post_init__(self):
        if self.blocksize % 16:
            raise TilefillError("output.blocksize must be a multiple of 16 (GeoTIFF tiles)")


@dataclass(frozen=True)
class GuideConfig:
    """How a second date of the same place (``--guide``) enters the fill, where one is given.

    DIP draws, beside its own image, the gain of a local linear map from each guide (``network``), and
    the guide's classical fill (``partner``) is blended with DIP and its classical partner where the guide
    has data, at weights per band and distance to known data fitted on the scene's hidden pixels
    (``blend.weights: distance``): a guide that misleads (another season, changed land) loses its weight.
    """

    network: bool = setting(True, "DIP draws a local linear map from each guide (its gain as an image) beside its own "
                            "image; false: DIP fits the scene alone and the guide enters through its partner.",
                            tier="expert")
    partner: str = setting("llhm", "The guide's classical fill blended where a guide has data: llhm (local linear "
                           "regression) or nspi (similar pixels).", tier="expert")

    def __post_init__(self):
        if self.partner not in GUIDED:
            raise TilefillError(f"guide.partner must be {' or '.join(GUIDED)}, not {self.partner!r}")


@dataclass(frozen=True)
class ExperimentalConfig:
    """Research knobs: measured, and off in every preset. The documentation's research page says what each
    study found; these stay so that every study can be run again."""

    lr_end: float = setting(1.0, "The learning rate at the last iteration as a share of fit.learning_rate, "
                            "reached along a half cosine (1: constant, the paper's).", tier="experimental")
    noise_end: float = setting(1.0, "sigma_p at the last iteration as a share of fit.input_noise, reached along a "
                               "half cosine (1: constant, the paper's).", tier="experimental")
    noise_end_max_reach: float = setting(0.0, "The widest gap reach (px) of a tile whose noise noise_end anneals; "
                                         "wider ones keep it constant (0: every DIP tile).", tier="experimental")
    ensemble: int = setting(1, "Networks fitted per tile with different seeds, their outputs averaged.",
                            tier="experimental")
    input: str = setting("noise", "What the network sees: noise (the paper's), meshgrid, context (the window, "
                         "gaps pre-filled), or noise+context.", tier="experimental")
    patience: int = setting(0, "Stop a fit after this many scores on the hidden pixels without a better one "
                            "(0: never).", tier="experimental")
    choose_partner: bool = setting(False, "With several fit.blend_method partners, choose each band's on the "
                                   "hidden pixels (off: the first blends every band).", tier="experimental")
    upsample: str = setting("nearest", "The network's upsampling: nearest (the paper's) or bilinear.",
                            tier="experimental")

    def __post_init__(self):
        if not 0 < self.lr_end <= 1:
            raise TilefillError(f"experimental.lr_end must be in (0, 1], not {self.lr_end}")
        if not 0 <= self.noise_end <= 1:
            raise TilefillError(f"experimental.noise_end must be in [0, 1], not {self.noise_end}")
        if self.noise_end_max_reach < 0:
            raise TilefillError("experimental.noise_end_max_reach must be at least 0")
        if self.ensemble < 1:
            raise TilefillError(f"experimental.ensemble must be at least 1, not {self.ensemble}")
        if set(self.inputs) - {"noise", "meshgrid", "context"} or len(set(self.inputs)) != len(self.inputs):
            raise TilefillError(f"experimental.input must be noise, meshgrid or context, or two joined by + "
                                f"(noise+context), not {self.input!r}")
        if self.patience < 0:
            raise TilefillError("experimental.patience must be at least 0")
        if self.upsample not in ("nearest", "bilinear"):
            raise TilefillError(f"experimental.upsample must be 'nearest' or 'bilinear', not {self.upsample!r}")

    @property
    def inputs(self) -> tuple[str, ...]:
        """The input kinds fitted, each as ensemble members averaged together (``noise+context``: two)."""
        return tuple(str(self.input).split("+"))


@dataclass(frozen=True)
class Config:
    """All settings of a run.

    Examples
    --------
    >>> from tilefill import load_config
    >>> cfg = load_config("fast", {"fit.iterations": 50, "tiles.size": 128})
    >>> cfg.fit.iterations, cfg.tiles.size
    (50, 128)
    """

    name: str = setting("paper", "The config's name (a preset's, or a YAML file's stem), shown in logs.", tier="user")
    method: str = setting("dip", "Fill method: dip, a classical one (gdal, biharmonic, telea, ns, kriging), or one "
                          "from a guide (llhm, nspi).", tier="user")
    network: NetworkConfig = field(default_factory=NetworkConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    tiles: TileConfig = field(default_factory=TileConfig)
    blend: BlendConfig = field(default_factory=BlendConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    guide: GuideConfig = field(default_factory=GuideConfig)
    experimental: ExperimentalConfig = field(default_factory=ExperimentalConfig)

    def __post_init__(self):
        m, levels = self.network.multiple, self.network.levels
        for name, value in (("tile size", self.tiles.size), ("overlap", self.tiles.overlap)):
            if value % m:
                raise TilefillError(f"{name} {value} is not a multiple of {m} (the network halves a tile "
                                    f"{levels} times)")
        if self.tiles.size < 2 * m:
            # the last level would leave the tile 1 px wide: nothing for BatchNorm or padding
            raise TilefillError(f"tile size must be at least {2 * m} px, not {self.tiles.size}")
        if not 0 <= self.tiles.overlap < self.tiles.size:
            raise TilefillError(f"overlap {self.tiles.overlap} must be at least 0 and smaller than the tile size "
                                f"{self.tiles.size}")
        if self.blend.weights == "distance" and not self.fit.validation:
            raise TilefillError("blend.weights: distance needs fit.validation > 0 (the hidden pixels fit the weights)")
        if len(self.blend.prior_curve) not in (0, 1, len(self.fit.blend_methods)):
            raise TilefillError(f"blend.prior_curve has {len(self.blend.prior_curve)} curves for "
                                f"{len(self.fit.blend_methods)} partners (fit.blend_method): give one, or one per partner")
        if "context" in self.experimental.inputs and not self.fit.keep_known:
            # its loss is on hidden stripes only: over known pixels its output is untrained
            raise TilefillError("experimental.input: context predicts the gaps only; --no-keep-known needs the noise "
                                "or meshgrid input")

    def override(self, overrides: Mapping[str, Any]) -> "Config":
        """A copy with dotted keys replaced, e.g. ``{"fit.iterations": 10}``; ``None`` values are ignored.

        Keys of one section are applied together, so their order never matters (a new tile
        size and overlap are checked as a pair).
        """
        top: dict[str, Any] = {}
        sections: dict[str, dict[str, Any]] = {}
        for key, value in overrides.items():
            if value is None:
                continue
            if key in MOVED:
                raise TilefillError(f"{key} is now {MOVED[key]} (a research knob, off in every preset)")
            section, _, leaf = key.partition(".")
            if not leaf:
                if section not in ("name", "method"):
                    raise TilefillError(f"unknown setting {key!r}")
                top[section] = value
            elif section not in _SECTIONS:
                raise TilefillError(f"unknown config section {section!r}; valid: {', '.join(_SECTIONS)}")
            else:
                cls = _SECTIONS[section]
                sections.setdefault(section, {})[leaf] = _coerce(cls, leaf, value)
        changes = {name: replace(getattr(self, name), **values) for name, values in sections.items()}
        return replace(self, **top, **changes)

    def to_dict(self) -> dict:
        """Every setting as nested plain values, one mapping per section (what a work store keeps)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Config":
        """The config :meth:`to_dict` gave (a key it lacks keeps its default); no file is read.

        Examples
        --------
        >>> cfg = load_config("fast")
        >>> Config.from_dict(cfg.to_dict()) == cfg
        True
        """
        # a work store written before the experimental section keeps those settings in their old sections
        return cls().override({MOVED.get(k, k): v for k, v in _flatten(data).items()})


_SECTIONS = {"network": NetworkConfig, "fit": FitConfig, "engine": EngineConfig, "tiles": TileConfig,
             "blend": BlendConfig, "output": OutputConfig, "guide": GuideConfig, "experimental": ExperimentalConfig}

# The research knobs grouped under ``experimental``: where each was before (run keys still hash them there)
MOVED = {"fit.lr_end": "experimental.lr_end", "fit.noise_end": "experimental.noise_end",
         "fit.noise_end_max_reach": "experimental.noise_end_max_reach", "fit.ensemble": "experimental.ensemble",
         "fit.input": "experimental.input", "fit.patience": "experimental.patience",
         "blend.choose_partner": "experimental.choose_partner", "network.upsample": "experimental.upsample"}


def settings_reference() -> list[dict]:
    """Every setting in declaration order: its ``section`` ("" for the top level), ``key`` (its name in
    the section), ``setting`` (the dotted key of ``--set``), ``type``, ``default``, ``tier`` and ``doc``.

    Examples
    --------
    >>> row = next(r for r in settings_reference() if r["setting"] == "fit.iterations")
    >>> row["section"], row["key"], row["type"], row["default"], row["tier"]
    ('fit', 'iterations', 'int', 1500, 'user')
    """
    rows = [_reference_row("", top) for top in fields(Config) if top.name not in _SECTIONS]
    for section, cls in _SECTIONS.items():
        rows += [_reference_row(section, f) for f in fields(cls)]
    return rows


def _reference_row(section: str, f: dataclasses.Field) -> dict:
    default = f.default_factory() if f.default is MISSING else f.default
    return {"section": section, "key": f.name, "setting": f"{section}.{f.name}" if section else f.name,
            "type": str(f.type), "default": default, "tier": f.metadata.get("tier"), "doc": f.metadata.get("doc")}


# The settings that have a named option (CLI) and a keyword (fill_scene): name -> dotted key
SHORTCUTS = {"iterations": "fit.iterations", "tile_size": "tiles.size", "overlap": "tiles.overlap",
             "seed": "fit.seed", "keep_known": "fit.keep_known", "per_band": "fit.per_band", "method": "method",
             "cog": "output.cog"}


def with_shortcuts(overrides: Mapping[str, Any] | None = None, **named: Any) -> dict[str, Any]:
    """Dotted overrides plus the :data:`SHORTCUTS` given by name; a named value (not None) wins.

    Examples
    --------
    >>> with_shortcuts({"fit.iterations": 5, "fit.ema": 0.9}, iterations=10, seed=None)
    {'fit.iterations': 10, 'fit.ema': 0.9}
    """
    unknown = set(named) - set(SHORTCUTS)
    if unknown:
        raise TypeError(f"not a shortcut: {', '.join(sorted(unknown))}")
    return {**(overrides or {}), **{SHORTCUTS[k]: v for k, v in named.items() if v is not None}}


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"fit": {"iterations": 5}}`` -> ``{"fit.iterations": 5}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _coerce(cls, key: str, value: Any) -> Any:
    """Convert YAML/CLI values to the field's declared type (lists to tuples for hashability)."""
    names = {f.name: f for f in fields(cls)}
    if key not in names:
        raise TilefillError(f"unknown setting {key!r} in {cls.__name__}; valid: {', '.join(sorted(names))}")
    default = getattr(cls(), key) if cls is not Config else None
    if isinstance(value, list):
        return tuple(value)
    if isinstance(default, bool) and not isinstance(value, bool):
        raise TilefillError(f"setting {key!r} must be true or false, not {value!r}")
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def presets_dir() -> Path:
    """The folder of the shipped presets: ``configs/`` in a source tree, ``tilefill/configs`` in a wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "paper.yaml").is_file():
            return candidate
    raise TilefillError(f"tilefill's presets (configs/*.yaml) are missing from {here}; reinstall tilefill")


def preset_names() -> list[str]:
    """Names of the presets shipped in ``configs/``."""
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def _read_yaml(name_or_path: str | Path) -> tuple[str, dict]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise TilefillError(f"config file not found: {path}")
        text, name = path.read_text(), path.stem
    else:
        preset = presets_dir() / f"{name_or_path}.yaml"
        if not preset.is_file():
            raise TilefillError(f"no preset named {name_or_path!r}; presets: {', '.join(preset_names())}, or a path to a .yaml file")
        text, name = preset.read_text(), str(name_or_path)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise TilefillError(f"config {name_or_path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise TilefillError(f"config {name_or_path} must be a mapping of sections")
    return name, data


def load_config(name_or_path: str | Path = "paper", overrides: Mapping[str, Any] | None = None, *,
                _seen: tuple[str, ...] = ()) -> Config:
    """Build a :class:`Config` from a preset name or a YAML file, then apply dotted overrides.

    A YAML file may start from another preset with ``base: NAME`` and change only some keys.

    Examples
    --------
    >>> load_config("paper").network.channels_down
    (128, 128, 128, 128, 128)
    """
    name, data = _read_yaml(name_or_path)
    ident = str(Path(name_or_path).resolve()) if Path(name_or_path).is_file() else str(name_or_path)
    if ident in _seen:
        raise TilefillError(f"config {name_or_path} is its own base (base: chain {' -> '.join(_seen + (ident,))})")
    base = data.pop("base", None)
    if base and Path(name_or_path).is_file() and not Path(base).is_absolute() and (Path(name_or_path).parent / base).is_file():
        base = Path(name_or_path).parent / base  # a base file next to the config that names it
    cfg = load_config(base, _seen=_seen + (ident,)) if base else Config()
    flat: dict[str, Any] = {"name": data.pop("name", name)}
    if "method" in data:
        flat["method"] = data.pop("method")
    for section, values in data.items():
        if section not in _SECTIONS:
            raise TilefillError(f"unknown config section {section!r} in {name_or_path}; valid: {', '.join(_SECTIONS)}")
        if not isinstance(values, dict):
            raise TilefillError(f"config section {section!r} in {name_or_path} must be a mapping")
        flat.update({f"{section}.{k}": v for k, v in values.items()})
    try:
        return cfg.override(flat).override(overrides or {})
    except TypeError as exc:  # a wrong type that dataclass validation tripped over
        raise TilefillError(f"invalid config {name_or_path}: {exc}") from None
