"""Decoding steps of fixed shapes, compiled ahead of time into graphs without per-step checks.

A decoding step of `DecoderLM` with growing caches reads a new key length every step, so a step compiled
with torch.compile (dynamic shapes) re-checks its guards, symbolic sizes and the Python objects around
the model on every call: on 2 CPU cores that bookkeeping is a sizeable share of a step of the int4 LM
(bench/RESULTS.md). Here each layer's keys and values are two fixed tensors, (B, kv_heads, S, head_dim)
with S rounded up to a bucket; a step writes its key/value at slot `pos` (a tensor, in place) and
attends to the whole cache under a mask of the slots filled so far. Every step of a (B, S) is then
the same function of tensors only, which torch.export can capture and AOTInductor compile once to a
shared library that is called without guards and reads the model's own weights (no second copy).

    fast = StaticDecoder(model, "aot")     # batch 1 steps compiled on first use (or fast.warm())
    generate(fast, ids, mask, config=...)  # the prompt runs through `model` as usual, the steps as above

The prompt (prefill) runs through the model (or `other`), filling the first positions of the same
buffers; only one-token steps without extra inputs (no image features) take the static path. The numbers
are the model's: masked slots add exact zeros to the softmax's sums (tests: the eager static step equals
the model's, greedy tokens identical); compiled, bf16 rounding may differ as under torch.compile.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from mmfm.errors import ConfigError
from mmfm.nn.attention import KVCache
from mmfm.nn.decoder import DecoderLM, DecoderOutput


class SlotCache(KVCache):
    """One layer's view of the static buffers. During the prompt it is a KVCache (slices written from
    position 0); in a static step the new key/value is written at `slot` and the whole buffer returned."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v, self.pos = k, v, 0
        self.slot: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.slot is None:
            return super().update(k, v)
        self.k.index_copy_(2, self.slot, k)
        self.v.index_copy_(2, self.slot, v)
        return self.k, self.v

    def reorder(self, index: torch.Tensor) -> None:
        """Beam search: rows selected in place, so that the buffers stay the ones the steps write."""
        self.k.copy_(self.k.index_select(0, index))
        self.v.copy_(self.v.index_select(0, index))


class _Step(nn.Module):
    """One token per row against full caches: (tokens (B, 1), positions (B, 1), slot (1,), valid (B, S) bool,
    then each layer's keys and then each layer's values, (B, Hkv, S, Dh) each) -> fp32 logits (B, vocab);
    keys and values are written at slot. One tensor per layer, not slices of a stacked one: a compiled
    graph writes an input in place, but a slice of one it would rebuild whole every step."""

    def __init__(self, model: DecoderLM):
        super().__init__()
        self.model = model

    def forward(self, tokens, positions, slot, valid, *keys_values):
        layers = len(keys_values) // 2
        s = keys_values[0].shape[2]
        caches = []
        for k, v in zip(keys_values[:layers], keys_values[layers:]):
            c = SlotCache(k, v)
            c.slot, c.pos = slot, s - 1  # the decoder then expects a (B, 1, 1, S) mask: past + 1 == S
            caches.append(c)
        mask = (valid & (torch.arange(s, device=valid.device) <= slot))[:, None, None, :]
        out = self.model(input_ids=tokens, position_ids=positions, caches=caches, mask=mask, logits_to_keep=1)
        return out.logits[:, -1].float()


