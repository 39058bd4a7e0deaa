"""CoCa (Yu et al., 2022): a contrastive captioner. CLIP's two towers, plus a multimodal decoder that
reads the image tokens by cross-attention and predicts the caption.

    image (B, 3, H, W) -> ViT tokens -> attentional pooling -> (pooled -> proj: contrastive embedding,
                                                                other queries: image tokens for the decoder)
    ids (B, T) + [CLS] -> causal text tower -> CLS -> ln -> proj: contrastive embedding
                                            -> token states -> decoder (self-attn, cross-attn to the image
                                               tokens, each with its own MLP) -> vocabulary logits

`pooler="single"` is open_clip's layout (one pooler whose first query is the contrastive one, loads
its coca_* checkpoints); `pooler="separate"` is the paper's (one query for the contrastive embedding,
`queries` for the decoder). Loss: contrastive x 1.0 + captioning cross-entropy x 2.0 (configurable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmfm.checkpoint import load_state_dict, load_strict, read_json, resolve, save_model_folder
from mmfm.config import Config
from mmfm.errors import CheckpointError, ConfigError
from mmfm.models.clip import CLIPTextConfig, CLIPVisionConfig, attach_tokenizer
from mmfm.nn import (
    AttentionalPooler,
    CrossAttentionBlock,
    KVCache,
    StaticKV,
    TextTransformer,
    TransformerBlock,
    VisionTransformer,
)
from mmfm.nn.attention import causal_mask, combine_masks
from mmfm.nn.decoder import DecoderOutput
from mmfm.nn.generate import generate, sampling_config
from mmfm.nn.losses import coca_loss
from mmfm.vision.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, CLIPPreprocess


@dataclass
class CoCaDecoderConfig(Config):
    POSITIVE: ClassVar[tuple[str, ...]] = ("layers", "heads", "mlp_dim")

    layers: int = 12
    heads: int = 8
    mlp_dim: int | None = None  # None: 4 x width (the text width)


@dataclass
class CoCaConfig(Config):
    POSITIVE: ClassVar[tuple[str, ...]] = ("embed_dim", "pooler_queries", "pooler_heads", "norm_eps")

    embed_dim: int = 512
    vision: CLIPVisionConfig = field(default_factory=CLIPVisionConfig)
    text: CLIPTextConfig = field(default_factory=lambda: CLIPTextConfig(context_length=76))
    decoder: CoCaDecoderConfig = field(default_factory=CoCaDecoderConfig)
    pooler: Literal["single", "separate"] = "single"  # open_clip's | the paper's
    pooler_queries: int = 256
    pooler_heads: int = 8
    legacy_cls_mask: bool = True  # open_clip's released weights shift the text padding mask by one
    norm_eps: float = 1e-5
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100.0)
    clip_loss_weight: float = 1.0
    caption_loss_weight: float = 2.0
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    tokenizer: Literal["clip", "world"] = "clip"

    def validate(self) -> None:
        if self.embed_dim % self.pooler_heads or self.text.width % self.decoder.heads:
            raise ConfigError("embed_dim must be divisible by pooler_heads and the text width by decoder.heads")
        if self.vision.image_size % self.vision.patch_size or self.vision.width % self.vision.heads:
            raise ConfigError("vision: image_size must be a multiple of patch_size and width of heads")


@dataclass
class CoCaOutput:
    image_features: torch.Tensor  # (B, D), L2-normalised
    text_features: torch.Tensor  # (B, D), L2-normalised
    logits: torch.Tensor  # (B, T - 1, vocab): caption logits, teacher-forced
    labels: torch.Tensor  # (B, T - 1): the next tokens
    logit_scale: torch.Tensor


class CoCa(nn.Module):
    def __init__(self, config: CoCaConfig | None = None):
        super().__init__()
        self.config = c = config or CoCaConfig()
        v, t, d = c.vision, c.text, c.decoder
        self.visual = VisionTransformer(
            image_size=v.image_size,
            patch_size=v.patch_size,
            width=v.width,
            layers=v.layers,
            heads=v.heads,
            mlp_dim=v.mlp_dim,
            act=v.act,
            output_dim=None,
            pool="tokens",
            norm_eps=c.norm_eps,
            stem=v.stem,
        )
        self.attn_pool = AttentionalPooler(c.embed_dim, v.width, c.pooler_heads, c.pooler_queries)
        self.attn_pool_contrastive = (AttentionalPooler(c.embed_dim, v.width, c.pooler_heads, 1)
                                      if c.pooler == "separate" else None)
        self.ln_post = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.proj = nn.Linear(c.embed_dim, c.embed_dim, bias=False)
        self.text = TextTransformer(
            vocab_size=t.vocab_size,
            context_length=t.context_length,
            width=t.width,
            layers=t.layers,
            heads=t.heads,
            mlp_dim=t.mlp_dim,
            act=t.act,
            output_dim=c.embed_dim,
            eot_token_id=t.eot_token_id,
            norm_eps=c.norm_eps,
            embed_cls=True,
            pad_token_id=t.pad_token_id,
            legacy_cls_mask=c.legacy_cls_mask,
        )
        hidden = d.mlp_dim or 4 * t.width
        self.decoder_blocks = nn.ModuleList(
            TransformerBlock(t.width, d.heads, hidden=hidden, act=t.act, norm_eps=c.norm_eps) for _ in range(d.layers))
        self.decoder_cross = nn.ModuleList(
            CrossAttentionBlock(
                t.width, d.heads, context_dim=c.embed_dim, hidden=hidden, act=t.act, norm_eps=c.norm_eps
            )
            for _ in range(d.layers)
        )
        self.decoder_norm = nn.LayerNorm(t.width, eps=c.norm_eps)
        self.lm_head = nn.Linear(t.width, t.vocab_size, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(c.init_logit_scale)))
        self.tokenizer = None

    @property
    def preprocess(self):
        """image (path, PIL, array) -> (3, S, S) normalised: CLIP's resize + center crop."""
        c = self.config
        return CLIPPreprocess(c.vision.image_size, c.image_mean, c.image_std)

    # ------------------------------------------------------------------------------ towers
    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=self.config.max_logit_scale).exp()

    def encode_image_tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (contrastive embedding (B, D) before normalisation, image tokens for the decoder (B, Q, D))."""
        x = self.visual(pixels).last_hidden_state
        if self.attn_pool_contrastive is None:  # open_clip: the first query is the contrastive one
            x = self.ln_post(self.attn_pool(x))
            pooled, tokens = x[:, 0], x[:, 1:]
        else:
            pooled = self.ln_post(self.attn_pool_contrastive(x)[:, 0])
            tokens = self.ln_post(self.attn_pool(x))
        return self.proj(pooled), tokens

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.encode_image_tokens(pixels)[0]
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, input_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.text(input_ids).pooled
        return F.normalize(x, dim=-1) if normalize else x

    # ------------------------------------------------------------------------------ decoder
    def decode(self, token_states: torch.Tensor, image_tokens: torch.Tensor | None, caches: list[KVCache] | None = None,
               mask: torch.Tensor | None = None, cross_caches: list[StaticKV] | None = None) -> torch.Tensor:
        """Text-tower token states (B, T, W) + image tokens (B, Q, D) -> logits (B, T, vocab).
        caches: self-attention KV caches per layer; cross_caches: the image tokens' keys/values per
        layer, projected on the first call and reused after (then image_tokens may be None)."""
        x = token_states
        causal = caches is None or x.shape[1] > 1
        for i, (blk, cross) in enumerate(zip(self.decoder_blocks, self.decoder_cross)):
            cache = caches[i] if caches is not None else None
            x = blk(x, mask=mask, is_causal=causal and mask is None, cache=cache)
            x = cross(x, image_tokens, cache=cross_caches[i] if cross_caches is not None else None)
        return self.lm_head(self.decoder_norm(x))

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor) -> CoCaOutput:
        latent, tokens = self.encode_image_tokens(pixels)
        text = self.text(input_ids)
        logits = self.decode(text.last_hidden_state[:, :-1], tokens)
        return CoCaOutput(F.normalize(latent, dim=-1), F.normalize(text.pooled, dim=-1), logits, input_ids[:, 1:],
                          self.scale())

    def loss(self, out: CoCaOutput) -> tuple[torch.Tensor, dict]:
        c = self.config
        return coca_loss(out.image_features, out.text_features, out.logit_scale, out.logits, out.labels,
                         c.text.pad_token_id, c.clip_loss_weight, c.caption_loss_weight)

    # ------------------------------------------------------------------------------ generation
    def captioner(self) -> CoCaCaptioner:
        return CoCaCaptioner(self)

    @torch.inference_mode()
    def generate(self, pixels: torch.Tensor, num_beams: int = 1, max_new_tokens: int | None = None,
                 top_p: float = 1.0, do_sample: bool = False, seed: int | None = None,
                 image_tokens: torch.Tensor | None = None) -> list[list[int]]:
        """pixels (B, 3, H, W) normalised -> B token lists (start token excluded, end token dropped).
        Starts every row from the start-of-text token, stops at end-of-text; cached decoding."""
        t = self.config.text
        if image_tokens is None:
            image_tokens = self.encode_image_tokens(pixels)[1]
        limit = t.context_length - 1
        cfg = sampling_config(min(max_new_tokens or limit, limit), num_beams=num_beams, top_p=top_p,
                              do_sample=do_sample, seed=seed, eos_token_ids=(t.eot_token_id,),
                              pad_token_id=t.pad_token_id)
        start = torch.full((image_tokens.shape[0], 1), t.sot_token_id, dtype=torch.long, device=image_tokens.device)
        out = generate(self.captioner(), start, config=cfg, forward_kwargs={"image_tokens": image_tokens})
        return [[i for i in row if i != t.eot_token_id] for row in out.tokens]

    def caption(self, pixels: torch.Tensor, **kwargs) -> list[str]:
        """pixels (B, 3, H, W) normalised -> B captions (kwargs as `generate`); needs `self.tokenizer`."""
        if self.tokenizer is None:
            raise ConfigError("this CoCa has no tokenizer: load it from a folder with tokenizer files")
        return [self.tokenizer.decode(row) for row in self.generate(pixels, **kwargs)]

    # ------------------------------------------------------------------------------ files
    def save_pretrained(self, folder) -> Path:
        """mmfm's folder: config.json (model_type mmfm-coca) + model.safetensors + the tokenizer's files.
        open_clip's: `mmfm.save(model, folder, format="open_clip")`."""
        return save_model_folder(folder, {"model_type": "mmfm-coca", **self.config.to_dict()}, self.state_dict(),
                                 tokenizer=self.tokenizer)

    @classmethod
    def from_pretrained(cls, path_or_id) -> CoCa:
        """An mmfm CoCa folder (or Hub id); `mmfm.load` reads open_clip's CoCa too."""
        path = resolve(path_or_id)
        return attach_tokenizer(load_mmfm_coca(path), path).eval()


