"""CLIP model behaviour, zero-shot/probe/retrieval metrics on known answers, and the CLI's handling
of good and bad input."""

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mmfm.errors import InvalidPrompt, InvalidText
from mmfm.eval.linear_probe import linear_probe
from mmfm.eval.retrieval import recall_at_k
from mmfm.eval.zeroshot import build_classifier, check_labels, evaluate, mean_per_class_recall
from mmfm.models.clip import CLIP, CLIPConfig
from mmfm.text.tokenizer import CLIPTokenizer


def tiny(tok=None):
    tok = tok or CLIPTokenizer.world(context_length=16)
    m = CLIP(CLIPConfig(embed_dim=16, vision=dict(image_size=32, patch_size=8, width=32, layers=1, heads=2),
                        text=dict(vocab_size=tok.vocab_size, context_length=16, width=32, layers=1, heads=2,
                                  sot_token_id=tok.sot_token_id, eot_token_id=tok.eot_token_id), tokenizer="world"))
    m.tokenizer = tok
    return m.eval()


def test_temperature_and_logits():
    m = tiny()
    assert math.isclose(m.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
    with torch.no_grad():
        m.logit_scale.fill_(10.0)
    assert math.isclose(m.scale().item(), 100.0, rel_tol=1e-5)
    x, ids = torch.randn(3, 3, 32, 32), m.tokenizer(["a red circle", "a blue square"])
    li, lt = m(x, ids)
    assert li.shape == (3, 2) and torch.equal(lt, li.T)
    want = 100 * F.normalize(m.encode_image(x), dim=-1) @ F.normalize(m.encode_text(ids), dim=-1).T
    assert torch.allclose(li, want, atol=1e-4)


def test_locking_towers():
    m = tiny().train()
    m.lock_image_tower()
    assert not any(p.requires_grad for p in m.visual.parameters())
    assert all(p.requires_grad for p in m.text.parameters())
    m.lock_text_tower(unlocked_layers=1)
    assert m.text.proj.weight.requires_grad and not m.text.token_embed.weight.requires_grad


def test_zero_shot_classifier_is_the_normalised_mean_of_prompts():
    m = tiny()
    tpl = ("a photo of {a} {}", "{a} {}")
    w = build_classifier(m, m.tokenizer, ["red circle", "orange star"], tpl)
    e = F.normalize(m.encode_text(m.tokenizer(["a photo of an orange star", "an orange star"])), dim=-1).mean(0)
    assert torch.allclose(w[:, 1], F.normalize(e, dim=0), atol=1e-5)
    with pytest.raises(InvalidPrompt):
        check_labels([])
    with pytest.raises(InvalidText):
        check_labels(["red", ""])
    with pytest.raises(InvalidText):
        check_labels(["x" * 10_000])
    with pytest.raises(InvalidPrompt):
        check_labels(["a", "a"])


def test_metrics_on_known_answers():
    feats = torch.eye(4)
    clf = torch.eye(4)[:, [0, 1, 3, 2]]  # classes 2 and 3 swapped
    labels = torch.arange(4)
    r = evaluate(feats, labels, clf)
    assert r["top1"] == 0.5 and r["top5"] == 1.0 and r["mean_per_class_recall"] == 0.5
    assert mean_per_class_recall(torch.tensor([[1.0, 0], [1, 0], [1, 0], [0, 1]]), torch.tensor([0, 0, 0, 1])) == 1.0
    img = torch.eye(3)
    txt = torch.stack([img[0], img[0], img[1], img[2] * -1])  # text 3 points away from its image
    rec = recall_at_k(img, F.normalize(txt, dim=-1), torch.tensor([0, 0, 1, 2]), ks=(1, 3))
    assert rec["image_retrieval_recall@1"] == 0.75 and rec["image_retrieval_recall@3"] == 1.0
    assert rec["text_retrieval_recall@1"] == pytest.approx(2 / 3)


def test_linear_probe_learns_separable_data():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 8, generator=g) * 3

    def split(n):
        y = torch.randint(0, 5, (n,), generator=g)
        return centers[y] + torch.randn(n, 8, generator=g) * 0.3, y

    res = linear_probe(split(200), split(100), split(200), 5)
    assert res["top1"] > 0.95 and set(res["val_sweep"]) and res["weight_decay"] in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip") / "model"
    tiny().save_pretrained(d)
    return d


