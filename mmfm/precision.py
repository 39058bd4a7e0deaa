"""Which precision a step runs in on this host: fp32, or bf16 autocast (with PyTorch's own attention
kernel or with the plain "math" one), chosen by measuring the real step rather than assumed.

Why measure: the fast path differs between CPUs of the same family. On one host bf16 autocast made
the world CLIP's training step 2.2x slower than fp32 (its CPU flash-attention backward in bf16),
on another it is 1.3x faster, and 1.7x with math attention for its short sequences
(bench/precision_step.py, bench/RESULTS.md). So `--precision auto` times the step in each candidate
on its first real batch, alternating candidates to share the host's noise, takes the fastest median,
and caches the choice per host + torch + step signature (one measurement per machine and recipe).

A step is timed without updating anything: the caller's `run(precision)` does forward + backward and
drops the gradients; random states are restored afterwards, so a run that chose bf16 is the same run
as one told `--precision bf16`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmfm.errors import ConfigError

CHOICES = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Precision:
    name: str  # "fp32", "bf16" or "bf16-math"
    autocast: bool  # bf16 autocast on the CPU
    math_attention: bool = False  # F.scaled_dot_product_attention restricted to its math backend

    @property
    def label(self) -> str:
        return {"fp32": "fp32", "bf16": "bf16 autocast", "bf16-math": "bf16 autocast, math attention"}[self.name]

    def context(self):
        """The context a step runs in: autocast and the attention backend."""
        stack = contextlib.ExitStack()
        if self.math_attention:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast))
        return stack


PRECISIONS = {p.name: p for p in (Precision("fp32", False), Precision("bf16", True),
                                  Precision("bf16-math", True, True))}
# What each choice may pick between: bf16 is the arithmetic precision, its attention kernel measured;
# "bf16-default" and "bf16-math" pin the kernel (for experiments and comparisons).
_CANDIDATES = {"auto": ("fp32", "bf16", "bf16-math"), "fp32": ("fp32",), "bf16": ("bf16", "bf16-math"),
               "bf16-default": ("bf16",), "bf16-math": ("bf16-math",)}


def check_choice(choice: str) -> str:
    if choice not in _CANDIDATES:
        raise ConfigError(f"--precision {choice!r}: use one of {', '.join(CHOICES)}")
    return choice


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags"))
    except (OSError, StopIteration):
        return ""
    return ",".join(sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma"))))


def host_key() -> str:
    """What makes one host's measurement valid for another run: CPU model and vector extensions, the
    thread count and the torch build."""
    return f"{cpu_name()}|{_cpu_flags()}|{torch.get_num_threads()} threads|torch {torch.__version__}"


def cache_file() -> Path:
    root = os.environ.get("MMFM_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "mmfm")
    return Path(root) / "precision.json"


def _read_cache() -> dict:
    try:
        data = json.loads(cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, record: dict) -> None:
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache()
        data[key] = record
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError:  # a read-only home: the choice is measured again next time, nothing else changes
        pass


def _described(head: str, reason: str, ms: dict, cached: bool, timings: str) -> str:
    """The one line a choice prints: why nothing was measured, "as asked", or the timings it rests on."""
    if reason:
        return f"{head} ({reason})"
    if not ms:
        return f"{head} (as asked)"
    return f"{head} ({'cached measurement' if cached else 'measured'} on this host: {timings})"


NOT_NATIVE = "not measured: this CPU has no native bf16 (AVX2 only), where PyTorch emulates it 5-10x slower"


def native_bf16() -> bool:
    """Whether oneDNN computes bf16 on this CPU (AVX-512 BW/VL/DQ, AVX-512 bf16 or AMX). Where it does not
    (AVX2-only CPUs), bf16 matmuls are emulated: measured 2026-12-01 on such a host, a bf16 Linear took
    4-12x an fp32 one and a SimCLR step in bf16 autocast 10x (bench/RESULTS.md), so `auto` does not
    spend a measurement (a dozen slow steps) on bf16 there."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without the check: measure, as before
        return True


@dataclass
class Choice:
    precision: Precision
    ms: dict  # candidate name -> median ms of the timed step (empty when not measured)
    cached: bool = False
    requested: str = "auto"
    reason: str = ""  # why nothing was measured, when auto had one candidate left

    def describe(self, per: str = "step") -> str:
        timings = ", ".join(f"{PRECISIONS[n].label} {v:.0f} ms" for n, v in self.ms.items())
        return _described(f"precision {self.precision.label}", self.reason, self.ms, self.cached,
                          f"{timings} per {per}")


