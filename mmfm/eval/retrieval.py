"""Image-text retrieval recall@k with several captions per image, as CLIP_benchmark defines it:
text->image: a text scores a hit when its image is in its top k images (mean over texts);
image->text: an image scores a hit when any of its texts is in its top k texts (mean over images)."""

from __future__ import annotations

import torch


def recall_at_k(image_features: torch.Tensor, text_features: torch.Tensor, text_to_image: torch.Tensor,
                ks=(1, 5, 10)) -> dict[str, float]:
    """image_features (I, D), text_features (T, D), both L2-normalised; text_to_image (T,) the index of
    each text's image."""
    scores = text_features @ image_features.T  # (T, I)
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(text_to_image)), text_to_image] = True
    out = {}
    for k in ks:
        k_img = min(k, scores.shape[1])
        top = scores.topk(k_img, dim=1).indices
        out[f"image_retrieval_recall@{k}"] = positive.gather(1, top).any(1).float().mean().item()
        k_txt = min(k, scores.shape[0])
        top_t = scores.T.topk(k_txt, dim=1).indices
        out[f"text_retrieval_recall@{k}"] = positive.T.gather(1, top_t).any(1).float().mean().item()
    return out