def load_mmfm_coca(folder: Path) -> CoCa:
    cfg = read_json(folder / "config.json")
    if (mt := cfg.pop("model_type", None)) != "mmfm-coca":
        raise CheckpointError(f"{folder}: config.json has model_type {mt!r}: not a CoCa folder "
                              "(mmfm.load reads every format)")
    model = CoCa(CoCaConfig.from_dict(cfg))
    load_strict(model, load_state_dict(folder / "model.safetensors"), str(folder))
    return model


class CoCaCaptioner(nn.Module):
    """The text tower + multimodal decoder as a causal LM for mmfm.nn.generate, with a KV cache in both
    and the image tokens' cross-attention keys/values projected once (open_clip recomputes the whole
    prefix and re-projects the image tokens every step). The image tokens come as a forward kwarg."""

    def __init__(self, coca: CoCa):
        super().__init__()
        self.coca = coca

    def new_caches(self, batch: int, max_len: int) -> list[KVCache]:
        c = self.coca.config
        t, d = c.text, c.decoder
        if max_len > t.context_length:
            raise ConfigError(f"{max_len} positions exceed the text context of {t.context_length}")
        dt, dev = self.coca.lm_head.weight.dtype, self.coca.lm_head.weight.device
        text = [KVCache(batch, t.heads, max_len, t.width // t.heads, dtype=dt, device=dev) for _ in range(t.layers)]
        dec = [KVCache(batch, d.heads, max_len, t.width // d.heads, dtype=dt, device=dev) for _ in range(d.layers)]
        return text + dec + [StaticKV() for _ in range(d.layers)]

    def forward(self, input_ids=None, *, inputs_embeds=None, attention_mask=None, position_ids=None, caches=None,
                logits_to_keep: int = 0, image_tokens=None):
        text = self.coca.text
        n_text = len(text.transformer.blocks)
        x = text.token_embed(input_ids) + text.pos_embed[position_ids].to(text.token_embed.weight.dtype)
        t = x.shape[1]
        mask = None
        if attention_mask is not None:
            past = caches[0].pos if caches else 0
            mask = combine_masks(causal_mask(t, past + t, device=x.device)[None, None],
                                 attention_mask.bool()[:, None, None, : past + t])
        x, _ = text.transformer(x, mask=mask, is_causal=mask is None and t > 1,
                                caches=caches[:n_text] if caches is not None else None)
        n_dec = len(self.coca.decoder_blocks)
        logits = self.coca.decode(x, image_tokens, caches[n_text : n_text + n_dec] if caches is not None else None,
                                  mask=mask, cross_caches=caches[n_text + n_dec :] if caches is not None else None)
        return DecoderOutput(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


__all__ = ["CoCa", "CoCaConfig", "CoCaDecoderConfig", "CoCaOutput", "CoCaCaptioner", "load_mmfm_coca"]
