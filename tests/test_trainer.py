"""The trainer: a killed run resumes and reproduces the uninterrupted run's losses exactly; under
torchrun (2 processes, gloo, DDP) the global-batch losses equal one process's; non-finite losses stop
with a clear error; weight decay skips norms, biases, embeddings and the temperature."""

import json
import socket
import subprocess
import sys

import pytest
import torch
from torch import nn

from mmfm.errors import TrainingError
from mmfm.train.trainer import TrainConfig, Trainer, param_groups

SMALL = ["--steps", "12", "--batch-size", "32", "--scenes", "256", "--no-eval", "--log-every", "1"]


def train_cli(out, *extra, check=True):
    cmd = [sys.executable, "-m", "mmfm.cli.main", "train", "clip", "--out", str(out), *SMALL, *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


# The run of `train_cli(out, "--save-every", "4")`, through the Python API, with a step callback that
# kills the process after step 7 as a killed job dies: no cleanup, no final save.
KILLED_AT_7 = """
import os, signal, sys
from mmfm.runtime import tune_malloc
from mmfm.train.clip import train_world_clip
tune_malloc()
kill = lambda step: os.kill(os.getpid(), signal.SIGKILL) if step == 7 else None
train_world_clip("world-tiny", sys.argv[1], scenes=256, evaluate=False, steps=12, batch_size=32, log_every=1,
                 save_every=4, on_step=kill)
"""


def losses(out):
    return [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines() if ln]


def test_kill_and_resume_reproduces_the_uninterrupted_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train_cli(a, "--save-every", "4")
    full = losses(a)
    assert len(full) == 12 and full[-1] < full[0]
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_7, str(b)], capture_output=True, timeout=600)
    assert killed.returncode == -9  # SIGKILL, mid-way: checkpoint at step 4, steps 5-7 lost
    assert torch.load(b / "checkpoint.pt", weights_only=True)["step"] == 4
    assert not (b / "model").exists()
    train_cli(b, "--save-every", "4", "--resume")
    assert losses(b) == full  # bit for bit
    assert (b / "model" / "model.safetensors").is_file() and (b / "curves.png").is_file()
    # resuming with other settings is refused, not silently mixed
    res = train_cli(b, "--resume", "--lr", "0.5", check=False)
    assert res.returncode == 2 and "lr" in res.stderr


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_torchrun_ddp_matches_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    # the plain-ViT preset: the hybrid's BatchNorm uses per-rank batch statistics, as DDP does by design
    args = ["--preset", "world-tiny-vit", "--steps", "3", "--batch-size", "16", "--scenes", "64", "--no-eval",
            "--log-every", "1", "--fp32"]
    subprocess.run([sys.executable, "-m", "mmfm.cli.main", "train", "clip", "--out", str(one), *args],
                   check=True, capture_output=True, timeout=300)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          _free_port(), "-m", "mmfm.cli.main", "train", "clip", "--out", str(two), *args],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 3
    assert all(abs(x - y) < 1e-4 for x, y in zip(a, b)), (a, b)


class _Toy(nn.Module):
    def __init__(self, bad_after: int | None = None):
        super().__init__()
        self.model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 1))
        self.logit_scale = nn.Parameter(torch.tensor(1.0))
        self.bad_after, self.calls = bad_after, 0

    def forward(self, batch):
        self.calls += 1
        loss = self.model(batch).pow(2).mean() * self.logit_scale
        if self.bad_after is not None and self.calls > self.bad_after:
            loss = loss * float("nan")
        return loss, {}


def test_nan_guard(tmp_path):
    # fp32 asked: --precision auto would time a few forward passes first, and this toy counts them
    cfg = TrainConfig(steps=5, batch_size=4, lr=1e-2, warmup=1, progress=False, log_every=1, precision="fp32")
    tr = Trainer(_Toy(bad_after=2), cfg, lambda s, m, r, w: torch.randint(0, 10, (4,)), tmp_path)
    with pytest.raises(TrainingError, match="step 2"):
        tr.train()


