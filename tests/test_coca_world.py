"""CoCa on the world through the real commands: `mmfm train coca` (tiny budget), `mmfm caption`,
`mmfm eval coca`, their bad-input errors, and a learning test (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.test_cli import run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("coca")
    res = run("train", "coca", "--out", str(out / "run"), "--steps", "3", "--scenes", "512", "--batch-size", "32",
              "--eval-n", "20", timeout=600)
    assert res.returncode == 0, res.stderr
    return out


def test_train_writes_model_report_and_curves(trained):
    run_dir = trained / "run"
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["captioning"]) == {"seen", "heldout"}
    for split in report["captioning"].values():
        assert {"BLEU-4", "CIDEr-D", "examples"} <= set(split) and len(split["examples"]) == 5
    assert set(report["zeroshot"]) == {"seen", "heldout"}
    assert (run_dir / "model" / "model.safetensors").is_file() and (run_dir / "curves.png").is_file()
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"contrastive_loss", "caption_loss"} <= set(lines[-1])


def test_caption_and_eval_commands(trained, tmp_path):
    from mmfm.world import World

    r, _ = World(seed=5, size=64).captioned("test", 0)
    Image.fromarray(r.image).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "b.jpg")
    model = str(trained / "run" / "model")
    res = run("caption", str(tmp_path / "a.png"), str(tmp_path / "b.jpg"), "--model", model, "--json")
    assert res.returncode == 0, res.stderr
    caps = json.loads(res.stdout)
    assert [c["image"] for c in caps] == [str(tmp_path / "a.png"), str(tmp_path / "b.jpg")]
    assert all(isinstance(c["caption"], str) for c in caps)
    res = run("caption", str(tmp_path / "a.png"), "--model", model, "--beams", "2", "--max-tokens", "4")
    assert res.returncode == 0 and res.stdout.startswith(str(tmp_path / "a.png") + ":")
    assert len(res.stdout.split(":", 1)[1].split()) <= 4
    res = run("eval", "coca", "--model", model, "--task", "captioning", "--n", "6", "--out", str(tmp_path / "e.json"))
    assert res.returncode == 0, res.stderr
    assert "CIDEr-D" in res.stdout and "CIDEr-D" in json.loads((tmp_path / "e.json").read_text())["seen"]


def test_bad_inputs_are_clear_errors(trained, tmp_path):
    model = str(trained / "run" / "model")
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "ok.png").write_bytes(b"")
    cases = [
        (("caption", str(tmp_path / "notes.png"), "--model", model), "image"),
        (("caption", str(tmp_path / "missing.png"), "--model", model), "no such file"),
        (("caption", str(tmp_path / "notes.png"), "--model", model, "--beams", "0"), "--beams"),
        (("caption", str(tmp_path / "notes.png"), "--model", str(tmp_path)), "error"),
        (("eval", "coca", "--model", model, "--task", "vqa"), "unknown task"),
    ]
    for args, words in cases:
        res = run(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert words in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)
