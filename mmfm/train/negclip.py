"""NegCLIP (Yuksekgonul et al. 2023, "When and why vision-language models behave like bags-of-words"):
fine-tune a CLIP with hard negatives so that word order and attribute binding matter.

Each batch holds B/2 scenes and, for each, its nearest neighbour in the starting CLIP's image space
(a hard-negative image) with its own caption; every image comes with one caption and one hard-negative
caption. The negative captions enter only the image->text softmax (`clip_loss(negatives=...)`), the
text->image side is plain InfoNCE, as in the NegCLIP recipe; under torchrun everything is gathered.

Departures, each with a switch back to the published recipe (why and the measurements: bench/RESULTS.md,
"Compositionality"):
- false negatives dropped: a text identical to a row's own caption leaves that row's softmaxes
  (`NegCLIPModule(drop_false_negatives=False)` keeps them);
- in the world preset, each caption is also scored against its own hard negative alone
  (`hard_negative_loss`; `hard_negative_weight` 0 turns it off), since one hard negative among 2B
  candidates is swamped by the easy ones;
- in the world preset, a relation phase after the main one (`--relation-steps 0` skips it): relations
  first in one canonical direction ("B right of A" written "A left of B"), then all four words with
  each caption scored against its converse (`converse_weight`), then a short consolidation on the
  ordinary mixture that brings back zero-shot and the attribute swaps.

Captions and their negatives, per scene (drawn among those the scene has, weighted by KIND_WEIGHTS):
the world's exact negatives (attribute swap, relation swap, replacement), word order (a relation caption
shuffled), and ordinary captions with a rule-based perturbation (mmfm.text.perturb) so that CLIP's own
captions keep appearing. A negative naming a held-out color x shape composition is dropped.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import mmfm
from mmfm.errors import ConfigError
from mmfm.eval.clip_world import zeroshot_world
from mmfm.eval.compositionality import clip_scorer
from mmfm.eval.world_compositionality import world_suite
from mmfm.models.clip import CLIP
from mmfm.nn.losses import clip_loss, hard_negative_loss, text_keys
from mmfm.text.perturb import bindings, perturb, shuffle_nouns_adjectives
from mmfm.train.trainer import TrainConfig, Trainer
from mmfm.world import World
from mmfm.world.annotate import REL_PHRASE
from mmfm.world.vocab import COLOR_NAMES, INVERSE_RELATION, SHAPES, is_held_out

PRESETS = {
    "world-tiny": dict(
        train=dict(steps=1500, batch_size=128, lr=1e-3, weight_decay=0.1, warmup=100, min_lr=1e-6),
        scenes=40000,
        min_objects=2,
        hard_negative_weight=1.0,
        relations=dict(
            train=dict(steps=1300, batch_size=64, lr=1e-3, weight_decay=0.0, warmup=50, min_lr=1e-3,
                       precision="fp32"),  # the relation recipe was found in fp32 (bench/RESULTS.md)
            canonical_steps=600,
            relation_share=1.0,
            hard_negative_weight=4.0,
            converse_weight=1.0,
            consolidate=dict(steps=300, batch_size=96, lr=3e-4, warmup=20, min_lr=1e-5),
        ),
    ),
}
# How often each kind of negative is drawn, relative to the others, among those a scene has. The swaps
# get most of the batch: drawn uniformly (attribute swaps were ~13% of the negatives) the world CLIP
# never learned to bind in 1500 steps, while swap-only fine-tuning binds after ~25k examples.
KIND_WEIGHTS = {"attribute_swap": 3.0, "relation_swap": 3.0, "word_order": 2.0, "replace": 1.0, "caption": 1.0}
KINDS = tuple(KIND_WEIGHTS)
_PAIR = re.compile(r"\b(" + "|".join(COLOR_NAMES) + r")\s+(" + "|".join(SHAPES) + r")(?:e?s)?\b")


_PHRASE_REL = {v: k for k, v in REL_PHRASE.items()}
_RELATION = re.compile(r"(.+?) (" + "|".join(sorted(REL_PHRASE.values(), key=len, reverse=True)) + r") (.+)")


def converse(text: str) -> str | None:
    """"A to the right of B" -> "B to the left of A" (the same fact); None for a non-relation caption."""
    m = _RELATION.fullmatch(text)
    if m is None:
        return None
    a, phrase, b = m.groups()
    return f"{b} {REL_PHRASE[INVERSE_RELATION[_PHRASE_REL[phrase]]]} {a}"


def canonical(text: str) -> str:
    """A relation caption said with "left of" or "above" (its converse when it uses "right of" or
    "below"); any other text unchanged."""
    m = _RELATION.fullmatch(text)
    if m is None or _PHRASE_REL[m.group(2)] in ("left of", "above"):
        return text
    return converse(text)


def names_held_out(text: str) -> bool:
    return any(is_held_out(c, s) for c, s in _PAIR.findall(text))


def scene_options(sample, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(caption, hard negative, kind) for one world scene; kind is a key of KIND_WEIGHTS."""
    out = [(n.positive, n.text, n.kind) for n in sample.ann.negatives]
    for n in sample.ann.negatives:
        if n.kind == "relation_swap":
            sh = shuffle_nouns_adjectives(n.positive, rng)
            if sh is not None and sh != n.positive:
                out.append((n.positive, sh, "word_order"))
    for cap in sample.ann.captions:
        for kind in ("swap_attributes", "swap_relation", "shuffle_nouns_adjectives"):
            neg = perturb(cap.text, kind, rng)
            if neg is not None and neg != cap.text:
                out.append((cap.text, neg, "caption"))
                break
    # a shuffle that only reorders adjectives inside a phrase says the same thing: not a negative
    return [(p, n, k) for p, n, k in out
            if not names_held_out(n) and not names_held_out(p) and bindings(p) != bindings(n)]


