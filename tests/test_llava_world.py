"""LLaVA on the Shapes world: the instruction data says what the scene shows, and the training /
asking / pointing / evaluation commands run end to end (tiny budgets; the learning numbers are in
bench/RESULTS.md)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest

from mmfm.data.llava_world import QA_KINDS, conversation
from mmfm.eval.vqa import parse_count, point_scores
from mmfm.text.pointing import parse_points
from mmfm.weights import path as weights_path
from mmfm.world import World
from mmfm.world.facts import select


def test_world_conversations_are_true_of_their_scenes():
    world = World(seed=0)
    seen = set()
    for i in range(150):
        s = world.sample("train", i)
        msgs = conversation(s, 2, np.random.default_rng(i))
        assert msgs[0]["role"] == "user" and msgs[0]["content"].startswith("<image>\n")
        assert sum(m["content"].count("<image>") for m in msgs) == 1
        q, a = msgs[0]["content"], msgs[1]["content"]
        r = s.rendered
        if "by pointing" in q or q.startswith("<image>\nPoint to"):
            pts = parse_points(a, r.size, r.size)
            # every point lies on its own object
            assert point_scores(pts, r.masks[[i for i in range(len(r.masks)) if r.masks[i].any()]])["precision"] == 1.0
            if "by pointing" in q:
                assert parse_count(a) == len(pts)
                seen.add("count_pointing")
            else:
                seen.add("point")
        elif q.startswith("<image>\nHow many"):
            seen.add("count")
        else:
            seen.add(q.split("\n", 1)[1].split()[0])
    assert {"count_pointing", "point", "count", "Describe", "What", "Is"} <= seen
    # the counts asked directly are the true counts
    for i in range(40):
        s = world.sample("train", i)
        for qa in s.ann.qa:
            if qa.kind == "count":
                (_, c, sh, _, n), = [f for f in qa.facts if f[0] == "count"]
                assert int(qa.answer) == n == len(select(s.rendered, c, sh))


def test_qa_weights_pick_the_question_types():
    from mmfm.data.llava_world import parse_qa_weights
    from mmfm.errors import ConfigError

    assert parse_qa_weights("shape=3, color=2") == {"shape": 3.0, "color": 2.0}
    assert parse_qa_weights(None) is None and parse_qa_weights({"count": 0}) == {"count": 0.0}
    for bad in ("shapes=2", "shape=x", "shape=-1", "count=0,color=0,shape=0,existence=0,relation=0"):
        with pytest.raises(ConfigError):
            parse_qa_weights(bad)
    world = World(seed=0)
    only_shape = {k: 0.0 for k in ("count", "color", "existence", "relation")}
    asked = {"uniform": [], "shape": []}
    for i in range(60):
        s = world.sample("train", i)
        if "shape" not in {q.kind for q in s.ann.qa}:
            continue
        for name, w in (("uniform", None), ("shape", only_shape)):
            msgs = conversation(s, 2, np.random.default_rng(i), kind="qa", qa_weights=w)
            q = msgs[0]["content"].split("\n", 1)[1]
            asked[name].append([x.kind for x in s.ann.qa if x.question == q][0])
    assert len(asked["shape"]) > 30 and set(asked["shape"]) == {"shape"}
    assert len(set(asked["uniform"])) >= 4  # without weights every type is asked


def test_kind_weights_set_the_mix_of_conversations():
    from mmfm.data.llava_world import KINDS, WEIGHTS, WorldInstructions, kind_probabilities
    from mmfm.errors import ConfigError

    assert kind_probabilities(None) == WEIGHTS
    p = dict(zip(KINDS, kind_probabilities("point=0.45,count=0.45")))
    assert p["point"] == p["count"] > p["qa"] > p["multi"] > p["caption"] and abs(sum(p.values()) - 1) < 1e-9
    for bad in ("points=1", "point=x", "point=-1", "qa=0,multi=0,caption=0,point=0,count=0"):
        with pytest.raises(ConfigError):
            kind_probabilities(bad)
    # only pointing: every step's conversations point
    enc = _TinyEncoder()
    data = WorldInstructions(enc, 2, 2, (0.5,) * 3, (0.5,) * 3, World(seed=0), kind_p=kind_probabilities(
        "qa=0,multi=0,caption=0,count=0,point=1"))
    for step in range(4):
        data.batch(step)
    assert enc.asked and all(q.startswith("<image>\nPoint to the") for q in enc.asked)


def test_crowded_counts_ask_count_questions_on_crowded_scenes():
    from mmfm.data.llava_world import CROWDED, WorldInstructions, kind_probabilities
    from mmfm.errors import ConfigError
    from mmfm.train.llava import train_world_llava

    only_count = kind_probabilities("qa=0,multi=0,caption=0,point=0,count=1")
    counts = {}
    for crowded in (0.0, 1.0):
        enc = _TinyEncoder()
        data = WorldInstructions(enc, 2, 4, (0.5,) * 3, (0.5,) * 3, World(seed=0), kind_p=only_count, crowded=crowded)
        for step in range(6):
            data.batch(step)
        counts[crowded] = [parse_count(m[1]["content"]) for m in enc.msgs]
    assert len(counts[1.0]) == 24 and min(counts[1.0]) >= CROWDED
    assert min(counts[0.0]) < CROWDED  # the natural mix is mostly sparse
    with pytest.raises(ConfigError):
        train_world_llava(2, crowded=1.5)


def test_crowded_points_ask_for_four_or_more_things():
    from mmfm.data.llava_world import CROWDED, WorldInstructions, kind_probabilities
    from mmfm.errors import ConfigError
    from mmfm.train.llava import train_world_llava

    only_point = kind_probabilities("qa=0,multi=0,caption=0,point=1,count=0")
    points = {}
    for share in (0.0, 0.5, 1.0):
        enc = _TinyEncoder()
        data = WorldInstructions(enc, 2, 4, (0.5,) * 3, (0.5,) * 3, World(seed=0), kind_p=only_point,
                                 crowded_points=share)
        for step in range(8):
            data.batch(step)
        assert all(m[0]["content"].startswith("<image>\nPoint to the ") for m in enc.msgs)
        points[share] = [len(parse_points(m[1]["content"])) for m in enc.msgs]
        answers = [m[1]["content"] for m in enc.msgs]
    assert len(points[1.0]) == 32 and min(points[1.0]) >= CROWDED
    assert len(set(answers)) == 32  # the rare crowded scenes are not repeated from step to step
    many = {k: sum(n >= CROWDED for n in v) for k, v in points.items()}
    assert many[0.0] < 6 < many[0.5] < 32  # the natural mix asks for 4+ things in ~1 query of 30
    with pytest.raises(ConfigError):
        train_world_llava(2, crowded_points=-0.1)
    with pytest.raises(ConfigError, match="4\\+ objects"):  # no scene could ever hold one
        WorldInstructions(_TinyEncoder(), 2, 4, (0.5,) * 3, (0.5,) * 3, World(seed=0, max_objects=3), crowded_points=1)


class _TinyEncoder:
    """Stands in for the tokenizer: records each conversation (and so its first question)."""

    image_token = "<image>"

    def __init__(self):
        self.msgs = []

    @property
    def asked(self) -> list[str]:
        return [m[0]["content"] for m in self.msgs]

    def example(self, msgs, template, max_len):
        from types import SimpleNamespace

        self.msgs.append(msgs)
        return SimpleNamespace(input_ids=[1, 2, 3], labels=[-100, 2, 3])


def _tiny_llava(projector="molmo"):
    """A LLaVA with the world CLIP's tower and a one-block LM of 32 wide, seeded: its config's pieces too."""
    import torch

    import mmfm
    from mmfm.models.llava import Llava, LlavaConfig
    from mmfm.nn.decoder import DecoderConfig

    vision = mmfm.load(weights_path("clip-world-tiny")).config.vision
    lm = DecoderConfig(vocab_size=300, dim=32, layers=1, heads=4, hidden=64)
    torch.manual_seed(0)
    return Llava(LlavaConfig(vision=vision, lm=lm, image_token_id=299, projector=projector, vision_layers=(-2,))).eval()


def test_pool_size_turns_16_tokens_into_64_and_is_saved(tmp_path):
    import torch

    import mmfm
    from mmfm.errors import ConfigError
    from mmfm.train.llava import set_pool_size

    model = _tiny_llava()
    pixels = torch.randn(2, 3, 64, 64)
    pooled = model.encode_images(pixels)
    set_pool_size(model, 1)
    every = model.encode_images(pixels)
    assert pooled.shape == (2, 16, 32) and every.shape == (2, 64, 32) and model.tokens_per_image == 64
    model.save_pretrained(tmp_path / "m")
    again = mmfm.load(tmp_path / "m").eval()
    assert again.config.pool_size == 1 and torch.allclose(again.encode_images(pixels), every, atol=1e-6)
    with pytest.raises(ConfigError, match="divide"):
        set_pool_size(model, 3)
    with pytest.raises(ConfigError, match="molmo"):
        set_pool_size(_tiny_llava("mlp2x_gelu"), 1)


def test_crops_read_a_larger_image_whole_and_tile_by_tile(tmp_path):
    import torch
    import torch.nn.functional as F

    import mmfm
    from mmfm.errors import ConfigError, InvalidImage
    from mmfm.train.llava import set_crops

    model = _tiny_llava()
    pixels = torch.randn(2, 3, 128, 128)
    low = model.encode_images(F.interpolate(pixels, size=(64, 64), mode="bilinear", antialias=True))
    tiles = [[model.encode_images(pixels[:, :, 64 * i : 64 * i + 64, 64 * j : 64 * j + 64]) for j in range(2)]
             for i in range(2)]
    set_crops(model, 2)
    assert model.input_size == 128 and model.preprocess.size == 128 and model.tokens_per_image == 16 + 64
    out = model.encode_images(pixels)
    assert out.shape == (2, 80, 32)
    assert torch.allclose(out[:, :16], low, atol=1e-5)  # the low-resolution view first
    high = out[:, 16:].view(2, 8, 8, 32)  # then one 8 x 8 grid of pooled tokens, tile (i, j) at its place in it
    for i in range(2):
        for j in range(2):
            got = high[:, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].reshape(2, 16, 32)
            assert torch.allclose(got, tiles[i][j], atol=1e-5), (i, j)
    with pytest.raises(InvalidImage, match="128"):
        model.encode_images(torch.randn(1, 3, 64, 64))
    model.save_pretrained(tmp_path / "m")
    again = mmfm.load(tmp_path / "m").eval()
    assert again.config.crops == 2 and torch.allclose(again.encode_images(pixels), out, atol=1e-6)
    with pytest.raises(ConfigError, match="1-4"):
        set_crops(model, 5)
    with pytest.raises(ConfigError, match="molmo"):
        set_crops(_tiny_llava("mlp2x_gelu"), 2)


def test_image_layout_and_whole_lm_training_are_saved(tmp_path):
    import torch

    import mmfm
    from mmfm.errors import ConfigError
    from mmfm.lm.model import default
    from mmfm.models.llava import Llava, LlavaConfig
    from mmfm.nn.decoder import DecoderConfig
    from mmfm.train.llava import add_image_layout, prepare_stage

    vision = mmfm.load(weights_path("clip-world-tiny")).config.vision
    lm = DecoderConfig(vocab_size=300, dim=32, layers=1, heads=4, hidden=64)
    torch.manual_seed(0)
    model = Llava(LlavaConfig(vision=vision, lm=lm, image_token_id=299, projector="molmo", vision_layers=(-2,),
                              lora=dict(r=2, alpha=4, targets=["attn.qkv"])))
    model.tokenizer = default().tokenizer
    pixels = torch.randn(2, 3, 64, 64)
    add_image_layout(model)
    newline = model.tokenizer.encode("\n")[-1]
    assert torch.equal(model.projector.layout[1], model.lm.embed.weight[newline])  # the column token starts as "\n"
    feats = model.eval().encode_images(pixels)
    assert model.tokens_per_image == feats.shape[1] == 4 * (4 + 1) + 2  # 4 rows of 4 tokens, framed
    ids, n = model.conversation().prompt("<image>\nWhere is the star?", "chat")
    assert n == 1 and list(ids).count(299) == model.tokens_per_image
    model.config.base_lm = "smollm2"  # as a world model: the LM would be left out of the folder
    assert prepare_stage(model, 2, None, train_lm=True) > 0
    assert model.config.lora is None and model.config.base_lm == "" and model.lm.embed.weight.requires_grad
    with torch.no_grad():
        model.lm.embed.weight.add_(1.0)  # as if trained: the folder must hold the LM now
    model.save_pretrained(tmp_path / "m")
    again = mmfm.load(tmp_path / "m").eval()
    assert again.config.image_layout and torch.equal(again.lm.embed.weight, model.lm.embed.weight)
    with torch.no_grad():
        assert torch.allclose(again.encode_images(pixels), model.encode_images(pixels), atol=1e-6)
    with pytest.raises(ConfigError, match="molmo"):
        LlavaConfig(vision=vision, lm=lm, projector="mlp2x_gelu", image_layout=True).validate()


def test_a_whole_lm_fine_tune_goes_back_to_adapters():
    import torch

    import mmfm
    from mmfm.errors import ConfigError
    from mmfm.lm.frozen_base import to_adapters
    from mmfm.models.llava import Llava, LlavaConfig
    from mmfm.nn.decoder import DecoderConfig
    from mmfm.nn.lora import LoRALinear
    from mmfm.train.llava import LORA_TARGETS

    vision = mmfm.load(weights_path("clip-world-tiny")).config.vision
    lm = DecoderConfig(vocab_size=300, dim=32, layers=2, heads=4, hidden=64)
    torch.manual_seed(0)
    model = Llava(LlavaConfig(vision=vision, lm=lm, image_token_id=299, projector="molmo", vision_layers=(-2,)))
    base = {k: v.clone() for k, v in model.lm.state_dict().items()}
    with torch.no_grad():  # "training": a rank-2 change to every targeted Linear, and to two other weights
        for name, mod in model.lm.named_modules():
            if type(mod) is torch.nn.Linear and name.endswith(LORA_TARGETS):
                mod.weight.add_(0.1 * torch.randn(mod.out_features, 2) @ torch.randn(2, mod.in_features))
        model.lm.embed.weight.mul_(1.1)
        model.lm.transformer.blocks[1].norm1.weight.add_(0.5)
    ids = torch.randint(0, 299, (2, 7))
    expected = Llava(model.config)  # the tuned targets with the embeddings and norm back at the base
    expected.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected.lm.embed.weight.copy_(base["embed.weight"])
        expected.lm.transformer.blocks[1].norm1.weight.copy_(base["transformer.blocks.1.norm1.weight"])
    lost = to_adapters(model, r=2, targets=LORA_TARGETS, base=base)
    assert model.config.base_lm == "smollm2" and model.config.lora == {"r": 2, "alpha": 4.0,
                                                                        "targets": list(LORA_TARGETS)}
    assert len(lost["adapter_rel_error"]) == 2 * 4 and max(lost["adapter_rel_error"].values()) < 1e-4
    dropped = lost["dropped_rel_change"]
    assert list(dropped)[:2] == ["transformer.blocks.1.norm1.weight", "embed.weight"]
    assert abs(dropped["embed.weight"] - 0.1) < 1e-5 and max(list(dropped.values())[2:]) == 0
    assert sum(isinstance(m, LoRALinear) for m in model.lm.modules()) == 8
    with torch.no_grad():
        # equal up to the SVD's fp32 error (each adapter within 1e-4 of its change, asserted above): 8e-6 on
        # two threads and 2e-5 on one on the 2026-12-06 Xeon, so not 1e-5
        assert torch.allclose(model.lm(ids).logits, expected.lm(ids).logits, atol=1e-4)
        assert torch.equal(model.lm.embed.weight, base["embed.weight"])
    with pytest.raises(ConfigError, match="already"):
        to_adapters(model, r=2, targets=LORA_TARGETS, base=base)


def test_a_frozen_tower_does_not_drift_and_can_be_swapped(tmp_path):
    import torch

    import mmfm
    from mmfm.errors import ConfigError
    from mmfm.models.clip import CLIP
    from mmfm.models.llava import Llava, LlavaConfig
    from mmfm.nn.decoder import DecoderConfig
    from mmfm.train.llava import prepare_stage, swap_tower
    from mmfm.weights import path as weights_path

    clip = mmfm.load(weights_path("clip-world-tiny"))
    bns = [m for m in clip.visual.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns  # the world tower's conv stem: the case this guards
    cfg = LlavaConfig(vision=clip.config.vision, lm=DecoderConfig(vocab_size=300, dim=32, layers=1, heads=4, hidden=64),
                      image_token_id=299, projector="molmo", vision_layers=(-2, -4))
    torch.manual_seed(0)
    model = Llava(cfg)
    swap_tower(model, weights_path("clip-world-tiny"))
    tower = {k: v.clone() for k, v in model.vision.state_dict().items()}
    want = {k[len("visual."):]: v for k, v in clip.state_dict().items() if k.startswith("visual.")}
    assert all(torch.equal(v, want[k]) for k, v in tower.items())
    prepare_stage(model, 1, None)
    model.train()
    assert model.projector.training and not model.vision.training
    n = model.tokens_per_image
    ids = torch.tensor([[5] + [299] * n + [7, 8, 9]] * 4)
    labels = ids.clone()
    labels[:, : n + 2] = -100
    pixels = torch.randn(4, 3, 64, 64)
    loss = model(ids, pixels, labels=labels).loss
    loss.backward()
    after = model.vision.state_dict()
    assert all(torch.equal(after[k], v) for k, v in tower.items())  # BatchNorm's running statistics included
    # Molmo's recipe: stage 2 may train the tower too; then it learns and its BatchNorm trains with it
    prepare_stage(model, 2, None, train_vision=True)
    model.train()
    assert model.vision.training and all(p.requires_grad for p in model.vision.parameters())
    model(ids, pixels, labels=labels).loss.backward()
    used = model.vision.transformer.blocks[:-1]  # layers -2 and -4 of 4: the last block does not run
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in used.parameters())
    prepare_stage(model, 2, None)
    assert not any(p.requires_grad for p in model.vision.parameters())
    # a tower of another shape is refused
    other = copy.deepcopy(clip.config)
    other.vision.layers = 2
    CLIP(other).save_pretrained(tmp_path / "other")
    with pytest.raises(ConfigError, match="same shape"):
        swap_tower(model, tmp_path / "other")


def _mmfm(*args, timeout=600):
    r = subprocess.run([sys.executable, "-m", "mmfm.cli.main", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout)
    return r


@pytest.mark.slow
def test_train_ask_point_eval_end_to_end(tmp_path):
    out = tmp_path / "llava"
    r = _mmfm("train", "llava", "--stage", "1", "--steps", "2", "--batch-size", "4", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "stage1" / "model" / "model.safetensors").is_file()
    r = _mmfm("train", "llava", "--stage", "2", "--steps", "2", "--batch-size", "2", "--out", out, "--no-eval",
              "--vision", weights_path("clip-world-tiny"), "--qa-weights", "shape=3", "--max-objects", "8")
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((out / "stage2" / "report.json").read_text())
    assert report["qa_weights"] == {"shape": 3.0} and report["vision"].endswith("clip-world-tiny")
    assert report["max_objects"] == 8
    model = out / "stage2" / "model"
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["base_lm"] == "smollm2" and cfg["lora"]["r"] == 16
    # the base LM is not copied: adapters + projector + vision tower only
    assert (model / "model.safetensors").stat().st_size < 30e6
    img = tmp_path / "scene.png"
    World(seed=0).sample("test", 0).rendered.pil().save(img)
    r = _mmfm("ask", img, "How many circles are there?", "--model", model, "--max-tokens", "4", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["question"] == "How many circles are there?"
    r = _mmfm("point", img, "the circles", "--model", model, "-o", tmp_path / "p.png", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "p.png").is_file()
    r = _mmfm("eval", "llava", "--model", model, "--n", "2", "--seed", "3", "--out", tmp_path / "ev", "--crowded", "4",
              "--count-objects", "2", "--count-n", "1", "--apart")
    assert r.returncode == 0, r.stderr[-2000:]
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert ev["apart"] and ev["test"]["crowded"]["apart"] and "one colour apart" in r.stdout
    assert ev["test"]["crowded"]["n"] == 2 and set(ev["heldout"]["crowded"]["direct"]["by_true_count"]) == {"4+"}
    assert "crowded (4+" in r.stdout and "written for" in r.stdout
    written = ev["test"]["crowded"]["pointing"]["points_written"]
    assert f"{written:.2f} written for" in r.stdout
    assert len(ev["heldout"]["by_objects"]["by_count"]) == 3 and (tmp_path / "ev" / "counting.png").is_file()
    assert "scenes of up to 2 objects" in r.stdout
    assert set(ev["test"]["vqa"]) == {"count", "color", "shape", "existence", "relation", "overall"}
    assert set(ev["test"]["vqa_ci95"]) == set(ev["test"]["vqa"]) - {"overall"}
    assert all(0 <= h <= 1 for h in ev["test"]["vqa_ci95"].values())
    assert "+-" in r.stdout  # the printed report gives each accuracy its interval
    assert (tmp_path / "ev" / "points.png").is_file()
    # Molmo's recipe on top: its image layout tokens, its multi-crop (the world drawn at 128 px: a 64 px view of
    # the whole, then 2 x 2 tiles), the whole LM trained and saved with the model
    r = _mmfm("train", "llava", "--stage", "2", "--steps", "1", "--batch-size", "1", "--out", tmp_path / "molmo",
              "--no-eval", "--from", model, "--image-layout", "--train-lm", "--crops", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    molmo = tmp_path / "molmo" / "stage2" / "model"
    report = json.loads((tmp_path / "molmo" / "stage2" / "report.json").read_text())
    assert report["image_layout"] and report["train_lm"] and report["crops"] == 2
    assert report["tokens_per_image"] == (16 + 4 + 2) + (64 + 8 + 2)  # each view framed: start, a column a row, end
    cfg = json.loads((molmo / "config.json").read_text())
    assert cfg["base_lm"] == "" and cfg["lora"] is None and (molmo / "model.safetensors").stat().st_size > 400e6
    r = _mmfm("ask", img, "How many circles are there?", "--model", molmo, "--max-tokens", "4", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    # and back to a folder of adapters over the package's SmolLM2
    r = _mmfm("lora", "extract", molmo, "--rank", "4", "--dtype", "bfloat16", "--out", tmp_path / "adapters")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["adapters"] == 30 * 4 and 0 <= summary["adapter_rel_error_max"] <= 1
    cfg = json.loads((tmp_path / "adapters" / "config.json").read_text())
    assert cfg["base_lm"] == "smollm2" and cfg["lora"]["r"] == 4 and cfg["image_layout"] and cfg["crops"] == 2
    assert (tmp_path / "adapters" / "model.safetensors").stat().st_size < 30e6
    r = _mmfm("point", img, "the circles", "--model", tmp_path / "adapters", "-o", tmp_path / "p2.png", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    r = _mmfm("lora", "extract", tmp_path / "adapters", "--out", tmp_path / "again")
    assert r.returncode == 2 and "already" in r.stderr and "Traceback" not in r.stderr


def test_evaluation_without_grounding_and_on_crowded_scenes():
    import mmfm
    from mmfm.eval.llava_world import evaluate_counting, evaluate_llava_world, format_report

    model = mmfm.load(weights_path("llava-world-tiny"))
    ev = evaluate_llava_world(model, n=3, splits=("test",), progress=False, grounding=False)
    assert set(ev["test"]) == {"vqa", "vqa_ci95"} and "VQA" in format_report(ev) and "pointing" not in format_report(ev)
    crowd = evaluate_counting(model, n=3, min_count=4, progress=False)
    assert crowd["n"] == 3 and set(crowd["direct"]["by_true_count"]) == {"4+"}
    pt = crowd["pointing"]
    assert all(0 <= pt[f"points_{m}"] <= 1 for m in ("f1", "precision", "recall")) and pt["points_written"] >= 0
    assert pt["objects"] >= 4  # the mean true count of crowded questions
    apart = evaluate_counting(model, n=2, min_count=4, progress=False, apart=True)
    assert apart["n"] == 2 and apart["apart"] and not crowd["apart"]
    text = format_report({"test": {"vqa": {k: 0.5 for k in (*QA_KINDS, "overall")}, "counting": _NO_COUNT,
                                   "pointing": {"precision": 0, "recall": 0, "f1": 0}, "crowded": apart}})
    assert "n=2, one colour apart)" in text


def test_counting_by_number_of_objects_goes_past_the_training_scenes():
    import mmfm
    from mmfm.errors import ConfigError
    from mmfm.eval.llava_world import counting_by_objects, counting_figure, format_report

    model = mmfm.load(weights_path("llava-world-tiny"))
    b = counting_by_objects(model, n=1, max_objects=6, progress=False)
    assert list(b["by_count"]) == [str(k) for k in range(7)] and all(v["n"] == 1 for v in b["by_count"].values())
    assert {k: v["n"] for k, v in b["ranges"].items()} == {"0-3": 4, "4-5": 2, "6-6": 1}
    for v in b["by_count"].values():
        assert all(0 <= v[m] <= 1 for m in ("direct", "pointing", "points_f1", "direct_within_1"))
    assert counting_figure(b).size == (640, 400)
    text = format_report({"test": {"vqa": {k: 0.5 for k in (*QA_KINDS, "overall")}, "counting": _NO_COUNT,
                                   "pointing": {"precision": 0, "recall": 0, "f1": 0}, "by_objects": b}})
    assert "up to 6 objects" in text and "counts 6-6 (n=1)" in text
    with pytest.raises(ConfigError):
        counting_by_objects(model, n=1, max_objects=13, progress=False)


_NO_COUNT = {m: {"exact": 0.0, "within_1": 0.0, "by_true_count": {}} for m in ("direct", "pointing")}


def test_cli_bad_input_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    r = _mmfm("ask", bad, "What?", "--model", tmp_path)
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr
    img = tmp_path / "ok.png"
    World(seed=0).sample("test", 0).rendered.pil().save(img)
    r = _mmfm("ask", img, "What?", "--model", tmp_path)  # a folder with no model
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = _mmfm("train", "llava", "--stage", "3")
    assert r.returncode == 2 and "stage" in r.stderr
