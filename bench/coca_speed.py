"""CoCa captioning speed, mmfm vs open_clip's `CoCa.generate`, same weights, one run: captions per
second for a batch of images, greedy (beam 1) and beam 3.

    python bench/coca_speed.py [--configs world-tiny,coca_ViT-B-32] [--images 16] [--tokens 23] [--json F]

open_clip recomputes the whole prefix through both decoders at every step and re-projects the image
tokens for cross-attention; mmfm keeps a KV cache in the text tower and in the multimodal decoder, and
projects the image tokens' cross-attention keys/values once. Both run the same number of steps: open_clip's greedy
path (generation_type="top_k", top_k=1) stops at `seq_len`, mmfm at `max_new_tokens = seq_len - 1`,
and the end token is forbidden for the first 4 new tokens in both (open_clip's min_seq_len=5 counts the
start token). Weights are random (N(0, 0.02)), so rows rarely end early; the tokens of both are compared
and the agreement is printed.

open_clip 3.3's generate needs transformers < 4.56 (it imports BeamSearchScorer, which 4.56 moved and
5.x removed); the test extra installs transformers 5, so run this in an environment with
`pip install "transformers==4.55.4" "tokenizers<=0.23.0" "huggingface-hub<1.0"` (bench/RESULTS.md
says how the numbers were made). ratio = open_clip time / mmfm time (> 1: mmfm faster). fp32.
"""

from __future__ import annotations

import argparse
import json

import torch
from _timing import timed  # bench/ is on sys.path when a script runs

CONFIGS = {
    # the world-tiny CoCa's shape with a patch stem and embed_dim = text width (open_clip's constraint)
    "world-tiny": dict(embed_dim=96,
                       vision_cfg=dict(image_size=64, patch_size=8, width=96, layers=4, head_width=32,
                                       attentional_pool=True, attn_pooler_queries=33, attn_pooler_heads=4,
                                       output_tokens=True),
                       text_cfg=dict(context_length=24, vocab_size=400, width=96, heads=3, layers=2, embed_cls=True,
                                     output_tokens=True, pad_id=0),
                       multimodal_cfg=dict(context_length=24, vocab_size=400, width=96, heads=3, layers=2)),
    # open_clip's coca_ViT-B-32.json
    "coca_ViT-B-32": dict(embed_dim=512,
                          vision_cfg=dict(image_size=224, layers=12, width=768, patch_size=32, attentional_pool=True,
                                          attn_pooler_heads=8, output_tokens=True),
                          text_cfg=dict(context_length=76, vocab_size=49408, width=512, heads=8, layers=12,
                                        embed_cls=True, output_tokens=True),
                          multimodal_cfg=dict(context_length=76, vocab_size=49408, width=512, heads=8, layers=12)),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="world-tiny,coca_ViT-B-32")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=23, help="new tokens per caption (open_clip seq_len - 1)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from open_clip.coca_model import CoCa as RefCoCa

    from mmfm.interop.coca import config_from_open_clip, from_open_clip
    from mmfm.models.coca import CoCa
    from mmfm.nn.generate import GenerationConfig, generate

    rows = []
    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        torch.manual_seed(0)
        ref = RefCoCa(**cfg).eval()
        with torch.no_grad():  # open_clip's init leaves the caption logits ~1e-40 (all tied): use N(0, 0.02)
            for p in ref.parameters():
                if p.dim() >= 2:
                    p.normal_(0, 0.02)
        ours = CoCa(config_from_open_clip(cfg)).eval()
        ours.load_state_dict(from_open_clip(ref.state_dict()))
        t = ours.config.text
        sot, eot = t.vocab_size - 2, t.vocab_size - 1
        seq_len = args.tokens + 1
        size = ours.config.vision.image_size
        x = torch.randn(args.images, 3, size, size)

        for beams in (1, 3):
            def run_ref():
                kw = dict(generation_type="top_k", top_k=1) if beams == 1 else dict(
                    generation_type="beam_search", num_beams=beams, num_beam_groups=1)
                with torch.no_grad():
                    return ref.generate(x, seq_len=seq_len, sot_token_id=sot, eos_token_id=eot, min_seq_len=5, **kw)

            def run_ours():
                gc = GenerationConfig(
                    max_new_tokens=args.tokens,
                    num_beams=beams,
                    eos_token_ids=(eot,),
                    min_new_tokens=4,
                    pad_token_id=t.pad_token_id,
                )  # min_seq_len 5 counts the start token
                with torch.inference_mode():
                    _, toks = ours.encode_image_tokens(x)
                    start = torch.full((args.images, 1), sot, dtype=torch.long)
                    return generate(ours.captioner(), start, config=gc, forward_kwargs={"image_tokens": toks}).tokens

            t_ref, out_ref = timed(run_ref, args.repeats)
            t_ours, out_ours = timed(run_ours, args.repeats)
            # agreement on the tokens both chose freely (open_clip forces the end token at seq_len)
            same = sum(r[1 : 1 + len(o)][: args.tokens - 1].tolist() == o[: args.tokens - 1]
                       for r, o in zip(out_ref, out_ours))
            row = dict(config=name, beams=beams, images=args.images, tokens=args.tokens,
                       open_clip_caps_per_s=args.images / t_ref, mmfm_caps_per_s=args.images / t_ours,
                       ratio=t_ref / t_ours, same_tokens=f"{same}/{args.images}")
            rows.append(row)
            print(f"{name:<14} beam {beams}: open_clip {row['open_clip_caps_per_s']:8.2f} caps/s   "
                  f"mmfm {row['mmfm_caps_per_s']:8.2f} caps/s   ratio {row['ratio']:5.2f}x   "
                  f"same tokens {row['same_tokens']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
