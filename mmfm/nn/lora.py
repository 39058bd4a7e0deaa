"""LoRA (Hu et al. 2021): a frozen Linear plus a trainable low-rank update, y = W x + (alpha / r) B A x.

`LoRALinear` subclasses nn.Linear, so a model's state-dict keys do not move: `...qkv.weight` stays
where it was and the adapter adds `...qkv.lora_a` (r, in) and `...qkv.lora_b` (out, r). B starts at
zero (peft's default), so a freshly adapted model computes exactly what the base model computes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmfm.errors import ConfigError


class LoRALinear(nn.Linear):
    """x (..., in) -> (..., out). The base weight and bias are frozen; lora_a, lora_b are trained."""

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, bias: bool = True,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if r < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {r}")
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r
        self.lora_a = nn.Parameter(torch.empty(r, in_features, device=device, dtype=dtype))
        self.lora_b = nn.Parameter(torch.zeros(out_features, r, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)

    @classmethod
    def wrap(cls, linear: nn.Linear, r: int, alpha: float) -> LoRALinear:
        w = linear.weight
        new = cls(linear.in_features, linear.out_features, r, alpha, bias=linear.bias is not None,
                  device="meta" if w.is_meta else w.device, dtype=w.dtype)
        new.weight = nn.Parameter(w.detach(), requires_grad=False)  # shares the storage: no copy
        if linear.bias is not None:
            new.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        if not w.is_meta:  # the adapters train in fp32 even over a bf16 base
            new.lora_a = nn.Parameter(new.lora_a.detach().float())
            new.lora_b = nn.Parameter(new.lora_b.detach().float())
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        return y + F.linear(F.linear(x, self.lora_a.to(x.dtype)), self.lora_b.to(x.dtype)) * self.scaling

    def merged_weight(self) -> torch.Tensor:
        return self.weight + (self.lora_b.float() @ self.lora_a.float()).to(self.weight.dtype) * self.scaling

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, alpha={self.alpha}"


def targeted(model: nn.Module, targets: Sequence[str]) -> list[tuple[str, nn.Linear]]:
    """The plain nn.Linear layers whose names end with one of `targets` (e.g. "attn.qkv", "mlp.w2"), by
    name; none is a ConfigError."""
    found = [(name, mod) for name, mod in model.named_modules() if type(mod) is nn.Linear
             and any(name == t or name.endswith("." + t) for t in targets)]
    if not found:
        raise ConfigError(f"LoRA targets {list(targets)} match no Linear layer of {type(model).__name__}")
    return found


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def apply_lora(model: nn.Module, targets: Sequence[str], r: int = 16, alpha: float = 32.0) -> list[str]:
    """Replace every nn.Linear whose name ends with one of `targets` (e.g. "attn.qkv", "mlp.w2") by a
    LoRALinear sharing its weight. Returns the names replaced; none found is a ConfigError."""
    done = targeted(model, targets)
    for name, mod in done:
        _replace(model, name, LoRALinear.wrap(mod, r, alpha))
    return [name for name, _ in done]


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its base weight and put plain nn.Linear layers back. Returns how many."""
    n = 0
    for name, mod in list(model.named_modules()):
        if isinstance(mod, LoRALinear):
            lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None,
                            device=mod.weight.device, dtype=mod.weight.dtype)
            with torch.no_grad():
                lin.weight.copy_(mod.merged_weight())
                if mod.bias is not None:
                    lin.bias.copy_(mod.bias)
            _replace(model, name, lin)
            n += 1
    return n


@torch.no_grad()
def extract_lora(model: nn.Module, base: dict[str, torch.Tensor], targets: Sequence[str], r: int = 64,
                 alpha: float | None = None) -> dict[str, float]:
    """The inverse of fine-tuning every weight, approximately (as mergekit's extract-lora): each nn.Linear
    named by `targets` goes back to its base weight, base[name + ".weight"], plus a rank-r adapter holding
    the best rank-r approximation of what training changed (truncated SVD). Returns, per layer, the
    relative Frobenius error of that approximation (0: the change had rank <= r)."""
    alpha = float(alpha if alpha is not None else r)
    errors = {}
    for name, mod in targeted(model, targets):
        tuned = mod.weight.detach().float()
        delta = tuned - base[name + ".weight"].float()
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        k = min(r, len(s))
        root = s[:k].sqrt()
        mod.weight.copy_(base[name + ".weight"].to(mod.weight.dtype))
        new = LoRALinear.wrap(mod, r, alpha)
        new.lora_a.zero_()
        new.lora_b.zero_()
        new.lora_a[:k] = root[:, None] * vh[:k]
        new.lora_b[:, :k] = u[:, :k] * root / new.scaling
        _replace(model, name, new)
        errors[name] = float(s[k:].norm() / s.norm().clamp_min(1e-12))
    return errors


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.endswith((".lora_a", ".lora_b"))}


__all__ = ["LoRALinear", "targeted", "apply_lora", "merge_lora", "extract_lora", "lora_state_dict"]
