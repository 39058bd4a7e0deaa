"""A program writer that knows its language: request -> program pairs for the world's two-image
statements, to fine-tune a small LM (LoRA) and to measure it on wordings it never read.

Each statement kind (more, both, total, side, neither) has several wordings. The training pairs use
the `train` wordings; the `heldout` wordings, among them the world's own (`World.statement`'s text), are
never trained on, so validity and exact match on them measure whether the writer learned the mapping
rather than the sentences. The target of a request is `template_program(spec)`: the program a correct
writer gives for the statement's meaning, whatever its wording.

The tuned writer is asked with a bare prompt (`bare_prompt`: one system line and the request): it knows
the module language from its training, so the in-context examples the untuned LLM needs are left out,
which also keeps a training sequence near 100 tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmfm.chain.visprog.prompts import bare_prompt
from mmfm.chain.visprog.world_eval import same_program, template_program
from mmfm.errors import ConfigError
from mmfm.world.vocab import ALL_PAIRS, article, number_word, plural

# {P}: the shape's plural, {s}: the shape, {A}: "a"/"an" for the thing, {thing}: "<color> <shape>" or
# "<color> object", {side}: left/right, {other}: the other side, {nw}: the number in words, {n}: digits.
WORDINGS: dict[str, dict[str, list[str]]] = {
    "more": {
        "train": [
            "There are more {P} in the left image than in the right image.",
            "The right image has fewer {P} than the left image.",
            "Left has more {P} than right.",
            "Compared with the right picture, the left picture shows more {P}.",
            "More {P} appear on the left than on the right.",
            "The left image contains a greater number of {P} than the right one.",
        ],
        "heldout": [
            "The left image has more {P} than the right image.",  # the world's own wording
            "The left picture contains more {P} than the right picture.",
            "The number of {P} is larger in the left image than in the right one.",
        ],
    },
    "both": {
        "train": [
            "There is {A} {thing} in each image.",
            "Each of the two images has {A} {thing}.",
            "{A_cap} {thing} appears in both pictures.",
            "The left and the right image both show {A} {thing}.",
            "Both pictures have at least one {thing}.",
        ],
        "heldout": [
            "Both images contain {A} {thing}.",  # the world's own wording
            "Both pictures include {A} {thing}.",
            "You can see {A} {thing} in the left image and in the right image.",
        ],
    },
    "total": {
        "train": [
            "Together the two images show {nw} {P}.",
            "In total, the images contain exactly {nw} {P}.",
            "The two images have {nw} {P} altogether.",
            "Counting both images, there are {n} {P}.",
            "The left and right images hold {n} {P} between them.",
        ],
        "heldout": [
            "There are exactly {nw} {P} in total.",  # the world's own wording
            "The images contain {nw} {P} in all.",
            "Across both pictures there are exactly {n} {P}.",
        ],
    },
    "side": {
        "train": [
            "There is {A} {thing} in the {side} image.",
            "{A_cap} {thing} appears in the {side} picture.",
            "The {side} picture has {A} {thing}.",
            "In the {side} image you can see {A} {thing}.",
            "The image on the {side} shows {A} {thing}.",
        ],
        "heldout": [
            "The {side} image contains {A} {thing}.",  # the world's own wording
            "The {side} picture shows {A} {thing}.",
            "You can find {A} {thing} in the {side} image.",
        ],
    },
    "neither": {
        "train": [
            "There is no {s} in either image.",
            "None of the two images has {a_s} {s}.",
            "Both images are without {P}.",
            "No {s} appears in the left or the right image.",
            "The left image and the right image have no {P}.",
            "Neither the left nor the right picture has {a_s} {s}.",
        ],
        "heldout": [
            "Neither image contains {a_s} {s}.",  # the world's own wording
            "Neither picture shows {a_s} {s}.",
            "There are no {P} in either picture.",
        ],
    },
}
KINDS = tuple(WORDINGS)
TASK = "two_images"
SPLITS = ("train", "heldout")


@dataclass
class Pair:
    request: str
    program: str
    spec: dict
    wording: int  # index into WORDINGS[kind][split]


def random_spec(rng: np.random.Generator, kind: str, pairs=ALL_PAIRS) -> dict:
    """A statement's meaning as World.statement's spec gives it."""
    c, s = pairs[rng.integers(len(pairs))]
    if kind == "more" or kind == "neither":
        return {"kind": kind, "shape": s}
    if kind == "both":
        return {"kind": kind, "color": c} if rng.random() < 0.5 else {"kind": kind, "color": c, "shape": s}
    if kind == "total":
        return {"kind": kind, "shape": s, "n": int(rng.integers(0, 7))}
    if kind == "side":
        return {"kind": kind, "side": ("left", "right")[rng.integers(2)], "color": c, "shape": s}
    raise ConfigError(f"unknown statement kind {kind!r}; use one of {', '.join(KINDS)}")


def render(wording: str, spec: dict) -> str:
    s = spec.get("shape", "")
    thing = f"{spec['color']} {s}" if s and "color" in spec else f"{spec.get('color', '')} object"
    n = spec.get("n", 2)
    a = article(thing).lower() if "color" in spec else ""
    return wording.format(P=plural(s, 2 if spec["kind"] != "total" else n) if s else "", s=s, thing=thing,
                          A=a, A_cap=a.capitalize(), a_s=article(s).lower() if s else "",
                          side=spec.get("side", ""), nw=number_word(n), n=n)


def make_pairs(n: int, split: str = "train", seed: int = 0) -> list[Pair]:
    """`n` request -> program pairs in `split`'s wordings, kinds in turn (balanced), specs drawn by `seed`."""
    if split not in SPLITS:
        raise ConfigError(f"unknown wording split {split!r}; use train or heldout")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    out = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        spec = random_spec(rng, kind)
        k = int(rng.integers(len(WORDINGS[kind][split])))
        out.append(Pair(render(WORDINGS[kind][split][k], spec), template_program(spec), spec, k))
    return out


