"""`mmfm serve --compile` / `serve-llm --compile`: a language model's decoding through compilers, paid once
before the server listens.

One-answer steps (batch 1: every chat turn, every request with n = 1) run on fixed-size caches compiled
ahead of time by AOTInductor (mmfm.nn.static_decode: no guards, no Python between the kernels); prompts
and batched steps run through torch.compile with dynamic shapes (mmfm.compiled). A low-bit model's head
becomes int8 here: under a compiler a bf16 head is the graph's own matmul, not the oneDNN-prepacked one
that can make it the faster head eagerly. Where each pays, and the compile times: bench/RESULTS.md
(`python bench/lm_vs_llamacpp.py --compiled --static`)."""

from __future__ import annotations

import time

from mmfm.compiled import Compiled, compiled
from mmfm.lm.model import LanguageModel, lowbit_head
from mmfm.nn import lowbit
from mmfm.nn.static_decode import StaticDecoder


def compile_decoding(lm: LanguageModel, warm=(1, 2), max_len: int = 512) -> float:
    """`lm.model` decodes through the compilers from now on. Compiles the batch-1 steps for caches up to
    `max_len` positions (longer ones compile on first use, about half a minute each on 2 cores) and warms
    torch.compile with a short generation at each batch size in `warm`. Returns the seconds it took."""
    model = lm.model
    model = model.model if isinstance(model, StaticDecoder) else model
    model = model.fn if isinstance(model, Compiled) else model
    if any(isinstance(m, (lowbit.Int4Linear, lowbit.Int8Linear)) for m in model.transformer.modules()):
        lowbit_head(model, "int8")
    lm.model = StaticDecoder(model, "aot", other=compiled(model, dynamic=True, name="the language model"))
    t = time.perf_counter()
    lm.model.warm(1, max_len)
    for n in warm:
        lm.complete("Hello", n=n, max_new_tokens=4)
    return time.perf_counter() - t


__all__ = ["compile_decoding"]
