"""Molmo2 on world videos end to end, at test size: the data (message trees whose answers are the
ground truth), two training steps with the shared Trainer, the saved folder (SmolLM2 left out, LoRA
and the adapter kept) loading back to the same numbers, the evaluation, and the CLI on a video file."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

import mmfm
from mmfm.cli.main import app
from mmfm.data.molmo2_world import WorldVideoData, answer_text
from mmfm.errors import CheckpointError, ConfigError, InvalidPrompt
from mmfm.text.pointing import parse_video_points
from mmfm.train.molmo2 import (
    LM_LR_SCALE,
    PRESETS,
    CausalVisionData,
    add_frame_index,
    add_frame_rows,
    build_from,
    build_from_molmo,
    build_world_molmo2,
    frame_index_scale,
    prepare,
    train_world_molmo2,
)
from mmfm.train.trainer import param_groups
from mmfm.vision.video import write_video
from mmfm.weights import path as weights_path
from mmfm.world.video import clip
from tests.test_reliability import refused

DATA = PRESETS["world-video"]["data"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("molmo2_run")
    report = train_world_molmo2(out=out, steps=2, batch_size=1, progress=False, evaluate=False, seed=0)
    return out, report


def test_world_examples_are_message_trees_whose_answers_are_the_ground_truth():
    model = build_world_molmo2(lm_dtype="float32", **PRESETS["world-video"]["model"])
    data = WorldVideoData(model, model.tokenizer, **DATA)
    ex, c, tasks = data.example(3)
    assert "point_at" in {t["task"] for t in tasks}
    grid = model.config.vision.image_size // model.config.vision.patch_size // model.config.adapter.video_pool[0]
    assert ex.context.count(model.config.image_patch_id) == len(c.frames) * grid * grid
    assert ex.context.count(model.config.frame_start_id) == len(c.frames)
    assert len(ex.qas) == len(tasks)
    for qa, task in zip(ex.qas, tasks):
        text = model.tokenizer.decode(qa.answer)
        assert text == answer_text(task, c)
        if task["task"] in ("point", "track", "point_at") and task["points"]:
            got = parse_video_points(text, 10.0, c.size, c.size)
            assert len(got) == len(task["points"])
            assert max(abs(g[2] - t[2]) + abs(g[3] - t[3]) for g, t in zip(sorted(got), sorted(
                (p[0], 0, p[2], p[3]) for p in task["points"]))) < 0.2
    # a packed batch of world clips: fewer rows than clips, each under max_len, the tree mask
    b = data.batch(0)
    assert b["input_ids"].shape[0] < data.batch_size and b["input_ids"].shape[1] <= data.max_len
    assert b["mask"].shape[-1] == b["input_ids"].shape[1]
    causal = CausalVisionData(data).batch(0)["mask"]
    assert causal.sum() < b["mask"].sum()  # the ablation removes exactly the backward-looking vision block
    assert not (causal & ~b["mask"]).any()
    # and a model trained so is asked so: its plain prompts get no vision block either
    ids = torch.tensor([ex.context[:40]])
    from mmfm.models.molmo2 import vision_mask

    assert model._vision_block(ids).any()
    model.config.bidirectional_vision = False
    assert not model._vision_block(ids).any()
    assert torch.equal(vision_mask(model._vision_block(ids)), vision_mask(torch.zeros_like(ids, dtype=torch.bool)))


def test_two_steps_train_save_and_load_back(run, tmp_path):
    out, report = run
    assert report["trainable_parameters"] > 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert any("loss" in x for x in lines)
    folder = out / "model"
    # SmolLM2's frozen weights stay in their package: the folder holds the adapter, LoRA, extra rows
    assert (folder / "model.safetensors").stat().st_size < 40e6
    model = mmfm.load(folder)
    again = mmfm.load(folder)
    data = WorldVideoData(model, model.tokenizer, **DATA)
    b = data.batch(5)
    with torch.no_grad():
        assert torch.equal(model(**b).loss, again(**b).loss)
    # the frozen tower was saved as it came from the world CLIP, BatchNorm's running statistics included
    clip = mmfm.load(weights_path("clip-world-tiny"))
    want = {k[len("visual.") :]: v for k, v in clip.state_dict().items() if k.startswith("visual.")}
    got = model.vision.vit.state_dict()
    assert any("running_mean" in k for k in got)
    assert all(torch.equal(v, want[k].to(v.dtype)) for k, v in got.items())


def test_evaluation_and_cli_on_a_video_file(run, tmp_path):
    from mmfm.eval.molmo2_world import evaluate_molmo2_world

    out, _ = run
    model = mmfm.load(out / "model")
    data = WorldVideoData(model, model.tokenizer, **DATA)
    rep = evaluate_molmo2_world(model, data, n=1, splits=("heldout",), progress=False, max_new_tokens=6,
                                frame_tracks=2.0)
    assert set(rep["heldout"]) == {"qa", "counting", "pointing", "tracking", "point_at", "tracking_by_frames",
                                   "pointing_by_frames"}
    pf = rep["heldout"]["pointing_by_frames"]
    assert pf["zoom"] == 2.0 and pf["n"] == rep["heldout"]["pointing"]["n"] > 0 and 0.0 <= pf["f1"] <= 1.0
    by = rep["heldout"]["tracking_by_frames"]
    assert by["zoom"] == 2.0 and by["n"] == rep["heldout"]["tracking"]["n"] > 0 and 0.0 <= by["in_mask"] <= 1.0
    from mmfm.cli.molmo2 import format_scores

    assert f"frame by frame {by['in_mask']:.2f}" in format_scores(rep["heldout"])
    assert f"frame by frame {pf['f1']:.2f}" in format_scores(rep["heldout"])
    assert rep["heldout"]["point_at"]["n"] > 0 and 0.0 <= rep["heldout"]["point_at"]["in_mask"] <= 1.0
    assert 0.0 <= rep["heldout"]["counting"]["exact"] <= 1.0

    c = clip(0, "test", 0)
    write_video(c.frames, tmp_path / "c.mp4", fps=c.fps)
    write_video(c.frames, tmp_path / "c.gif", fps=c.fps)
    runner = CliRunner()
    r = runner.invoke(app, ["ask", str(tmp_path / "c.mp4"), "How many stars appear in the video?", "--model",
                            str(out / "model"), "--max-tokens", "4", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["question"].startswith("How many")
    r = runner.invoke(app, ["track", str(tmp_path / "c.gif"), "the red circle", "--model", str(out / "model"),
                            "-o", str(tmp_path / "t.gif")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "t.gif").is_file()
    # several images go to Molmo2 too
    from PIL import Image

    for i in range(2):
        Image.fromarray(c.frames[i]).save(tmp_path / f"f{i}.png")
    r = runner.invoke(app, ["ask", str(tmp_path / "f0.png"), str(tmp_path / "f1.png"), "Which image has more hearts?",
                            "--model", str(out / "model"), "--max-tokens", "3"])
    assert r.exit_code == 0, r.output


def test_bad_video_requests_are_one_line_errors(run, tmp_path, capsys):
    out, _ = run
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all" * 50)
    refused(capsys, "ask", tmp_path / "bad.mp4", "How many?", "--model", out / "model", match="not a video")
    refused(capsys, "ask", tmp_path / "bad.mp4", "How many?", match="not a video")  # the shipped Molmo2 reads it
    refused(capsys, "ask", "only-a-question", match="then the question")
    refused(capsys, "track", tmp_path / "bad.mp4", " ", "--model", out / "model", match="empty")
    model = mmfm.load(out / "model")
    frames = torch.zeros(model.config.max_frames + 1, 3, 64, 64, dtype=torch.uint8)
    with pytest.raises(InvalidPrompt, match="at most"):
        model.video_context(frames, [0.5 * i for i in range(len(frames))])
    with pytest.raises(InvalidPrompt, match="timestamps"):
        model.video_context(frames[:3], [0.0])


def test_prepare_trains_the_adapter_and_lora_only():
    model = build_world_molmo2(lm_dtype="float32", **PRESETS["world-video"]["model"])
    prepare(model, PRESETS["world-video"]["lora"])
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("adapter.") or n.endswith(("lora_a", "lora_b")) for n in names)
    model.train()
    assert model.adapter.training and not model.vision.training  # the frozen tower's BatchNorm does not drift


def test_world_training_options_are_checked_before_any_work(tmp_path, capsys):
    refused(capsys, "train", "molmo2", "--tasks", "point,jump", "--out", tmp_path / "x", match="task kinds")
    refused(capsys, "train", "molmo2", "--save-every", "0", "--out", tmp_path / "x", match="--save-every")
    refused(capsys, "train", "molmo2", "--tasks", "none", "--out", tmp_path / "x", match="--frame-stills N or --sets N")
    data = tmp_path / "data.json"  # never read: the option checks come first
    refused(capsys, "train", "molmo2", "--data", data, "--from", tmp_path, "--train-lm", "--tasks", "count",
            "--out", tmp_path / "x", match="--train-lm, --tasks: world-video options")
    refused(capsys, "train", "molmo2", "--data", data, "--from", tmp_path, "--frame-layout",
            "--out", tmp_path / "x", match="--frame-layout")
    refused(capsys, "train", "molmo2", "--data", data, "--from", tmp_path, "--frame-rows",
            "--out", tmp_path / "x", match="--frame-rows: world-video options")
    refused(capsys, "train", "molmo2", "--data", data, "--from", tmp_path, "--frame-index",
            "--out", tmp_path / "x", match="--frame-index: world-video options")
    refused(capsys, "train", "molmo2", "--data", data, "--from", tmp_path, "--stills", "4",
            "--out", tmp_path / "x", match="--stills: world-video options")
    refused(capsys, "train", "molmo2", "--data", data, "--from", tmp_path, "--sets", "2",
            "--out", tmp_path / "x", match="--sets: world-video options")
    refused(capsys, "train", "molmo2", "--sets", "2", "--set-layouts", "images,grid", "--out", tmp_path / "x",
            match="--set-layouts")
    refused(capsys, "train", "molmo2", "--data", data, "--from", tmp_path, "--entering-stills", "3",
            "--out", tmp_path / "x", match="--entering-stills: world-video options")
    refused(capsys, "train", "molmo2", "--tasks", "none", "--stills", "2", "--entering-stills", "3",
            "--out", tmp_path / "x", match="with --frame-stills N")
    refused(capsys, "train", "molmo2", "--frame-stills", "2", "--entering-stills", "1",
            "--out", tmp_path / "x", match="K >= 2")
    refused(capsys, "train", "molmo2", "--data", data, "--from", tmp_path, "--grey-stills", "0.5",
            "--tower-lr-scale", "0.1", "--out", tmp_path / "x", match="--grey-stills, --tower-lr-scale: world-video")
    refused(capsys, "train", "molmo2", "--tasks", "none", "--stills", "2", "--grey-stills", "0.5",
            "--out", tmp_path / "x", match="--grey-stills 0.5: the share of frame stills drawn in grey")
    refused(capsys, "train", "molmo2", "--frame-stills", "2", "--grey-stills", "1.5", "--out", tmp_path / "x",
            match="--grey-stills must be in 0.0..1.0")
    refused(capsys, "train", "molmo2", "--from", "llava-world-tiny", "--out", tmp_path / "x",
            match="Molmo's connector and image layout")
    assert not (tmp_path / "x").exists()


def test_a_molmo2_starts_where_the_image_molmo_stands():
    """build_from_molmo: each frame of a clip reaches the LM as the same vectors the shipped image Molmo
    (molmo-world-tiny) gives that frame as an image, layout tokens included, and the LM is its LM."""
    model = build_from_molmo("molmo-world-tiny", lm_dtype="float32", frame_col_tokens=True).eval()
    llava = mmfm.load(weights_path("molmo-world-tiny")).eval()
    c = clip(0, "train", 0, **{k: DATA[k] for k in ("frames", "size", "fps")})
    frames = torch.from_numpy(c.frames).permute(0, 3, 1, 2).contiguous()
    ids, patches, pooling = model.video_context(frames, [c.time(t) for t in range(len(c.frames))])
    mean, std = (torch.tensor(v)[:, None, None] for v in (llava.config.image_mean, llava.config.image_std))
    ids = torch.tensor(ids)[None]
    with torch.no_grad():
        want = llava.encode_images((frames.float() / 255 - mean) / std)  # (F, 22, d): start, rows + column, end
        got = model.embed(ids, model.encode(patches, pooling))[0]
        starts = (ids[0] == model.config.frame_start_id).nonzero()[:, 0]
        assert len(starts) == len(c.frames)
        for f, s in enumerate(starts.tolist()):
            torch.testing.assert_close(got[s:s + want.shape[1]], want[f], atol=1e-4, rtol=0)
        x = torch.randint(0, 1000, (1, 12))
        torch.testing.assert_close(model.lm(x).logits[..., :1000], llava.lm(x).logits[..., :1000], atol=1e-4, rtol=0)
    assert model.config.base_lm == "" and model.config.adapter.feature_layers == (2, 0)
    with pytest.raises(ConfigError, match="Molmo's connector and image layout"):
        build_from_molmo("llava-world-tiny")  # Molmo's connector without the layout


def test_a_world_run_goes_on_from_a_saved_molmo2(run, tmp_path):
    """--from a Molmo2: a second stage starts from the model as it was saved (same loss), refuses a layout
    or an attention it was not trained with, keeps its LoRA, or merges it with --train-lm."""
    from mmfm.nn.lora import LoRALinear

    out, _ = run
    saved = mmfm.load(out / "model")
    saved.lm.float()
    b = WorldVideoData(saved, saved.tokenizer, **DATA).batch(3)
    go_on = build_from(out / "model", lm_dtype="float32", frame_col_tokens=False, bidirectional=True)
    merged = build_from(out / "model", lm_dtype="float32", frame_col_tokens=False, train_lm=True)
    assert go_on.config.lora == saved.config.lora and any(isinstance(m, LoRALinear) for m in go_on.lm.modules())
    assert merged.config.lora is None and not any(isinstance(m, LoRALinear) for m in merged.lm.modules())
    with torch.no_grad():
        want = saved(**b).loss
        torch.testing.assert_close(go_on(**b).loss, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(merged(**b).loss, want, atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match="leave out --frame-layout"):
        build_from(out / "model", frame_col_tokens=True)
    with pytest.raises(ConfigError, match="attend both ways; leave out --causal-vision"):
        build_from(out / "model", frame_col_tokens=False, bidirectional=False)

    report = train_world_molmo2(out=tmp_path, steps=1, batch_size=1, progress=False, evaluate=False, seed=0,
                                start=out / "model", frame_stills=2, entering=2,  # clips and frames of others
                                grey=0.5, tower_lr_scale=1.0)
    assert report["start"] == str(out / "model") and report["frame_stills"] == 2 and report["entering"] == 2
    assert report["grey"] == 0.5 and report["tower_lr_scale"] == 1.0
    after = mmfm.load(tmp_path / "model")
    assert after.config.lora == saved.config.lora  # its own adapters went on learning
    a, s = after.state_dict(), saved.state_dict()
    lora_keys = [k for k in s if "lora_" in k]
    assert lora_keys and any(not torch.equal(a[k].float(), s[k].float()) for k in lora_keys)
    stem = [k for k in s if k.startswith("vision.vit.patch_embed.") and k.endswith("weight")]
    stats = [k for k in s if k.startswith("vision.") and k.endswith(("running_mean", "running_var"))]
    assert stem and any(not torch.equal(a[k].float(), s[k].float()) for k in stem)  # the tower learned
    assert stats and all(torch.equal(a[k].float(), s[k].float()) for k in stats)  # its BatchNorm kept its statistics


def test_the_whole_lm_learns_with_column_tokens_in_frames(tmp_path):
    model = build_world_molmo2(lm_dtype="float32", frame_col_tokens=True, **PRESETS["world-video"]["model"])
    c = model.config
    newline = model.tokenizer.encode("\n")[-1]
    assert torch.equal(model.lm.embed.weight[c.image_col_id], model.lm.embed.weight[newline])  # a row break
    prepare(model, None, LM_LR_SCALE)  # no LoRA: every LM weight learns, at a fraction of the adapter's lr
    assert c.lora is None and c.base_lm == ""
    assert all(p.requires_grad and p.dtype == torch.float32 and p.lr_scale == LM_LR_SCALE
               for p in model.lm.parameters())
    assert not any(p.requires_grad for p in model.vision.parameters())
    lrs = sorted(g.get("lr", 1e-3) for g in param_groups(model, 0.0, 1e-3) if g["params"])
    assert lrs[0] == pytest.approx(1e-3 * LM_LR_SCALE) and lrs[-1] == 1e-3

    report = train_world_molmo2(out=tmp_path, steps=1, batch_size=1, progress=False, evaluate=False, seed=0,
                                train_lm=True, frame_layout=True, tasks=("track",))
    assert report["trainable_parameters"] > 100e6 and report["tasks"] == ["track"]
    back = mmfm.load(tmp_path / "model")  # the LM's own weights are in the folder now
    assert back.config.frame_col_tokens and back.config.lora is None
    data = WorldVideoData(back, back.tokenizer, tasks=("track",), **DATA)
    ex, clip_, tasks = data.example(0)
    rows = back.config.vision.image_size // back.config.vision.patch_size // back.config.adapter.video_pool[0]
    assert ex.context.count(back.config.image_col_id) == len(clip_.frames) * rows
    assert {t["task"] for t in tasks} == {"track"}
    b = data.batch(0)
    with torch.no_grad():
        assert torch.isfinite(back(**b).loss)
    # back to a folder of adapters over the package's SmolLM2 (as the shipped world models are)
    r = CliRunner().invoke(app, ["lora", "extract", str(tmp_path / "model"), "--rank", "4", "--out",
                                 str(tmp_path / "adapters")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["adapters"] == 4 * back.config.lm.layers
    small = mmfm.load(tmp_path / "adapters")
    assert small.config.base_lm == "smollm2" and small.config.lora["r"] == 4 and small.config.frame_col_tokens
    assert (tmp_path / "adapters" / "model.safetensors").stat().st_size < 40e6
    v = back.config.lm.vocab_size
    assert torch.equal(small.lm.embed.weight[v:], back.lm.embed.weight[v:])  # the vision ids' rows as trained
    with torch.no_grad():
        assert torch.isfinite(small(**b).loss)


def test_stills_are_one_frame_videos_whose_points_are_the_scene():
    """--stills: world scenes as one-frame videos at 0.0 s, each point question answered in the video
    markup with the scene's points, added to every batch beside the clips."""
    from mmfm.data.molmo2 import IGNORE

    model = build_world_molmo2(lm_dtype="float32", **PRESETS["world-video"]["model"])
    tok, c = model.tokenizer, model.config
    data = WorldVideoData(model, tok, stills=3, **DATA)
    ex, queries = data.still(5)
    scene = data.world.sample("train", 5)
    frame = torch.from_numpy(scene.rendered.image).permute(2, 0, 1)[None]
    ids, patches, _ = model.video_context(frame, [0.0])
    assert ex.context == ids and torch.equal(ex.patches, patches) and ex.context.count(c.frame_start_id) == 1
    assert queries and len(ex.qas) == len(queries) and {qa.kind for qa in ex.qas} == {"pointing"}
    for qa, q in zip(ex.qas, queries):
        assert tok.decode(qa.question).count(f"Point to the {q.query}.") == 1
        text = tok.decode(qa.answer)
        got = parse_video_points(text, 0.0, DATA["size"], DATA["size"]) if q.points else []
        assert (text.startswith("There are none")) == (not q.points)
        assert len(got) == len(q.points) and all(t == 0.0 for t, *_ in got)
        assert max((abs(g[2] - x) + abs(g[3] - y) for g, (x, y) in zip(got, sorted(q.points))), default=0) < 0.2
    plain = WorldVideoData(model, tok, **DATA).batch(0)
    b = data.batch(0)
    extra = sum(len(data.still(i)[0].qas[k].answer) for i in range(3) for k in range(len(data.still(i)[0].qas)))
    assert int((b["labels"] != IGNORE).sum()) == int((plain["labels"] != IGNORE).sum()) + extra
    assert data.batch(0)["input_ids"].equal(b["input_ids"]) and not data.batch(1)["input_ids"].equal(b["input_ids"])
    only = WorldVideoData(model, tok, stills=3, tasks=(), **DATA).batch(0)  # --tasks none: the stills alone
    assert int((only["labels"] != IGNORE).sum()) == extra and only["patches"].shape[0] == 3
    with pytest.raises(ConfigError, match="empty"):
        WorldVideoData(model, tok, tasks=(), **DATA)


