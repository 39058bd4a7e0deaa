"""Fine-tuning on a user's files, from any checkpoint mmfm loads (transformers, open_clip, the official
SAM file, LLaVA folders, mmfm's own): CLIP / CoCa / NegCLIP on image-text pairs (open_clip CSV or
webdataset shards), SAM on COCO instances, LLaVA on LLaVA JSON (stage 1: the projector; stage 2: the
projector and LoRA adapters).

Each run evaluates the starting model and the trained one on `val_data` when given (retrieval or
zero-shot for CLIP, mIoU for SAM, exact match and answer loss for LLaVA), and writes to `out`:
model/ (mmfm format), metrics.jsonl, curves.png, data_report.json (what was skipped and why) and
report.json (before / after). The loop is the one Trainer: accumulation, resume, torchrun."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import mmfm
from mmfm.data.files import detect_format
from mmfm.errors import ConfigError, DataError
from mmfm.train.trainer import FrozenLMTrainModule, TrainConfig, Trainer, run_folder

# Fine-tuning defaults (open_clip's and LLaVA's usual values, scaled to small batches); every one is a flag.
DEFAULTS = {
    "clip": dict(batch_size=64, lr=1e-5, weight_decay=0.1, log_every=10),
    "sam": dict(batch_size=4, lr=1e-5, weight_decay=0.1, betas=(0.9, 0.999), log_every=10),
    "llava1": dict(batch_size=8, lr=1e-3, weight_decay=0.0, log_every=5),
    "llava2": dict(batch_size=8, lr=2e-4, weight_decay=0.0, log_every=5),
}


def train_config(kind: str, n_records: int | None, epochs: float | None, **overrides) -> TrainConfig:
    """The recipe's defaults, the user's flags over them; steps from `epochs` when no steps are given
    (indexed data only), warmup 10% of the steps (at most 100) unless given."""
    tcfg = TrainConfig(**DEFAULTS[kind]).update(**{k: v for k, v in overrides.items() if k != "warmup"})
    if overrides.get("steps") is None:
        if n_records is None:
            raise ConfigError("streamed shards have no length: give --steps")
        tcfg.steps = max(1, math.ceil((epochs or 1.0) * n_records / tcfg.batch_size))
    if overrides.get("log_every") is None:  # a short run still logs a curve
        tcfg.log_every = max(1, min(tcfg.log_every, tcfg.steps // 20))
    tcfg.warmup = overrides["warmup"] if overrides.get("warmup") is not None else min(100, tcfg.steps // 10)
    return tcfg


def load_as(init, cls, what: str):
    model = mmfm.load(init)
    if not isinstance(model, cls):
        raise ConfigError(f"--from {init}: a {type(model).__name__}, not a {cls.__name__}; {what} needs a "
                          f"{cls.__name__} to start from")
    return model


def _run(module, tcfg: TrainConfig, batch_fn, out: Path, resume: bool, reports: list, evaluate, before) -> dict:
    trainer = Trainer(module, tcfg, batch_fn, out)
    t0 = time.perf_counter()
    history = trainer.train(resume=resume)
    report = {"train_config": {k: getattr(tcfg, k) for k in ("steps", "batch_size", "lr", "warmup", "accum", "seed")},
              "train_seconds": round(time.perf_counter() - t0, 1),
              "first_loss": history[0]["loss"] if history else None,
              "last_loss": history[-1]["loss"] if history else None}
    if trainer.rank == 0:
        module.model.save_pretrained(out / "model")
        (out / "data_report.json").write_text(json.dumps([r.to_dict() for r in reports], indent=2))
        if evaluate is not None:
            report["before"] = before
            report["after"] = evaluate(module.model.eval())
        report["data_report"] = [r.summary() for r in reports]
        (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


# ----------------------------------------------------------------------------------------------- CLIP
def clip_evaluator(val_data, val_format=None, images=None, image_key="filepath", caption_key="title",
                   label_key="label", classnames=None, templates=None, max_bad: float = 0.1):
    """val data -> evaluate(model) -> dict: an image folder or a CSV with a label column is zero-shot
    classification, captions (CSV or COCO captions) are retrieval."""
    from mmfm.data.labeled import read_captions, read_classes
    from mmfm.eval.files import retrieval_files, zeroshot_files

    if val_data is None:
        return None
    fmt = detect_format(val_data, ("csv", "imagefolder", "coco-captions"), val_format)
    classes = fmt == "imagefolder" or (fmt == "csv" and label_key in _columns(val_data))
    if classes:
        labeled = read_classes(val_data, fmt, images, image_key, label_key, classnames, max_bad)

        def evaluate(model):
            tpl = templates or ("world" if model.config.tokenizer == "world" else "openai")
            return {"zeroshot": zeroshot_files(model, labeled, tpl)}
    else:
        captioned = read_captions(val_data, fmt, images, image_key, caption_key, max_bad)

        def evaluate(model):
            return {"retrieval": retrieval_files(model, captioned)}
    return evaluate


def _columns(path) -> list[str]:
    import csv

    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        head = f.readline()
    return next(csv.reader([head], delimiter="\t" if "\t" in head or str(path).endswith(".tsv") else ","))


def finetune_clip(data, init, out="runs/clip-finetune", kind: str = "clip", fmt: str | None = None, images=None,
                  image_key: str = "filepath", caption_key: str = "title", val_data=None, val_format=None,
                  val_images=None, classnames=None, templates=None, lock_image: bool = False,
                  lock_image_unlocked: int = 0, lock_text: bool = False, epochs: float | None = None,
                  max_bad: float = 0.1, resume: bool = False, progress: bool = True, **overrides) -> dict:
    """Fine-tune a CLIP (kind "clip"), with NegCLIP's hard negatives made from each caption ("negclip"),
    or a CoCa ("coca") on image-text pairs. `lock_image`: LiT (the image tower frozen but its last
    `lock_image_unlocked` blocks)."""
    from mmfm.data.pairs import PairBatches, read_pairs
    from mmfm.models.clip import CLIP
    from mmfm.models.coca import CoCa
    from mmfm.train.clip import CLIPTrainModule
    from mmfm.train.coca import CoCaTrainModule

    if kind not in ("clip", "negclip", "coca"):
        raise ConfigError(f"unknown kind {kind!r}; use clip, negclip or coca")
    out = run_folder(out)
    fmt = detect_format(data, ("csv", "webdataset"), fmt)
    seed = overrides.get("seed") or 0
    source = read_pairs(data, fmt, images, image_key, caption_key, max_bad, seed)
    tcfg = train_config("clip", len(source) if fmt != "webdataset" else None, epochs, **overrides)
    tcfg.progress = progress
    model = load_as(init, CoCa if kind == "coca" else CLIP, f"train {kind}")
    if model.tokenizer is None:
        raise ConfigError(f"--from {init}: the model has no tokenizer (vocab.json + merges.txt or tokenizer.json "
                          "in its folder); captions cannot be read without one")
    if lock_image:
        model.lock_image_tower(lock_image_unlocked)
    if lock_text:
        model.lock_text_tower()
    evaluate = clip_evaluator(val_data, val_format, val_images, image_key, caption_key, classnames=classnames,
                              templates=templates, max_bad=max_bad)
    before = evaluate(model.eval()) if evaluate and not resume else None
    batches = PairBatches(source, model.tokenizer, model.preprocess, tcfg.batch_size, tcfg.seed,
                          hard_negatives=kind == "negclip")
    module = (CoCaTrainModule if kind == "coca" else CLIPTrainModule)(model)
    report = _run(module, tcfg, lambda s, m, r, w: batches.batch(s, m, r, w, tcfg.accum), out, resume,
                  [source.report], evaluate, before)
    return {"kind": kind, "from": str(init), "data": str(data), **report}


# ----------------------------------------------------------------------------------------------- SAM
def finetune_sam(data, init, out="runs/sam-finetune", images=None, val_data=None, val_images=None,
                 objects_per_image: int = 2, rounds: int = 3, box_fraction: float = 0.5, epochs: float | None = None,
                 max_bad: float = 0.1, val_objects: int | None = None, freeze_image_encoder: bool = False,
                 resume: bool = False, progress: bool = True, **overrides) -> dict:
    """Fine-tune SAM on COCO instances with the interactive simulation of the world recipe. With
    `freeze_image_encoder` only the prompt encoder and mask decoder learn (the common recipe when the
    encoder is large)."""
    from mmfm.data.coco import CocoSAMBatches, read_coco_instances
    from mmfm.eval.files import sam_files
    from mmfm.models.sam import SAM
    from mmfm.train.sam import SAMTrainModule

    out = run_folder(out)
    detect_format(data, ("coco-instances",), None)
    coco_images, report = read_coco_instances(data, images, max_bad)
    tcfg = train_config("sam", len(coco_images), epochs, **overrides)
    tcfg.progress = progress
    model = load_as(init, SAM, "train sam")
    if freeze_image_encoder:
        model.image_encoder.requires_grad_(False)
    evaluate = None
    if val_data is not None:
        detect_format(val_data, ("coco-instances",), None)
        val_images_, val_report = read_coco_instances(val_data, val_images, max_bad)

        def evaluate(m):
            return sam_files(m, val_images_, val_report, max_objects=val_objects)
    before = evaluate(model.eval()) if evaluate and not resume else None

    def normalize(x):
        return model.preprocess(x[None])[0]

    batches = CocoSAMBatches(coco_images, report, model.image_size, normalize, tcfg.batch_size, objects_per_image,
                             box_fraction, seed=tcfg.seed)
    res = _run(SAMTrainModule(model, rounds), tcfg, lambda s, m, r, w: batches.batch(s, m, r, w, tcfg.accum), out,
               resume, [report], evaluate, before)
    return {"from": str(init), "data": str(data), **res}


# ----------------------------------------------------------------------------------------------- LLaVA
def answers_evaluator(val_data, val_images, max_bad: float, val_n, read, score, out: Path):
    """--val-data of instruction records -> evaluate(model) -> scores: `score(model, records, report)`, its
    answers written to out/val_answers.json. None without val data."""
    if val_data is None:
        return None
    detect_format(val_data, ("llava",), None)
    records, report = read(val_data, val_images, max_bad)
    records = records[:val_n] if val_n else records

    def evaluate(model):
        res = score(model, records, report)
        out.mkdir(parents=True, exist_ok=True)
        (out / "val_answers.json").write_text(json.dumps(res.pop("examples"), indent=1))
        return res

    return evaluate


def score_before(evaluate, model, out: Path, resume: bool):
    """The starting model's scores (not on a resumed run), its answers kept as val_answers_before.json."""
    if evaluate is None or resume:
        return None
    res = evaluate(model.eval())
    (out / "val_answers.json").replace(out / "val_answers_before.json")
    return res


