"""LLaVA / Molmo instruction data from the Shapes world: conversations about one scene each.

Stage 1 (template "plain"): the image and one of its captions.
Stage 2 (the LM's chat template), one kind per scene, drawn with the scene's own seed:
  qa       one question of a random type (count, color, shape, existence, relation)      35%
  multi    two or three questions in turns, the image in the first                      20%
  caption  "Describe the image." -> a caption                                             5%
  point    "Point to the red circles." -> Molmo points                                   20%
  count    "How many ...?" -> "2" (direct) or "Count the ... by pointing." ->             20%
           "Counting the <points ...> shows a total of 2." (point, then count), half each
Everything a scene says comes from its ground truth (mmfm.world.annotate). A batch holds one kind
(drawn per step with these weights): answers with points are ~3x longer than the others, and a mixed
batch would be padded to them (a kind per batch made stage 2 ~1.6x faster per sample).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmfm.data.instructions import collate
from mmfm.errors import ConfigError, InvalidPrompt
from mmfm.text.conversation import ConversationEncoder
from mmfm.text.pointing import count_answer
from mmfm.world import World
from mmfm.world.annotate import interior_points
from mmfm.world.facts import select
from mmfm.world.vocab import plural

QA_KINDS = ("count", "color", "shape", "existence", "relation")
KINDS = ("qa", "multi", "caption", "point", "count")
WEIGHTS = (0.35, 0.20, 0.05, 0.20, 0.20)
CROWDED = 4  # a count of 4 or more: the crowded scenes where Molmo's point-then-count should pay
FAR = 1 << 40  # train-split scenes from here on are searched for crowded pointing queries (never the plain stream)


def count_subject(c: str | None, s: str | None) -> str:
    """The noun phrase of a count question: "red circles", "circles", "red objects", "objects"."""
    return f"{c} {plural(s, 2)}" if c and s else plural(s, 2) if s else f"{c} objects" if c else "objects"


def count_points(r, c, s) -> list[tuple[float, float]]:
    pts = interior_points(r)
    return [tuple(pts[i]) for i in select(r, c, s)]


def direct_count_question(subject: str) -> str:
    return f"How many {subject} are there?"


def pointing_count_question(subject: str) -> str:
    return f"Count the {subject} by pointing."


def point_question(query: str) -> str:
    return f"Point to the {query}."


def scene_count_question(qas):
    """The count question a "count" conversation asks of a scene (its first), or None when it has none."""
    return next((q for q in qas if q.kind == "count"), None)


def count_fact(qa) -> tuple:
    """(color, shape, true count) of a count question (None for a missing color or shape)."""
    (_, c, s, _, n), = [f for f in qa.facts if f[0] == "count"][:1]
    return c, s, n


def conversation(sample, stage: int, rng: np.random.Generator, image_token: str = "<image>",
                 kind: str | None = None, qa_weights: dict | None = None, crowded: bool = False) -> list[dict]:
    """Messages for one world sample (every user turn is a question, the first carries the image).
    `kind` (stage 2): one of KINDS, else drawn with WEIGHTS. `qa_weights` ({question type: weight},
    missing types 1): how a "qa" conversation picks its question type among those the scene has
    (default uniform). `crowded`: a "point" conversation asks for a thing the scene holds CROWDED or more
    of (the scene must have one: see crowded_points)."""
    ann, r = sample.ann, sample.rendered
    img = image_token + "\n"
    if stage == 1:
        cap = ann.captions[rng.integers(len(ann.captions))].text
        return [{"role": "user", "content": img}, {"role": "assistant", "content": cap[0].upper() + cap[1:] + "."}]
    kind = kind or KINDS[rng.choice(len(KINDS), p=WEIGHTS)]
    qas = list(ann.qa)
    if kind == "caption" or not qas:
        cap = ann.captions[rng.integers(len(ann.captions))].text
        return [{"role": "user", "content": img + "Describe the image."},
                {"role": "assistant", "content": cap[0].upper() + cap[1:] + "."}]
    if kind == "qa":
        kinds = sorted({q.kind for q in qas})
        w = np.array([float(qa_weights.get(k, 1.0)) for k in kinds]) if qa_weights else None
        if w is not None and w.sum() > 0:  # a scene with only zero-weight types falls back to uniform
            want = kinds[rng.choice(len(kinds), p=w / w.sum())]
        else:
            want = kinds[rng.integers(len(kinds))]
        q = [q for q in qas if q.kind == want][0]
        return [{"role": "user", "content": img + q.question}, {"role": "assistant", "content": q.answer}]
    if kind == "multi":
        order = rng.permutation(len(qas))[: int(rng.integers(2, 4))]
        msgs = []
        for t, i in enumerate(order):
            msgs += [{"role": "user", "content": (img if t == 0 else "") + qas[i].question},
                     {"role": "assistant", "content": qas[i].answer}]
        return msgs
    if kind == "point" and ann.points:
        queries = [p for p in ann.points if len(p.points) >= CROWDED] if crowded else ann.points
        pq = queries[rng.integers(len(queries))]
        return [
            {"role": "user", "content": img + point_question(pq.query)},
            {"role": "assistant", "content": pq.answer},
        ]
    c, s, n = count_fact(scene_count_question(qas))
    subject = count_subject(c, s)
    if rng.random() < 0.5:
        return [
            {"role": "user", "content": img + direct_count_question(subject)},
            {"role": "assistant", "content": str(n)},
        ]
    ans = count_answer(count_points(r, c, s), r.size, r.size, subject)
    return [{"role": "user", "content": img + pointing_count_question(subject)}, {"role": "assistant", "content": ans}]


def _crowded(sample) -> bool:
    q = scene_count_question(sample.ann.qa)
    return q is not None and count_fact(q)[2] >= CROWDED


def crowded_points(sample) -> bool:
    """Whether one of the scene's pointing queries has CROWDED or more targets."""
    return any(len(p.points) >= CROWDED for p in sample.ann.points)