def test_frame_stills_are_single_frames_of_clips_asked_for_every_object_of_a_shape():
    """--frame-stills: one frame of a training clip as a one-frame video, "Point to every <shape>." for each
    shape of the clip and one it lacks, answered with every object of that shape visible in that frame, or
    none."""
    from mmfm.data.molmo2 import IGNORE

    model = build_world_molmo2(lm_dtype="float32", **PRESETS["world-video"]["model"])
    tok = model.tokenizer
    data = WorldVideoData(model, tok, frame_stills=4, tasks=(), **DATA)
    seen_none = seen_two = False
    for i in range(12):
        ex, c, k = data.frame_still(data._frame_index(i))
        assert c.events == data.clip(i).events and k == (3 * i) % DATA["frames"]  # clip i, its frame (3 i) mod F
        frame = torch.from_numpy(c.frames[k]).permute(2, 0, 1)[None]
        assert ex.context == model.video_context(frame, [0.0])[0]
        shapes = sorted({m.obj.shape for m in c.movers})
        assert len(ex.qas) == len(shapes) + 1 and {qa.kind for qa in ex.qas} == {"pointing"}
        lacking = tok.decode(ex.qas[-1].question).split("Point to every ")[1].split(".")[0]
        assert lacking not in shapes and tok.decode(ex.qas[-1].answer).startswith("There are none")
        shapes.append(lacking)
        for qa, shape in zip(ex.qas, shapes):
            assert tok.decode(qa.question).count(f"Point to every {shape}.") == 1
            text = tok.decode(qa.answer)
            want = [o for o, m in enumerate(c.movers) if m.obj.shape == shape and c.visible[k, o]]
            got = parse_video_points(text, 0.0, DATA["size"], DATA["size"]) if want else []
            assert text.startswith("There are none") == (not want) and len(got) == len(want)
            for _, _, x, y in got:  # every point in the mask of one object of that shape, in that frame
                assert any(c.masks[k, o, min(int(y), DATA["size"] - 1), min(int(x), DATA["size"] - 1)] for o in want)
            seen_none |= not want
            seen_two |= len(want) > 1
    assert seen_none and seen_two
    b = data.batch(0)
    extra = sum(len(qa.answer) for i in range(4) for qa in data.frame_still(data._frame_index(i))[0].qas)
    assert int((b["labels"] != IGNORE).sum()) == extra and b["patches"].shape[0] == 4


