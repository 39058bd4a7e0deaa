"""SimCLR: NT-Xent equal to lightly's NTXentLoss (one process and two, gloo), seeded augmentations, a short
world run that learns, saves and loads, and the probes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mmfm
from mmfm import weights
from mmfm.eval.probes import knn_accuracy, probe_world
from mmfm.nn.losses import nt_xent_loss
from mmfm.vision.augment import SimCLRAugment
from tests.dist_nt_xent_worker import case
from tests.test_losses import _free_port
from tests.test_reliability import cli

lightly_loss = pytest.importorskip("lightly.loss")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_equals_lightly(temperature):
    a, b = case(seed=3)
    ref = lightly_loss.NTXentLoss(temperature=temperature)(a, b)
    assert abs(nt_xent_loss(a, b, temperature).item() - ref.item()) <= 1e-6
    # the definition: for each view, -log softmax of its other view among the 2N - 1 others
    z = torch.nn.functional.normalize(torch.cat([a, b]), dim=-1)
    sim = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
    n = len(a)
    pos = torch.cat([torch.arange(n) + n, torch.arange(n)])
    assert torch.allclose(nt_xent_loss(a, b, temperature), -sim.log_softmax(1)[torch.arange(2 * n), pos].mean(),
                          atol=1e-6)


def test_nt_xent_two_processes_equals_one(tmp_path):
    a, b = case()
    a.requires_grad_(True)
    b.requires_grad_(True)
    full = nt_xent_loss(a, b, 0.3)
    full.backward()
    out, port = tmp_path / "rank0.pt", _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "tests.dist_nt_xent_worker", str(r), "2", port, str(out)],
                              cwd=ROOT) for r in range(2)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    got = torch.load(out, weights_only=True)
    ours, ref = got["losses"]
    assert abs(ours.item() - full.item()) <= 1e-6 and abs(ref.item() - full.item()) <= 1e-6
    assert torch.allclose(got["grads"][0], a.grad, atol=1e-6) and torch.allclose(got["grads"][1], b.grad, atol=1e-6)


def test_augmentations_are_seeded_and_the_ablation_keeps_colour():
    x = torch.rand(8, 3, 32, 32)
    aug = SimCLRAugment(32, strength=1.0)
    v = aug(x, 7)
    assert v.shape == (8, 3, 32, 32) and torch.equal(aug(x, 7), v) and not torch.equal(aug(x, 8), v)
    assert 0 <= v.min() and v.max() <= 1
    # without colour jitter, grayscale and blur a view is a crop of the image: a flat colour stays that colour
    flat = torch.zeros(4, 3, 32, 32)
    flat[:, 0] = 0.8
    plain = SimCLRAugment(32, color_jitter=False, grayscale=False, blur=False)(flat, 1)
    assert torch.allclose(plain, flat, atol=1e-5)
    assert not torch.allclose(SimCLRAugment(32, strength=1.0)(flat, 1), flat, atol=1e-2)


def test_hue_range_decides_whether_colour_survives_the_views():
    """--hue 0.5: any hue, so a red object's views come out red, green and blue; hue 0: only brightness,
    contrast and saturation move, and every view stays red."""
    red = torch.zeros(64, 3, 16, 16)
    red[:, 0] = 0.8

    def dominant(hue: float) -> set[int]:
        aug = SimCLRAugment(16, strength=0.5, hue=hue, grayscale=False, blur=False, min_scale=1.0)
        return set(aug(red, seed=3).mean((2, 3)).argmax(1).tolist())

    assert dominant(0.5) == {0, 1, 2}
    assert dominant(0.0) == {0}


def test_a_short_world_run_learns_saves_and_loads(tmp_path):
    from mmfm.models.simclr import SimCLR
    from mmfm.train.simclr import train_world_simclr

    rep = train_world_simclr(out=tmp_path, steps=40, batch_size=32, lr=2e-3, scenes=64, evaluate=False,
                             progress=False, log_every=1, warmup=5, bf16=False)
    curve = [json.loads(x)["loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum(curve[-10:]) < 0.93 * sum(curve[:10]), curve
    model = mmfm.load(tmp_path / "model")
    assert isinstance(model, SimCLR) and rep["color_jitter"] is True
    x = torch.randn(2, 3, 64, 64)
    trained = SimCLR(model.config)
    trained.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(model.eval().encode_image(x), trained.eval().encode_image(x))


def test_knn_and_probes():
    tx = torch.nn.functional.normalize(torch.randn(40, 8), dim=-1)
    ty = torch.arange(40) % 4
    assert knn_accuracy(tx, ty, tx, ty, k=1) == 1.0
    clip = mmfm.load(weights.path("clip-world-tiny"))
    res = probe_world(clip, n_train=400, n_val=100, n_test=100, shots=(1, None))
    # the world CLIP's frozen features: colour and shape are read far above chance, on seen and held-out pairs
    for t in ("color", "shape"):
        assert res[t]["linear"]["all"]["seen"] > 3 * res[t]["chance"], res[t]
        assert res[t]["linear"]["all"]["heldout"] > 2 * res[t]["chance"], res[t]
    assert set(res) == {"color", "shape", "color_shape", "size_color_shape"}
    assert 0 <= res["color_shape"]["knn1"]["seen"] <= 1


def test_cli_train_and_eval_simclr(tmp_path, capsys):
    code, out, err = cli(capsys, "train", "simclr", "--steps", 2, "--batch-size", 16, "--scenes", 64, "--no-eval",
                         "--no-color-jitter", "--out", tmp_path)
    assert code == 0, err
    assert json.loads((tmp_path / "report.json").read_text())["color_jitter"] is False
    code, out, err = cli(capsys, "eval", "simclr", "--model", tmp_path / "model", "--n", 50, "--n-train", 200,
                         "--out", tmp_path / "p.json")
    assert code == 0, err
    assert "color_shape" in json.loads((tmp_path / "p.json").read_text())


def test_resnet_tower_and_your_own_images(tmp_path, capsys):
    """A small ResNet tower, trained on a folder of images (world scenes and photos, labels unused), then
    read by `mmfm eval clip --task linear-probe` on class folders."""
    from mmfm.models.simclr import SimCLR
    from mmfm.world import World
    from mmfm.world.export import export_imagefolder
    from tests.test_own_data import photos

    w = World(seed=0, size=64)
    items = [(w.classification("train", i)[0].pil(), "c") for i in range(24)] + [(p, "photos") for p, _ in photos(80)]
    export_imagefolder(items, tmp_path / "imgs")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    code, out, err = cli(capsys, "train", "simclr", "--preset", "world-tiny-resnet", "--data", tmp_path / "imgs",
                         "--steps", 3, "--batch-size", 8, "--out", tmp_path / "run", "--max-bad", 0.5)
    assert code == 0, err
    m = mmfm.load(tmp_path / "run" / "model")
    assert isinstance(m, SimCLR) and m.config.tower == "resnet"
    assert json.loads((tmp_path / "run" / "data_report.json").read_text())[0]["reasons"] == {"not an image file": 1}
    for split, start in (("train", 0), ("test", 100)):
        export_imagefolder([(w.classification("train", start + i)[0].pil(), "red" if i % 2 else "blue")
                            for i in range(12)], tmp_path / split)
    code, out, err = cli(capsys, "eval", "clip", "--model", tmp_path / "run" / "model", "--task", "linear-probe",
                         "--data", tmp_path / "train", "--test-data", tmp_path / "test", "--out", tmp_path / "lp.json")
    assert code == 0, err
    assert 0 <= json.loads((tmp_path / "lp.json").read_text())["top1"] <= 1