def parse_weights(text: str | dict | None, known: tuple[str, ...], what: str) -> dict | None:
    """"shape=3,color=2" (or a dict) -> {"shape": 3.0, "color": 2.0} over the names in `known`; names not
    given keep their default weight. `what` names the weights in errors ("QA", "conversation kind")."""
    if not text:
        return None
    items = (
        text.items()
        if isinstance(text, dict)
        else (kv.split("=", 1) if "=" in kv else (kv, "") for kv in text.split(","))
    )
    out = {}
    for k, v in items:
        k = k.strip()
        if k not in known:
            raise ConfigError(f"unknown {what} {k!r} in the {what} weights; known: {', '.join(known)}")
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{what} weight of {k!r} must be a number (write {k}=2), got {v!r}") from None
        if not out[k] >= 0:
            raise ConfigError(f"{what} weight of {k!r} must be >= 0, got {v!r}")
    return out


def parse_qa_weights(text: str | dict | None) -> dict | None:
    """"shape=3,color=2" (or a dict) -> {"shape": 3.0, "color": 2.0}; types not named keep weight 1."""
    out = parse_weights(text, QA_KINDS, "question type")
    if out is not None and not any(out.get(k, 1.0) > 0 for k in QA_KINDS):
        raise ConfigError("the QA weights leave no question type with a positive weight")
    return out


def kind_probabilities(text: str | dict | None) -> tuple[float, ...]:
    """Stage 2's mix of conversation kinds: "point=0.4,count=0.3" (or a dict) replaces those kinds' default
    weights (WEIGHTS); the result is normalised, in the order of KINDS."""
    given = parse_weights(text, KINDS, "conversation kind") or {}
    w = np.array([given.get(k, d) for k, d in zip(KINDS, WEIGHTS)], dtype=float)
    if not w.sum() > 0:
        raise ConfigError("the conversation-kind weights leave no kind with a positive weight")
    return tuple(float(x) for x in w / w.sum())


