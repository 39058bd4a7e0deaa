"""`mmfm course report --full`: the claims that rest on training runs (batch size, CoCa, Flamingo,
NegCLIP, Molmo's pointing) trained again on several world seeds instead of read from recorded.json.

Each run is the recipe its recorded number came from (the same command with `--seed s`), then the
evaluation that number came from. Its result goes to OUT/runs/<claim>/seed<s>/record.json in
recorded.json's shape for one seed, so an interrupted `--full` resumes where it stopped: a seed with a
record is not trained again. `scale` < 1 shortens every run (steps, scenes, evaluation items) to check
the wiring in minutes; such numbers mean nothing, and the report marks them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mmfm.course.claims.base import RECORDED, SEEDS


def _n(x: float, scale: float, least: int = 1) -> int:
    return max(least, round(x * scale))


def _suite(ev: dict) -> dict:
    """evaluate_negclip's output -> the four numbers recorded.json keeps."""
    s = ev["world_suite"]
    return {"attribute_swap": s["attribute_swap"]["accuracy"], "relation_swap": s["relation_swap"]["accuracy"],
            "word_order": s["word_order"]["accuracy"], "zeroshot_heldout": ev["zeroshot"]["heldout"]}


def negclip(seed: int, out: Path, scale: float, progress: bool) -> dict:
    """`mmfm train negclip --from <shipped clip-world-tiny> --seed s`: the suite before and after."""
    from mmfm.train.negclip import PRESETS, train_negclip
    from mmfm.weights import path

    p = PRESETS["world-tiny"]
    kw = {}
    if scale != 1:
        steps = _n(p["train"]["steps"], scale)
        kw = dict(steps=steps, warmup=min(p["train"]["warmup"], steps), scenes=_n(p["scenes"], scale, 64),
                  relation_steps=_n(p["relations"]["train"]["steps"], scale))
    rep = train_negclip(path("clip-world-tiny"), out=out, seed=seed, progress=progress,
                        eval_n=_n(500, scale, 16), **kw)
    return {"seed": seed, "before": _suite(rep["before"]), "after": _suite(rep["after"]),
            "train_seconds": rep["train_seconds"]}


def coca(seed: int, out: Path, scale: float, progress: bool) -> dict:
    """`mmfm train coca --preset world-tiny --seed s`, and the same with the caption loss weight 0."""
    from mmfm.train.coca import preset, train_world_coca

    _, tcfg, extra = preset("world-tiny")
    kw = {}
    if scale != 1:
        steps = _n(tcfg.steps, scale)
        kw = dict(steps=steps, warmup=min(tcfg.warmup, steps), scenes=_n(extra["scenes"], scale, tcfg.batch_size))
    n = _n(500, scale, 16)
    with_captions = train_world_coca(out=out / "coca", seed=seed, progress=progress, eval_n=n, **kw)
    without = train_world_coca(out=out / "caption-weight-0", seed=seed, progress=progress, eval_n=n,
                               caption_loss_weight=0.0, **kw)
    zs = lambda r, split: r["zeroshot"][split]["single"]["top1"]  # noqa: E731
    return {"seed": seed, "rows": {
        "CoCa zero-shot held-out": zs(with_captions, "heldout"),
        "same architecture, caption loss 0": zs(without, "heldout"),
        "CoCa zero-shot seen": zs(with_captions, "seen"),
        "same architecture, caption loss 0, seen": zs(without, "seen"),
        "CIDEr-D held-out": with_captions["captioning"]["heldout"]["CIDEr-D"]}}


def flamingo(seed: int, out: Path, scale: float, progress: bool) -> dict:
    """`mmfm train flamingo --preset world-tiny --seed s`: few-shot accuracy at 0 / 4 / 8 shots."""
    from mmfm.train.flamingo import preset, train_world_flamingo

    kw = {}
    if scale != 1:
        train = preset("world-tiny")["train"]
        steps = _n(train["steps"], scale)
        kw = dict(steps=steps, warmup=min(train.get("warmup", 100), steps))
    n = _n(60, scale, 4)
    rep = train_world_flamingo(out=out, seed=seed, progress=progress, eval_n=n, **kw)
    tasks = rep["fewshot"]["tasks"]
    shots = [0, 4, 8]
    return {"seed": seed, "n": n, "shots": shots,
            **{t: [tasks[t]["random"][str(k)]["accuracy"] for k in shots] for t in ("new_names", "color", "count")}}


