"""SimCLR's augmentations on batched tensors, by kornia (torch only; no torchvision at run time): random
resized crop (scale 0.08-1), horizontal flip, colour jitter of strength s (brightness, contrast,
saturation 0.8 s, hue 0.2 s, applied with p 0.8), random grayscale (p 0.2) and Gaussian blur (kernel
~10% of the side, sigma 0.1-2, p 0.5), as the paper's appendix A lists them. Each call is seeded, so a
training batch stays a pure function of its step (exact resume)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SimCLRAugment:
    size: int
    strength: float = 1.0  # colour jitter's s (the paper: 1.0 on ImageNet, 0.5 on CIFAR)
    color_jitter: bool = True  # False: the ablation where crops can be matched by their colour histogram
    grayscale: bool = True
    blur: bool = True
    min_scale: float = 0.08
    hue: float | None = None  # the jitter's hue range, in turns (None: the paper's 0.2 s; 0.5: any hue)

    def pipeline(self):
        import kornia.augmentation as K

        s = self.strength
        ops = [K.RandomResizedCrop((self.size, self.size), scale=(self.min_scale, 1.0)), K.RandomHorizontalFlip()]
        if self.color_jitter:
            hue = 0.2 * s if self.hue is None else self.hue
            ops.append(K.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, min(hue, 0.5), p=0.8))
        if self.grayscale:
            ops.append(K.RandomGrayscale(p=0.2))
        if self.blur:
            k = max(3, int(0.1 * self.size) // 2 * 2 + 1)  # odd, ~10% of the side
            ops.append(K.RandomGaussianBlur((k, k), (0.1, 2.0), p=0.5))
        return K.AugmentationSequential(*ops)

    def __call__(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """images (B, 3, H, W) in 0..1 -> one random view each, (B, 3, size, size), from `seed` alone."""
        pipe = self.pipeline()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with torch.no_grad():
                return pipe(images.float()).clamp(0, 1)


__all__ = ["SimCLRAugment"]