def finetune_llava(data, init=None, out="runs/llava-finetune", images=None, stage: int = 2, lora_rank: int = 16,
                   lora_alpha: float | None = None, val_data=None, val_images=None, max_len: int = 512,
                   epochs: float | None = None, max_bad: float = 0.1, val_n: int | None = None,
                   resume: bool = False, progress: bool = True, **overrides) -> dict:
    """Fine-tune a LLaVA (default: the shipped world LLaVA) on LLaVA JSON: stage 1 trains the projector
    on (image, answer) with the "plain" template, stage 2 the projector and LoRA adapters of rank
    `lora_rank` (0: the whole LM) with the LM's chat template."""
    from mmfm.data.instructions import InstructionBatches, read_instructions
    from mmfm.eval.files import llava_files
    from mmfm.models.llava import Llava
    from mmfm.train.llava import LORA_TARGETS, prepare_stage

    if stage not in (1, 2):
        raise ConfigError(f"--stage must be 1 or 2, got {stage}")
    out = run_folder(out)
    detect_format(data, ("llava",), None)
    records, report = read_instructions(data, images, max_bad)
    tcfg = train_config(f"llava{stage}", len(records), epochs, **overrides)
    tcfg.progress = progress
    if init is None:
        from mmfm.weights import path as weights_path

        init = weights_path("llava-world-tiny")
    model = load_as(init, Llava, "train llava")
    if model.tokenizer is None:
        raise ConfigError(f"--from {init}: the LLaVA has no tokenizer (tokenizer.json in its folder)")
    model.vision.float()
    lora = dict(r=lora_rank, alpha=lora_alpha or 2 * lora_rank, targets=list(LORA_TARGETS)) if lora_rank else None
    evaluate = answers_evaluator(val_data, val_images, max_bad, val_n, read_instructions,
                                 lambda m, recs, rep: llava_files(m, recs, rep, max_len=max_len), out)
    before = score_before(evaluate, model, out, resume)
    trainable = prepare_stage(model, stage, lora)
    if not trainable:
        raise ConfigError("nothing to train: the model's parameters are all frozen")
    batches = InstructionBatches(records, report, model.conversation(), model.preprocess, tcfg.batch_size,
                                 "plain" if stage == 1 else "chat", max_len, seed=tcfg.seed)
    res = _run(FrozenLMTrainModule(model), tcfg, lambda s, m, r, w: batches.batch(s, m, r, w, tcfg.accum), out,
               resume, [report], evaluate, before)
    return {"from": str(init), "data": str(data), "stage": stage, "trainable_parameters": trainable, **res}