@dataclass
class NegCLIPData:
    images: torch.Tensor  # (N, 3, S, S) uint8
    pos: torch.Tensor  # (N, K, T)
    neg: torch.Tensor  # (N, K, T)
    weights: torch.Tensor  # (N, K) probability of drawing each option (0 past the scene's options)
    kinds: torch.Tensor  # (N, K) index into KINDS of each option, -1 past the scene's options
    relation: torch.Tensor  # (N,) the option that is the scene's relation swap, -1 if none
    relation_forms: torch.Tensor  # (N, 4, T) its canonical caption / negative, its converse caption / negative
    neighbor: torch.Tensor  # (N,) nearest other scene in the starting CLIP's image space
    mean: torch.Tensor
    std: torch.Tensor
    batch_size: int
    seed: int = 0
    canonical_steps: int = 0  # relation captions in canonical form for the steps before this one
    relation_share: float = 0.0  # this share of a batch's scenes: ones with a relation swap, showing it (and
    # their neighbours showing theirs, where they have one)

    @classmethod
    def build(cls, model, n: int, batch_size: int, seed: int = 0, progress: bool = True,
              min_objects: int = 1) -> NegCLIPData:
        from tqdm.auto import tqdm


        if batch_size % 2:
            raise ConfigError("NegCLIP batches pair each scene with its neighbour: use an even batch size")
        world = World(seed=seed, size=model.config.vision.image_size, min_objects=min_objects, max_objects=4)
        tok = model.tokenizer
        images, options = [], []
        for i in tqdm(range(n), desc="NegCLIP scenes", disable=not progress, dynamic_ncols=True):
            s = world.sample("train", i)
            opts = scene_options(s, np.random.default_rng([seed, i, 11]))
            if not opts:  # no negative: an ordinary pair
                opts = [(s.ann.captions[0].text, s.ann.captions[0].text, "caption")]
            images.append(torch.from_numpy(s.rendered.image).permute(2, 0, 1))
            options.append(opts)
        k = max(len(o) for o in options)
        pos = tok([o[j % len(o)][0] for o in options for j in range(k)]).view(n, k, -1)
        neg = tok([o[j % len(o)][1] for o in options for j in range(k)]).view(n, k, -1)
        kinds = torch.full((n, k), -1, dtype=torch.long)
        relation = torch.full((n,), -1, dtype=torch.long)
        forms = []
        for i, o in enumerate(options):
            kinds[i, : len(o)] = torch.tensor([KINDS.index(kind) for _, _, kind in o])
            j = next((j for j, (_, _, kind) in enumerate(o) if kind == "relation_swap"), None)
            p, q = (o[j][0], o[j][1]) if j is not None else (o[0][0], o[0][0])
            if j is not None:
                relation[i] = j
            forms += [canonical(p), canonical(q), converse(p) or p, converse(q) or q]
        relation_forms = tok(forms).view(n, 4, -1)
        imgs = torch.stack(images)
        mean = torch.tensor(model.config.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(model.config.image_std).view(1, 3, 1, 1)
        emb = []
        with torch.inference_mode():
            for i in range(0, n, 512):
                x = (imgs[i : i + 512].float() / 255.0 - mean) / std
                emb.append(model.encode_image(x, normalize=True).float())
        emb = torch.cat(emb)
        neighbor = torch.empty(n, dtype=torch.long)
        for i in range(0, n, 1024):  # nearest neighbour by cosine, itself excluded
            sim = emb[i : i + 1024] @ emb.T
            sim[torch.arange(sim.shape[0]), torch.arange(i, i + sim.shape[0])] = -2.0
            neighbor[i : i + 1024] = sim.argmax(1)
        w = torch.tensor([KIND_WEIGHTS[kind] for kind in KINDS] + [0.0])[kinds]  # kind -1 (no option) reads the 0
        return cls(imgs, pos, neg, w / w.sum(1, keepdim=True), kinds, relation, relation_forms, neighbor,
                   mean, std, batch_size, seed)

    def with_schedule(self, batch_size: int, canonical_steps: int = 0, relation_share: float = 0.0) -> NegCLIPData:
        """The same scenes with another batch size and the relation curriculum: `relation_share` of each
        batch's scenes are scenes with a relation swap, showing that swap (and their neighbours theirs)."""
        return replace(self, batch_size=batch_size, canonical_steps=canonical_steps, relation_share=relation_share)

    def batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1, accum: int = 1) -> dict:
        n = self.images.shape[0]
        half = self.batch_size // 2
        nr = round(self.relation_share * half)
        anchors = _epoch_slice(n, half - nr, step, [self.seed])
        if nr:
            pool = torch.nonzero(self.relation >= 0).squeeze(1)
            if not len(pool):
                raise ConfigError("the relation phase needs scenes with a relation swap; none of these scenes has one")
            anchors = torch.cat([pool[_epoch_slice(len(pool), nr, step, [self.seed, 2])], anchors])
        idx = torch.cat([anchors, self.neighbor[anchors]])  # scenes, then their hard-negative images
        u = torch.from_numpy(np.random.default_rng([self.seed, step, 1]).random(len(idx))).float()
        which = torch.searchsorted(self.weights[idx].cumsum(1), u[:, None]).squeeze(1).clamp(max=self.pos.shape[1] - 1)
        which[:nr] = self.relation[idx[:nr]]
        near = self.relation[idx[half : half + nr]]  # their neighbours show theirs too, where they have one
        which[half : half + nr] = torch.where(near >= 0, near, which[half : half + nr])
        local = self.batch_size // (world * accum)
        part = slice((rank * accum + micro) * local, (rank * accum + micro + 1) * local)
        idx, which = idx[part], which[part]
        pixels = (self.images[idx].float() / 255.0 - self.mean) / self.std
        pos, neg = self.pos[idx, which], self.neg[idx, which]
        rel = self.relation[idx] == which
        forms = self.relation_forms[idx]
        canon = rel & (step < self.canonical_steps)
        pos = torch.where(canon[:, None], forms[:, 0], pos)
        neg = torch.where(canon[:, None], forms[:, 1], neg)
        return {"pixels": pixels, "input_ids": pos, "negative_ids": neg, "converse_ids": forms[:, 2],
                "converse_negative_ids": forms[:, 3], "converse_valid": rel & ~canon}