def batch_size(seed: int, out: Path, scale: float, progress: bool) -> dict:
    """`mmfm experiment batch-size --pairs 204800 --seed s`: one CLIP per batch size on the same pairs."""
    from mmfm.train.batch_size import BATCHES, run_batch_size_experiment

    pairs = RECORDED["batch_size"].get("pairs", 204_800)
    kw = {}
    if scale != 1:
        pairs = max(BATCHES) * max(1, round(pairs * scale / max(BATCHES)))
        kw = dict(scenes=_n(24_000, scale, max(BATCHES)))
    res = run_batch_size_experiment(out=out, pairs=pairs, seed=seed, eval_n=_n(500, scale, 16), progress=progress,
                                    **kw)
    keys = ("fine_grained", "attribute_swap", "relation_swap", "word_order")
    return {"seed": seed, "series": {"batch": list(res), **{k: [r[k] for r in res.values()] for k in keys}}}


def molmo(seed: int, out: Path, scale: float, progress: bool) -> dict:
    """molmo-world-tiny's recipe (its README) with `--seed s`: from the shipped world LLaVA with Molmo's
    image layout, the whole LM trained on pointing (1,500 steps), then with the questions back in the mix
    (1,000 steps), compressed to rank-32 bf16 adapters, then those adapters folded in and the whole LM
    trained 300 more mixed steps with half the count questions on crowded scenes, compressed again as
    shipped; pointing F1 and crowded-scene counting on new scenes of world seed s. A stage whose model is
    already in OUT is not trained again, so an interrupted run resumes at the stage it stopped in."""
    import torch

    import mmfm
    from mmfm.eval.llava_world import evaluate_llava_world
    from mmfm.lm.frozen_base import cast_adapters, to_adapters
    from mmfm.train.llava import LORA_TARGETS, train_world_llava
    from mmfm.weights import path

    mix = "point=0.5,count=0.25,qa=0.35,multi=0.15,caption=0.05"

    def stage(name: str, init, steps: int, kinds: str, lr: float, warmup: int = 100, **kw) -> Path:
        folder = out / name
        model = folder / "stage2" / "model"
        if (model / "config.json").is_file():
            return model
        train_world_llava(2, out=folder, init=init, train_lm=True, kind_weights=kinds, steps=_n(steps, scale),
                          warmup=min(warmup, _n(steps, scale)), batch_size=8, lr=lr, seed=seed, evaluate=False,
                          progress=progress, **kw)
        for ckpt in (folder / "stage2").glob("checkpoint*.pt"):  # the optimizer's state: GBs, not needed now
            ckpt.unlink()
        return model

    def adapters(whole: Path, name: str) -> Path:
        # the shipped form: rank-32 LoRA over SmolLM2, stored in bf16 (mmfm lora extract --rank 32)
        if not (out / name / "config.json").is_file():
            model = mmfm.load(whole)
            to_adapters(model, 32, LORA_TARGETS)
            cast_adapters(model, torch.bfloat16)
            model.save_pretrained(out / name)
        return out / name

    pointing = stage("point", path("llava-world-tiny"), 1500, "point=1,count=0.3,qa=0,multi=0,caption=0", 5e-5,
                     image_layout=True)
    mixed = adapters(stage("mixed", pointing, 1000, mix, 3e-5), "mixed_adapters")
    model = adapters(stage("crowded", mixed, 300, mix, 3e-5, warmup=30, crowded=0.5), "model")
    n = _n(100, scale, 2)
    ev = evaluate_llava_world(mmfm.load(model).eval(), n=n, seed=seed, crowded=4, progress=progress)
    return {"seed": seed, "n": n, **record_of_molmo(ev)}


def record_of_molmo(ev: dict) -> dict:
    """evaluate_llava_world(..., crowded=4)'s output -> the numbers recorded.json keeps for a Molmo run."""
    t, crowd = ev["test"], ev["test"]["crowded"]
    return {"pointing_f1": t["pointing"]["f1"], "heldout_pointing_f1": ev["heldout"]["pointing"]["f1"],
            "crowded_n": crowd["n"], "crowded_direct": crowd["direct"]["exact"],
            "crowded_pointing": crowd["pointing"]["exact"]}


TRAIN = {"batch_size": batch_size, "coca": coca, "flamingo": flamingo, "negclip": negclip, "molmo": molmo}


def seed_records(key: str, out: Path, seeds=SEEDS, scale: float = 1.0, progress: bool = True) -> list[dict]:
    """One record per seed for a retrained claim, trained now or read from an earlier --full run."""
    records = []
    for s in seeds:
        folder = Path(out) / "runs" / key / f"seed{s}"
        done = folder / "record.json"
        if done.exists():
            rec = json.loads(done.read_text())
            if rec.get("scale") == scale:
                records.append(rec)
                continue
        print(f"      retraining {key}, seed {s} (scale {scale:g}) -> {folder}")
        t0 = time.perf_counter()
        rec = TRAIN[key](s, folder, scale, progress) | {"scale": scale, "seconds": round(time.perf_counter() - t0, 1)}
        folder.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(rec, indent=2))
        records.append(rec)
    return records


__all__ = ["TRAIN", "record_of_molmo", "seed_records"]