def test_weight_decay_groups():
    toy = _Toy()
    decay, no_decay = param_groups(toy, 0.1)
    names = {id(p): n for n, p in toy.named_parameters()}
    assert [names[id(p)] for p in decay["params"]] == ["model.2.weight"]
    assert {names[id(p)] for p in no_decay["params"]} == {"model.0.weight", "model.1.weight", "model.1.bias",
                                                           "model.2.bias", "logit_scale"}
    from mmfm.models.clip import CLIP, CLIPConfig

    clip = CLIP(CLIPConfig(embed_dim=8, vision=dict(image_size=16, patch_size=8, width=16, layers=1, heads=2),
                           text=dict(vocab_size=20, context_length=8, width=16, layers=1, heads=2, sot_token_id=18,
                                     eot_token_id=19)))
    d, nd = param_groups(clip, 0.1)
    nd_names = {n for n, p in clip.named_parameters() if any(p is q for q in nd["params"])}
    assert {
        "logit_scale",
        "visual.pos_embed",
        "visual.class_token",
        "text.pos_embed",
        "text.token_embed.weight",
    } <= nd_names
    assert all(p.ndim >= 2 for p in d["params"])


def test_lr_scale_groups_follow_the_schedule(tmp_path):
    """A parameter with `lr_scale` (Flamingo's gated blocks) learns at lr * scale, warmup and cosine included."""
    toy = _Toy()
    toy.model[2].weight.lr_scale = 10.0
    toy.model[2].bias.lr_scale = 10.0
    groups = param_groups(toy, 0.1, lr=1e-3)
    assert len(groups) == 4
    scaled = [g for g in groups if "lr" in g]
    assert {g["weight_decay"] for g in scaled} == {0.1, 0.0} and all(g["lr"] == 1e-2 for g in scaled)
    with pytest.raises(ValueError):
        param_groups(toy, 0.1)
    cfg = TrainConfig(steps=4, batch_size=4, lr=1e-3, warmup=2, progress=False, log_every=1)
    tr = Trainer(toy, cfg, lambda s, m, r, w: torch.randint(0, 10, (4,)), tmp_path)
    lrs = [g["lr"] for g in tr.opt.param_groups]
    assert sorted(lrs) == [5e-4, 5e-4, 5e-3, 5e-3]  # warmup step 1 of 2: half of each group's lr


class _Frozen(_Toy):
    checkpoint_trainable_only = True

    def __init__(self):
        super().__init__()
        self.model[0].requires_grad_(False)  # a frozen embedding, as LLaVA's / Flamingo's LM


