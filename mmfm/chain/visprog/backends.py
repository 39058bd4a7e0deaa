"""Model backends for VisProg's modules that come from other libraries.

- `diffusers_inpainter(folder)`: `Replace` with a diffusers inpainting pipeline (e.g. a local copy of
  a Stable Diffusion inpainting checkpoint) instead of OpenCV's Telea inpainting. Needs
  `pip install diffusers` and the weights on disk; mmfm never downloads them.
- `llava_vqa(model)`: `Vqa` with an mmfm LLaVA (one image, one question, a short answer).
"""

from __future__ import annotations

from pathlib import Path

from mmfm.errors import CheckpointError, DependencyError


def diffusers_inpainter(folder, steps: int = 30, guidance: float = 7.5, seed: int = 0):
    """callable(image, mask, prompt) -> image, from a local diffusers inpainting folder (model_index.json)."""
    folder = Path(folder)
    try:
        import diffusers  # noqa: F401
    except ImportError as e:
        raise DependencyError("the diffusers inpainting backend needs `pip install diffusers`; without it Replace "
                              "uses OpenCV's inpainting") from e
    if not (folder / "model_index.json").is_file():
        raise CheckpointError(f"{folder}: not a diffusers pipeline folder (no model_index.json)")
    import torch
    from diffusers import AutoPipelineForInpainting

    pipe = AutoPipelineForInpainting.from_pretrained(str(folder), local_files_only=True)

    def inpaint(image, mask, prompt):
        g = torch.Generator().manual_seed(seed)
        out = pipe(prompt=prompt or "background", image=image, mask_image=mask, num_inference_steps=steps,
                   guidance_scale=guidance, generator=g).images[0]
        return out.resize(image.size)

    return inpaint


def llava_vqa(model, max_new_tokens: int = 16):
    """callable(image, question) -> answer, from an mmfm Llava."""
    return lambda image, question: model.ask(image, question, max_new_tokens=max_new_tokens)


__all__ = ["diffusers_inpainter", "llava_vqa"]
