"""Molmo2 training speed on the world-video mix: message trees packed into rows vs one padded row per
question-answer pair (each repeating its clip's frames), in one run, on the same batches.

The model is the world recipe's (`mmfm.train.molmo2`): SmolLM2-135M-Instruct frozen in bf16 with LoRA,
the world CLIP tower, Molmo2's adapter; a training step is forward + backward under bf16 autocast.

    supervised tokens/s = answer tokens of the batch / step time   (the work that teaches the model)
    sequence tokens     = what the LM actually runs over (padding included)

The two layouts give the same loss on the same batch (printed), so the speed-up is free.

    python bench/molmo2_packing.py [--steps 4] [--batch 4] [--max-qas 4] [--max-len 1024] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from mmfm.data.molmo2_world import WorldVideoData
from mmfm.train.molmo2 import PRESETS, build_world_molmo2, prepare


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-qas", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=1024, help="tokens per packed row")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    p = PRESETS["world-video"]
    model = build_world_molmo2(lm_dtype="bfloat16", **p["model"])
    prepare(model, p["lora"])
    data = {k: WorldVideoData(model, model.tokenizer, batch_size=args.batch, packed=k == "packed",
                              **{**p["data"], "max_qas": args.max_qas, "max_len": args.max_len})
            for k in ("packed", "padded")}
    stats = {k: {"seconds": 0.0, "supervised": 0, "sequence": 0, "losses": []} for k in data}
    for step in range(-1, args.steps):  # step -1 warms up
        for kind in ("packed", "padded") if step % 2 else ("padded", "packed"):  # alternate the order
            b = data[kind].batch(max(step, 0))
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(**b)
            out.loss.backward()
            dt = time.perf_counter() - t
            model.zero_grad(set_to_none=True)
            if step >= 0:
                s = stats[kind]
                s["seconds"] += dt
                s["supervised"] += out.num_tokens
                s["sequence"] += b["input_ids"].numel()
                s["losses"].append(round(out.loss.item(), 4))
    for s in stats.values():
        s["supervised_tokens_per_s"] = round(s["supervised"] / s["seconds"], 1)
        s["seconds_per_step"] = round(s["seconds"] / args.steps, 2)
    ratio = stats["packed"]["supervised_tokens_per_s"] / stats["padded"]["supervised_tokens_per_s"]
    report = {"host": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "args": vars(args), **stats, "packed_over_padded": round(ratio, 2)}
    for kind in ("packed", "padded"):
        s = stats[kind]
        print(f"{kind:7s} {s['seconds_per_step']:6.2f} s/step  {s['supervised_tokens_per_s']:7.1f} supervised tok/s  "
              f"{s['sequence'] / args.steps:7.0f} sequence tokens/step  losses {s['losses']}")
    print(f"packed / padded: {ratio:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
