"""Trainer shared by every model: AdamW (no weight decay on norms, biases, embeddings, temperatures),
linear warmup + cosine, gradient clipping, accumulation, the precision measured per host (fp32 or bf16
autocast: mmfm.precision), a progress bar, metrics as
JSONL + a PNG of the curves, atomic checkpoints that resume exactly, a guard against non-finite
losses, and DistributedDataParallel under torchrun.

A run is defined by three things: the `module` (an nn.Module whose forward(batch) returns
(loss, metrics) and whose `.model` is what gets saved), `batch_fn(step, micro, rank, world)` (a pure
function of the step, so the data position *is* the step and a resumed run sees the same batches),
and a TrainConfig.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mmfm.compiled import Compiled
from mmfm.errors import ConfigError, TrainingError
from mmfm.precision import PRECISIONS, Choice, check_choice, choose, module_signature, shapes_signature
from mmfm.vision.plot import line_plot


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 256  # global batch, across ranks and accumulation steps
    lr: float = 1e-3
    min_lr: float = 0.0
    weight_decay: float = 0.1
    warmup: int = 100
    betas: tuple = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float | None = 1.0
    accum: int = 1
    precision: str = "auto"  # "auto" (measured on this host, see mmfm.precision), "fp32" or "bf16"
    compile: bool = False  # torch.compile the step (mmfm.compiled): faster steps after a compile of ~1 min
    seed: int = 0
    log_every: int = 10
    save_every: int = 0  # 0: only at the end
    progress: bool = True

    def update(self, **overrides) -> TrainConfig:
        """Set the given fields (None = keep the preset's); an unknown name is a ConfigError."""
        for k, v in overrides.items():
            if v is None:
                continue
            if k == "bf16":  # the older switch: bf16=True/False asks for that precision
                k, v = "precision", "bf16" if v else "fp32"
            if k == "precision":
                check_choice(v)
            if not hasattr(self, k):
                raise ConfigError(f"unknown training option {k!r}")
            setattr(self, k, v)
        return self


def param_groups(model: nn.Module, weight_decay: float, lr: float | None = None) -> list[dict]:
    """Weight decay on weight matrices only: not on norms, biases, embeddings (token, position,
    class token) or the temperature. A parameter with an `lr_scale` attribute (Flamingo's gates) gets
    its own group at lr * lr_scale."""
    no_decay_modules = (nn.LayerNorm, nn.Embedding)
    groups: dict[tuple, list] = {}
    seen = set()
    for mod in model.modules():
        for name, p in mod.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            skip = (isinstance(mod, no_decay_modules) or type(mod).__name__ == "RMSNorm" or p.ndim < 2
                    or name in ("bias", "pos_embed", "class_token", "logit_scale", "logit_bias"))
            groups.setdefault((not skip, float(getattr(p, "lr_scale", 1.0))), []).append(p)
    out = [{"params": groups.pop((True, 1.0), []), "weight_decay": weight_decay},
           {"params": groups.pop((False, 1.0), []), "weight_decay": 0.0}]
    for (decay, scale), params in sorted(groups.items()):
        if lr is None:
            raise ValueError("parameters with an lr_scale need the base lr")
        out.append({"params": params, "weight_decay": weight_decay if decay else 0.0, "lr": lr * scale})
    return out


def lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / max(1, cfg.warmup)
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        floor = cfg.min_lr / cfg.lr if cfg.lr else 0.0
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


class Trainer:
    def __init__(self, module: nn.Module, config: TrainConfig, batch_fn, out_dir, on_save=None, on_step=None):
        self.cfg = config
        self.out = run_folder(out_dir)
        self.batch_fn = batch_fn
        self.on_save = on_save  # called with (model, out_dir, step) on rank 0 after each checkpoint
        self.on_step = on_step  # called with the step number after each step (and its checkpoint)
        self.rank, self.world = 0, 1
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            if not dist.is_initialized():
                dist.init_process_group("gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if config.batch_size % (self.world * config.accum):
            raise TrainingError(f"batch size {config.batch_size} is not divisible by ranks x accumulation "
                                f"({self.world} x {config.accum})")
        self.module = module
        self.model = module.model
        self.wrapped = module
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.wrapped = DistributedDataParallel(module)
        self.opt = torch.optim.AdamW(
            param_groups(module, config.weight_decay, config.lr),
            lr=config.lr,
            betas=tuple(config.betas),
            eps=config.eps,
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(config))
        self.step = 0
        self.choice: Choice | None = None  # the precision, resolved when training starts

    # ------------------------------------------------------------------------------------- checkpoints
    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def prev_ckpt_path(self) -> Path:
        return self.out / "checkpoint.prev.pt"

    def _model_state(self) -> dict:
        """The module's state; without the frozen parameters when the module sets
        `checkpoint_trainable_only` (LLaVA, Flamingo: the frozen LM is rebuilt from its package on
        resume, and would make every checkpoint ~0.7 GB instead of a few tens of MB)."""
        sd = self.module.state_dict()
        if not getattr(self.module, "checkpoint_trainable_only", False):
            return sd
        frozen = {n for n, p in self.module.named_parameters(remove_duplicate=False) if not p.requires_grad}
        return {k: v for k, v in sd.items() if k not in frozen}

    def save(self) -> None:
        if self.rank == 0:
            state = {
                "step": self.step,
                "model": self._model_state(),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "rng": _rng_state(),
                "train_config": asdict(self.cfg),
                "precision": self.choice.precision.name if self.choice else None,
            }
            state["sha256"] = state_digest(state)  # torch's zip reader checks no CRC: the state checks itself
            tmp = self.ckpt_path.with_suffix(".tmp")
            torch.save(state, tmp)
            if self.ckpt_path.is_file():  # the last two are kept: a damaged newest one leaves the one before
                os.replace(self.ckpt_path, self.prev_ckpt_path)
            os.replace(tmp, self.ckpt_path)  # atomic: a kill never leaves a half-written checkpoint
            self.plot()
            if self.on_save is not None:
                self.on_save(self.model, self.out, self.step)
        if self.world > 1:
            dist.barrier()

    def load(self) -> None:
        state, problem = read_checkpoint(self.ckpt_path)
        if problem is not None:
            prev, prev_problem = read_checkpoint(self.prev_ckpt_path)
            hint = (f"the previous one, {self.prev_ckpt_path} (step {prev['step']}), is intact: move it to "
                    f"{self.ckpt_path.name} to resume from there" if prev_problem is None
                    else "no intact earlier checkpoint is left: start the run again without --resume")
            raise TrainingError(f"--resume: {self.ckpt_path} {problem}; {hint}")
        saved = state["train_config"]
        for key in ("steps", "batch_size", "lr", "seed", "accum"):
            if saved.get(key) != asdict(self.cfg).get(key):
                raise TrainingError(f"--resume: the checkpoint was made with {key}={saved.get(key)}, "
                                    f"this run asks for {asdict(self.cfg).get(key)}; use the same settings")
        if getattr(self.module, "checkpoint_trainable_only", False):
            missing, unexpected = self.module.load_state_dict(state["model"], strict=False)
            learned = {n for n, p in self.module.named_parameters(remove_duplicate=False) if p.requires_grad}
            if unexpected or learned & set(missing):
                raise TrainingError(f"--resume: the checkpoint does not match this model (missing learned "
                                    f"{sorted(learned & set(missing))[:3]}, unexpected {unexpected[:3]})")
        else:
            self.module.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.step = state["step"]
        if self.cfg.precision == "auto" and state.get("precision") in PRECISIONS:  # resume as the run began
            self.choice = Choice(PRECISIONS[state["precision"]], {}, cached=True, requested="auto")
        metrics = self.out / "metrics.jsonl"
        if metrics.is_file() and self.rank == 0:  # drop what the killed run logged after its checkpoint
            keep = []
            for ln in metrics.read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(ln)
                    if rec["step"] <= self.step:
                        keep.append(ln)
                except (ValueError, KeyError, TypeError):  # a line cut by the kill, or not ours: dropped
                    continue
            metrics.write_text("".join(ln + "\n" for ln in keep))

    # ------------------------------------------------------------------------------------- loop
    def train(self, resume: bool = False) -> list[dict]:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load()
        else:
            torch.manual_seed(cfg.seed)
            np.random.seed(cfg.seed)
            random.seed(cfg.seed)
            (self.out / "metrics.jsonl").write_text("") if self.rank == 0 else None
        self._resolve_precision()
        if cfg.compile and not isinstance(self.wrapped, Compiled):  # after timing: the precision runs eager
            self.wrapped = Compiled(self.wrapped, name=f"the {type(self.model).__name__} training step")
            if cfg.progress and self.rank == 0:
                print("torch.compile: the first step compiles the model (about a minute on 2 cores)", flush=True)
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=self.step, disable=not cfg.progress or self.rank != 0,
                   desc=f"train {type(self.model).__name__}", dynamic_ncols=True)
        history, t0, seen = [], time.perf_counter(), 0
        self.module.train()
        while self.step < cfg.steps:
            metrics = self._one_step()
            self.step += 1
            seen += cfg.batch_size
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                dt = time.perf_counter() - t0
                rec = {"step": self.step, **metrics, "lr": self.sched.get_last_lr()[0], "samples_per_s": seen / dt,
                       "precision": self.choice.precision.name}
                if isinstance(self.wrapped, Compiled):  # compiled, or fell back to eager (then: why)
                    rec["compiled"] = self.wrapped.failed is None or self.wrapped.failed
                history.append(rec)
                if self.rank == 0:
                    with open(self.out / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(rec) + "\n")
                t0, seen = time.perf_counter(), 0
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                self.save()
            if self.on_step is not None:
                self.on_step(self.step)
        bar.close()
        self.save()
        if hasattr(self.module, "apply_precision"):
            self.module.apply_precision(None)  # back to the dtypes the model was built in
        return history

    def _resolve_precision(self) -> None:
        """Measure (or read from the cache) which precision this step is fastest in on this host, on the
        first batch, without changing the model: gradients dropped, buffers and random states restored.
        A module may define `apply_precision(p)` to also cast what it keeps frozen (LLaVA's LM)."""
        apply = getattr(self.module, "apply_precision", None)
        if self.choice is None:
            batch = self.batch_fn(self.step, 0, self.rank, self.world)
            buffers = {n: b.detach().clone() for n, b in self.module.named_buffers()}

            def run(p) -> None:
                if apply is not None:
                    apply(p)
                with p.context():
                    loss, _ = self.module(batch)  # not the DDP wrapper: no collectives while timing
                loss.backward()
                self.module.zero_grad(set_to_none=True)

            self.module.train()
            self.choice = choose(self.cfg.precision, run,
                                 f"{module_signature(self.module)}|{shapes_signature(batch)}")
            with torch.no_grad():
                for n, b in self.module.named_buffers():
                    if n in buffers:
                        b.copy_(buffers[n])
            if self.world > 1:  # every rank runs rank 0's choice
                name = [self.choice.precision.name]
                dist.broadcast_object_list(name, src=0)
                if name[0] != self.choice.precision.name:
                    self.choice = Choice(PRECISIONS[name[0]], self.choice.ms, requested=self.cfg.precision)
        if apply is not None:
            apply(self.choice.precision)
        if self.cfg.progress and self.rank == 0:
            print(self.choice.describe(), flush=True)

    def _one_step(self) -> dict:
        cfg = self.cfg
        self.opt.zero_grad(set_to_none=True)
        total, sums = 0.0, {}
        for micro in range(cfg.accum):
            batch = self.batch_fn(self.step, micro, self.rank, self.world)
            with self.choice.precision.context():
                loss, metrics = self.wrapped(batch)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"loss is {loss.item()} at step {self.step}: training diverged. Lower the learning rate, "
                    f"use --precision fp32, or check the data; the last good checkpoint is {self.ckpt_path}"
                )
            (loss / cfg.accum).backward()
            total += loss.item() / cfg.accum
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v) / cfg.accum
        if cfg.grad_clip:
            sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.grad_clip))
        if self.world > 1:  # log the global-batch loss, not this rank's share
            t = torch.tensor([total], dtype=torch.float64)
            dist.all_reduce(t)
            total = t.item() / self.world
        self.opt.step()
        self.sched.step()
        if hasattr(self.module, "after_step"):
            self.module.after_step()
        return {"loss": total, **sums}

    def plot(self) -> None:
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return
        recs = [json.loads(ln) for ln in path.read_text().splitlines() if ln]
        if not recs:
            return
        series = {"loss": [(r["step"], r["loss"]) for r in recs]}
        line_plot(series, title=f"{type(self.model).__name__} training loss", xlabel="step", ylabel="loss").save(
            self.out / "curves.png"
        )