def conversations(pairs: list[Pair]) -> list[list[dict]]:
    """Training conversations: the bare prompt a tuned writer is asked with, then the target program."""
    return [bare_prompt(p.request, TASK) + [{"role": "assistant", "content": p.program}] for p in pairs]


PURPOSE = {"visprog": {"prompt": "bare", "tasks": [TASK]}}
PRESET = dict(pairs=2000, steps=120, batch_size=16, lr=1e-3, warmup=10, r=8, alpha=16.0)


def train_writer(out, steps: int | None = None, pairs: int | None = None, seed: int = 0, progress: bool = True,
                 precision: str = "auto", lm=None, **overrides) -> list[dict]:
    """Fine-tune SmolLM2-135M-Instruct (or `lm`) with LoRA on `pairs` request -> program pairs in the
    training wordings; the adapter folder is `out` (load it with mmfm.lm.load_lm, or pass it to
    LocalLLM / `mmfm visprog --llm-model`)."""
    from mmfm.lm import load_lm, smollm2_path
    from mmfm.train.lm_lora import train_lm_lora
    from mmfm.train.trainer import TrainConfig

    p = {**PRESET, **{k: v for k, v in dict(steps=steps, pairs=pairs, **overrides).items() if v is not None}}
    lm = lm if lm is not None else load_lm(smollm2_path(), dtype="float32")
    convs = conversations(make_pairs(int(p["pairs"]), "train", seed))
    cfg = TrainConfig(steps=int(p["steps"]), batch_size=int(p["batch_size"]), lr=float(p["lr"]), min_lr=0.0,
                      weight_decay=0.0, warmup=int(p["warmup"]), seed=seed, log_every=5, progress=progress,
                      precision=precision)
    return train_lm_lora(lm, convs, out, cfg, r=int(p["r"]), alpha=float(p["alpha"]), purpose=PURPOSE)


def evaluate_writer(llm, n: int = 300, split: str = "heldout", seed: int = 1, max_repairs: int = 0,
                    progress: bool = True) -> dict:
    """Program validity (parses and validates against the two-image module set) and exact match (the
    same steps as the target program) on `n` requests in `split`'s wordings, overall and by kind.
    max_repairs 0: the first answer counts, as a tuned writer should not need repairs."""
    from tqdm.auto import tqdm

    from mmfm.chain.visprog.modules import default_registry
    from mmfm.chain.visprog.program import parse
    from mmfm.chain.visprog.prompts import generate_programs

    items = make_pairs(n, split, seed)
    registry = default_registry()
    got = []
    bar = tqdm(total=n, desc=f"write programs ({split} wordings)", disable=not progress, dynamic_ncols=True)
    for start in range(0, n, 32):
        chunk = items[start : start + 32]
        got += generate_programs(llm, [p.request for p in chunk], TASK, registry, max_repairs=max_repairs)
        bar.update(len(chunk))
    bar.close()
    rows, examples = [], []
    for p, g in zip(items, got):
        valid = not isinstance(g, Exception)
        exact = valid and same_program(g.program, parse(p.program))
        rows.append((p.spec["kind"], valid, exact))
        if not exact and len(examples) < 12:
            examples.append({"request": p.request, "want": p.program,
                             "got": g.attempts[-1][0] if valid else str(g)})
    by_kind = {k: {"n": sum(r[0] == k for r in rows),
                   "valid": sum(r[1] for r in rows if r[0] == k), "exact": sum(r[2] for r in rows if r[0] == k)}
               for k in KINDS}
    return {"n": n, "split": split, "valid": sum(r[1] for r in rows), "exact": sum(r[2] for r in rows),
            "by_kind": by_kind, "misses": examples}


__all__ = ["WORDINGS", "KINDS", "Pair", "make_pairs", "random_spec", "render", "conversations", "TASK",
           "train_writer", "evaluate_writer", "PRESET", "PURPOSE"]