def choose(choice: str, run, signature: str, rounds: int = 3, use_cache: bool = True) -> Choice:
    """Resolve `choice` ("auto", "fp32", "bf16") to a Precision. With more than one candidate, `run(p)`
    (one step in precision p, no update) is called once per candidate to warm up, then `rounds` times
    per candidate, alternating; the fastest median wins. `signature` names the step (model and batch
    shapes) in the cache key."""
    names = _CANDIDATES[check_choice(choice)]
    if choice == "auto" and not native_bf16():
        return Choice(PRECISIONS["fp32"], {}, requested=choice, reason=NOT_NATIVE)
    if len(names) == 1:
        return Choice(PRECISIONS[names[0]], {}, requested=choice)
    key = hashlib.sha256(f"{host_key()}|{signature}|{','.join(names)}".encode()).hexdigest()[:24]
    if use_cache:
        hit = _read_cache().get(key)
        if isinstance(hit, dict) and hit.get("precision") in names:
            return Choice(PRECISIONS[hit["precision"]], dict(hit.get("ms", {})), cached=True, requested=choice)
    states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    times: dict[str, list[float]] = {n: [] for n in names}
    try:
        for n in names:  # warm-up: first calls allocate, pack weights, pick kernels
            run(PRECISIONS[n])
        for r in range(rounds):
            for n in names:
                if r and times[n][0] > 2 * min(v[0] for v in times.values()):
                    continue  # twice the fastest in the first round: more rounds would not change the choice
                t0 = time.perf_counter()
                run(PRECISIONS[n])
                times[n].append((time.perf_counter() - t0) * 1000)
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
    ms = {n: statistics.median(v) for n, v in times.items()}
    best = min(ms, key=ms.get)
    if use_cache:
        _write_cache(key, {"precision": best, "ms": ms, "host": host_key(), "signature": signature,
                           "date": time.strftime("%Y-%m-%d")})
    return Choice(PRECISIONS[best], ms, requested=choice)


def choose_inference(choice: str, encode, example: torch.Tensor, signature: str) -> Choice:
    """Inference: `encode(example)` under inference_mode timed in each candidate of `choice` (cached as
    for training steps, under its own key)."""
    def run(p: Precision) -> None:
        with torch.inference_mode(), p.context():
            encode(example)

    return choose(choice, run, f"inference|{signature}|{shapes_signature(example)}")


# A language model's weights are cast, not autocast: the dtype it is loaded in is the dtype every token's
# matmuls run in. SmolLM2-135M's block Linear (576 -> 1536) stands for them in the measurement.
LM_FEATURES = (576, 1536)


@dataclass(frozen=True)
class WeightsChoice:
    dtype: str  # "float32" or "bfloat16" (an LM's weights); "bfloat16" or "int8" (an int4 LM's head)
    ms: dict  # dtype -> median ms of the timed Linears (empty when not measured)
    cached: bool = False
    reason: str = ""
    what: str = "dtype"
    timed: str = "a decode and a prefill Linear take"

    def describe(self) -> str:
        timings = ", ".join(f"{k} {v:.2f} ms" for k, v in self.ms.items())
        return _described(f"{self.what} {self.dtype}", self.reason, self.ms, self.cached, f"{self.timed} {timings}")


def lm_weights_dtype(choice: str = "auto", features: tuple[int, int] = LM_FEATURES, use_cache: bool = True,
                     rounds: int = 5) -> WeightsChoice:
    """The dtype a language model's weights should be loaded in on this host. "float32" / "bfloat16" as
    asked; "auto" times the LM's dominant kernel, a block Linear at decode (1 row) and prefill (64 rows)
    shapes, in both dtypes, alternating, and takes the faster (cached per host). Why: bf16 halves the
    bytes a decode step reads and is the fast path where the CPU computes bf16 (AVX-512 bf16, AMX), but
    where it does not (AVX2 only) PyTorch emulates it and a bf16 Linear is ~5-10x slower than fp32."""
    aliases = {"fp32": "float32", "bf16": "bfloat16"}
    choice = aliases.get(choice, choice)
    if choice in ("float32", "bfloat16"):
        return WeightsChoice(choice, {})
    if choice != "auto":
        raise ConfigError(f"dtype {choice!r}: use auto, float32 or bfloat16")
    if not native_bf16():
        return WeightsChoice("float32", {}, reason=NOT_NATIVE)
    k, n = features
    key = hashlib.sha256(f"{host_key()}|lm-weights|{k}x{n}".encode()).hexdigest()[:24]
    if use_cache:
        hit = _read_cache().get(key)
        if isinstance(hit, dict) and hit.get("dtype") in ("float32", "bfloat16"):
            return WeightsChoice(hit["dtype"], dict(hit.get("ms", {})), cached=True)
    gen = torch.Generator().manual_seed(0)
    w32, x32 = torch.randn(n, k, generator=gen) / k**0.5, torch.randn(64, k, generator=gen)

    def linears(w: torch.Tensor, x: torch.Tensor):
        def run() -> None:
            for _ in range(8):
                torch.nn.functional.linear(x[:1], w)
            torch.nn.functional.linear(x, w)
        return run

    ms = _alternating_ms({"float32": linears(w32, x32), "bfloat16": linears(w32.bfloat16(), x32.bfloat16())}, rounds)
    best = "bfloat16" if ms["bfloat16"] < ms["float32"] else "float32"
    if use_cache:
        _write_cache(key, {"dtype": best, "ms": ms, "host": host_key(), "signature": f"lm-weights {k}x{n}",
                           "date": time.strftime("%Y-%m-%d")})
    return WeightsChoice(best, ms)


