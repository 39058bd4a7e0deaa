"""SAM checkpoints: the official release (a state-dict file, e.g. sam_vit_b_01ec64.pth, loaded with
weights_only=True; its config is read off the tensor shapes) and HF transformers SamModel folders.
mmfm keeps the official module names except the shared MLP (lin1/lin2 -> fc1/fc2) and the bare
patch-embedding conv."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from mmfm.checkpoint import load_folder_weights, load_state_dict, load_strict, read_json, save_safetensors
from mmfm.errors import CheckpointError
from mmfm.models.sam.config import SAMConfig
from mmfm.models.sam.model import SAM

# ------------------------------------------------------------------------------ official layout
_OFFICIAL = [(r"^image_encoder\.patch_embed\.proj\.", "image_encoder.patch_embed."),
             (r"\.mlp\.lin1\.", ".mlp.fc1."), (r"\.mlp\.lin2\.", ".mlp.fc2.")]


def from_official(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        for a, b in _OFFICIAL:
            k = re.sub(a, b, k)
        out[k] = v
    return out


def to_official(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        k = k.replace("image_encoder.patch_embed.", "image_encoder.patch_embed.proj.")
        k = k.replace(".mlp.fc1.", ".mlp.lin1.").replace(".mlp.fc2.", ".mlp.lin2.")
        out[k] = v.contiguous()
    return out


def config_from_official(sd: dict, decoder_heads: int = 8) -> SAMConfig:
    """The architecture read off the tensor shapes (the release ships no config). The decoder's head
    count is not visible in any shape: the released models use 8."""
    try:
        pe = sd["image_encoder.patch_embed.proj.weight"]
        dim, patch = pe.shape[0], pe.shape[-1]
        grid = sd["image_encoder.pos_embed"].shape[1]
        depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("image_encoder.blocks."))
        head_dim = sd["image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
        sizes = [sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0] for i in range(depth)]
        global_idx = tuple(i for i, s in enumerate(sizes) if s == 2 * grid - 1)
        local = [s for s in sizes if s != 2 * grid - 1]
        window = (local[0] + 1) // 2 if local else 14
        prompt_dim = sd["image_encoder.neck.0.weight"].shape[0]
        dec_depth = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("mask_decoder.transformer.layers."))
        return SAMConfig(
            image_size=grid * patch,
            patch_size=patch,
            encoder_dim=dim,
            encoder_depth=depth,
            encoder_heads=dim // head_dim,
            mlp_ratio=sd["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / dim,
            window_size=window,
            global_attn_indexes=global_idx,
            prompt_dim=prompt_dim,
            mask_in_chans=sd["prompt_encoder.mask_downscaling.3.weight"].shape[0],
            decoder_depth=dec_depth,
            decoder_heads=decoder_heads,
            decoder_mlp_dim=sd["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
            num_multimask_outputs=sd["mask_decoder.mask_tokens.weight"].shape[0] - 1,
            iou_head_hidden=sd["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
            iou_head_depth=len(
                [k for k in sd if k.startswith("mask_decoder.iou_prediction_head.layers.") and k.endswith(".weight")]
            ),
        )
    except (KeyError, IndexError, ValueError) as e:
        raise CheckpointError(f"not an official SAM state dict (missing or odd {e}); expected image_encoder.*, "
                              "prompt_encoder.*, mask_decoder.* keys") from e


def load_official(path: Path, config: SAMConfig | None = None, sd: dict | None = None):
    sd = load_state_dict(path) if sd is None else sd
    if config is None and (path.parent / "sam_config.json").is_file():
        config = SAMConfig.from_dict(read_json(path.parent / "sam_config.json"))
    config = config or config_from_official(sd)
    model = SAM(config)
    load_strict(model, from_official(sd), str(path))
    return model.eval()


# ------------------------------------------------------------------------------ HF transformers
def _hf_rules(c: SAMConfig) -> list[tuple[str, str]]:
    """(mmfm regex, HF replacement) pairs."""
    n_mlp = c.iou_head_depth
    rules = [
        (r"^image_encoder\.patch_embed\.", "vision_encoder.patch_embed.projection."),
        (r"^image_encoder\.pos_embed$", "vision_encoder.pos_embed"),
        (r"^image_encoder\.blocks\.(\d+)\.norm(\d)\.", r"vision_encoder.layers.\1.layer_norm\2."),
        (r"^image_encoder\.blocks\.(\d+)\.mlp\.fc(\d)\.", r"vision_encoder.layers.\1.mlp.lin\2."),
        (r"^image_encoder\.blocks\.(\d+)\.attn\.", r"vision_encoder.layers.\1.attn."),
        (r"^image_encoder\.neck\.0\.", "vision_encoder.neck.conv1."),
        (r"^image_encoder\.neck\.1\.", "vision_encoder.neck.layer_norm1."),
        (r"^image_encoder\.neck\.2\.", "vision_encoder.neck.conv2."),
        (r"^image_encoder\.neck\.3\.", "vision_encoder.neck.layer_norm2."),
        (
            r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
            "shared_image_embedding.positional_embedding",
        ),
        (r"^prompt_encoder\.point_embeddings\.", "prompt_encoder.point_embed."),
        (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
        (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
        (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
        (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
        (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
        (r"^mask_decoder\.transformer\.layers\.(\d+)\.norm(\d)\.", r"mask_decoder.transformer.layers.\1.layer_norm\2."),
        (r"^mask_decoder\.transformer\.layers\.(\d+)\.mlp\.fc(\d)\.", r"mask_decoder.transformer.layers.\1.mlp.lin\2."),
        (r"^mask_decoder\.transformer\.norm_final_attn\.", "mask_decoder.transformer.layer_norm_final_attn."),
        (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
        (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
        (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
    ]
    for head in (r"output_hypernetworks_mlps\.(\d+)", "iou_prediction_head"):
        depth = 3 if head.startswith("output") else n_mlp
        grp = r"\1." if head.startswith("output") else ""
        hf_head = "output_hypernetworks_mlps." + grp if head.startswith("output") else "iou_prediction_head."
        rules.append((rf"^mask_decoder\.{head}\.layers\.0\.", f"mask_decoder.{hf_head}proj_in."))
        rules.append((rf"^mask_decoder\.{head}\.layers\.{depth - 1}\.", f"mask_decoder.{hf_head}proj_out."))
        for i in range(1, depth - 1):
            rules.append((rf"^mask_decoder\.{head}\.layers\.{i}\.", f"mask_decoder.{hf_head}layers.{i - 1}."))
    return rules


def _hf_key(key: str, rules) -> str:
    for a, b in rules:
        new = re.sub(a, b, key)
        if new != key:
            return new
    return key


def to_hf_state_dict(sd: dict, c: SAMConfig) -> dict:
    rules = _hf_rules(c)
    out = {_hf_key(k, rules): v.contiguous() for k, v in sd.items()}
    # HF keeps the Fourier matrix twice (the model's and the prompt encoder's copy of it)
    out["prompt_encoder.shared_embedding.positional_embedding"] = out[
        "shared_image_embedding.positional_embedding"
    ].clone()
    return out


def from_hf_state_dict(sd: dict, c: SAMConfig) -> dict:
    with torch.device("meta"):
        own = SAM(c).state_dict()
    rules = _hf_rules(c)
    inverse = {_hf_key(k, rules): k for k in own}
    out = {}
    for k, v in sd.items():
        if k == "prompt_encoder.shared_embedding.positional_embedding":
            continue
        if k not in inverse:
            raise CheckpointError(f"HF SamModel key {k!r} has no place in mmfm's SAM")
        out[inverse[k]] = v
    return out


def config_from_hf(cfg: dict) -> SAMConfig:
    v, p, m = cfg["vision_config"], cfg["prompt_encoder_config"], cfg["mask_decoder_config"]
    if v.get("hidden_act", "gelu") != "gelu" or m.get("hidden_act", "relu") != "relu":
        raise CheckpointError("HF SAM config with non-default activations is not supported")
    if v.get("mlp_dim") is not None:
        mlp_ratio = v["mlp_dim"] / v["hidden_size"]
    else:
        mlp_ratio = v.get("mlp_ratio", 4.0)
    return SAMConfig(
        image_size=v.get("image_size", 1024), patch_size=v.get("patch_size", 16), encoder_dim=v["hidden_size"],
        encoder_depth=v["num_hidden_layers"], encoder_heads=v["num_attention_heads"], mlp_ratio=mlp_ratio,
        window_size=v.get("window_size", 14), global_attn_indexes=tuple(v.get("global_attn_indexes", (2, 5, 8, 11))),
        use_rel_pos=v.get("use_rel_pos", True), use_abs_pos=v.get("use_abs_pos", True),
        prompt_dim=v.get("output_channels", 256), mask_in_chans=p.get("mask_input_channels", 16),
        decoder_depth=m.get("num_hidden_layers", 2), decoder_heads=m.get("num_attention_heads", 8),
        decoder_mlp_dim=m.get("mlp_dim", 2048), attention_downsample_rate=m.get("attention_downsample_rate", 2),
        num_multimask_outputs=m.get("num_multimask_outputs", 3), iou_head_depth=m.get("iou_head_depth", 3),
        iou_head_hidden=m.get("iou_head_hidden_dim", 256),
    )


def config_to_hf(c: SAMConfig) -> dict:
    return {
        "model_type": "sam",
        "architectures": ["SamModel"],
        "vision_config": {
            "hidden_size": c.encoder_dim,
            "output_channels": c.prompt_dim,
            "num_hidden_layers": c.encoder_depth,
            "num_attention_heads": c.encoder_heads,
            "image_size": c.image_size,
            "patch_size": c.patch_size,
            "mlp_dim": int(c.encoder_dim * c.mlp_ratio),
            "window_size": c.window_size,
            "global_attn_indexes": list(c.global_attn_indexes),
            "use_rel_pos": c.use_rel_pos,
            "use_abs_pos": c.use_abs_pos,
            "num_pos_feats": c.prompt_dim // 2,
            "layer_norm_eps": 1e-6,
        },
        "prompt_encoder_config": {
            "hidden_size": c.prompt_dim,
            "image_size": c.image_size,
            "patch_size": c.patch_size,
            "mask_input_channels": c.mask_in_chans,
        },
        "mask_decoder_config": {
            "hidden_size": c.prompt_dim,
            "num_hidden_layers": c.decoder_depth,
            "num_attention_heads": c.decoder_heads,
            "mlp_dim": c.decoder_mlp_dim,
            "attention_downsample_rate": c.attention_downsample_rate,
            "num_multimask_outputs": c.num_multimask_outputs,
            "iou_head_depth": c.iou_head_depth,
            "iou_head_hidden_dim": c.iou_head_hidden,
        },
    }


def save_official(model, folder: Path) -> Path:
    """segment-anything's layout: sam.pth (its state-dict keys) + sam_config.json (what the file lacks)."""
    folder = Path(folder)
    torch.save(to_official(model.state_dict()), folder / "sam.pth")
    (folder / "sam_config.json").write_text(json.dumps(model.config.to_dict(), indent=2))
    return folder


def load_hf_sam(folder: Path):
    cfg = read_json(folder / "config.json")
    if cfg.get("model_type") != "sam":
        raise CheckpointError(f"{folder}: model_type {cfg.get('model_type')!r}, expected 'sam'")
    config = config_from_hf(cfg)
    sd = load_folder_weights(folder)
    model = SAM(config)
    load_strict(model, from_hf_state_dict(sd, config), str(folder))
    return model.eval()


def to_hf_folder(model, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_to_hf(model.config), indent=2))
    save_safetensors(to_hf_state_dict(model.state_dict(), model.config), folder / "model.safetensors",
                     metadata={"format": "pt"})