class StaticDecoder(nn.Module):
    """A DecoderLM whose one-token steps at the batch sizes `batches` run on fixed-size caches (see the
    module docstring); prompts, other batch sizes and steps with extra inputs go to `other` (default: the
    model; e.g. the model under torch.compile). Called as the model is, by mmfm.nn.generate.

    backend None runs the static step eagerly (the same numbers as the model, for tests); "aot" exports it
    for each (batch, cache bucket) and compiles it with AOTInductor to a shared library on first use (`warm`
    pays that ahead; its time per graph: bench/RESULTS.md), then calls it without Python-side guards. Caches
    are rounded up to a bucket (`buckets`) so that a few graphs serve every length."""

    def __init__(self, model: DecoderLM, backend: str | None = None, *, batches=(1,), other=None,
                 buckets=(256, 512, 1024, 2048, 4096, 8192, 16384, 32768)):
        super().__init__()
        if backend not in (None, "aot"):
            raise ConfigError(f"unknown static-decoding backend {backend!r}; known: aot")
        self.model, self.backend, self.batches = model, backend, tuple(batches)
        self.other = other if other is not None else model
        self.step = _Step(model)
        window = model.config.max_seq_len
        self.buckets = tuple(b for b in buckets if b < window) + (window,)
        self.runners: dict[tuple[int, int], object] = {}
        self.compile_seconds: dict[tuple[int, int], float] = {}
        self.failed: str | None = None
        self._latest: SlotCache | None = None  # the first cache of the generation new_caches made last

    @property
    def config(self):
        return self.model.config

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def compiles(self) -> bool:
        """Steps go through a compiler (mmfm.nn.packed then leaves the Linears as they are)."""
        return self.backend is not None

    def bucket(self, max_len: int) -> int:
        for b in self.buckets:
            if b >= max_len:
                return b
        raise ConfigError(f"{max_len} positions exceed the model's context window of {self.config.max_seq_len}")

    def warm(self, batch: int = 1, max_len: int = 512) -> float:
        """Compile the steps of `batch` for every bucket up to `max_len` now; returns the seconds it took."""
        t = time.perf_counter()
        for s in self.buckets[: self.buckets.index(self.bucket(max_len)) + 1]:
            self._runner(batch, s)
        return time.perf_counter() - t

    def new_caches(self, batch: int, max_len: int, dtype: torch.dtype | None = None) -> list[KVCache]:
        if batch not in self.batches:
            return self.other.new_caches(batch, max_len, dtype)
        c = self.config
        shape = (batch, c.kv_heads, self.bucket(max_len), c.head_dim)
        caches = [SlotCache(torch.zeros(shape, dtype=dtype or self.dtype, device=self.device),
                            torch.zeros(shape, dtype=dtype or self.dtype, device=self.device))
                  for _ in range(c.layers)]
        self._latest = caches[0]  # (held, not its id: a freed list's id can come back for other caches)
        return caches

    def forward(self, input_ids=None, *, attention_mask=None, position_ids=None, caches=None, **kwargs):
        static = (input_ids is not None and input_ids.shape[1] == 1 and caches and caches[0] is self._latest
                  and position_ids is not None
                  and not any(v is not None for k, v in kwargs.items() if k != "logits_to_keep"))
        b, s = (input_ids.shape[0], caches[0].k.shape[2]) if static else (0, 0)
        runner = self._runner(b, s) if static else None
        if runner is None:  # not a static step, or the compiler could not build it: the model's way
            return self.other(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              caches=caches, **kwargs)
        pos = caches[0].pos
        if pos >= s:
            raise RuntimeError(f"KV cache full: {pos} + 1 > {s} positions")
        valid = torch.ones(b, s, dtype=torch.bool, device=input_ids.device)
        if attention_mask is not None:
            valid[:, : attention_mask.shape[1]] = attention_mask.bool()
        slot = torch.tensor([pos], device=input_ids.device)
        with torch.inference_mode():  # a decoding step
            # (beam search reorders SlotCaches in place: their k / v stay the tensors a step writes)
            logits = runner(input_ids, position_ids, slot, valid, *[c.k for c in caches], *[c.v for c in caches])
        for c in caches:
            c.pos += 1
        return DecoderOutput(logits=logits[:, None], last_hidden=None, hidden_states=None)

    def _runner(self, b: int, s: int):
        """The step for (b, s): eager, compiled once, or None after a compiler failure (a missing C++
        toolchain, a graph AOTInductor cannot lower: not the user's problem; one warning, then the
        model's own decoding, which SlotCaches also serve)."""
        if self.backend is None:
            return self.step
        if self.failed is not None:
            return None
        if (b, s) not in self.runners:
            t = time.perf_counter()
            try:
                self.runners[b, s] = _aot(self.step, self.config, b, s)
            except Exception as e:  # noqa: BLE001 - any compiler failure means "decode the model's way"
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
                self.failed = f"{type(e).__name__}: {first}"
                warnings.warn(f"AOTInductor could not compile the decoding step; decoding without it ({self.failed})",
                              RuntimeWarning, stacklevel=3)
                return None
            self.compile_seconds[b, s] = time.perf_counter() - t
        return self.runners[b, s]