def test_entering_stills_show_the_frame_after_an_object_came_into_view():
    """--entering-stills K: K - 1 of every K frame stills are the frame after an entry of their clip (clips
    with none, and every K-th still, keep frame (3 i) mod F); the other frame stills are unchanged."""
    model = build_world_molmo2(lm_dtype="float32", **PRESETS["world-video"]["model"])
    plain = WorldVideoData(model, model.tokenizer, frame_stills=4, tasks=(), **DATA)
    data = WorldVideoData(model, model.tokenizer, frame_stills=4, tasks=(), entering=3, **DATA)
    f = DATA["frames"]
    at_entry = 0
    for i in range(24):
        c, index = data.clip(i), data._frame_index(i)
        firsts = [int(c.visible[:, o].nonzero()[0][0]) for o in range(len(c.movers)) if c.visible[:, o].any()]
        entries = [e for e in firsts if 0 < e < f - 1]  # seen first after the clip's start, not in its last frame
        assert index // f == i
        if i % 3 and entries:
            assert index % f - 1 in entries
            at_entry += 1
        else:
            assert index == plain._frame_index(i)
    assert at_entry >= 8  # most clips have an object entering later
    with pytest.raises(ConfigError, match="K >= 2"):
        WorldVideoData(model, model.tokenizer, frame_stills=4, tasks=(), entering=1, **DATA)
    with pytest.raises(ConfigError, match="frame stills"):
        WorldVideoData(model, model.tokenizer, stills=4, tasks=(), entering=3, **DATA)


