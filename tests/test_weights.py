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


def test_shipped_world_llava_answers_new_scenes():
    import numpy as np

    from mmfm.eval.vqa import vqa_accuracy
    from mmfm.models.llava import Llava
    from mmfm.world import World

    model = mmfm.load(path("llava-world-tiny"))
    assert isinstance(model, Llava) and model.config.base_lm == "smollm2" and model.tokenizer is not None
    world = World(seed=0)
    items = [(s.rendered.image, q) for s in (world.sample("test", 100_000 + i) for i in range(60))
             for q in s.ann.qa if q.kind == "existence"][:40]
    answers = model.generate([f"<image>\n{q.question}" for _, q in items], [[im] for im, _ in items], max_new_tokens=4)
    acc = np.mean([vqa_accuracy(a, [q.answer]) for a, (_, q) in zip(answers, items)])
    # README: 0.88 on 100 questions (labels are balanced yes / no, so chance is 0.5)
    assert acc >= 0.75, (acc, answers[:8])