def world_pixels(images: list[np.ndarray], mean, std) -> torch.Tensor:
    """(S, S, 3) uint8 world images at the tower's size -> (N, 3, S, S) normalised."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@dataclass
class WorldInstructions:
    """batch(step) -> {"input_ids", "labels", "pixels"}: a pure function of the step (resumable)."""

    encoder: ConversationEncoder
    stage: int
    batch_size: int
    mean: tuple
    std: tuple
    world: World
    seed: int = 0
    max_len: int = 256
    qa_weights: dict | None = None  # question-type weights of "qa" conversations (see conversation)
    kind_p: tuple[float, ...] = WEIGHTS  # probabilities of the conversation kinds (KINDS), one kind per step
    crowded: float = 0.0  # share of "count" conversations asked about a crowded scene (a count >= CROWDED)
    crowded_points: float = 0.0  # share of "point" conversations asking for CROWDED or more things
    skipped: int = 0  # conversations with no supervised token left, reported by the trainer

    def __post_init__(self):
        if (self.crowded or self.crowded_points) and self.world.max_objects < CROWDED:
            # no scene could hold a crowded question: the search for one would never end
            raise ConfigError(f"crowded counts or points need scenes of {CROWDED}+ objects; the world's scenes "
                              f"hold at most {self.world.max_objects}")

    def batch(self, step: int, micro: int = 0, rank: int = 0, world_size: int = 1, accum: int = 1) -> dict:
        per = self.batch_size // (world_size * accum)
        start = ((step * accum + micro) * world_size + rank) * per
        rows, labels, images = [], [], []
        i = start
        kind = KINDS[np.random.default_rng([self.seed, 8, step]).choice(len(KINDS), p=self.kind_p)]  # one per step
        # The world's scenes count 4 or 5 of a thing in ~1 question of 9, and ~1 pointing query in 30 has 4 or
        # more targets; `crowded` / `crowded_points` ask that share of count / point rows on such scenes, so
        # pointing is learnt where it has to pay. Crowded count rows take the next such scenes in order (as
        # recorded runs did; neighbouring steps share some); crowded point rows, rarer, search a window of
        # their own far along the train split (a batch's own per x 64 scenes), so no two steps repeat them.
        share = self.crowded if kind == "count" else self.crowded_points if kind == "point" else 0
        want = np.random.default_rng([self.seed, 9, step]).random(per) < share
        far = FAR + start * 64
        while len(rows) < per:
            crowded = bool(want[len(rows)])
            if crowded and kind == "point":
                j, far, fits = far, far + 1, crowded_points
            else:
                j, i, fits = i, i + 1, _crowded
            sample = self.world.sample("train", j)
            if crowded and not fits(sample):
                continue
            rng = np.random.default_rng([self.seed, 7, j])
            msgs = conversation(sample, self.stage, rng, self.encoder.image_token, kind, self.qa_weights,
                                crowded=crowded and kind == "point")
            try:
                ex = self.encoder.example(msgs, "plain" if self.stage == 1 else "chat", self.max_len)
            except InvalidPrompt:
                self.skipped += 1
                continue
            rows.append(ex.input_ids)
            labels.append(ex.labels)
            images.append(sample.rendered.image)
        return collate(rows, labels, world_pixels(images, self.mean, self.std), pad_id=0)


__all__ = [
    "conversation",
    "count_fact",
    "scene_count_question",
    "WorldInstructions",
    "collate",
    "world_pixels",
    "count_subject",
    "count_points",
    "direct_count_question",
    "pointing_count_question",
    "point_question",
    "QA_KINDS",
    "CROWDED",
    "crowded_points",
    "parse_qa_weights",
    "parse_weights",
    "kind_probabilities",
]
