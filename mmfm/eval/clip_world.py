"""CLIP on the Shapes world: zero-shot top-1 on seen and held-out color x shape compositions (one
template vs the ensemble), a linear probe on frozen features, and retrieval with several captions per
image. Every score is against all 56 color x shape classes."""

from __future__ import annotations

import torch

from mmfm.eval.linear_probe import linear_probe
from mmfm.eval.retrieval import recall_at_k
from mmfm.eval.zeroshot import build_classifier, cupl_classifier, encode_images, encode_texts, evaluate
from mmfm.world import ALL_PAIRS, World, class_names
from mmfm.world.vocab import CONCEPT_NAMES, CONCEPTS

SINGLE_TEMPLATE = ("a photo of {a} {}",)


def _pixels(model, rendered) -> torch.Tensor:
    c = model.config
    x = torch.stack([torch.from_numpy(r.image).permute(2, 0, 1) for r in rendered]).float() / 255.0
    return (x - torch.tensor(c.image_mean).view(1, 3, 1, 1)) / torch.tensor(c.image_std).view(1, 3, 1, 1)


def classification_set(model, split: str, n: int, offset: int = 0, seed: int = 0):
    world = World(seed=seed, size=model.config.vision.image_size)
    items = [world.classification(split, offset + i) for i in range(n)]
    return _pixels(model, [r for r, _ in items]), torch.tensor([y for _, y in items])


@torch.no_grad()
def zeroshot_world(model, tokenizer, n: int = 1000, seed: int = 0, prompts: dict | None = None) -> dict:
    """{"seen": {"single": {...}, "ensemble": {...}}, "heldout": {...}}: top-1/top-5/mean per-class
    recall on new scenes of seen compositions and on held-out compositions."""
    classifiers = {"single": build_classifier(model, tokenizer, class_names(), SINGLE_TEMPLATE),
                   "ensemble": build_classifier(model, tokenizer, class_names(), "world")}
    if prompts:
        classifiers["prompts"] = build_classifier(model, tokenizer, class_names(), (), prompts=prompts)
    out = {}
    for name, split in (("seen", "test"), ("heldout", "heldout")):
        x, y = classification_set(model, split, n, seed=seed)
        f = encode_images(model, x)
        out[name] = {k: evaluate(f, y, clf) for k, clf in classifiers.items()}
    return out


@torch.no_grad()
def linear_probe_world(model, n_train: int = 2000, n_val: int = 500, n_test: int = 1000, seed: int = 0) -> dict:
    """Logistic regression on frozen image features over all 56 classes. The probe is supervised on
    every class, held-out compositions included (labels CLIP never saw in pre-training): it measures
    what the features hold, next to what zero-shot can name."""
    def split_set(n_seen, n_unseen, off):
        xs, ys = classification_set(model, "val", n_seen, off, seed)
        xu, yu = classification_set(model, "heldout", n_unseen, 100_000 + off, seed)
        return encode_images(model, torch.cat([xs, xu])), torch.cat([ys, yu])

    k_unseen = 8 / len(ALL_PAIRS)
    train = split_set(int(n_train * (1 - k_unseen)), int(n_train * k_unseen), 0)
    val = split_set(int(n_val * (1 - k_unseen)), int(n_val * k_unseen), 50_000)
    res = {}
    for name, split in (("seen", "test"), ("heldout", "heldout")):
        x, y = classification_set(model, split, n_test, seed=seed)
        res[name] = linear_probe(train, val, (encode_images(model, x), y), len(ALL_PAIRS))
    return res


@torch.no_grad()
def retrieval_world(model, tokenizer, n: int = 1000, seed: int = 0, kinds=("listing", "object", "relation")) -> dict:
    """Recall@1/5/10 both ways on new scenes, several captions per image (the specific kinds: generic
    ones like 'three shapes' fit too many images to be retrieval targets)."""
    world = World(seed=seed, size=model.config.vision.image_size)
    rendered, texts, owner = [], [], []
    for i in range(n):
        r, caps = world.captioned("test", i)
        rendered.append(r)
        for c in caps:
            if c.kind in kinds:
                texts.append(c.text)
                owner.append(i)
    img = encode_images(model, _pixels(model, rendered))
    txt = encode_texts(model, tokenizer, texts)
    return recall_at_k(img, txt, torch.tensor(owner))


@torch.no_grad()
def concepts_world(model, tokenizer, n: int = 700, seed: int = 0, prompts: dict | None = None) -> dict:
    """CuPL's claim on the world's composite concepts (snowman, traffic light, ...), which never appear
    by name in training text: top-1 over the concept classes from their names in templates, from
    LLM descriptions (`prompts`, CuPL's JSON), from both pooled, and from the world's own definitions
    (the upper bound: a perfect describer)."""
    world = World(seed=seed, size=model.config.vision.image_size)
    items = [world.concept(i) for i in range(n)]
    f = encode_images(model, _pixels(model, [r for r, _ in items]))
    y = torch.tensor([k for _, k in items])
    classes = list(CONCEPT_NAMES)
    out = {"classes": classes, "names": evaluate(f, y, cupl_classifier(model, tokenizer, classes, mode="templates"))}
    if prompts:
        for mode in ("descriptions", "both"):
            out[mode] = evaluate(f, y, cupl_classifier(model, tokenizer, classes, prompts, mode=mode))
    defs = {c: [CONCEPTS[c]] for c in classes}
    out["definitions"] = evaluate(f, y, cupl_classifier(model, tokenizer, classes, defs, mode="descriptions"))
    return out