def _epoch_slice(n: int, size: int, step: int, seed: list) -> torch.Tensor:
    """`size` indices of range(n) for this step: a fresh permutation every epoch (wrapping around when n < size)."""
    if size == 0:
        return torch.zeros(0, dtype=torch.long)
    epoch, k = divmod(step, max(1, n // size))
    perm = torch.from_numpy(np.random.default_rng([*seed, epoch]).permutation(n))
    return perm[(k * size + torch.arange(size)) % n]


class NegCLIPModule(nn.Module):
    def __init__(self, model, drop_false_negatives: bool = True, hard_negative_weight: float = 0.0,
                 converse_weight: float = 0.0):
        super().__init__()
        self.model = model
        self.drop_false_negatives = drop_false_negatives
        self.hard_negative_weight = hard_negative_weight
        self.converse_weight = converse_weight

    def forward(self, batch: dict):
        img = F.normalize(self.model.encode_image(batch["pixels"]), dim=-1).float()
        txt = F.normalize(self.model.encode_text(batch["input_ids"]), dim=-1).float()
        neg = F.normalize(self.model.encode_text(batch["negative_ids"]), dim=-1).float()
        scale = self.model.scale()
        keys = {}
        if self.drop_false_negatives or self.hard_negative_weight:
            keys = {"keys": text_keys(batch["input_ids"]), "negative_keys": text_keys(batch["negative_ids"])}
        loss = clip_loss(img, txt, scale, negatives=neg, **(keys if self.drop_false_negatives else {}))
        logs = {"logit_scale": scale.detach()}
        if self.hard_negative_weight:
            hard = hard_negative_loss(img, txt, neg, scale, valid=keys["keys"] != keys["negative_keys"])
            loss = loss + self.hard_negative_weight * hard
            logs["hard_negative_loss"] = hard.detach()
        if self.converse_weight and "converse_ids" in batch:
            # a relation caption should read like its converse ("A right of B" ~ "B left of A"), not like
            # its swap: the same two-way softmax, text against text
            cv = F.normalize(self.model.encode_text(batch["converse_ids"]), dim=-1).float()
            cn = F.normalize(self.model.encode_text(batch["converse_negative_ids"]), dim=-1).float()
            conv = hard_negative_loss(txt, cv, cn, scale, valid=batch["converse_valid"])
            loss = loss + self.converse_weight * conv
            logs["converse_loss"] = conv.detach()
        return loss, logs


def evaluate_negclip(model, n: int = 500, seed: int = 0) -> dict:
    model.eval()
    zs = zeroshot_world(model, model.tokenizer, n=2 * n, seed=seed)
    return {"world_suite": world_suite(clip_scorer(model), n=n, seed=seed),
            "zeroshot": {k: v["single"]["top1"] for k, v in zs.items()}}


def train_negclip(
    init,
    out="runs/negclip",
    preset_name: str = "world-tiny",
    scenes: int | None = None,
    resume: bool = False,
    progress: bool = True,
    evaluate: bool = True,
    eval_n: int = 500,
    hard_negative_weight: float | None = None,
    min_objects: int | None = None,
    relation_steps: int | None = None,
    **overrides,
) -> dict:
    """Fine-tune the CLIP at `init` with NegCLIP on world scenes; writes out/model and out/report.json
    (world suite and zero-shot top-1, before and after). `relation_steps` sets the length of the preset's
    relation phase (written to out/relations; 0 skips it; its canonical part keeps its share)."""
    if preset_name not in PRESETS:
        raise ConfigError(f"unknown NegCLIP preset {preset_name!r}; known: {', '.join(PRESETS)}")
    p = PRESETS[preset_name]
    tcfg = TrainConfig(**p["train"]).update(**overrides)
    tcfg.progress = progress
    model = mmfm.load(init)
    if not isinstance(model, CLIP) or model.tokenizer is None:
        raise ConfigError(f"{init}: NegCLIP fine-tunes a CLIP with a tokenizer")
    model = model.float()
    out = Path(out)
    t0 = time.perf_counter()
    report: dict = {"init": str(init), "preset": preset_name,
                    "train_config": {k: getattr(tcfg, k) for k in ("steps", "batch_size", "lr", "seed")}}
    if evaluate and not resume:
        report["before"] = evaluate_negclip(model, eval_n, tcfg.seed)
    hn = p["hard_negative_weight"] if hard_negative_weight is None else hard_negative_weight
    mo = p["min_objects"] if min_objects is None else min_objects
    report["hard_negative_weight"], report["min_objects"] = hn, mo
    data = NegCLIPData.build(model.eval(), scenes or p["scenes"], tcfg.batch_size, seed=tcfg.seed, progress=progress,
                             min_objects=mo)
    trainer = Trainer(
        NegCLIPModule(model, hard_negative_weight=hn), tcfg, lambda s, m, r, w: data.batch(s, m, r, w, tcfg.accum), out
    )
    trainer.train(resume=resume)
    rp = p.get("relations")
    if rp and relation_steps != 0:  # the relation phase (see the module docstring), in out/relations
        asked = {k: overrides[k] for k in ("precision", "bf16") if overrides.get(k) is not None}

        def phase_config(**fields) -> TrainConfig:  # the phase's own schedule; seed, logging, an asked precision
            return TrainConfig(**fields).update(progress=progress, seed=tcfg.seed, log_every=tcfg.log_every, **asked)

        rcfg = phase_config(**rp["train"])
        scale = 1.0 if relation_steps is None else relation_steps / rcfg.steps
        canonical_steps = int(rp["canonical_steps"] * scale)
        rcfg.steps = round(rcfg.steps * scale)
        rdata = data.with_schedule(rcfg.batch_size, canonical_steps, rp["relation_share"])
        module = NegCLIPModule(
            model, hard_negative_weight=rp["hard_negative_weight"], converse_weight=rp["converse_weight"]
        )
        trainer = Trainer(module, rcfg, lambda s, m, r, w: rdata.batch(s, m, r, w, rcfg.accum), out / "relations")
        trainer.train(resume=resume)
        # then the ordinary mixture again at a decaying rate, so that zero-shot and the other swaps recover
        ccfg = phase_config(**{**rp["train"], **rp["consolidate"]})
        ccfg.steps = max(1, round(ccfg.steps * scale))
        cdata = data.with_schedule(ccfg.batch_size)
        trainer = Trainer(
            module, ccfg, lambda s, m, r, w: cdata.batch(s, m, r, w, ccfg.accum), out / "relations" / "consolidate"
        )
        trainer.train(resume=resume)
        report["relations"] = {k: v for k, v in rp.items() if k not in ("train", "consolidate")} | {
            "steps": rcfg.steps, "batch_size": rcfg.batch_size, "canonical_steps": canonical_steps,
            "consolidate_steps": ccfg.steps, "consolidate_lr": ccfg.lr}
    report["train_seconds"] = round(time.perf_counter() - t0, 1)
    if trainer.rank == 0:
        model.save_pretrained(out / "model")
        if evaluate:
            report["after"] = evaluate_negclip(model, eval_n, tcfg.seed)
        (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


__all__ = ["train_negclip", "NegCLIPData", "NegCLIPModule", "scene_options", "names_held_out", "evaluate_negclip",
           "canonical", "converse"]
