"""The engine's runtime in one process: its device, numerics, torch flags, compiled networks, memory.

A worker fits task after task with one engine config. What does not change between them is
resolved once per process and config (:func:`get_runtime`) and handed to every fit:

- the torch device (``fit.device``; ``auto`` takes CUDA where this process sees a device);
- the autocast dtype (``engine.precision``) and a gradient scaler for fp16;
- torch's process-wide flags: TF32, cuDNN autotuning, deterministic kernels
  (``engine.deterministic``), set again before each fit in case another runtime of this
  process changed them;
- ``torch.compile``'d networks (``engine.compile``), one per network layout and input shape.
  A later fit of that shape reuses the compiled module: its parameters are re-initialised in
  place, so the graph's guards hold and nothing is traced or compiled again;
- the GPU memory one group of networks may take (``engine.memory_fraction``), and the largest
  group that fitted after an out-of-memory error, for the next :data:`CAP_FITS` fits of that
  shape (what ran out may have been passing: another process's memory, fragmentation).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from tilefill._config import EngineConfig, NetworkConfig
from tilefill._errors import TilefillError

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# cuBLAS needs a fixed workspace to be deterministic; read when its first handle is made
CUBLAS_WORKSPACE = ":4096:8"
CAP_FITS = 20  # fits of one shape that a group-size cap learned from an out-of-memory error holds for


def resolve_device(name: str = "auto") -> torch.device:
    """The device ``fit.device`` names: ``cuda`` where this process sees a CUDA device, else ``cpu``.

    ``cuda`` where none is visible is refused in one line, rather than failing every tile later.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if name == "cuda":
        raise TilefillError("fit.device is cuda but this process sees no CUDA device (CUDA_VISIBLE_DEVICES="
                            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!s}); use fit.device=auto or cpu")
    return torch.device("cpu")


class DeterministicReflectionPad2d(nn.Module):
    """``nn.ReflectionPad2d`` from slices and flips: the same output, and a backward without atomics.

    CUDA's reflection-padding backward adds into the border pixels with atomics, in an order that
    changes from run to run (torch refuses it under deterministic algorithms). Slicing, flipping
    and concatenating have plain copies as their backward, summed in a fixed order.
    """

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad
        x = torch.cat([x[..., 1:p + 1].flip(-1), x, x[..., -p - 1:-1].flip(-1)], dim=-1)
        return torch.cat([x[..., 1:p + 1, :].flip(-2), x, x[..., -p - 1:-1, :].flip(-2)], dim=-2)


def make_deterministic(net: nn.Module) -> nn.Module:
    """Swap every ``nn.ReflectionPad2d`` of ``net`` for :class:`DeterministicReflectionPad2d` (in place)."""
    for name, child in net.named_children():
        if isinstance(child, nn.ReflectionPad2d):
            setattr(net, name, DeterministicReflectionPad2d(int(child.padding[0])))
        else:
            make_deterministic(child)
    return net


@dataclass
class _Compiled:
    module: nn.Module  # the network whose parameters every fit of this shape re-initialises
    call: object  # torch.compile(module)
    seconds: float = 0.0  # the first pass of each phase: tracing and code generation happen there
    phases: set = field(default_factory=set)  # "forward", "backward", "no_grad": those compiled already


