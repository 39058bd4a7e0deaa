"""SAM speed, mmfm vs segment-anything, same weights, one run: image-embedding time, per-prompt
decode time (one point, 3 masks, through the predictor) and automatic mask generation for one image.

    python bench/sam_speed.py [--sizes vit_b,world-tiny] [--repeats 3] [--amg-points 16] [--json out.json]

vit_b is random-initialised at 1024 px (no download here); world-tiny at 64 px. ratio = reference
time / mmfm time (> 1: mmfm faster). 2 threads, fp32.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def best(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def reference_model(name: str):
    from functools import partial

    import segment_anything as sa
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    from mmfm.models.sam import sam_config

    if name in sa.sam_model_registry:
        return sa.sam_model_registry[name]().eval()
    c = sam_config(name)
    grid = c.image_size // c.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=c.encoder_depth,
            embed_dim=c.encoder_dim,
            img_size=c.image_size,
            mlp_ratio=c.mlp_ratio,
            num_heads=c.encoder_heads,
            patch_size=c.patch_size,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=c.global_attn_indexes,
            window_size=c.window_size,
            out_chans=c.prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=c.prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(c.image_size, c.image_size),
            mask_in_chans=c.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer_dim=c.prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=c.iou_head_hidden,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=c.prompt_dim, mlp_dim=c.decoder_mlp_dim, num_heads=c.decoder_heads
            ),
        ),
    ).eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="vit_b,world-tiny")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--amg-points", type=int, default=16, help="points per side for the AMG timing")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    import segment_anything as sa

    from mmfm.interop.sam import from_official
    from mmfm.models.sam import SAM, SamAutomaticMaskGenerator, SamPredictor, sam_config

    torch.manual_seed(0)
    rows = []
    for name in a.sizes.split(","):
        ref = reference_model(name)
        ours = SAM(sam_config(name)).eval()
        ours.load_state_dict(from_official(ref.state_dict()))
        side = ours.image_size
        img = (np.random.RandomState(0).rand(int(side * 0.75), side, 3) * 255).astype(np.uint8)
        x = torch.randn(1, 3, side, side)
        with torch.inference_mode():
            t_ref = best(lambda ref=ref: ref.image_encoder(x), a.repeats)  # noqa: B023 - called at once
            t_ours = best(lambda ours=ours: ours.image_encoder(x), a.repeats)  # noqa: B023 - called at once
        rp, op = sa.SamPredictor(ref), SamPredictor(ours)
        rp.set_image(img)
        op.set_image(img)
        pt, lab = np.array([[side // 3, side // 4]]), np.array([1])
        d_ref = best(lambda rp=rp: rp.predict(pt, lab), 5 * a.repeats)  # noqa: B023 - called at once
        d_ours = best(lambda op=op: op.predict(pt, lab), 5 * a.repeats)  # noqa: B023 - called at once
        kw = dict(points_per_side=a.amg_points, pred_iou_thresh=0.0, stability_score_thresh=0.0)
        g_ref = best(lambda ref=ref: sa.SamAutomaticMaskGenerator(ref, **kw).generate(img), max(1, a.repeats - 1))  # noqa: B023 - called at once
        g_ours = best(lambda ours=ours: SamAutomaticMaskGenerator(ours, **kw).generate(img), max(1, a.repeats - 1))  # noqa: B023 - called at once
        row = dict(size=name, image_px=side, embed_ref_s=t_ref, embed_ours_s=t_ours, embed_ratio=t_ref / t_ours,
                   decode_ref_ms=d_ref * 1e3, decode_ours_ms=d_ours * 1e3, decode_ratio=d_ref / d_ours,
                   amg_ref_s=g_ref, amg_ours_s=g_ours, amg_ratio=g_ref / g_ours, amg_points=a.amg_points ** 2)
        rows.append(row)
        print(f"{name:10s} embed {t_ours * 1e3:8.1f} vs {t_ref * 1e3:8.1f} ms ({t_ref / t_ours:4.2f}x)   "
              f"decode {d_ours * 1e3:6.2f} vs {d_ref * 1e3:6.2f} ms ({d_ref / d_ours:4.2f}x)   "
              f"AMG {a.amg_points}^2 pts {g_ours:6.2f} vs {g_ref:6.2f} s ({g_ref / g_ours:4.2f}x)", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "torch": torch.__version__, "threads": torch.get_num_threads()}, f, indent=2)


if __name__ == "__main__":
    main()