def cli(*args):
    return subprocess.run([sys.executable, "-m", "mmfm.cli.main", *args], capture_output=True, text=True, timeout=180)


def test_classify_cli(model_dir, tmp_path):
    from mmfm.world import World

    img = tmp_path / "scene.png"
    World(size=64).sample("train", 0).image.save(img)
    res = cli(
        "classify", str(img), "--model", str(model_dir), "--labels", "red circle,blue square,green star", "--json"
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out[0]["labels"] and abs(sum(out[0]["probs"]) - 1) < 1e-3
    assert sorted(out[0]["probs"], reverse=True) == out[0]["probs"]
    table = cli("classify", str(img), "--model", str(model_dir), "--labels", "red circle,blue square")
    assert table.returncode == 0 and "%" in table.stdout


@pytest.mark.parametrize("labels,needle", [("", "empty"), ("red circle,", "empty"), ("x" * 10_000, "characters")])
def test_classify_bad_labels(model_dir, tmp_path, labels, needle):
    img = tmp_path / "i.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(img)
    res = cli("classify", str(img), "--model", str(model_dir), "--labels", labels)
    assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr


def test_classify_non_image(model_dir, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    res = cli("classify", str(bad), "--model", str(model_dir), "--labels", "a,b")
    assert res.returncode == 2 and "not a readable image" in res.stderr and "Traceback" not in res.stderr


def test_eval_cli_zeroshot(model_dir, tmp_path):
    res = cli(
        "eval", "clip", "--model", str(model_dir), "--task", "zeroshot", "--n", "40", "--out", str(tmp_path / "z.json")
    )
    assert res.returncode == 0, res.stderr
    z = json.loads((tmp_path / "z.json").read_text())
    assert set(z) == {"seen", "heldout", "precision"} and 0 <= z["seen"]["ensemble"]["top1"] <= 1
    assert z["precision"] == "fp32"  # the default for scores: the same on every host


def test_eval_and_classify_in_a_measured_precision(model_dir, tmp_path):
    """--precision auto times the encoder here, prints the choice, encodes in it and records it; bf16 gives
    the fp32 scores within rounding (40 scenes a split: a few may flip); a bad choice is one line, exit 2."""
    def run(name, *extra):
        res = cli("eval", "clip", "--model", str(model_dir), "--task", "zeroshot", "--n", "40", "--out",
                  str(tmp_path / name), *extra)
        assert res.returncode == 0, res.stderr
        return res.stderr, json.loads((tmp_path / name).read_text())

    err, auto = run("auto.json", "--precision", "auto")
    assert "measured on this host" in err or "cached measurement" in err or "no native bf16" in err
    assert auto["precision"] in ("fp32", "bf16", "bf16-math")
    _, fp32 = run("fp32.json")
    _, bf16 = run("bf16.json", "--precision", "bf16")
    assert fp32["precision"] == "fp32" and bf16["precision"] in ("bf16", "bf16-math")
    for split in ("seen", "heldout"):
        assert abs(bf16[split]["ensemble"]["top1"] - fp32[split]["ensemble"]["top1"]) <= 0.1
    img = tmp_path / "scene.png"
    from mmfm.world import World

    World(size=64).sample("train", 0).image.save(img)
    ok = cli("classify", str(img), "--model", str(model_dir), "--labels", "red circle,blue square", "--json",
             "--precision", "bf16")
    assert ok.returncode == 0 and abs(sum(json.loads(ok.stdout)[0]["probs"]) - 1) < 1e-3
    bad = cli("classify", str(img), "--model", str(model_dir), "--labels", "a,b", "--precision", "fp16")
    assert bad.returncode == 2 and "fp16" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_torch_compile_gives_the_same_features():
    m = tiny()
    x, ids = torch.randn(2, 3, 32, 32), m.tokenizer(["a red circle", "two blue stars"])
    want_i, want_t = m.encode_image(x), m.encode_text(ids)
    m.compile_towers()
    assert torch.allclose(m.encode_image(x), want_i, atol=1e-5)
    assert torch.allclose(m.encode_text(ids), want_t, atol=1e-5)


def test_gradient_checkpointing_same_gradients():
    m = tiny().train()
    x, ids = torch.randn(4, 3, 32, 32), m.tokenizer(["a red circle", "two blue stars", "a cross", "a white heart"])

    def grads():
        m.zero_grad()
        li, _ = m(x, ids)
        F.cross_entropy(li, torch.arange(4)).backward()
        return [p.grad.clone() for p in m.parameters() if p.grad is not None]

    a = grads()
    m.set_grad_checkpointing(True)
    b = grads()
    assert all(torch.allclose(u, v, atol=1e-6) for u, v in zip(a, b))


def test_world_hard_negatives_are_false_and_never_held_out():
    import numpy as np

    from mmfm.train.clip import WorldCLIPData, shape_negative, world_tiny_config
    from mmfm.world import World
    from mmfm.world.vocab import HELD_OUT_PAIRS

    world = World(seed=0, size=64)
    for i in range(200):
        r, _ = world.captioned("train", i)
        neg = shape_negative(r, world.pairs("train"), np.random.default_rng([0, i, 7]))
        if neg == "an empty background":
            continue
        color, shape = neg.split()[1:]
        assert (color, shape) not in HELD_OUT_PAIRS
        assert (color, shape) not in {(o.color, o.shape) for o in r.scene.objects}  # false of the scene
        assert color in {o.color for o in r.scene.objects}  # same color as an object: a hard negative
    data = WorldCLIPData.build(world_tiny_config(), 64, 16, progress=False, hard_negatives=True)
    batch = data.batch(0)
    assert batch["negative_ids"].shape == batch["input_ids"].shape


def test_attentional_pool_option_pools_with_one_learned_query(tmp_path):
    import pytest

    from mmfm.errors import CheckpointError
    from mmfm.models.clip import CLIP, CLIPConfig

    cfg = CLIPConfig(embed_dim=16, vision=dict(image_size=16, patch_size=8, width=24, layers=1, heads=2, pool="attn",
                                               attn_pool_heads=2),
                     text=dict(vocab_size=50, context_length=8, width=16, layers=1, heads=2, eot_token_id=49,
                               sot_token_id=48))
    torch.manual_seed(0)
    m = CLIP(cfg).eval()
    x = torch.randn(2, 3, 16, 16)
    v = m.visual
    with torch.no_grad():
        tokens = v.transformer(v.ln_pre(v.embed(x)))[0]
        want = v.proj(v.ln_post(v.attn_pool(tokens)[:, 0]))
        assert torch.allclose(m.encode_image(x), want, atol=1e-6)
    m.lock_image_tower()  # LiT: the whole tower, pooler included
    assert not any(p.requires_grad for p in v.parameters())
    m.lock_image_tower(unlocked_layers=1)  # the last block and the head (pooler, ln_post, proj) train
    assert all(p.requires_grad for p in v.attn_pool.parameters())
    m.save_pretrained(tmp_path / "mine")
    import mmfm

    assert torch.allclose(mmfm.load(tmp_path / "mine").encode_image(x), m.encode_image(x), atol=1e-6)
    for fmt in ("hf", "open_clip"):
        with pytest.raises(CheckpointError, match="class token"):
            mmfm.save(m, tmp_path / fmt, format=fmt)