@dataclass
class Runtime:
    """What every fit in this process shares for one engine config: device, numerics, caches.

    ``memory_budget``: bytes one group of networks may take; None: ``engine.memory_fraction`` of
    the GPU on CUDA, no bound on a CPU (Dask bounds a CPU worker's memory).

    Examples
    --------
    >>> from tilefill._config import EngineConfig
    >>> rt = Runtime(EngineConfig(precision="bf16"), torch.device("cpu"))
    >>> rt.autocast_dtype, rt.group_sizes(10, per_network=3, budget=10)
    (torch.bfloat16, [3, 3, 2, 2])
    """

    engine: EngineConfig
    device: torch.device
    memory_budget: int | None = None
    # torch.compile's backend when not engine.compile_backend (a callable: tests count compilations)
    backend: object = None
    # torch.compile's mode (None: its default); benchmarks try "reduce-overhead" (CUDA graphs)
    compile_mode: str | None = None
    compiled: dict = field(default_factory=dict, repr=False)
    # per (layout, window): [the most networks that fitted after an out-of-memory error, fits it still holds for]
    caps: dict = field(default_factory=dict, repr=False)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return AUTOCAST[self.engine.precision]

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.engine.channels_last else torch.contiguous_format

    def activate(self) -> None:
        """Set torch's process-wide flags for this engine (before each fit: another runtime may have run)."""
        if self.device.type != "cuda":
            return
        det = self.engine.deterministic
        torch.backends.cuda.matmul.allow_tf32 = self.engine.tf32
        torch.backends.cudnn.allow_tf32 = self.engine.tf32
        torch.backends.cudnn.benchmark = not det  # autotuning picks kernels by timing: another run, another kernel
        torch.backends.cudnn.deterministic = det
        if det:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        # warn_only: a kernel without a deterministic version (bilinear upsampling's backward) warns
        # rather than failing every tile; the presets' network has none
        torch.use_deterministic_algorithms(det, warn_only=True)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 (its gradients underflow); a no-op otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.engine.precision == "fp16")

    def network(self, build, key: tuple) -> tuple[nn.Module, object]:
        """The network of a fit, on this device and in its memory layout, and what to call it with.

        ``build()`` returns a freshly initialised network (on the CPU). Without ``engine.compile``
        that network is used. With it, the first fit of ``key`` (network layout and input shape)
        compiles it; later fits copy their fresh initialisation into that compiled network.
        """
        fresh = build()
        if self.device.type == "cuda" and self.engine.deterministic:
            make_deterministic(fresh)
        if not self.engine.compile:
            net = fresh.to(self.device).to(memory_format=self.memory_format)
            return net, net
        entry = self.compiled.get(key)
        if entry is None:
            net = fresh.to(self.device).to(memory_format=self.memory_format)
            _allow_recompiles(len(self.compiled) + 1)
            mode = {"mode": self.compile_mode} if self.compile_mode else {}
            entry = self.compiled[key] = _Compiled(net, torch.compile(
                net, backend=self.backend or self.engine.compile_backend, dynamic=False, **mode))
        else:
            with torch.no_grad():  # in place: the compiled graph holds these very tensors
                entry.module.load_state_dict(fresh.state_dict())
        return entry.module, entry

    def call(self, target, x: torch.Tensor) -> torch.Tensor:
        """Run a network (or its compiled entry, from :meth:`network`) on ``x`` in the engine's precision."""
        if not isinstance(target, _Compiled):
            return target(x, self.autocast_dtype)
        with self.compiling(target, "forward" if torch.is_grad_enabled() else "no_grad"):
            return target.call(x, self.autocast_dtype)

    @contextlib.contextmanager
    def compiling(self, target, phase: str):
        """Time ``phase`` of a compiled network the first time it runs (when torch traces and compiles it)."""
        if not isinstance(target, _Compiled) or phase in target.phases:
            yield
            return
        self.synchronize()
        start = time.perf_counter()
        yield
        self.synchronize()
        target.seconds += time.perf_counter() - start
        target.phases.add(phase)

    @property
    def compile_seconds(self) -> float:
        """Seconds this process spent in first passes of compiled networks (tracing, compiling, running once)."""
        return sum(e.seconds for e in self.compiled.values())

    # --- memory -----------------------------------------------------------------------------------------

    def budget(self) -> int | None:
        """Bytes one group of networks may take now; None: no bound."""
        if self.memory_budget is not None:
            return self.memory_budget
        if self.device.type != "cuda":
            return None
        total = torch.cuda.get_device_properties(self.device).total_memory
        return int(self.engine.memory_fraction * total) - torch.cuda.memory_allocated(self.device)

    def group_sizes(self, k: int, per_network: int, key: tuple = (), budget: int | None = None) -> list[int]:
        """Split ``k`` networks into sub-groups that fit the budget, as even as possible, in order.

        ``budget`` defaults to :meth:`budget`; a group that ran out of memory before caps the size
        (:meth:`learn_cap`) for :data:`CAP_FITS` calls (one per fit), then full groups are tried
        again. At least one network per sub-group, whatever the budget says: a network too large
        for the device fails at its own fit with a clear error.

        Examples
        --------
        >>> rt = Runtime(EngineConfig(), torch.device("cpu"))
        >>> rt.learn_cap("shape", 3)
        >>> rt.group_sizes(8, per_network=1, key="shape")
        [3, 3, 2]
        >>> for _ in range(CAP_FITS - 1):
        ...     _ = rt.group_sizes(8, per_network=1, key="shape")
        >>> rt.group_sizes(8, per_network=1, key="shape")  # the cap has run out
        [8]
        """
        budget = self.budget() if budget is None else budget
        most = k if budget is None else max(1, budget // max(per_network, 1))
        cap = self.caps.get(key)
        if cap is not None:
            most = min(most, cap[0])
            cap[1] -= 1
            if cap[1] <= 0:
                del self.caps[key]
        groups = -(-k // most)
        return [k // groups + (i < k % groups) for i in range(groups)]

    def learn_cap(self, key: tuple, size: int) -> None:
        """Remember, for the next :data:`CAP_FITS` fits of ``key``, that groups of ``size`` networks fit (one
        larger did not)."""
        self.caps[key] = [min(self.caps.get(key, (size,))[0], size), CAP_FITS]

    def release(self) -> None:
        """Give cached but unused device memory back (after an out-of-memory error)."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _allow_recompiles(shapes: int) -> None:
    """Let dynamo keep a graph per shape: it compiles one SkipNet code object per shape and grad mode,
    and past its limit (8) it would run the network uncompiled, silently."""
    import torch._dynamo.config as dynamo

    name = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"
    setattr(dynamo, name, max(getattr(dynamo, name), 4 * shapes + 8))


_RUNTIMES: dict[tuple[EngineConfig, str], Runtime] = {}


def get_runtime(engine: EngineConfig | None = None, device: str | torch.device = "auto") -> Runtime:
    """This process's runtime for an engine config and ``fit.device``, made at the first fit and kept.

    Examples
    --------
    >>> from tilefill._config import EngineConfig
    >>> rt = get_runtime(EngineConfig(), "cpu")
    >>> rt is get_runtime(EngineConfig(), "cpu"), rt.device.type
    (True, 'cpu')
    """
    engine = engine or EngineConfig()
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    key = (engine, str(dev))
    if key not in _RUNTIMES:
        _RUNTIMES[key] = Runtime(engine, dev)
    return _RUNTIMES[key]


def network_key(network: NetworkConfig, cin: int, cout: int, groups: int, height: int, width: int,
                upsample: str = "nearest") -> tuple:
    """What a compiled network is specialised to: its layout, group count and input shape."""
    return (network, cin, cout, groups, height, width, upsample)
