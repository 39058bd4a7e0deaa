"""Supervised fine-tuning of a language model with LoRA on chat conversations (what peft + trl's
SFTTrainer do for a Llama): the base stays frozen, adapters on the block Linears learn, and the loss is
next-token cross-entropy on the assistant turns only (labels placed by token spans:
mmfm.text.conversation). The result is an adapter folder (`save_adapter`) that `mmfm.lm.load_lm` reads
back on top of its base model.

    lm = mmfm.lm.default()
    train_lm_lora(lm, conversations, "runs/writer", TrainConfig(steps=300, batch_size=16, lr=1e-3))
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from torch import nn

from mmfm.checkpoint import save_safetensors, write_manifest
from mmfm.data.instructions import collate
from mmfm.errors import ConfigError, InvalidPrompt
from mmfm.lm.model import LanguageModel
from mmfm.nn.lora import apply_lora, lora_state_dict
from mmfm.nn.losses import next_token_loss
from mmfm.text.conversation import ConversationEncoder, new_marker
from mmfm.train.trainer import TrainConfig, Trainer

LORA_TARGETS = ("attn.qkv", "attn.out", "mlp.gate_up", "mlp.down")
ADAPTER_TYPE = "mmfm-lm-lora"


def encode_conversations(lm: LanguageModel, convs: list[list[dict]], max_len: int = 512) -> list[tuple[list, list]]:
    """(ids, labels) of each conversation: labels are the ids on assistant turns, IGNORE elsewhere."""
    # no image placeholder can occur: the marker is a fresh nonce of private-use characters
    enc = ConversationEncoder(lm.tokenizer, image_token=new_marker(), image_token_id=-1, tokens_per_image=0)
    out = []
    for i, msgs in enumerate(convs):
        try:
            ex = enc.example(msgs, "chat", max_len=max_len)
        except InvalidPrompt as e:
            raise InvalidPrompt(f"conversation {i}: {e}") from None
        out.append((ex.input_ids, ex.labels))
    return out


class LMLoRATrainModule(nn.Module):
    """forward(batch) -> (loss, metrics): the vocabulary head runs at the supervised positions only.
    Checkpoints hold the adapters (and optimizer state) only: the frozen base comes from its package."""

    checkpoint_trainable_only = True

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict):
        out = self.model(batch["input_ids"], compute_logits=False)
        loss, n = next_token_loss(out.last_hidden, batch["labels"], self.model.lm_head)
        return loss, {"tokens": float(n)}


def add_adapters(lm: LanguageModel, r: int = 8, alpha: float = 16.0, targets=LORA_TARGETS) -> int:
    """Freeze the LM and put LoRA adapters on `targets`; returns the number of trainable parameters."""
    lm.model.float().requires_grad_(False)
    apply_lora(lm.model, targets, r, alpha)
    lm.adapter = {"r": r, "alpha": alpha, "targets": list(targets)}
    return sum(p.numel() for p in lm.model.parameters() if p.requires_grad)


def save_adapter(lm: LanguageModel, folder, base: str = "smollm2", purpose: dict | None = None) -> Path:
    """adapter_config.json + adapter.safetensors (the adapters only, fp32) + MANIFEST: `load_lm(folder)`
    loads `base` from its package and merges them in. `purpose` is kept for the code that asks the LM
    (e.g. {"visprog": {"prompt": "bare"}}: VisProg then asks it without in-context examples)."""
    if not getattr(lm, "adapter", None):
        raise ConfigError("this language model has no LoRA adapters to save (add_adapters first)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_type": ADAPTER_TYPE, "base_lm": base, **lm.adapter, "decoder": lm.config.to_dict(),
           "purpose": purpose or {}}
    (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    sd = {k: v.detach().float().contiguous() for k, v in lora_state_dict(lm.model).items()}
    save_safetensors(sd, folder / "adapter.safetensors", metadata={"format": ADAPTER_TYPE})
    write_manifest(folder)
    return folder


def train_lm_lora(lm: LanguageModel, convs: list[list[dict]], out, config: TrainConfig, r: int = 8,
                  alpha: float = 16.0, targets=LORA_TARGETS, max_len: int = 512, base: str = "smollm2",
                  purpose: dict | None = None) -> list[dict]:
    """Fine-tune `lm` in place on `convs` (shuffled each epoch by config.seed); the adapters are saved
    to `out` (save_adapter) and the training curves beside them. Returns the logged metrics."""
    rows = encode_conversations(lm, convs, max_len)
    if not rows:
        raise ConfigError("no conversations to train on")
    add_adapters(lm, r, alpha, targets)
    lm.model.train()
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    per_step = config.batch_size // config.accum
    epochs: dict[int, np.ndarray] = {}

    def batch_fn(step, micro, rank, world):
        start = (step * config.accum + micro) * per_step
        picked = []
        for j in range(start, start + per_step):
            e, k = divmod(j, len(rows))
            if e not in epochs:  # each epoch's order is a pure function of the seed and the epoch
                epochs[e] = np.random.default_rng([config.seed, e]).permutation(len(rows))
            picked.append(rows[int(epochs[e][k])])
        return collate([ids for ids, _ in picked], [lab for _, lab in picked], None, pad)

    trainer = Trainer(LMLoRATrainModule(lm.model), config, batch_fn, out)
    log = trainer.train()
    lm.model.eval()
    save_adapter(lm, trainer.out, base=base, purpose=purpose)
    return log


__all__ = ["train_lm_lora", "add_adapters", "save_adapter", "encode_conversations", "LMLoRATrainModule",
           "LORA_TARGETS", "ADAPTER_TYPE"]