# ----------------------------------------------------------------------------------------------- Molmo2
def finetune_molmo2(data, init, out="runs/molmo2-finetune", images=None, lora_rank: int = 16, val_data=None,
                    val_images=None, max_len: int = 2048, max_frames: int | None = None, packed: bool = True,
                    weighting: bool = True, epochs: float | None = None, max_bad: float = 0.1,
                    val_n: int | None = None, resume: bool = False, progress: bool = True, **overrides) -> dict:
    """Fine-tune a Molmo2 (mmfm or transformers folder) on LLaVA-style JSON of videos or image sets: each
    record a message tree, packed into rows with Molmo2's token weighting. The vision tower stays frozen;
    the adapter and LoRA adapters of rank `lora_rank` learn (0: the whole LM; a model with adapters keeps
    its own)."""
    from mmfm.data.molmo2_files import FileMolmo2Data, read_media_instructions
    from mmfm.eval.files import molmo2_files
    from mmfm.models.molmo2 import Molmo2
    from mmfm.train.molmo2 import LORA_TARGETS, Molmo2TrainModule, prepare

    out = run_folder(out)
    detect_format(data, ("llava",), None)
    records, report = read_media_instructions(data, images, max_bad)
    tcfg = train_config("llava2", len(records), epochs, **overrides)
    tcfg.progress = progress
    model = load_as(init, Molmo2, "train molmo2")
    if model.tokenizer is None:
        raise ConfigError(f"--from {init}: the Molmo2 has no tokenizer (tokenizer.json in its folder)")
    evaluate = answers_evaluator(val_data, val_images, max_bad, val_n, read_media_instructions,
                                 lambda m, recs, rep: molmo2_files(m, recs, rep, max_frames=max_frames), out)
    before = score_before(evaluate, model, out, resume)
    lora = dict(r=lora_rank, alpha=2 * lora_rank, targets=list(LORA_TARGETS)) if lora_rank else None
    trainable = prepare(model, lora)
    batches = FileMolmo2Data(model, records, report, tcfg.batch_size, max_len, max_frames, weighting, packed,
                             seed=tcfg.seed)
    res = _run(Molmo2TrainModule(model), tcfg, lambda s, m, r, w: batches.batch(s, m, r, w, tcfg.accum), out,
               resume, [report], evaluate, before)
    return {"from": str(init), "data": str(data), "trainable_parameters": trainable, **res}


def check_data_args(data, images) -> None:
    if data is None and images is not None:
        raise DataError("--images names where a dataset's relative image paths point; give --data too")


__all__ = ["finetune_clip", "finetune_sam", "finetune_llava", "finetune_molmo2", "train_config", "clip_evaluator",
           "DEFAULTS"]