def _rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python": [int(py_state[0]), torch.tensor(py_state[1], dtype=torch.int64)],
    }


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    keys, pos, has_gauss, cached = s["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate((s["python"][0], tuple(int(v) for v in s["python"][1].tolist()), None))


def split_preset(presets: dict, name: str, kind: str):
    """A training preset {"model": ..., "train": {...}, **extra} -> (its model entry, TrainConfig, extra).
    An unknown name raises ConfigError listing the known ones."""
    if name not in presets:
        raise ConfigError(f"unknown {kind} preset {name!r}; known: {', '.join(presets)}")
    p = presets[name]
    return p["model"], TrainConfig(**p["train"]), {k: v for k, v in p.items() if k not in ("model", "train")}


def run_folder(out) -> Path:
    """A training run's folder: an existing file there (a mistyped --out) is a ConfigError before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; runs write several files into a folder")
    return out


def state_digest(state: dict) -> str:
    """SHA-256 over every tensor's bytes and every value of a checkpoint's state, in key order."""
    h = hashlib.sha256()

    def walk(x, key: str) -> None:
        h.update(key.encode())
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous().reshape(-1)
            h.update(str((t.dtype, tuple(x.shape))).encode())
            h.update(memoryview(t.view(torch.uint8).numpy()))
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                if key or k != "sha256":
                    walk(x[k], f"{key}/{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{key}[{i}]")
        else:
            h.update(repr(x).encode())

    walk(state, "")
    return h.hexdigest()


def read_checkpoint(path: Path) -> tuple[dict | None, str | None]:
    """(state, None) for an intact training checkpoint, else (None, what is wrong with it)."""
    if not path.is_file():
        return None, "does not exist"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncation, a foreign pickle, a bad zip: all mean unusable
        return None, f"is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    if not isinstance(state, dict) or not {"step", "model", "optimizer", "scheduler", "rng",
                                            "train_config"} <= set(state):
        return None, "is not an mmfm training checkpoint"
    if "sha256" in state and state["sha256"] != state_digest(state):  # checkpoints before 0.1 carry none
        return None, "is damaged (its content does not match the SHA-256 recorded when it was written)"
    return state, None


class FrozenLMPrecision:
    """`apply_precision` for a training module whose `.model.lm` is a frozen LM (LLaVA, Flamingo, Molmo2):
    an LM built in bf16 is cast to fp32 for an fp32 step and back for a bf16 one (both exact), and None
    puts back the dtypes the model was built in. An LM built in fp32 stays fp32 (under autocast each op
    casts), so nothing is ever rounded for good. Trainable tensors (projectors, adapters) stay fp32."""

    def apply_precision(self, precision) -> None:
        lm = getattr(self.model, "lm", None)
        if lm is None:
            return
        if not hasattr(self, "_built_dtypes"):
            self._built_dtypes = {n: p.dtype for n, p in lm.named_parameters()
                                  if not p.requires_grad and p.is_floating_point()}
        for n, p in lm.named_parameters():
            if n in self._built_dtypes:
                built = self._built_dtypes[n]  # an LM built in fp32 is never rounded to bf16: autocast casts
                want = torch.float32 if precision is not None and not precision.autocast else built
                if p.dtype != want:
                    p.data = p.data.to(want)


def lm_dtype(precision: str) -> str:
    """The dtype a frozen LM is built in for a precision choice: bf16 unless fp32 was asked for (auto
    may still run it in fp32: FrozenLMPrecision casts it)."""
    return "float32" if precision == "fp32" else "bfloat16"


class FrozenLMTrainModule(FrozenLMPrecision, nn.Module):
    """The training step of a model on a frozen LM (LLaVA, Flamingo): next-token loss over the supervised
    tokens of a batch {input_ids, pixels, labels}. Only the trainable tensors are checkpointed: the
    frozen LM and tower are rebuilt from their sources on resume."""

    checkpoint_trainable_only = True

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict):
        out = self.model(batch["input_ids"], batch["pixels"], labels=batch["labels"])
        return out.loss, {"tokens": float(out.num_tokens)}