def _aot(step: _Step, config, batch: int, slots: int):
    """AOTInductor: export the step for one batch size and cache length (the caches as inputs it writes),
    compile it to a shared library and load that. Fixed sizes: symbolic ones made the step slower
    (bench/RESULTS.md). The export and compile run in a forked child where the OS allows: the compiler stack
    (dynamo, inductor, sympy: several hundred MB) then never enters the decoding process, which only loads
    the library with PyTorch's C++ loader. The library reads the model's own weights in place
    (`_shared_constants`); the package file is removed once loaded (the loader has extracted what it runs)."""
    c, dtype = config, step.model.dtype
    example = (torch.zeros(batch, 1, dtype=torch.long), torch.zeros(batch, 1, dtype=torch.long),
               torch.tensor([0]), torch.ones(batch, slots, dtype=torch.bool),
               *[torch.zeros(batch, c.kv_heads, slots, c.head_dim, dtype=dtype) for _ in range(2 * c.layers)])
    with tempfile.TemporaryDirectory(prefix="mmfm-aot-") as folder:
        package = str(Path(folder) / "step.pt2")
        if hasattr(os, "fork"):
            _in_child(lambda: _compile(step, example, package, torch.get_num_threads()), package + ".error")
        else:
            _compile(step, example, package, torch.get_num_threads())
        loader = torch._C._aoti.AOTIModelPackageLoader(package, "model", False, 1, -1)
        constants = _shared_constants(package, step)
    loader.load_constants(constants, False, True, True)  # (use_inactive, check_full_update, user_managed)
    return _Library(loader, constants)


def _compile(step: _Step, example: tuple, package: str, threads: int) -> None:
    # weights beside the library, not inside it: a library with its own copy holds the model twice; the
    # kernels planned for the decoding process's thread count (the compiling process may run with fewer)
    options = {"aot_inductor.package_constants_in_so": False,
               "aot_inductor.package_constants_on_disk_format": "pickle_weights", "cpp.threads": threads}
    with torch.inference_mode():
        program = torch.export.export(step, example, strict=False)
        torch._inductor.aoti_compile_and_package(program, package_path=package, inductor_configs=options)


def _in_child(work, error_file: str, timeout: float = 900.0) -> None:
    """Run `work` in a forked child (it sees the model as it is, without a copy) and wait for it; its
    exception comes back as a RuntimeError with the child's message. The child runs one thread: OpenMP's
    thread pool does not survive a fork. A child that outlives `timeout` (a lock another thread of the
    parent held at the fork, never released in the child) is killed, and that is an error too."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            torch.set_num_threads(1)
            work()
            code = 0
        except BaseException as e:  # noqa: BLE001 - reported to the parent, which decides
            with contextlib.suppress(OSError):
                Path(error_file).write_text(f"{type(e).__name__}: {e}")
        finally:
            os._exit(code)  # no atexit handlers, no flushing of the parent's buffers twice
    deadline = time.monotonic() + timeout
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise RuntimeError(f"the compiling process did not finish in {timeout:.0f} s")
        time.sleep(0.05)
    status = done[1]
    if os.waitstatus_to_exitcode(status) != 0:
        error = Path(error_file)
        raise RuntimeError(error.read_text() if error.is_file() else f"the compiling process ended with {status}")


def _shared_constants(package: str, step: nn.Module) -> dict[str, torch.Tensor]:
    """The library's constants, each the step's own tensor where it is one (same shape and strides) and read
    from the package otherwise (the few the compiler made, e.g. a kernel's group size as a tensor). The step's
    tensors are given as aliases: the storage stays alive for the library even if a parameter's .data is
    later replaced (the library then keeps reading the old weights, as a compiled copy would)."""
    own = {**dict(step.named_parameters(remove_duplicate=False)), **dict(step.named_buffers(remove_duplicate=False))}
    with zipfile.ZipFile(package) as z:
        config_file = next(n for n in z.namelist() if n.endswith("/aotinductor/model/weights_config.json"))
        weights_dir = config_file.split("/aotinductor/")[0] + "/weights/"
        out = {}
        for name, (file, shape, stride, offset) in json.loads(z.read(config_file)).items():
            t = own.get(name)
            if t is not None and list(t.shape) == shape and list(t.stride()) == stride and t.storage_offset() == offset:
                out[name] = t.detach()
            else:
                out[name] = torch.load(io.BytesIO(z.read(weights_dir + file)), weights_only=True)
    return out


class _Library:
    """A loaded step, called with its inputs as one flat list (`boxed_run`: no call spec re-read, no pytree
    flattening per step). Holds the constants the library reads, so they live as long as it."""

    def __init__(self, loader, constants: dict[str, torch.Tensor]):
        self.loader, self.constants = loader, constants

    def __call__(self, *inputs):
        return self.loader.boxed_run(list(inputs))[0]


__all__ = ["SlotCache", "StaticDecoder"]
