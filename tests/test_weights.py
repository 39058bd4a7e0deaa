"""The checkpoints shipped in mmfm/weights load and still do what their README says."""

import pytest

import mmfm
from mmfm.errors import CheckpointError
from mmfm.eval.clip_world import zeroshot_world
from mmfm.weights import path


def test_shipped_world_clip_classifies_new_scenes():
    model = mmfm.load(path("clip-world-tiny")).float()
    res = zeroshot_world(model, model.tokenizer, n=300, seed=1)
    # README (fp32 weights, 1,000 scenes): 0.945 seen / 0.889 held-out with one template
    assert res["seen"]["single"]["top1"] >= 0.90
    assert res["heldout"]["single"]["top1"] >= 0.82


def test_unknown_shipped_name():
    with pytest.raises(CheckpointError, match="clip-world-tiny"):
        path("nope")


def test_a_shipped_name_loads_wherever_a_path_does(tmp_path, monkeypatch):
    from mmfm.lm import load_lm
    from mmfm.models.clip import CLIP
    from mmfm.weights import resolve

    assert isinstance(mmfm.load("clip-world-tiny"), CLIP)
    assert load_lm("visprog-writer-world").purpose["visprog"]["prompt"] == "bare"
    with pytest.raises(CheckpointError, match="no such file"):
        mmfm.load("clip-world-tiny-typo")
    monkeypatch.chdir(tmp_path)  # a local folder of that name wins, as a local folder wins over a Hub id
    (tmp_path / "clip-world-tiny").mkdir()
    assert resolve("clip-world-tiny") == "clip-world-tiny"
    with pytest.raises(CheckpointError):
        mmfm.load("clip-world-tiny")  # the empty local folder, not the shipped checkpoint


def test_shipped_world_llava_answers_new_scenes():
    import numpy as np

    from mmfm.eval.vqa import vqa_accuracy
    from mmfm.models.llava import Llava
    from mmfm.world import World

    model = mmfm.load(path("llava-world-tiny"))
    assert isinstance(model, Llava) and model.config.base_lm == "smollm2" and model.tokenizer is not None
    world = World(seed=0)
    scenes = [world.sample("test", 100_000 + i) for i in range(40)]
    items = {kind: [(s.rendered.image, q) for s in scenes for q in s.ann.qa if q.kind == kind][:24]
             for kind in ("existence", "color", "shape")}
    flat = [it for kind in items for it in items[kind]]
    answers = model.generate([f"<image>\n{q.question}" for _, q in flat], [[im] for im, _ in flat], max_new_tokens=4)
    acc, i = {}, 0
    for kind, its in items.items():
        assert len(its) == 24, (kind, len(its))
        acc[kind] = np.mean([vqa_accuracy(a, [q.answer]) for a, (_, q) in zip(answers[i:i + 24], its)])
        i += 24
    # README, 200 questions each: existence 0.93 (balanced yes / no: chance 0.5), color 0.87 (8 colors),
    # shape 0.76 (7 shapes); these bounds leave room for 24-question noise, far above chance
    assert acc["existence"] >= 0.75 and acc["color"] >= 0.6 and acc["shape"] >= 0.5, (acc, answers[:8])


def test_shipped_world_molmo_is_the_llava_with_molmo_layout_and_adapters():
    """How well it points is measured by the course's Molmo claim (test_course_report_llm_claims)."""
    from mmfm.models.llava import Llava

    llava, molmo = mmfm.load(path("llava-world-tiny")), mmfm.load(path("molmo-world-tiny"))
    assert isinstance(molmo, Llava) and molmo.config.base_lm == "smollm2" and molmo.config.image_layout
    assert molmo.config.lora["r"] == 32 and molmo.tokens_per_image == llava.tokens_per_image + 4 + 2
    assert molmo.config.vision == llava.config.vision



def test_shipped_world_molmo2_points_and_tracks_in_new_clips():
    """The shipped Molmo2 (adapters over SmolLM2, molmo-world-tiny's tower trained on grey frame stills) on test
    clips it never saw: the one-pass answers keep their form (a track writes a point a frame)."""
    from mmfm.data.molmo2_world import WorldVideoData
    from mmfm.eval.molmo2_world import evaluate_molmo2_world
    from mmfm.models.molmo2 import Molmo2

    model = mmfm.load(path("molmo2-world-video"))
    assert isinstance(model, Molmo2) and model.config.base_lm == "smollm2" and model.config.lora["r"] == 32
    assert model.config.frame_col_tokens and not model.config.bidirectional_vision  # as it was trained
    data = WorldVideoData(model, model._tok(), seed=0, size=model.config.vision.image_size)
    r = evaluate_molmo2_world(model, data, n=4, splits=("test",), progress=False)["test"]
    # measured on the same 4 test clips: pointing F1 0.27, tracking in-mask 0.33 (the adapters as first
    # extracted, before their short retraining, wrote tracks past the clip's end: in-mask 0.0)
    assert r["pointing"]["f1"] >= 0.2 and r["tracking"]["in_mask"] >= 0.25, r


def test_segment_takes_a_shipped_sam_by_name(tmp_path):
    import subprocess
    import sys

    from mmfm.world import World

    r = World(seed=0).statement("test", 3).left
    r.pil().save(tmp_path / "scene.png")
    x, y = (int(v) for v in r.centroids[0])
    p = subprocess.run([sys.executable, "-m", "mmfm.cli.main", "segment", str(tmp_path / "scene.png"), "--model",
                        "sam-world-tiny-parts", "--point", f"{x},{y}", "--out", str(tmp_path / "seg.png")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-500:]
    assert (tmp_path / "seg.png").is_file()
