"""Every setting of a run, in one typed place.

A :class:`Config` is built from a preset in ``configs/*.yaml`` (``paper`` is the paper's
method, ``fast`` a small network for CPUs), a user's own YAML file, and overrides from the
CLI or the Python API. Sections mirror the pipeline: ``network`` (the DIP skip network),
``fit`` (the optimisation of one tile), ``tiles`` (the grid), ``blend`` (how the mosaic weighs DIP
against its classical partner), ``output`` (the GeoTIFF).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from tilefill._distance_blend import N_BINS as N_DISTANCE_BINS
from tilefill._errors import TilefillError

CLASSICAL = ("gdal", "biharmonic", "telea", "ns", "kriging")


@dataclass(frozen=True)
class NetworkConfig:
    """The DIP "skip" hourglass (Ulyanov et al. 2018, as in the paper's appendix)."""

    channels_down: tuple[int, ...] = (128, 128, 128, 128, 128)
    channels_up: tuple[int, ...] = (128, 128, 128, 128, 128)
    channels_skip: tuple[int, ...] = (128, 128, 128, 128, 128)
    kernel_down: int = 3
    kernel_up: int = 3
    kernel_skip: int = 1
    upsample: str = "nearest"
    leaky_slope: float = 0.2

    def __post_init__(self):
        levels = {len(self.channels_down), len(self.channels_up), len(self.channels_skip)}
        if len(levels) != 1:
            raise TilefillError("network: channels_down, channels_up and channels_skip need one entry per level")
        if self.upsample not in ("nearest", "bilinear"):
            raise TilefillError(f"network.upsample must be 'nearest' or 'bilinear', not {self.upsample!r}")

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

    iterations: int = 1500
    learning_rate: float = 0.01
    # the learning rate at the last iteration, as a share of learning_rate, reached along a half cosine
    # (1 = constant, the paper's; measured on two crops only and not adopted, see README)
    lr_end: float = 1.0
    input_scale: float = 0.1  # z ~ U(0, input_scale), one channel per band
    input_noise: float = 0.1  # sigma_p: N(0, sigma_p^2) added to z every iteration
    # sigma_p at the last iteration, as a share of input_noise, reached along a half cosine (1 = constant,
    # the paper's); applies to tiles fitted with input_noise whose gaps reach at most noise_end_max_reach px
    noise_end: float = 1.0
    per_band: bool = False  # False: all bands in one network (the paper's composite)
    seed: int = 0
    keep_known: bool = True  # False: the paper's full reconstruction replaces known pixels too
    # A tile with fewer known pixels than this share is fitted on a wider window (x2, x4, ...)
    min_known_fraction: float = 0.05
    max_context: int = 4  # widest window, in tile sides
    device: str = "auto"  # auto | cpu | cuda
    # Beyond the paper (measured in benchmarks/quality.py; all off in the paper preset):
    ensemble: int = 1  # networks fitted per tile with different seeds; their outputs are averaged
    ema: float = 0.0  # decay of an exponential average of the outputs over iterations (0 = last output)
    # noise: z ~ U(0, input_scale) per band | meshgrid: x, y coordinates | context: the window itself,
    # gaps pre-filled, with more gap-shaped stripes hidden every iteration for the network to predict;
    # noise+context: both, as ensemble members whose outputs are averaged
    input: str = "noise"
    validation: float = 0.0  # share of known pixels hidden in stripes to score the fit (0 = none)
    check_every: int = 50  # iterations between validation checks
    patience: int = 0  # stop after this many checks without a better validation score (0 = never)
    classical_blend: float = 0.0  # weight of blend_method's fill averaged into the prediction
    # the classical fill blended in: gdal | biharmonic | telea | ns | kriging, or a list of them to
    # choose from per band on the hidden pixels (blend.weights: distance); the first fills thin-gap tiles
    blend_method: str | tuple[str, ...] = "gdal"
    # With validation: pick each band's blend weight on the hidden pixels, in tiles whose gaps reach
    # at most blend_auto_max_reach px (5 px stripes reach 3; SLC crops 4.5-6) and whose hidden stripes
    # lie a gap's reach from the real gaps. Elsewhere classical_blend stays: measured, the choice won
    # on 5 px stripes and lost on the 2-14 px SLC stripes and on 12-19 px ones
    blend_auto: bool = False
    blend_auto_max_reach: float = 3.5
    # A tile whose gap pixels (99% of them) lie within this many px of a known pixel is filled by
    # blend_method alone: on 1-2 px stripes biharmonic beats DIP and costs no fit (0 = always DIP)
    thin_gap_px: float = 0.0
    # A tile whose gap pixels (99% of them) lie within this many px of a known pixel is fitted with
    # narrow_input_noise instead of input_noise (0 = every tile takes input_noise). Less noise on z
    # fits the known pixels sooner, which narrow stripes reward and wide gaps punish (measured)
    narrow_gap_px: float = 0.0
    narrow_input_noise: float = 0.1
    # The widest gap reach (px, 99% of a tile's gap pixels) at which fit.noise_end anneals the noise; tiles
    # with wider gaps (cloud holes, 19+ px stripes) keep a constant input_noise (0 = every DIP tile anneals).
    # Measured on fast: annealing lost on cloud holes and 55% stripes everywhere, and on stripes (reach 4.5-8)
    # it gained on Sentinel-2 and lost on Landsat-8 and the paper image (README, Performance)
    noise_end_max_reach: float = 0.0

    def __post_init__(self):
        if self.ensemble < 1:
            raise TilefillError(f"fit.ensemble must be at least 1, not {self.ensemble}")
        if not 0 <= self.ema < 1:
            raise TilefillError("fit.ema must be in [0, 1)")
        kinds = str(self.input).split("+")
        if not set(kinds) <= {"noise", "meshgrid", "context"} or len(set(kinds)) != len(kinds):
            raise TilefillError(f"fit.input must be noise, meshgrid or context, or two joined by + "
                                f"(noise+context), not {self.input!r}")
        if "context" in kinds and not self.keep_known:
            # its loss is on hidden stripes only: over known pixels its output is untrained
            raise TilefillError("fit.input: context predicts the gaps only; --no-keep-known needs the noise or "
                                "meshgrid input")
        if not 0 <= self.validation < 0.5:
            raise TilefillError("fit.validation must be in [0, 0.5)")
        if not 0 <= self.classical_blend <= 1:
            raise TilefillError("fit.classical_blend must be in [0, 1]")
        methods = self.blend_methods
        bad = [m for m in methods if m not in CLASSICAL]
        if bad or not methods or len(set(methods)) != len(methods):
            raise TilefillError(f"fit.blend_method must be a classical method ({', '.join(CLASSICAL)}) or a list of "
                                f"distinct ones, not {self.blend_method!r}")
        if min(self.thin_gap_px, self.blend_auto_max_reach, self.narrow_gap_px, self.noise_end_max_reach) < 0:
            raise TilefillError("fit.thin_gap_px, fit.blend_auto_max_reach, fit.narrow_gap_px and "
                                "fit.noise_end_max_reach must be at least 0")
        if min(self.input_noise, self.narrow_input_noise) < 0:
            raise TilefillError("fit.input_noise and fit.narrow_input_noise must be at least 0")
        if self.blend_auto and not self.validation:
            raise TilefillError("fit.blend_auto needs fit.validation > 0 (the hidden pixels choose the weight)")
        if self.check_every < 1 or self.patience < 0:
            raise TilefillError("fit.check_every must be at least 1 and fit.patience at least 0")
        if self.iterations < 1:
            raise TilefillError(f"iterations must be at least 1, not {self.iterations}")
        if self.learning_rate <= 0:
            raise TilefillError(f"learning_rate must be positive, not {self.learning_rate}")
        if not 0 < self.lr_end <= 1:
            raise TilefillError(f"fit.lr_end must be in (0, 1], not {self.lr_end}")
        if not 0 <= self.noise_end <= 1:
            raise TilefillError(f"fit.noise_end must be in [0, 1], not {self.noise_end}")
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


@dataclass(frozen=True)
class BlendConfig:
    """How the mosaic averages DIP with its classical partner (``fit.blend_method``).

    ``weights: fixed`` takes each tile's weight (``fit.classical_blend``, or the one ``fit.blend_auto``
    chose). ``weights: distance`` fits one weight per band and per distance of the pixel to known data
    (bins 1, 2, 3, 4-5, 6-8, 9-16, 17-32, 33+ px) on the scene's hidden pixels (``fit.validation``), scored
    on the mosaic itself. ``prior_pixels``: hidden pixels a bin needs to count as much as its prior:
    ``prior_curve``'s weight for the bin, or without a curve the previous bin's weight (bin 1's:
    ``fit.classical_blend``). ``prior_curve``: the weights per bin measured on the real gaps of other
    scenes (``benchmarks/blend_study.py``), one list of 8 for every partner or one per partner of
    ``fit.blend_method``. ``choose_partner``: pick each band's partner among ``fit.blend_method`` on the
    hidden pixels. Decided after the fits: changing any of these reuses a kept work store.
    """

    weights: str = "fixed"
    prior_pixels: float = 200.0
    prior_curve: tuple = ()
    # with several fit.blend_method partners, choose each band's on the hidden pixels; off, the first
    # partner blends every band (measured: the choice took GDAL for Landsat-8's NIR beside a cloud
    # hole and lost 0.019 gap r2 there, benchmarks/reports/blend-study-cpu-256.md)
    choose_partner: bool = False

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

    # fp32 | bf16 | fp16: autocast of the network's body; its 1x1 output layer and sigmoid, the loss,
    # the EMA and the prediction stay fp32
    precision: str = "fp32"
    tf32: bool = True  # TF32 matmuls/convs on Ampere+ GPUs
    channels_last: bool = False
    compile: bool = False  # torch.compile the network, once per worker process and input shape
    # torch.compile's backend: inductor generates kernels; aot_eager traces the same graphs without
    # generating code (minutes faster to compile on a CPU; what the tests use)
    compile_backend: str = "inductor"
    # tiles per task, fitted together as one grouped network: small tiles alone leave a GPU idle
    tiles_per_task: int = 1
    # Reproducible GPU fits (cuDNN without autotuning, deterministic kernels): a refitted tile equals
    # the first fit bit for bit on the same GPU model and software. Slower; CPU fits are so already
    deterministic: bool = False
    # Share of a GPU's memory one task's networks may take: a larger group is fitted in sub-groups
    memory_fraction: float = 0.9

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
    """The overlapping tile grid."""

    size: int = 256
    overlap: int = 32  # sides and overlap are checked by Config, which knows what the network's levels need


@dataclass(frozen=True)
class OutputConfig:
    """How the restored scene is written."""

    cog: bool = False
    compress: str = "deflate"
    blocksize: int = 512
    # OUT.quality.json beside the output: each tile's bounds and self-validated gap RMSE estimate
    # (written when fit.validation gave estimates)
    quality_sidecar: bool = True

    def __post_init__(self):
        if self.blocksize % 16:
            raise TilefillError("output.blocksize must be a multiple of 16 (GeoTIFF tiles)")


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

    name: str = "paper"
    method: str = "dip"
    network: NetworkConfig = field(default_factory=NetworkConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    tiles: TileConfig = field(default_factory=TileConfig)
    blend: BlendConfig = field(default_factory=BlendConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

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
        return cls().override(_flatten(data))


_SECTIONS = {"network": NetworkConfig, "fit": FitConfig, "engine": EngineConfig, "tiles": TileConfig,
             "blend": BlendConfig, "output": OutputConfig}


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