def test_trainable_only_checkpoints_resume_exactly(tmp_path):
    class Crash(Exception):
        pass

    def run(out, crash_at=None, resume=False):
        torch.manual_seed(0)
        m = _Frozen()
        cfg = TrainConfig(steps=6, batch_size=4, lr=1e-2, warmup=1, progress=False, log_every=1, save_every=3)

        def batch(s, mi, r, w):
            if s == crash_at:
                raise Crash  # dies after the step-3 checkpoint, as a killed run
            return torch.arange(4) + s % 6

        tr = Trainer(m, cfg, batch, out)
        try:
            tr.train(resume=resume)
        except Crash:
            pass
        return m

    full = run(tmp_path / "a")
    run(tmp_path / "b", crash_at=4)
    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3
    assert "model.0.weight" not in state["model"] and "model.2.weight" in state["model"]  # frozen table not saved
    resumed = run(tmp_path / "b", resume=True)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def _flip(path, offset_fraction: float = 0.6, n: int = 4096):
    """Overwrite n bytes in the middle of a file (a damaged disk block), size unchanged."""
    data = bytearray(path.read_bytes())
    at = int(len(data) * offset_fraction)
    data[at : at + n] = bytes((b ^ 0x5A) for b in data[at : at + n])
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_refused_and_the_intact_one_named(tmp_path):
    """Bytes altered in checkpoint.pt after it was written: resume refuses it (torch alone would load it
    and train on), names the previous checkpoint, which is intact, and resumes from that one once moved."""
    torch.manual_seed(0)
    cfg = TrainConfig(steps=6, batch_size=4, lr=1e-2, warmup=1, progress=False, log_every=1, save_every=2)
    batch = lambda s, m, r, w: torch.arange(4) + s % 6  # noqa: E731
    Trainer(_Toy(), cfg, batch, tmp_path).train()
    assert torch.load(tmp_path / "checkpoint.prev.pt", weights_only=True)["step"] == 4
    _flip(tmp_path / "checkpoint.pt", 0.5, 64)
    with pytest.raises(TrainingError, match=r"damaged.*checkpoint\.prev\.pt \(step 4\), is intact"):
        Trainer(_Toy(), cfg, batch, tmp_path).load()
    (tmp_path / "checkpoint.pt").write_bytes(b"")  # truncated to nothing
    with pytest.raises(TrainingError, match="unreadable.*step 4"):
        Trainer(_Toy(), cfg, batch, tmp_path).load()
    (tmp_path / "checkpoint.prev.pt").replace(tmp_path / "checkpoint.pt")
    tr = Trainer(_Toy(), cfg, batch, tmp_path)
    tr.load()
    assert tr.step == 4
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(TrainingError, match="no intact earlier checkpoint"):
        Trainer(_Toy(), cfg, batch, tmp_path).load()
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')  # cut by a kill
    torch.save({"step": 0}, tmp_path / "checkpoint.pt")
    with pytest.raises(TrainingError, match="not an mmfm training checkpoint"):
        Trainer(_Toy(), cfg, batch, tmp_path).load()


def test_a_model_folder_checks_its_files(tmp_path):
    """Every folder mmfm writes carries a manifest; a weight or config changed after the save is a
    CheckpointError naming the file, and non-finite weights are refused by tensor name."""
    import mmfm
    from mmfm.checkpoint import MANIFEST
    from mmfm.errors import CheckpointError
    from mmfm.models.clip import CLIP, CLIPConfig

    clip = CLIP(CLIPConfig(embed_dim=8, vision=dict(image_size=16, patch_size=8, width=16, layers=1, heads=2),
                           text=dict(vocab_size=20, context_length=8, width=16, layers=1, heads=2, sot_token_id=18,
                                     eot_token_id=19)))
    for fmt in ("mmfm", "hf"):
        folder = mmfm.save(clip, tmp_path / fmt, format=fmt)
        assert (folder / MANIFEST).is_file()
        mmfm.load(folder)  # intact: loads
        _flip(folder / "model.safetensors", 0.7, 256)
        with pytest.raises(CheckpointError, match="model.safetensors: its content does not match"):
            mmfm.load(folder)
    folder = clip.save_pretrained(tmp_path / "cfg")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["embed_dim"] = 9
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json: its content does not match"):
        mmfm.load(folder)
    with torch.no_grad():
        clip.visual.proj.weight.fill_(float("nan"))
    folder = clip.save_pretrained(tmp_path / "nan")
    with pytest.raises(CheckpointError, match="'visual.proj.weight' holds NaN"):
        mmfm.load(folder)
    from mmfm.checkpoint import check_finite

    big = torch.zeros(5 << 20)  # checked in pieces: a bad value after the first piece is found too
    big[-1] = float("inf")
    with pytest.raises(CheckpointError, match="'big' holds NaN or inf"):
        check_finite({"ok": torch.ones(3), "big": big}, "test")
    for bad in ("[1, 2]", "null", "\x00\x01binary"):
        (tmp_path / "odd").mkdir(exist_ok=True)
        (tmp_path / "odd" / "config.json").write_text(bad)
        with pytest.raises(CheckpointError, match="config"):
            mmfm.load(tmp_path / "odd")
    (tmp_path / "zero.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        mmfm.load(tmp_path / "zero.pt")