def test_grey_stills_are_frame_stills_drawn_in_grey():
    """--grey-stills P: that share of the frame stills (a seeded choice per still) shows its frame in grey, the
    same questions and answers; P = 0 is the plain frame still."""
    from mmfm.data.molmo2_world import check_grey
    from mmfm.vision.transforms import greyscale

    model = build_world_molmo2(lm_dtype="float32", **PRESETS["world-video"]["model"])
    plain = WorldVideoData(model, model.tokenizer, frame_stills=4, tasks=(), **DATA)
    half = WorldVideoData(model, model.tokenizer, frame_stills=4, tasks=(), grey=0.5, **DATA)
    greys = 0
    for index in range(0, 160, 7):
        (p, c, k), (h, _, _) = plain.frame_still(index), half.frame_still(index)
        g = torch.from_numpy(greyscale(c.frames[k])).permute(2, 0, 1)[None].contiguous()
        grey_patches = model.video_context(g, [0.0])[1]
        assert [(qa.question, qa.answer) for qa in h.qas] == [(qa.question, qa.answer) for qa in p.qas]
        is_grey = torch.equal(h.patches, grey_patches)
        assert is_grey or torch.equal(h.patches, p.patches)
        assert not torch.equal(p.patches, grey_patches)  # the world's objects have colours
        greys += is_grey
    assert 6 <= greys <= 17  # about half of 23
    check_grey(0.0, 0)
    with pytest.raises(ConfigError, match="in \\[0, 1\\], with frame stills"):
        check_grey(0.5, 0)
    with pytest.raises(ConfigError, match="in \\[0, 1\\]"):
        WorldVideoData(model, model.tokenizer, frame_stills=4, tasks=(), grey=1.5, **DATA)


