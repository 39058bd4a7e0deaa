"""The world-tiny CLIP training step (forward + backward, batch 256, random pixels and tokens) in fp32
and under bf16 autocast, with PyTorch's default attention kernel choice and with one backend forced:
which precision is faster differs from host to host (issue 30), so measure on the host at hand.

    python bench/precision_step.py [--batch 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from mmfm.models.clip import CLIP
from mmfm.precision import cpu_name
from mmfm.train.clip import CLIPTrainModule, preset

CASES = [("fp32", False, None), ("bf16", True, None), ("fp32, math attention", False, SDPBackend.MATH),
         ("bf16, math attention", True, SDPBackend.MATH), ("bf16, flash attention", True, SDPBackend.FLASH_ATTENTION)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg, _, _ = preset("world-tiny")
    module = CLIPTrainModule(CLIP(cfg))
    batch = {"pixels": torch.randn(args.batch, 3, cfg.vision.image_size, cfg.vision.image_size),
             "input_ids": torch.randint(1, cfg.text.vocab_size, (args.batch, cfg.text.context_length))}

    def step(bf16: bool, backend) -> None:
        with sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss, _ = module(batch)
            loss.backward()
        module.zero_grad(set_to_none=True)

    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"best of {args.repeats}")
    print("| step | ms | vs fp32 |\n| --- | --- | --- |")
    base = None
    for name, bf16, backend in CASES:
        step(bf16, backend)  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            step(bf16, backend)
            best = min(best, time.perf_counter() - t0)
        base = base or best
        print(f"| {name} | {best * 1000:.0f} | {base / best:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
