"""PyTorch Datasets over the Shapes world, one per task. Each item is a dict; `image` is a (3, S, S)
uint8 tensor unless a `transform` (PIL -> anything) is given. Items are made on the fly from
(seed, split, index), so a dataset costs no memory and any DataLoader worker can make any item."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from mmfm.world import CONCEPT_NAMES, World, class_names


def _image(rendered, transform):
    if transform is not None:
        return transform(rendered.pil())
    return torch.from_numpy(rendered.image.copy()).permute(2, 0, 1)


class _WorldDataset(Dataset):
    def __init__(self, split: str = "train", length: int = 10_000, seed: int = 0, size: int = 64,
                 transform=None, max_objects: int = 5, world: World | None = None):
        self.world = world or World(seed=seed, size=size, max_objects=max_objects)
        self.split, self.length, self.transform = split, length, transform

    def __len__(self) -> int:
        return self.length

    def _check(self, index: int) -> int:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return index


class WorldClassification(_WorldDataset):
    """One object per image; `label` indexes `classes` (every color x shape pair)."""

    classes = class_names()

    def __getitem__(self, index):
        r, label = self.world.classification(self.split, self._check(index))
        return {"image": _image(r, self.transform), "label": label}


class WorldConcepts(_WorldDataset):
    """Composite concepts (snowman, traffic light, ...); `label` indexes `classes`."""

    classes = list(CONCEPT_NAMES)

    def __getitem__(self, index):
        r, label = self.world.concept(self._check(index))
        return {"image": _image(r, self.transform), "label": label}


class WorldCaptions(_WorldDataset):
    """Image + one of its captions (chosen by index, so an epoch sees varied granularity) + all of
    them (for retrieval with several captions per image)."""

    def __getitem__(self, index):
        s = self.world.sample(self.split, self._check(index))
        caps = [c.text for c in s.ann.captions]
        k = np.random.default_rng([self.world.seed, index, 7]).integers(len(caps))
        return {"image": _image(s.rendered, self.transform), "caption": caps[k], "captions": caps,
                "negatives": [n.text for n in s.ann.negatives]}


class WorldSegmentation(_WorldDataset):
    """Image + visible instance masks (N, S, S) bool + boxes (N, 4) XYXY + object names."""

    def __getitem__(self, index):
        s = self.world.sample(self.split, self._check(index))
        r = s.rendered
        keep = r.areas > 0
        return {
            "image": _image(r, self.transform),
            "masks": torch.from_numpy(r.masks[keep]),
            "boxes": torch.from_numpy(r.boxes[keep]),
            "names": [o.name for o, k in zip(r.scene.objects, keep) if k],
        }


class WorldVQA(_WorldDataset):
    """One (question, answer) per item: item i is question i % Q of scene i // Q, so every question
    of every scene is seen."""

    per_scene = 5

    def __getitem__(self, index):
        self._check(index)
        s = self.world.sample(self.split, index // self.per_scene)
        qa = s.ann.qa[index % self.per_scene % len(s.ann.qa)]
        return {"image": _image(s.rendered, self.transform), "question": qa.question, "answer": qa.answer,
                "kind": qa.kind}


class WorldPointing(_WorldDataset):
    """Image + a pointing query, its pixel points and Molmo-format answers."""

    def __getitem__(self, index):
        s = self.world.sample(self.split, self._check(index))
        p = s.ann.points[index % len(s.ann.points)]
        return {"image": _image(s.rendered, self.transform), "query": p.query, "points": p.points,
                "answer": p.answer, "count_answer": p.count_answer}


class WorldStatements(_WorldDataset):
    """Two images + a statement + its truth value (NLVR style)."""

    def __getitem__(self, index):
        st = self.world.statement(self.split, self._check(index))
        return {"left": _image(st.left, self.transform), "right": _image(st.right, self.transform),
                "text": st.text, "label": st.label}


class WorldEpisodes(_WorldDataset):
    """Interleaved few-shot episodes: `images` (K+1) and the matching (prompt, answer) pairs."""

    def __init__(self, *args, task: str = "color", shots: int = 4, **kw):
        super().__init__(*args, **kw)
        self.task, self.shots = task, shots

    def __getitem__(self, index):
        ep = self.world.episode(self.split, self._check(index), self.task, self.shots)
        items = ep.demos + [ep.query]
        return {"images": [_image(r, self.transform) for r, _, _ in items],
                "prompts": [p for _, p, _ in items], "answers": [a for _, _, a in items], "task": ep.task}
