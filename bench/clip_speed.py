"""CLIP speed against the references, same weights, same process, ratios printed (ours / reference,
> 1 means mmfm is faster).

1. Image encoding vs transformers' CLIPVisionModel (+ projection): ViT-B/16 at 224 px and the
   world-tiny config, fp32 and bf16 autocast.
2. Training step (both towers forward, contrastive loss, backward, AdamW) vs open_clip's CLIP and
   ClipLoss at the world-tiny config, bf16 autocast.

    python bench/clip_speed.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def timeit(fn, warmup: int = 2, reps: int = 5) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def hf_and_ours(vision: dict, embed_dim: int):
    from transformers import CLIPConfig, CLIPModel

    from mmfm.interop.hf_clip import config_from_hf, state_dict_from_hf
    from mmfm.models.clip import CLIP
    from mmfm.models.clip import CLIPConfig as OurConfig

    text = dict(vocab_size=1000, hidden_size=64, intermediate_size=256, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=16, bos_token_id=998, eos_token_id=999, pad_token_id=0)
    hf_cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed_dim)
    torch.manual_seed(0)
    hf = CLIPModel(hf_cfg).eval()
    ours = CLIP(OurConfig.from_dict({k: v for k, v in config_from_hf(hf_cfg.to_dict()).items() if k != "model_type"}))
    ours.load_state_dict(state_dict_from_hf(hf.state_dict()))
    return hf, ours.eval()


def bench_encode(name: str, vision: dict, batch: int, embed_dim: int, reps: int) -> None:
    hf, ours = hf_and_ours(vision, embed_dim)
    size = vision["image_size"]
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        diff = (hf.get_image_features(pixel_values=x).pooler_output - ours.encode_image(x)).abs().max().item()
    for dtype in ("fp32", "bf16"):
        ctx = dict(device_type="cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")

        def run_hf(ctx=ctx):
            with torch.no_grad(), torch.autocast(**ctx):
                hf.visual_projection(hf.vision_model(pixel_values=x).pooler_output)

        def run_ours(ctx=ctx):
            with torch.no_grad(), torch.autocast(**ctx):
                ours.encode_image(x)

        t_hf, t_ours = timeit(run_hf, reps=reps), timeit(run_ours, reps=reps)
        print(f"encode_image {name:<18} {dtype}  batch {batch:>3}: transformers {batch / t_hf:8.1f} img/s   "
              f"mmfm {batch / t_ours:8.1f} img/s   ratio {t_hf / t_ours:5.2f}x   (max abs diff {diff:.1e})")


def bench_train_step(batch: int, reps: int) -> None:
    from open_clip.loss import ClipLoss
    from open_clip.model import CLIP as OpenCLIP

    from mmfm.interop.open_clip import config_to_open_clip, state_dict_to_open_clip
    from mmfm.models.clip import CLIP
    from mmfm.nn.losses import clip_loss
    from mmfm.train.clip import world_tiny_config

    cfg = world_tiny_config(stem="patch", pool="cls")  # the layout both libraries can run
    torch.manual_seed(0)
    ours = CLIP(cfg).train()
    ref = OpenCLIP(**config_to_open_clip(cfg)).train()
    ref.load_state_dict(state_dict_to_open_clip(ours.state_dict()))
    x = torch.randn(batch, 3, 64, 64)
    ids = torch.randint(0, cfg.text.vocab_size - 2, (batch, cfg.text.context_length))
    ids[:, 10] = cfg.text.eot_token_id
    opt_o = torch.optim.AdamW(ours.parameters(), 1e-4)
    opt_r = torch.optim.AdamW(ref.parameters(), 1e-4)
    ref_loss = ClipLoss()

    def step_ours():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            img = F.normalize(ours.encode_image(x), dim=-1)
            txt = F.normalize(ours.encode_text(ids), dim=-1)
            loss = clip_loss(img.float(), txt.float(), ours.scale())
        loss.backward()
        opt_o.step()
        opt_o.zero_grad(set_to_none=True)

    def step_ref():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            img = ref.encode_image(x, normalize=True)
            txt = ref.encode_text(ids, normalize=True)
            loss = ref_loss(img.float(), txt.float(), ref.logit_scale.exp())
        loss.backward()
        opt_r.step()
        opt_r.zero_grad(set_to_none=True)

    t_ref, t_ours = timeit(step_ref, reps=reps), timeit(step_ours, reps=reps)
    print(f"train step   world-tiny          bf16  batch {batch:>3}: open_clip    {batch / t_ref:8.1f} img/s   "
          f"mmfm {batch / t_ours:8.1f} img/s   ratio {t_ref / t_ours:5.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, smaller ViT-B/16 batch")
    a = ap.parse_args()
    reps = 2 if a.quick else 5
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    vitb16 = dict(image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12)
    tiny = dict(image_size=64, patch_size=8, hidden_size=96, intermediate_size=384, num_hidden_layers=4,
                num_attention_heads=3)
    bench_encode("ViT-B/16 224px", vitb16, 4 if a.quick else 8, 512, reps)
    bench_encode("world-tiny 64px", tiny, 256, 128, reps)
    bench_train_step(256, reps)


if __name__ == "__main__":
    main()