def test_a_column_token_per_row_of_a_frame(run, tmp_path):
    """--frame-rows: each row of a frame ends with its own column token (new input-only rows that start
    near the column token), so a patch's row can be read from the layout wherever the frame sits."""
    from mmfm.models.molmo2 import Molmo2Config

    model = build_world_molmo2(lm_dtype="float32", frame_col_tokens=True, **PRESETS["world-video"]["model"])
    c = model.config
    before = model.lm.embed.weight.detach().clone()
    add_frame_rows(model, seed=0)
    rows = c.vision.image_size // c.vision.patch_size // c.adapter.video_pool[0]
    n = before.shape[0]
    assert c.frame_row_ids == tuple(range(n, n + rows)) and c.lm.extra_vocab == 10 + rows
    w = model.lm.embed.weight.detach()
    assert w.shape[0] == n + rows and torch.equal(w[:n], before)
    col = before[c.image_col_id]
    steps = w[n:] - col
    torch.testing.assert_close(steps.norm(dim=1), torch.full((rows,), 0.5) * col.norm(), rtol=1e-4, atol=0)
    assert len({tuple(r.tolist()) for r in w[n:]}) == rows  # the rows start apart
    ex, clip_, _ = WorldVideoData(model, model.tokenizer, **DATA).example(0)
    frame = model.frame_tokens(rows, 3)
    assert [t for t in frame if t != c.image_patch_id] == [c.frame_start_id, *c.frame_row_ids, c.frame_end_id]
    assert model.frame_tokens(rows + 1, 1)[-2] == c.frame_row_ids[-1]  # rows past them: the last one
    assert ex.context.count(c.image_col_id) == 0
    assert all(ex.context.count(i) == len(clip_.frames) for i in c.frame_row_ids)
    assert bool(model.is_vision(torch.tensor(c.frame_row_ids)).all())
    with pytest.raises(ConfigError, match="need frame_col_tokens"):
        Molmo2Config.from_dict({**c.to_dict(), "frame_col_tokens": False})
    out, _ = run  # a run without column tokens in frames has no column to give a row
    with pytest.raises(ConfigError, match="--frame-layout"):
        build_from(out / "model", frame_col_tokens=False, frame_rows=True)

    report = train_world_molmo2(out=tmp_path, steps=1, batch_size=1, progress=False, evaluate=False, seed=0,
                                frame_layout=True, frame_rows=True, tasks=("point",))
    assert report["frame_rows"]
    back = mmfm.load(tmp_path / "model")  # LoRA over the package's SmolLM2: the new rows are kept with it
    assert back.config.frame_row_ids == c.frame_row_ids and back.config.base_lm == "smollm2"
    torch.testing.assert_close(back.lm.embed.weight[n:].float(), w[n:], rtol=1e-2, atol=1e-3)  # frozen under LoRA
    b = WorldVideoData(back, back.tokenizer, tasks=("point",), **DATA).batch(0)
    with torch.no_grad():
        assert torch.isfinite(back(**b).loss)
    with pytest.raises(ConfigError, match="give --frame-rows"):
        build_from(tmp_path / "model", frame_col_tokens=True)
    again = build_from(tmp_path / "model", lm_dtype="float32", frame_col_tokens=True, frame_rows=True)
    assert again.config.frame_row_ids == c.frame_row_ids and again.lm.embed.num_embeddings == n + rows


