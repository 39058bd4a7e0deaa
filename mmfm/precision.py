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


@dataclass
class Choice:
    precision: Precision
    ms: dict  # candidate name -> median ms of the timed step (empty when not measured)
    cached: bool = False
    requested: str = "auto"

    def describe(self, per: str = "step") -> str:
        if not self.ms:
            return f"precision {self.precision.label} (as asked)"
        timings = ", ".join(f"{PRECISIONS[n].label} {v:.0f} ms" for n, v in self.ms.items())
        return (f"precision {self.precision.label} ({'cached measurement' if self.cached else 'measured'} "
                f"on this host: {timings} per {per})")


def choose(choice: str, run, signature: str, rounds: int = 3, use_cache: bool = True) -> Choice:
    """Resolve `choice` ("auto", "fp32", "bf16") to a Precision. With more than one candidate, `run(p)`
    (one step in precision p, no update) is called once per candidate to warm up, then `rounds` times
    per candidate, alternating; the fastest median wins. `signature` names the step (model and batch
    shapes) in the cache key."""
    names = _CANDIDATES[check_choice(choice)]
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
        for _ in range(rounds):
            for n in names:
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
           "cache_file", "shapes_signature", "module_signature", "cpu_name"]
