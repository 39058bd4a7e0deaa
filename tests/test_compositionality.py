"""Compositionality: published scoring on hand-made inputs whose answers are known, the public file
formats (with bad items reported and counted), rule-based hard negatives, the NegCLIP loss and batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmfm.errors import ConfigError
from mmfm.eval.compositionality import recall_at_k, run_suite, winoground_scores, write_results

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def table_scorer(table: dict):
    """Hand-made similarities: table[(image color, text)]; images are solid colors."""
    names = {v: k for k, v in COLORS.items()}

    def score(images, texts):
        return np.array([[table[(names[im.getpixel((0, 0))], t)] for t in texts] for im in images])

    return score


def _img(folder, name, color):
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), COLORS[color]).save(folder / f"{name}.png")


def test_winoground_scores_strict_as_published():
    # s[c, i]: text 1 (each image prefers its caption), image 0 (caption 1 prefers image 0), group 0
    s = np.array([[[0.9, 0.5], [0.7, 0.6]]])
    assert winoground_scores(s) == {"text": 1.0, "image": 0.0, "group": 0.0, "n": 1}
    tie = np.array([[[0.9, 0.5], [0.9, 0.6]]])  # a tie is not a win
    assert winoground_scores(tie)["text"] == 0.0
    assert winoground_scores(np.array([[[0.9, 0.1], [0.2, 0.8]]]))["group"] == 1.0


def test_winoground_files_with_bad_items_counted(tmp_path):
    _img(tmp_path / "images", "ex_0_img_0", "red")
    _img(tmp_path / "images", "ex_0_img_1", "blue")
    (tmp_path / "images" / "broken.png").write_bytes(b"no")
    lines = [
        {
            "id": 0,
            "caption_0": "a mug in grass",
            "caption_1": "grass in a mug",
            "image_0": "ex_0_img_0",
            "image_1": "ex_0_img_1",
        },
        {"id": 1, "caption_0": "x", "image_0": "ex_0_img_0", "image_1": "ex_0_img_1"},  # caption_1 missing
        {"id": 2, "caption_0": "x", "caption_1": "y", "image_0": "broken", "image_1": "ex_0_img_1"},
    ]
    (tmp_path / "examples.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    table = {("red", "a mug in grass"): 0.9, ("blue", "a mug in grass"): 0.5,
             ("red", "grass in a mug"): 0.7, ("blue", "grass in a mug"): 0.6}
    res = run_suite("winoground", tmp_path, table_scorer(table))
    assert (res["text"], res["image"], res["group"], res["n"]) == (1.0, 0.0, 0.0, 1)
    assert res["skipped"] == 2 and "caption_1" in res["skipped_items"][0]["reason"]
    js, cs = write_results({"winoground": res}, tmp_path / "out")
    assert "winoground,text,1.0" in cs.read_text()


def test_aro_relation_macro_accuracy_and_box_crop(tmp_path):
    img = Image.new("RGB", (32, 16), COLORS["red"])
    img.paste(COLORS["blue"], (16, 0, 32, 16))
    (tmp_path / "images").mkdir()
    img.save(tmp_path / "images" / "1.png")
    items = [  # two relations: "on" right 2/2, "under" right 0/1 -> macro 0.5 (micro would be 0.67)
        {"image_path": "1.png", "bbox_x": 16, "bbox_y": 0, "bbox_w": 16, "bbox_h": 16, "relation_name": "on",
         "true_caption": "t1", "false_caption": "f1"},
        {"image_path": "1.png", "bbox_x": 0, "bbox_y": 0, "bbox_w": 16, "bbox_h": 16, "relation_name": "on",
         "true_caption": "t2", "false_caption": "f2"},
        {"image_path": "1.png", "bbox_x": 0, "bbox_y": 0, "bbox_w": 16, "bbox_h": 16, "relation_name": "under",
         "true_caption": "t3", "false_caption": "f3"},
        {"image_path": "1.png", "relation_name": "on", "true_caption": "t", "false_caption": "f"},  # no box
    ]
    (tmp_path / "visual_genome_relation.json").write_text(json.dumps(items))
    # the crop decides the color the scorer sees: blue for item 0, red for items 1 and 2
    table = {("blue", "t1"): 1.0, ("blue", "f1"): 0.0, ("red", "t2"): 1.0, ("red", "f2"): 0.0,
             ("red", "t3"): 0.0, ("red", "f3"): 1.0}
    res = run_suite("aro-relation", tmp_path, table_scorer(table))
    assert res["macro_accuracy"] == 0.5 and res["n"] == 3 and res["skipped"] == 1


def test_aro_order_sugarcrepe_and_crepe(tmp_path):
    _img(tmp_path / "images", "a", "red")
    (tmp_path / "coco_order.json").write_text(json.dumps([
        {"image": "a.png", "caption_options": ["true", "s1", "s2"]},
        {"image": "a.png", "caption_options": ["true2", "s3"]}]))
    t = {("red", "true"): 0.9, ("red", "s1"): 0.1, ("red", "s2"): 0.3, ("red", "true2"): 0.1, ("red", "s3"): 0.2}
    assert run_suite("aro-coco-order", tmp_path, table_scorer(t))["precision@1"] == 0.5
    # the Karpathy file ARO reads: each caption against its four shuffles
    (tmp_path / "k").mkdir()
    _img(tmp_path / "k" / "images", "b", "green")
    (tmp_path / "k" / "coco_karpathy_test.json").write_text(json.dumps([{"image": "val2014/b.png",
                                                                         "caption": ["a dog on a red mat"]}]))

    def prefer_true(images, texts):
        return np.array([[1.0 if t == "a dog on a red mat" else 0.0 for t in texts]])

    res = run_suite("aro-coco-order", tmp_path / "k", prefer_true)
    assert res["precision@1"] == 1.0 and res["n"] == 1
    for sub, (pos, neg) in {"add_att": (0.9, 0.1), "add_obj": (0.1, 0.9), "swap_att": (0.5, 0.5)}.items():
        (tmp_path / f"{sub}.json").write_text(
            json.dumps(
                {
                    "0": {"filename": "a.png", "caption": f"{sub} p", "negative_caption": f"{sub} n"},
                    "1": {"filename": "missing.png", "caption": "p", "negative_caption": "n"},
                }
            )
        )
        t[("red", f"{sub} p")], t[("red", f"{sub} n")] = pos, neg
    res = run_suite("sugarcrepe", tmp_path, table_scorer(t))
    assert res["add_att"]["accuracy"] == 1.0 and res["add_obj"]["accuracy"] == 0.0
    assert res["categories"] == {"add": 0.5, "swap": 0.0}  # micro over the category's items; a tie loses
    assert res["skipped"] == 3
    (tmp_path / "crepe.jsonl").write_text("\n".join(json.dumps(x) for x in [
        {"image": "images/a.png", "positive": "p1", "negatives": ["n1", "n2", "n3"]},
        {"image": "images/a.png", "positive": "p2", "negatives": ["n1", "n2", "n3"]}]))
    t.update({("red", "p1"): 0.95, ("red", "p2"): 0.05, ("red", "n1"): 0.9, ("red", "n2"): 0.2, ("red", "n3"): 0.1})
    res = run_suite("crepe", tmp_path, table_scorer(t))
    assert (res["recall@1"], res["recall@3"], res["recall@5"]) == (0.5, 0.5, 1.0)
    assert recall_at_k([np.array([0.5, 0.5])], ks=(1,)) == {"recall@1": 0.0}  # a tie ranks the positive below


def test_missing_suite_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        run_suite("winoground", tmp_path, None)
    with pytest.raises(ConfigError, match="SugarCREPE"):
        run_suite("sugarcrepe", tmp_path, None)
    with pytest.raises(ConfigError, match="unknown suite"):
        run_suite("nope", tmp_path, None)


def test_rule_based_hard_negatives():
    from mmfm.text.perturb import perturb, tag, tokenize

    rng = np.random.default_rng(0)
    assert perturb("A mug in some grass.", "swap_relation") == "Some grass in a mug."
    assert (
        perturb("a red circle to the left of a blue star", "swap_attributes")
        == "a blue circle to the left of a red star"
    )
    assert perturb("The small dog is riding a large horse", "swap_relation") == "A large horse is riding the small dog"
    assert tag(tokenize("a white cat sitting on a wooden table")) == [
        "DET",
        "ADJ",
        "NOUN",
        "REL",
        "REL_",
        "DET",
        "ADJ",
        "NOUN",
    ]
    rep = perturb("a white cat on a table", "replace", rng)
    assert rep != "a white cat on a table" and len(rep.split()) == 6
    for kind in ("shuffle_within_trigrams", "shuffle_trigrams", "shuffle_allbut_nouns_adjectives"):
        tri = perturb("a man riding a horse on a beach", kind, rng)
        assert tri != "a man riding a horse on a beach" and sorted(tri.split()) == sorted(
            "a man riding a horse on a beach".split()
        )
    kept = perturb("a man riding a horse on a beach", "shuffle_allbut_nouns_adjectives", rng).split()
    assert [kept[i] for i in (1, 4, 7)] == ["man", "horse", "beach"]
    assert perturb("hello", "swap_attributes") is None
    with pytest.raises(ConfigError):
        perturb("x", "nope")


def test_negclip_loss_equals_a_direct_computation():
    from mmfm.nn.losses import clip_loss

    g = torch.Generator().manual_seed(0)
    img, txt, neg = (F.normalize(torch.randn(4, 8, generator=g), dim=-1) for _ in range(3))
    scale = torch.tensor(10.0)
    got = clip_loss(img, txt, scale, negatives=neg)
    # image i's softmax runs over the 4 captions and the 4 negatives; caption i's over the 4 images only
    li, lt = [], []
    for i in range(4):
        row = torch.cat([txt, neg]) @ img[i] * 10
        li.append(-(row[i] - torch.logsumexp(row, 0)))
        col = img @ txt[i] * 10
        lt.append(-(col[i] - torch.logsumexp(col, 0)))
    assert torch.allclose(got, (torch.stack(li).mean() + torch.stack(lt).mean()) / 2, atol=1e-6)
    assert got > clip_loss(img, txt, scale)  # negatives only add competition


def test_negclip_loss_drops_texts_identical_to_a_rows_caption():
    from mmfm.nn.losses import clip_loss, text_keys

    g = torch.Generator().manual_seed(1)
    img, txt, neg = (F.normalize(torch.randn(4, 8, generator=g), dim=-1) for _ in range(3))
    # rows 0 and 1 share a caption; row 2's hard negative is row 3's caption (an attribute-swapped pair)
    ids = torch.tensor([[5, 6, 7], [5, 6, 7], [8, 9, 10], [10, 9, 8]])
    neg_ids = torch.tensor([[1, 2, 3], [2, 3, 4], [10, 9, 8], [4, 5, 6]])
    keys, nkeys = text_keys(ids), text_keys(neg_ids)
    assert keys[0] == keys[1] and nkeys[2] == keys[3] and len({*keys[1:].tolist(), *nkeys.tolist()}) == 6
    scale = torch.tensor(10.0)
    got = clip_loss(img, txt, scale, negatives=neg, keys=keys, negative_keys=nkeys)
    cand_keys = torch.cat([keys, nkeys])
    li, lt = [], []
    for i in range(4):
        row = torch.cat([txt, neg]) @ img[i] * 10
        keep = (cand_keys != keys[i]) | (torch.arange(8) == i)
        li.append(-(row[i] - torch.logsumexp(row[keep], 0)))
        col = img @ txt[i] * 10
        keep = (keys != keys[i]) | (torch.arange(4) == i)
        lt.append(-(col[i] - torch.logsumexp(col[keep], 0)))
    assert torch.allclose(got, (torch.stack(li).mean() + torch.stack(lt).mean()) / 2, atol=1e-6)
    # without keys, row 3 is pushed away from its own caption (row 2's negative): a larger loss
    assert clip_loss(img, txt, scale, negatives=neg) > got


def test_hard_negative_term_is_each_rows_caption_against_its_own_negative():
    from mmfm.nn.losses import hard_negative_loss
    from mmfm.train.negclip import NegCLIPModule

    g = torch.Generator().manual_seed(2)
    img, txt, neg = (F.normalize(torch.randn(4, 8, generator=g), dim=-1) for _ in range(3))
    valid = torch.tensor([True, True, False, True])
    got = hard_negative_loss(img, txt, neg, torch.tensor(10.0), valid=valid)
    # -log sigmoid(s * (cos(i, caption) - cos(i, negative))), rows without a negative left out
    direct = [-F.logsigmoid(10 * (img[i] @ txt[i] - img[i] @ neg[i])) for i in (0, 1, 3)]
    assert torch.allclose(got, torch.stack(direct).mean(), atol=1e-6)
    # a row whose negative scores above its caption costs more than one whose caption wins
    swapped = hard_negative_loss(img, neg, txt, torch.tensor(10.0), valid=valid)
    assert (got > swapped) == (sum(img[i] @ txt[i] - img[i] @ neg[i] for i in (0, 1, 3)) < 0)

    class Towers(torch.nn.Module):  # fixed features in place of a CLIP: checks how the module adds the terms
        def encode_image(self, x):
            return img

        def encode_text(self, ids):
            return txt if ids[0, 0] == 1 else neg

        def scale(self):
            return torch.tensor(10.0)

    ids, neg_ids = torch.ones(4, 3, dtype=torch.long), torch.full((4, 3), 2)
    neg_ids[2] = 1  # row 2 has no negative: its caption is its "negative"
    batch = {"pixels": torch.zeros(4, 3, 2, 2), "input_ids": ids, "negative_ids": neg_ids}
    base, _ = NegCLIPModule(Towers(), drop_false_negatives=False)(batch)
    both, logs = NegCLIPModule(Towers(), drop_false_negatives=False, hard_negative_weight=0.5)(batch)
    assert torch.allclose(both, base + 0.5 * got, atol=1e-6) and torch.allclose(logs["hard_negative_loss"], got)


def test_negclip_batches_pair_scenes_with_neighbours_and_never_name_held_out_pairs():
    import mmfm
    from mmfm.train.negclip import NegCLIPData, names_held_out
    from mmfm.weights import path

    model = mmfm.load(path("clip-world-tiny")).float().eval()
    data = NegCLIPData.build(model, 64, 16, progress=False)
    b = data.batch(0)
    assert b["pixels"].shape[0] == 16 and b["input_ids"].shape == b["negative_ids"].shape
    assert (b["input_ids"] != b["negative_ids"]).any(1).float().mean() > 0.9
    # the second half are the first half's nearest neighbours (never themselves)
    n = data.images.shape[0]
    assert not (data.neighbor == torch.arange(n)).any()
    texts = [model.tokenizer.decode(t) for t in torch.cat([data.pos.flatten(0, 1), data.neg.flatten(0, 1)])]
    assert not any(names_held_out(t) for t in texts)


def test_relation_captions_have_a_canonical_form_and_a_converse():
    from mmfm.train.negclip import canonical, converse

    assert converse("a red circle to the right of a blue square") == "a blue square to the left of a red circle"
    assert converse("an orange star above a green cross") == "a green cross below an orange star"
    assert canonical("an orange star below a green cross") == "a green cross above an orange star"
    assert canonical("a red circle to the left of a blue square") == "a red circle to the left of a blue square"
    assert canonical("two red circles") == "two red circles" and converse("two red circles") is None
    for t in ("a red circle to the right of a blue square", "a pink heart above a white star"):
        assert converse(converse(t)) == t


def test_relation_phase_shows_canonical_relations_first_then_asks_for_the_converse():
    import mmfm
    from mmfm.train.negclip import KINDS, NegCLIPData, NegCLIPModule, canonical, converse
    from mmfm.weights import path

    model = mmfm.load(path("clip-world-tiny")).float().eval()
    data = NegCLIPData.build(model, 64, 16, progress=False, min_objects=2)
    rel = data.with_schedule(32, canonical_steps=3, relation_share=0.5)
    has = data.relation >= 0
    assert has.float().mean() > 0.5
    assert (data.kinds[has].gather(1, data.relation[has, None]) == KINDS.index("relation_swap")).all()
    dec = model.tokenizer.decode
    early, late = rel.batch(0), rel.batch(3)
    # half of the batch's scenes (8 of the 16 before their neighbours) show their relation swap:
    # in canonical form first, then in all four relation words with the converse asked for
    assert not early["converse_valid"].any() and late["converse_valid"][:8].all()
    for i in range(8):
        t, n = dec(early["input_ids"][i]), dec(early["negative_ids"][i])
        assert converse(t) is not None and canonical(t) == t and canonical(n) == n and t != n
    assert any(canonical(dec(t)) != dec(t) for t in late["input_ids"][:8])
    for i in range(32):
        if late["converse_valid"][i]:
            assert dec(late["converse_ids"][i]) == converse(dec(late["input_ids"][i]))
            assert dec(late["converse_negative_ids"][i]) == converse(dec(late["negative_ids"][i]))
    assert (
        len(set(early["pixels"][:8].flatten(1).sum(1).tolist()) & set(late["pixels"][:8].flatten(1).sum(1).tolist()))
        < 8
    )
    # every scene of the batch a relation scene, for more steps than there are such scenes
    only = data.with_schedule(32, relation_share=1.0)
    for step in (0, 1, 5):
        b = only.batch(step)
        assert b["converse_valid"][:16].all() and b["pixels"].shape[0] == 32

    # the converse term is the two-way softmax text vs text, on the rows that have a converse
    from mmfm.nn.losses import hard_negative_loss

    with torch.no_grad():
        base, _ = NegCLIPModule(model, hard_negative_weight=1.0)(late)
        both, logs = NegCLIPModule(model, hard_negative_weight=1.0, converse_weight=0.5)(late)
        enc = lambda k: F.normalize(model.encode_text(late[k]), dim=-1)  # noqa: E731
        direct = hard_negative_loss(enc("input_ids"), enc("converse_ids"), enc("converse_negative_ids"), model.scale(),
                                    valid=late["converse_valid"])
    assert torch.allclose(logs["converse_loss"], direct, atol=1e-5)
    assert torch.allclose(both, base + 0.5 * direct, atol=1e-5)


def _mmfm(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "mmfm.cli.main", *map(str, args)], capture_output=True, text=True,
                          timeout=900)


def test_cli_world_suite_negclip_and_batch_size_run(tmp_path):
    from mmfm.weights import path

    clip = path("clip-world-tiny")
    r = _mmfm("eval", "compositionality", "--model", clip, "--suite", "world", "--n", "20", "--out", tmp_path / "c")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "c" / "compositionality.json").read_text())["world"]
    assert set(res) == {"attribute_swap", "relation_swap", "replace", "word_order"}
    assert (tmp_path / "c" / "compositionality.csv").is_file()
    r = _mmfm("eval", "compositionality", "--model", clip, "--suite", "winoground", "--data", tmp_path / "none")
    assert r.returncode == 2 and "not there" in r.stderr and "Traceback" not in r.stderr
    r = _mmfm("train", "negclip", "--from", clip, "--out", tmp_path / "neg", "--steps", "2", "--batch-size", "16",
              "--scenes", "64", "--eval-n", "10", "--relation-steps", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((tmp_path / "neg" / "report.json").read_text())
    assert {"before", "after"} <= set(rep) and (tmp_path / "neg" / "model" / "model.safetensors").is_file()
    assert (
        rep["relations"]["steps"] == 2
        and len((tmp_path / "neg" / "relations" / "metrics.jsonl").read_text().splitlines()) >= 1
    )
    r = _mmfm("experiment", "batch-size", "--out", tmp_path / "bs", "--batches", "4,8", "--pairs", "16",
              "--eval-n", "10", "--scenes", "64")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "bs" / "results.json").read_text())
    assert set(res) == {"4", "8"} and res["4"]["steps"] == 4 and (tmp_path / "bs" / "batch_size.png").is_file()


def test_negclip_under_torchrun_matches_one_process(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])

    def losses(out):
        return [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines() if ln]

    # a patch-stem CLIP: the hybrid stem's BatchNorm keeps per-rank statistics, as DDP does by design
    r = _mmfm("train", "clip", "--preset", "world-tiny-vit", "--steps", "1", "--batch-size", "16", "--scenes", "64",
              "--no-eval", "--out", tmp_path / "clip")
    assert r.returncode == 0, r.stderr[-2000:]
    args = ["train", "negclip", "--from", str(tmp_path / "clip" / "model"), "--steps", "3", "--batch-size", "16",
            "--scenes", "64", "--no-eval", "--fp32", "--log-every", "1", "--relation-steps", "2"]
    r = _mmfm(*args, "--out", tmp_path / "one")
    assert r.returncode == 0, r.stderr[-2000:]
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          port, "-m", "mmfm.cli.main", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(a) == len(b) == 3 and all(abs(x - y) < 1e-4 for x, y in zip(a, b)), (a, b)
    # the relation phase (converse term included) too
    a, b = losses(tmp_path / "one" / "relations"), losses(tmp_path / "two" / "relations")
    assert len(a) == len(b) == 2 and all(abs(x - y) < 1e-4 for x, y in zip(a, b)), (a, b)