def test_a_patch_token_per_frame(tmp_path):
    """--frame-index: the patches of frame k sit on their own token (new input-only rows, <im_patch> plus a
    random direction), features are added to it as to <im_patch>, images keep <im_patch>, and the layout
    travels with the saved model."""
    from mmfm.interop.hf_molmo2 import save_hf_molmo2

    model = build_world_molmo2(lm_dtype="float32", **PRESETS["world-video"]["model"])
    c = model.config
    before = model.lm.embed.weight.detach().clone()
    data = WorldVideoData(model, model.tokenizer, **DATA)
    scale = frame_index_scale(model, data)
    ex0 = data.example(0)[0]
    with torch.no_grad():
        feats = model.encode(ex0.patches, ex0.pooling)
    assert scale == pytest.approx(0.25 * float(feats.norm(dim=1).mean()), rel=1e-5) and scale > 0
    frames = 3
    timed = copy.deepcopy(model)  # directions from the frames' times: the centred sums of their tokens' vectors
    add_frame_index(timed, frames, scale, times=[0.0, 0.5, 1.0])
    sums = torch.stack([before[model.tokenizer.encode_plain(t)].sum(0) for t in ("0.0", "0.5", "1.0")])
    want = sums - sums.mean(0)
    got = timed.lm.embed.weight.detach()[before.shape[0]:] - before[c.image_patch_id]
    torch.testing.assert_close(got, want / want.norm(dim=1, keepdim=True) * scale, rtol=1e-4, atol=1e-5)
    for times in ([0.0, 0.0, 0.0], [0.0, 0.5]):
        with pytest.raises(ConfigError, match="times"):
            add_frame_index(copy.deepcopy(model), frames, scale, times=times)
    del timed
    add_frame_index(model, frames, scale, seed=0)
    n = before.shape[0]
    assert c.frame_index_ids == tuple(range(n, n + frames)) and c.lm.extra_vocab == 10 + frames
    w = model.lm.embed.weight.detach()
    assert torch.equal(w[:n], before)
    steps = w[n:] - before[c.image_patch_id]
    torch.testing.assert_close(steps.norm(dim=1), torch.full((frames,), scale), rtol=1e-4, atol=0)
    cos = torch.nn.functional.cosine_similarity(steps[:, None], steps[None], dim=-1)
    assert float((cos - torch.eye(frames)).abs().max()) < 0.3  # the frames start apart
    assert model.frame_tokens(2, 2, 1) == [c.frame_start_id] + [c.frame_index_ids[1]] * 4 + [c.frame_end_id]
    assert model.frame_tokens(2, 2, frames + 4)[1] == c.frame_index_ids[-1]  # frames past them: the last one
    ex, clip_, _ = data.example(0)
    per_frame = ex.pooling.shape[0] // len(clip_.frames)
    assert ex.context.count(c.image_patch_id) == 0
    for k, i in enumerate(c.frame_index_ids):
        assert ex.context.count(i) == per_frame * (1 if k < frames - 1 else len(clip_.frames) - frames + 1)
    assert bool(model.is_vision(torch.tensor(c.frame_index_ids)).all())
    ids = torch.tensor([ex.context])
    with torch.no_grad():
        added = model.embed(ids, feats) - model.embed(ids, torch.zeros_like(feats))
        assert torch.allclose(added[0][torch.isin(ids[0], torch.tensor(c.frame_index_ids))], feats, atol=1e-5)
        assert torch.isfinite(model(ids, ex.patches, ex.pooling).logits).all()
    img_ids, _, _ = model.images_context([torch.zeros(3, 64, 64, dtype=torch.uint8)])
    assert img_ids.count(c.image_patch_id) > 0 and not set(img_ids) & set(c.frame_index_ids)
    with pytest.raises(InvalidPrompt, match="placeholders"):
        model.embed(ids, feats[:-1])
    with pytest.raises(CheckpointError, match="mmfm only"):
        save_hf_molmo2(model, tmp_path)

    report = train_world_molmo2(out=tmp_path / "r", steps=1, batch_size=1, progress=False, evaluate=False, seed=0,
                                frame_index=2, tasks=("point",))
    assert report["frame_index"] == 2
    back = mmfm.load(tmp_path / "r" / "model")  # LoRA over the package's SmolLM2: the new rows are kept with it
    assert back.config.frame_index_ids == (n, n + 1) and back.lm.embed.num_embeddings == n + 2
    b = WorldVideoData(back, back.tokenizer, tasks=("point",), **DATA).batch(0)
    assert int(torch.isin(b["input_ids"], torch.tensor([n, n + 1])).sum()) > 0
    with torch.no_grad():
        assert torch.isfinite(back(**b).loss)
    with pytest.raises(ConfigError, match="give --frame-index"):
        build_from(tmp_path / "r" / "model", frame_col_tokens=False)


