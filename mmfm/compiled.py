"""`torch.compile` (inductor, on CPU) as an opt-in, with eager as the fallback.

Where it pays is measured, not assumed (bench/compile_speed.py; numbers in bench/RESULTS.md): on the
hosts measured it speeds up the world CLIP's training step and CLIP / SAM image encoding, after a first
call that compiles for tens of seconds, and it does not speed up the bf16 LM decode step (mmfm's
oneDNN-packed Linears are faster eager). So it is off by default and asked for where a run is long
enough to repay the compile time: `mmfm train ... --compile` (TrainConfig.compile), or in Python

    encode = compiled(model.encode_image)      # call it as the function it wraps
    encode = compiled(model.encode_image, freeze=True)   # inference on weights that no longer change

`freeze=True` is inductor's "freezing": under inference_mode / no_grad the weights become constants of
the compiled graph (folded, prepacked for oneDNN), which is faster for inference, but a later change of
the weights (more training, load_state_dict) is not seen by the compiled function: use it for a model
that is done training, and compile again after changing it.

Dynamo does not guard on the attention-kernel choice (`sdpa_kernel`), only on autocast: a graph traced
under one `Precision.context()` would keep that kernel when later called under another. So a Compiled
keeps one graph per attention-kernel setting (each behind a function of its own: dynamo caches graphs per
code object), and the same wrapper can be timed, or run, under "bf16" and "bf16-math" alike. This holds for
a function dynamo traces whole (an encoder); past a graph break dynamo compiles the inner frame on its own
code, cached once for every setting, so for such a function (a training step) compile after the precision
is chosen, as the Trainer does, and keep it.

A compiler failure (a graph the backend cannot lower, a missing C++ toolchain) is not the user's problem:
the wrapper warns once and runs the function eagerly from then on. Errors of the wrapped code itself
surface as they would eagerly (dynamo re-raises them, or the eager retry raises them).
"""

from __future__ import annotations

import warnings

import torch

try:  # the errors that mean "the compiler could not do it", as opposed to errors of the code compiled
    from torch._dynamo.exc import TorchDynamoException as _CompileError
except ImportError:  # pragma: no cover - a torch without dynamo
    _CompileError = RuntimeError


class Compiled:
    """`fn` (a module or a function) behind torch.compile; eager after the first compiler failure."""

    compiles = True  # (mmfm.nn.packed never hands a compiler its prepacked Linears; StaticDecoder says it too)

    def __init__(self, fn, *, dynamic: bool | None = None, freeze: bool = False, name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", None) or type(fn).__name__
        self.failed: str | None = None
        self._options = {"dynamic": dynamic, "options": {"freezing": True} if freeze else None}
        self._by_kernel: dict[tuple[bool, ...], object] = {}

    def __getattr__(self, name: str):
        """Everything but the call is the wrapped object's (a model's config, its cache builders...)."""
        if name in ("fn", "_options", "_by_kernel", "failed", "name"):  # not set yet: still in __init__
            raise AttributeError(name)
        return getattr(self.fn, name)

    def _compiled(self):
        """The compiled function for the attention kernels enabled now (made on first use)."""
        cuda = torch.backends.cuda  # (these flags are what `sdpa_kernel` sets, on the CPU too)
        key = (cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled(), cuda.math_sdp_enabled())
        if key not in self._by_kernel:
            self._by_kernel[key] = torch.compile(_own_code(self.fn, len(self._by_kernel)), **self._options)
        return self._by_kernel[key]

    def __call__(self, *args, **kwargs):
        if self.failed is None:
            try:
                return self._compiled()(*args, **kwargs)
            except _CompileError as e:
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
                self.failed = f"{type(e).__name__}: {first}"
                warnings.warn(f"torch.compile could not compile {self.name}; running it eagerly ({self.failed})",
                              RuntimeWarning, stacklevel=2)
        return self.fn(*args, **kwargs)


def _own_code(fn, tag: int):
    """`fn` behind a function whose code object is its own, so that its graphs are cached apart."""
    def call(*args, **kwargs):
        return fn(*args, **kwargs)

    call.__code__ = call.__code__.replace(co_name=f"compiled_{tag}")
    return call


def compiled(fn, *, dynamic: bool | None = None, freeze: bool = False, name: str | None = None) -> Compiled:
    """`fn` compiled with inductor on first call, eager if that fails (see the module docstring)."""
    return fn if isinstance(fn, Compiled) else Compiled(fn, dynamic=dynamic, freeze=freeze, name=name)


__all__ = ["Compiled", "compiled"]
