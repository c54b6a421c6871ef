"""Faster network evaluation: ``torch.compile`` and autocast precision, with a safe fallback.

``accelerate(model, compile=True, precision="bf16")`` returns a model of the same
prediction whose network runs compiled (Inductor fuses its kernels; on CUDA the default
mode ``"reduce-overhead"`` also replays CUDA graphs, removing the per-kernel launch cost)
and under ``torch.autocast`` in the chosen precision.  Only the network changes: the
time coefficients, preconditioning and the solver's state stay in the state's dtype
(float32 or float64), so a bf16 network perturbs a step by its own rounding only.

The network is compiled once per input shape (``dynamic=False``: static shapes, the
fastest kernels; a last batch of another size compiles once more).  The
time reaches it as the tensor ``c_noise``, never a Python float, so steps do not
recompile.  A network that cannot be compiled runs eagerly after one warning line; an
error the eager network also raises is the network's own and goes on unchanged.

Time spent in calls that compiled is added to a process-wide clock
(:func:`compile_seconds`), which :func:`~sde_diffusion.sampling.solve` reads to report
the compile time apart from the sampling rate.
"""

from __future__ import annotations

import copy
import threading
import time
import warnings
from typing import Any

import torch
import torch._functorch.config as functorch_config
import torch._inductor
from torch import Tensor, nn

from .errors import ArgumentError
from .latent import LatentModel
from .models import as_model
from .parametrization import ScoreModel

__all__ = ["PRECISIONS", "FastNetwork", "accelerate", "compile_seconds"]

PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
"""``--precision`` names and the autocast dtype of each (``fp32``: no autocast)."""

_clock = threading.local()


def compile_seconds() -> float:
    """Seconds this thread has spent in network calls that compiled (a running total)."""
    return getattr(_clock, "seconds", 0.0)


def _charge(seconds: float) -> None:
    _clock.seconds = compile_seconds() + seconds


def check_precision(precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision``, or an ``ArgumentError`` naming the valid ones."""
    if precision not in PRECISIONS:
        raise ArgumentError(
            f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
        )
    return PRECISIONS[precision]


def _signature(args: tuple, kwargs: dict) -> tuple:
    """What a compiled graph is specialised on: each tensor's shape, dtype and device, and
    whether autograd records (inference and training compile apart)."""
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
    grad = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    return (grad, *((tuple(a.shape), a.dtype, a.device) for a in tensors))


def _allow_repeated_backward() -> None:
    """Let compiled graphs run their backward more than once (likelihoods take divergences
    with ``retain_graph``): Inductor's donated buffers, read when the backward compiles (at
    the first backward, outside any call of ours), forbid it; turned off for the process."""
    if hasattr(functorch_config, "donated_buffer"):
        functorch_config.donated_buffer = False


class FastNetwork(nn.Module):
    """``net`` compiled and/or autocast; its parameters are ``net``'s own (shared).

    ``compile``: ``False``, ``True`` (mode ``"reduce-overhead"`` on CUDA, Inductor's
    default elsewhere) or a ``torch.compile`` mode name.  ``precision``: a key of
    :data:`PRECISIONS`.
    """

    def __init__(self, net: nn.Module, compile: bool | str = True, precision: str = "fp32"):
        super().__init__()
        self.net = net
        self.autocast = check_precision(precision)
        self.precision, self.asked, self.mode = precision, compile, None
        self._compiled = None  # built at the first call (the mode needs the device); not a
        self._failed = False  # submodule, so the state dict stays the network's
        self._seen: set[tuple] = set()
        modes = list(torch._inductor.list_mode_options())
        if isinstance(compile, str) and compile not in modes:
            raise ArgumentError(
                f"unknown compile mode {compile!r}; choose True or one of {', '.join(modes)}"
            )
        if compile:
            _allow_repeated_backward()

    @property
    def compiled(self) -> bool:
        """Whether calls go through the compiled network (``False`` after a fallback)."""
        return bool(self.asked) and not self._failed

    @property
    def config(self) -> Any:
        return getattr(self.net, "config", None)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        tensors = (a for a in (*args, *kwargs.values()) if isinstance(a, Tensor))
        device = next((a.device.type for a in tensors), "cpu")
        with torch.autocast(device, dtype=self.autocast, enabled=self.autocast is not None):
            if not self.compiled:
                return self.net(*args, **kwargs)
            return self._compiled_call(args, kwargs, device)

    def _compiled_call(self, args: tuple, kwargs: dict, device: str) -> Any:
        start = time.perf_counter()  # compile time includes loading the compiler
        if self._compiled is None:
            default = "reduce-overhead" if device == "cuda" else None
            self.mode = self.asked if isinstance(self.asked, str) else default
            self._compiled = [torch.compile(self.net, mode=self.mode, dynamic=False)]
        key = _signature(args, kwargs)
        first = key not in self._seen
        try:
            out = self._compiled[0](*args, **kwargs)
        except Exception as err:
            _charge(time.perf_counter() - start)  # the failed attempt was compile time too
            out = self.net(*args, **kwargs)  # the network's own error goes on from here
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            warnings.warn(
                f"the network could not be compiled ({type(err).__name__}: {reason[:160]}); "
                "running it eagerly",
                RuntimeWarning,
                stacklevel=4,
            )
            self._failed = True
            return out
        if first:
            self._seen.add(key)
            _charge(time.perf_counter() - start)
        if device == "cuda" and self.mode == "reduce-overhead" and isinstance(out, Tensor):
            out = out.clone()  # a CUDA-graph output is overwritten by the next replay
        return out


def accelerate(model: Any, compile: bool | str = False, precision: str = "fp32") -> Any:
    """``model`` with its network(s) compiled and/or autocast to ``precision``.

    A :class:`ScoreModel` gets a new wrapper around a :class:`FastNetwork` of the same
    network (parameters shared, nothing copied); guidance wrappers get their model and
    guide accelerated; any other model (an adapter, a plain function) is compiled whole.
    With ``compile=False`` and ``precision="fp32"`` it returns ``model`` itself.
    """
    check_precision(precision)
    if (not compile and precision == "fp32") or isinstance(model, AcceleratedModel):
        return model
    if isinstance(model, ScoreModel):
        if isinstance(model.net, FastNetwork):
            return model
        fast = FastNetwork(model.net, compile, precision)
        return ScoreModel(fast, model.sde, model.parametrization, model.sigma_data)
    if isinstance(model, LatentModel):  # the score model accelerated, the decoder as it is
        fast = accelerate(model.model, compile, precision)
        return LatentModel(fast, model.autoencoder, model.image_shape, model.latent_shape)
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(model, "keep_unconditional"):  # guidance wrappers
        guided = copy.copy(model)
        guided.model = accelerate(inner, compile, precision)
        if getattr(model, "guide", None) is not None:
            guided.guide = accelerate(model.guide, compile, precision)
        return guided
    return AcceleratedModel(as_model(model), compile, precision)


class AcceleratedModel:
    """Any model compiled whole; its attributes (``prediction``, ...) read through."""

    def __init__(self, model: Any, compile: bool | str, precision: str):
        self.model = model
        self.fast = FastNetwork(_Callable(model), compile, precision)

    def __call__(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.fast(x, t, cond).to(x.dtype)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["model"], name)

    def __repr__(self) -> str:
        return f"AcceleratedModel({self.model!r})"


class _Callable(nn.Module):
    """A model callable as a module (what ``FastNetwork`` wraps)."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.model(x, t, cond)
