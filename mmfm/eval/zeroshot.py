"""Zero-shot classification with CLIP: a classifier from class names x templates (encode every
prompt, L2-normalise, average per class, re-normalise, as CLIP's paper), then top-k accuracy and
mean per-class recall."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmfm.errors import InvalidPrompt, InvalidText
from mmfm.eval.templates import TEMPLATE_SETS, fill

MAX_LABEL_CHARS = 300


def check_labels(labels) -> list[str]:
    labels = [labels] if isinstance(labels, str) else list(labels)
    if not labels:
        raise InvalidPrompt("the label list is empty; give at least one class name")
    for i, lab in enumerate(labels):
        if not isinstance(lab, str) or not lab.strip():
            raise InvalidText(f"label {i} is empty; every class needs a name")
        if len(lab) > MAX_LABEL_CHARS:
            raise InvalidText(
                f"label {i} has {len(lab):,} characters (limit {MAX_LABEL_CHARS}); use a short class name"
            )
    if len(set(labels)) != len(labels):
        dup = sorted({x for x in labels if labels.count(x) > 1})
        raise InvalidPrompt(f"duplicate labels {dup}; each class must be named once")
    return labels


@torch.no_grad()
def encode_texts(model, tokenizer, texts: list[str], batch_size: int = 512) -> torch.Tensor:
    out = []
    for i in range(0, len(texts), batch_size):
        out.append(model.encode_text(tokenizer(texts[i : i + batch_size]), normalize=True).float())
    return torch.cat(out)


@torch.no_grad()
def build_classifier(model, tokenizer, classnames, templates="world", prompts: dict | None = None) -> torch.Tensor:
    """(embed_dim, C) zero-shot weights. `templates`: a name in TEMPLATE_SETS or a list of templates
    with `{}` for the class name (and `{a}` for its article). `prompts` (class -> sentences, e.g.
    CuPL's) replaces the templates for the classes it names."""
    classnames = check_labels(classnames)
    tpls = TEMPLATE_SETS[templates] if isinstance(templates, str) else tuple(templates)
    if not tpls and not prompts:
        raise InvalidPrompt("no templates and no prompts: nothing to build the classifier from")
    texts, owner = [], []
    for k, name in enumerate(classnames):
        sents = list(prompts[name]) if prompts and name in prompts else [fill(t, name) for t in tpls]
        if not sents:
            raise InvalidPrompt(f"class {name!r} has no prompt")
        texts += sents
        owner += [k] * len(sents)
    emb = encode_texts(model, tokenizer, texts)
    owner_t = torch.tensor(owner)
    w = torch.zeros(len(classnames), emb.shape[1]).index_add_(0, owner_t, emb)
    w = w / torch.bincount(owner_t, minlength=len(classnames))[:, None]
    return F.normalize(w, dim=-1).T


@torch.no_grad()
def encode_images(model, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, len(images), batch_size):
        out.append(model.encode_image(images[i : i + batch_size], normalize=True).float())
    return torch.cat(out)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    out = {}
    for k in ks:
        k_eff = min(k, logits.shape[1])
        hit = (logits.topk(k_eff, dim=1).indices == labels[:, None]).any(1)
        out[f"top{k}"] = hit.float().mean().item()
    return out


def mean_per_class_recall(logits: torch.Tensor, labels: torch.Tensor) -> float:
    pred = logits.argmax(1)
    recalls = [(pred[labels == c] == c).float().mean().item() for c in labels.unique()]
    return float(sum(recalls) / len(recalls))


def evaluate(image_features: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor) -> dict[str, float]:
    logits = image_features @ classifier
    return {**topk_accuracy(logits, labels), "mean_per_class_recall": mean_per_class_recall(logits, labels)}


def cupl_classifier(model, tokenizer, classes, prompts: dict | None = None, templates="world", mode: str = "both"):
    """(embed_dim, C) zero-shot weights. mode: "templates" (names in templates), "descriptions"
    (the LLM's sentences), "both" (every sentence normalised, averaged, re-normalised together)."""
    if mode == "templates":
        return build_classifier(model, tokenizer, classes, templates)
    if mode not in ("descriptions", "both"):
        raise InvalidPrompt(f"unknown mode {mode!r}; use templates, descriptions or both")
    if not prompts:
        raise InvalidPrompt(f"mode {mode!r} needs CuPL prompts")
    missing = [c for c in classes if c not in prompts]
    if missing:
        raise InvalidPrompt(
            f"no descriptions for {missing}; generate them (mmfm cupl generate) or use mode='templates'"
        )
    tpls = TEMPLATE_SETS[templates] if isinstance(templates, str) else tuple(templates)
    merged = {c: list(prompts[c]) + ([fill(t, c) for t in tpls] if mode == "both" else []) for c in classes}
    return build_classifier(model, tokenizer, classes, (), prompts=merged)


