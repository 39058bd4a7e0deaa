"""LLaVA answering speed, mmfm vs transformers' LlavaForConditionalGeneration, same weights, one run:
new tokens per second for a batch of 8 image questions (left-padded prompts of different lengths),
greedy, a fixed number of new tokens (end token off so both run every step).

    python bench/llava_speed.py [--configs tiny,world-tiny] [--batch 8] [--tokens 32]
                                [--dtypes float32,bfloat16] [--json F]
                                [--no-prepack]

The model is built in transformers from a random config, saved, and loaded by mmfm (the parity path),
so the weights are the same; the greedy tokens of both are compared and the agreement printed.
ratio = transformers time / mmfm time (> 1: mmfm faster), each the best of `--repeats` calls made
alternately (transformers, mmfm, transformers, ...) so that a slow spell of a shared host hits both;
"paired median" is the median over the repeats of each adjacent pair's ratio, the steadier of the two
where the host's speed drifts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

import torch
from _timing import timed_pair  # bench/ is on sys.path when a script runs

CONFIGS = {
    # a small LLaVA: CLIP ViT 224/16 (196 patches) and a 6-layer Llama with SmolLM2's width and vocabulary
    "tiny": dict(
        vision=dict(
            image_size=224,
            patch_size=16,
            hidden_size=384,
            num_hidden_layers=6,
            num_attention_heads=6,
            intermediate_size=1536,
        ),
        text=dict(
            vocab_size=49153,
            hidden_size=576,
            num_hidden_layers=6,
            num_attention_heads=9,
            num_key_value_heads=3,
            intermediate_size=1536,
            max_position_embeddings=1024,
        ),
    ),
    # the world-tiny shape: 64 px / patch 8 tower, SmolLM2-135M's full 30-layer LM
    "world-tiny": dict(
        vision=dict(
            image_size=64,
            patch_size=8,
            hidden_size=96,
            num_hidden_layers=4,
            num_attention_heads=3,
            intermediate_size=384,
        ),
        text=dict(
            vocab_size=49153,
            hidden_size=576,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            intermediate_size=1536,
            max_position_embeddings=1024,
        ),
    ),
}
IMG = 49152


def build(name: str):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    c = CONFIGS[name]
    torch.manual_seed(0)
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(**c["vision"]),
                      text_config=LlamaConfig(**c["text"], tie_word_embeddings=True, pad_token_id=0),
                      image_token_id=IMG, tie_word_embeddings=True)
    return LlavaForConditionalGeneration(cfg).eval()


def inputs(per_image: int, batch: int, image_size: int):
    g = torch.Generator().manual_seed(0)
    rows = []
    for b in range(batch):
        n = 12 + 3 * b  # different prompt lengths: left padding is exercised
        text = torch.randint(3, 40000, (n,), generator=g).tolist()
        rows.append(text[:3] + [IMG] * per_image + text[3:])
    width = max(len(r) for r in rows)
    ids = torch.zeros(batch, width, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask, torch.randn(batch, 3, image_size, image_size, generator=g)


def main() -> None:
    import mmfm
    from mmfm.nn.generate import GenerationConfig, generate

    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="tiny,world-tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--no-prepack", action="store_true", help="mmfm decodes on the plain weights (A/B of mmfm.nn.packed)"
    )
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    results = []
    for name in args.configs.split(","):
        hf = build(name)
        with tempfile.TemporaryDirectory() as d:
            hf.save_pretrained(d)
            ours = mmfm.load(d)
        ids, mask, pixels = inputs(ours.tokens_per_image, args.batch, CONFIGS[name]["vision"]["image_size"])
        for dtype in args.dtypes.split(","):
            dt = getattr(torch, dtype)
            hf.to(dt)
            ours.to(dt)
            px = pixels.to(dt)
            cfg = GenerationConfig(
                max_new_tokens=args.tokens, pad_token_id=0, prepack=False if args.no_prepack else None
            )

            def run_hf():
                return hf.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    pixel_values=px,
                    max_new_tokens=args.tokens,
                    min_new_tokens=args.tokens,
                    do_sample=False,
                    eos_token_id=None,
                    pad_token_id=0,
                )[:, ids.shape[1] :]

            def run_ours():
                return generate(ours.lm, inputs_embeds=ours.embed(ids, px), attention_mask=mask, config=cfg).tokens

            pairs, tok_hf, tok_ours = timed_pair(run_hf, run_ours, args.repeats)
            t_hf, t_ours = min(a for a, _ in pairs), min(b for _, b in pairs)
            paired = statistics.median(a / b for a, b in pairs)
            same = sum(a == b for a, b in zip(tok_hf.tolist(), tok_ours))
            new = args.batch * args.tokens
            row = {"config": name, "dtype": dtype, "batch": args.batch, "new_tokens": args.tokens,
                   "image_tokens": ours.tokens_per_image, "prompt_len": ids.shape[1],
                   "transformers_tok_s": round(new / t_hf, 1), "mmfm_tok_s": round(new / t_ours, 1),
                   "ratio": round(t_hf / t_ours, 2), "paired_ratio": round(paired, 2),
                   "identical_rows": f"{same}/{args.batch}"}
            results.append(row)
            print(
                f"{name:11s} {dtype:9s} transformers {row['transformers_tok_s']:8.1f} tok/s   mmfm "
                f"{row['mmfm_tok_s']:8.1f} tok/s   ratio {row['ratio']:.2f}x "
                 f"(paired median {row['paired_ratio']:.2f}x)   "
                f"identical greedy rows {row['identical_rows']}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