def test_image_sets_as_images_and_as_slideshows(run):
    """--sets: world image sets in batches beside the clips, as several images ("Image 1" ...) and as a
    slideshow video, each task a branch answered with the ground truth; and their evaluation."""
    from mmfm.data.molmo2 import IGNORE
    from mmfm.data.molmo2_world import SET_IMAGES, set_answer_text
    from mmfm.eval.molmo2_world import evaluate_sets
    from mmfm.world.image_sets import set_tasks

    out, _ = run
    model = mmfm.load(out / "model")
    tok, c = model.tokenizer, model.config
    data = WorldVideoData(model, tok, sets=2, **DATA)
    for layout, starts in (("images", c.low_res_start_id), ("video", c.frame_start_id)):
        ex, s, tasks = data.set_example(1, layout)
        assert len(s.scenes) == (DATA["frames"] if layout == "video" else SET_IMAGES)
        assert ex.context.count(starts) == len(s.scenes) and ex.patches.shape[0] >= len(s.scenes)
        assert ("Image 2" in tok.decode(ex.context)) == (layout == "images")
        assert tasks == set_tasks(s, layout) and len(ex.qas) == len(tasks)
        for qa, t in zip(ex.qas, tasks):
            assert tok.decode(qa.question).count(t["question"]) == 1
            assert tok.decode(qa.answer) == set_answer_text(t, s, layout) and qa.answer[-len(data._end):] == data._end
    plain = data.batch(0)
    assert plain["input_ids"].equal(data.batch(0)["input_ids"])
    # the sets are what a batch adds: set 0 as images, set 1 as a slideshow, their branches at most max_qas
    clips = WorldVideoData(model, tok, **DATA).batch(0)
    added = int((plain["labels"] != IGNORE).sum()) - int((clips["labels"] != IGNORE).sum())
    assert added > 0 and plain["patches"].shape[0] > clips["patches"].shape[0]
    only = WorldVideoData(model, tok, sets=2, tasks=(), **DATA).batch(0)
    assert int((only["labels"] != IGNORE).sum()) == added
    with pytest.raises(ConfigError, match="layouts"):
        WorldVideoData(model, tok, sets=2, set_layouts=("grid",), **DATA)
    rep = evaluate_sets(model, data, n=1, progress=False, max_new_tokens=4)
    s0 = data.set_example(0, "images")[1]
    assert rep["pointing_in_image_f1"]["n"] == sum(t["task"] == "point_in" for t in set_tasks(s0, "images")) > 0
    assert rep["slideshow_at_a_time_f1"]["n"] > 0 and rep["moved_at_a_time_f1"]["n"] > 0 and rep["sets"] == 1
    m0 = data.set_example(0, "moved")[2]
    assert rep["moved_track_in_mask"]["n"] == sum(t["task"] == "track" for t in m0) == 1
    moved = WorldVideoData(model, tok, sets=1, tasks=(), set_layouts=("moved",), **DATA)
    ex, s, _ = moved.set_example(0, "moved")
    assert ex.context.count(c.frame_start_id) == DATA["frames"] == len(s.scenes)
    assert moved.batch(0)["patches"].shape[0] == ex.patches.shape[0]
    from mmfm.cli.molmo2 import _set_scores

    assert _set_scores({"image_sets": rep}).startswith("; image sets (1): pointing in image k F1")
    assert all(0.0 <= rep[k]["mean"] <= 1.0 for k in rep if k != "sets" and rep[k]["n"])
