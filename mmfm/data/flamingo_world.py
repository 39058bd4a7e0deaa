"""Interleaved image-text episodes from the Shapes world for Flamingo, in OpenFlamingo's prompt format:

    <image>Question: What color is the object? Short answer: red<|endofchunk|>\\n<image>Question: ...

Each training sequence is one episode of one task (captions, color / shape / count questions, or the
"new names" task, where each color gets a made-up word that only the other chunks of the sequence
define), with 1 to `max_images` images. Labels are masked as OpenFlamingo masks its interleaved (MMC4)
sequences: padding, every `<image>` token, text before the first image, and text between an
`<|endofchunk|>` and the next image get -100; everything else is learned.

The new-names words seen in training are made-up syllable pairs (`TRAIN_WORDS`); the evaluation uses
the world's own `NEW_WORDS`, which training never shows, so a model can only answer from the context.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmfm.data.llava_world import collate, world_pixels
from mmfm.models.flamingo import EOC_TOKEN, IMAGE_TOKEN
from mmfm.text.conversation import IGNORE
from mmfm.world import World
from mmfm.world.world import NEW_WORDS, Episode

TASKS = ("caption", "color", "shape", "count", "new_names")
WEIGHTS = (0.15, 0.2, 0.2, 0.15, 0.3)


def _train_words() -> tuple[str, ...]:
    rng = np.random.default_rng(1234)
    cons, vows = "bdfgklmnprstvz", "aeiou"
    words = set()
    while len(words) < 300:
        w = "".join(rng.choice(list(cons)) + rng.choice(list(vows)) for _ in range(2))
        if w not in NEW_WORDS:
            words.add(w)
    return tuple(sorted(words))


TRAIN_WORDS = _train_words()


def chunk(prompt: str, answer: str | None = None, image: bool = True) -> str:
    """One demonstration (with its answer) or the query (answer None), as OpenFlamingo writes them."""
    head = IMAGE_TOKEN if image else ""
    return f"{head}{prompt}" if answer is None else f"{head}{prompt} {answer}{EOC_TOKEN}\n"


def episode_prompt(demos: list[tuple[str, str]], query_prompt: str, images: bool = True) -> str:
    """Demonstrations (prompt, answer) then the query; images=False writes the demonstrations without
    `<image>` (OpenFlamingo's zero-shot: two text-only demonstrations)."""
    return "".join(chunk(p, a, images) for p, a in demos) + chunk(query_prompt)


def flamingo_labels(ids: list[int], image_id: int, eoc_id: int) -> list[int]:
    """OpenFlamingo's label masking for interleaved sequences (padding is added later by collate)."""
    labels, seen_image, after_eoc = [], False, False
    for t in ids:
        if t == image_id:
            seen_image, after_eoc = True, False
            labels.append(IGNORE)
        elif not seen_image or after_eoc:
            labels.append(IGNORE)
        else:
            labels.append(t)
            after_eoc = t == eoc_id
    return labels


@dataclass
class WorldEpisodes:
    """batch(step) -> {"input_ids", "labels", "pixels" (B, T_images, 3, S, S)}: a pure function of the
    step. All rows of a step have the same number of images (drawn per step), tasks mix freely."""

    tokenizer: object
    image_token_id: int
    eoc_token_id: int
    batch_size: int
    mean: tuple
    std: tuple
    world: World
    seed: int = 0
    max_images: int = 9
    tasks: tuple = TASKS
    weights: tuple = WEIGHTS

    def episode(self, index: int, task: str, shots: int) -> Episode:
        ep = self.world.episode("train", index, task, shots=shots)
        if task == "new_names":  # fresh made-up words per episode, never the evaluation's words
            rng = np.random.default_rng([self.seed, 11, index])
            words = rng.choice(len(TRAIN_WORDS), len(ep.mapping), replace=False)
            new = {c: TRAIN_WORDS[w] for c, w in zip(ep.mapping, words)}
            old = {w: c for c, w in ep.mapping.items()}
            rename = lambda items: [(r, p, new[old[a]]) for r, p, a in items]  # noqa: E731
            ep = Episode(task, rename(ep.demos), rename([ep.query])[0], new)
        return ep

    def batch(self, step: int, micro: int = 0, rank: int = 0, world_size: int = 1, accum: int = 1) -> dict:
        per = self.batch_size // (world_size * accum)
        start = ((step * accum + micro) * world_size + rank) * per
        rng = np.random.default_rng([self.seed, 10, step])
        n_images = int(rng.integers(1, self.max_images + 1))
        rows, labels, images = [], [], []
        for i in range(start, start + per):
            w = np.asarray(self.weights, dtype=float)
            task = self.tasks[np.random.default_rng([self.seed, 12, i]).choice(len(self.tasks), p=w / w.sum())]
            if task == "new_names" and n_images < 2:
                task = "color"  # a new name needs a demonstration that defines it
            ep = self.episode(i, task, n_images - 1)
            items = ep.demos + [ep.query]
            text = "".join(chunk(p, a) for _, p, a in items)
            ids = self.tokenizer.encode(text, add_special_tokens=True)
            rows.append(ids)
            labels.append(flamingo_labels(ids, self.image_token_id, self.eoc_token_id))
            images.append(world_pixels([r.image for r, _, _ in items], self.mean, self.std))
        return collate(rows, labels, torch.stack(images), self.tokenizer.pad_token_id)


__all__ = ["WorldEpisodes", "flamingo_labels", "chunk", "episode_prompt", "TRAIN_WORDS", "TASKS"]