def _alternating_ms(runs: dict, rounds: int) -> dict[str, float]:
    """Median ms of each `run()` over `rounds` rounds, candidates alternating within a round (so they share
    the host's noise); round 0 warms up and is not counted."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for r in range(rounds + 1):
            for name, run in runs.items():
                t0 = time.perf_counter()
                run()
                if r:
                    times[name].append((time.perf_counter() - t0) * 1000)
    return {name: round(statistics.median(v), 3) for name, v in times.items()}


# SmolLM2-135M's tied embedding as the LM head: (vocab, dim)
LM_HEAD = (49152, 576)


def lm_head_dtype(choice: str = "auto", shape: tuple[int, int] = LM_HEAD, use_cache: bool = True,
                  rounds: int = 5) -> WeightsChoice:
    """The LM head's weights beside int4 blocks: "bfloat16" or "int8" (one scale per row,
    mmfm.nn.lowbit.Int8Linear) as asked; "auto" times the head at a decode step of one sequence both ways,
    alternating, and takes the faster (cached per host). Why measure: a decode step reads the whole head,
    the model's largest matrix, and int8 halves its bytes, but PyTorch's int8 kernel was slower than the
    bf16 head on one host and faster on another (bench/RESULTS.md). One sequence decides, the case a
    chat waits on (with 8 rows the int8 kernel can be the slower one). The bf16 side is timed on oneDNN's
    packed layout where this build has it (what eager decoding runs) and plain otherwise."""
    said = {"what": "LM head", "timed": "four one-row decode steps through the head take"}
    if choice in ("bfloat16", "int8"):
        return WeightsChoice(choice, {}, **said)
    if choice != "auto":
        raise ConfigError(f"LM head {choice!r}: use auto, bfloat16 or int8")
    if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        return WeightsChoice("bfloat16", {}, reason="not measured: this PyTorch build has no CPU int8 kernel", **said)
    n, k = shape
    key = hashlib.sha256(f"{host_key()}|lm-head|{n}x{k}".encode()).hexdigest()[:24]
    if use_cache:
        hit = _read_cache().get(key)
        if isinstance(hit, dict) and hit.get("dtype") in ("bfloat16", "int8"):
            return WeightsChoice(hit["dtype"], dict(hit.get("ms", {})), cached=True, **said)
    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(n, k, generator=gen) / k**0.5).bfloat16()
    x = torch.randn(1, k, generator=gen).bfloat16()
    scales = (w.float().abs().amax(1) / 127).clamp_min(1e-12)
    codes = (w.float() / scales[:, None]).round().to(torch.int8)
    scales = scales.bfloat16()
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 1)

        def bf16_head() -> torch.Tensor:
            return torch.ops.mkldnn._linear_pointwise.default(x, packed, None, "none", [], "")
        bf16_head()
    except (AttributeError, RuntimeError):  # no oneDNN bf16 on this CPU / build: eager decoding runs it plain
        def bf16_head() -> torch.Tensor:
            return torch.nn.functional.linear(x, w)

    def four(fn):
        def run() -> None:
            for _ in range(4):
                fn()
        return run

    ms = _alternating_ms({"bfloat16": four(bf16_head),
                          "int8": four(lambda: torch.ops.aten._weight_int8pack_mm(x, codes, scales))}, rounds)
    best = "int8" if ms["int8"] < ms["bfloat16"] else "bfloat16"
    if use_cache:
        _write_cache(key, {"dtype": best, "ms": ms, "host": host_key(), "signature": f"lm-head {n}x{k}",
                           "date": time.strftime("%Y-%m-%d")})
    return WeightsChoice(best, ms, **said)


def shapes_signature(obj) -> str:
    """The shapes and dtypes of a batch (tensors inside dicts, lists, tuples), for cache keys."""
    if isinstance(obj, torch.Tensor):
        return f"{tuple(obj.shape)}{str(obj.dtype)[6:]}"
    if isinstance(obj, dict):
        return "{" + ",".join(f"{k}:{shapes_signature(v)}" for k, v in sorted(obj.items(), key=lambda kv: str(kv[0])))\
            + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(shapes_signature(v) for v in obj[:8]) + (f"+{len(obj) - 8}" if len(obj) > 8 else "") + "]"
    return type(obj).__name__


def module_signature(module: torch.nn.Module) -> str:
    """A model's class, parameter count and trainable count: enough to tell recipes apart."""
    n = sum(p.numel() for p in module.parameters())
    t = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return f"{type(module).__name__}:{n}:{t}"


__all__ = ["Precision", "PRECISIONS", "CHOICES", "Choice", "choose", "choose_inference", "check_choice", "host_key",
           "WeightsChoice", "lm_weights_dtype", "lm_head_dtype", "native_bf16",
           "cache_file", "shapes_signature", "module_signature", "cpu_name"]
