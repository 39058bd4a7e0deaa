"""World videos (ground truth that agrees with the pixels, events, tasks, held-out splits), video I/O
through PyAV, Molmo2's spatio-temporal point format, and bad video input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmfm.errors import ConfigError, InvalidImage, InvalidText
from mmfm.text.pointing import format_video_points, parse_video_points
from mmfm.vision.video import draw_points, read_video, write_video
from mmfm.world.video import clip, video_tasks
from mmfm.world.vocab import HELD_OUT_PAIRS


def test_clips_are_deterministic_and_their_ground_truth_matches_the_pixels():
    a, b = clip(0, "train", 5), clip(0, "train", 5)
    assert np.array_equal(a.frames, b.frames) and a.events == b.events
    assert not np.array_equal(a.frames, clip(1, "train", 5).frames)
    for c in (clip(0, "train", i) for i in range(12)):
        f, n = c.visible.shape
        for t in range(f):
            for i in range(n):
                if c.visible[t, i]:
                    x, y = c.points[t, i].astype(int)
                    assert c.masks[t, i, y, x]  # the point is on the object
                    rgb = np.asarray(c.movers[i].obj.rgb, float)
                    assert np.abs(c.frames[t, y, x].astype(float) - rgb).max() <= 8  # and has its colour
        # visible masks never overlap: occlusion is exact
        assert (c.masks.sum(1) <= 1).all()


def test_events_and_tasks_follow_the_motion():
    kinds = set()
    for i in range(40):
        c = clip(2, "train", i)
        for e in c.events:
            kinds.add(e["event"])
            assert e["time"] == round(e["frame"] / c.fps, 1)
            if e["event"] == "leaves":
                assert not c.visible[e["frame"]:, e["object"]].any() and c.visible[e["frame"] - 1, e["object"]]
            if e["event"] == "appears":
                assert c.visible[e["frame"], e["object"]] and not c.visible[: e["frame"], e["object"]].any()
        for task in video_tasks(c):
            if task["task"] in ("count", "point"):
                want = [j for j, m in enumerate(c.movers) if m.obj.shape == task["shape"] and c.visible[:, j].any()]
                if task["task"] == "count":
                    assert task["count"] == len(want)
                else:  # one point per object, at the frame it appears, on the object
                    assert sorted(k for _, k, _, _ in task["points"]) == want
            if task["task"] == "track":
                assert len(task["points"]) == int(c.visible[:, task["object"]].sum())
            if task["task"] == "point_at":  # on the object, at the visible frame farthest from its first place
                (t, j, x, y), = task["points"]
                k, seen = task["frame"], np.nonzero(c.visible[:, j])[0]
                assert j == task["object"] and t == c.time(k) and c.masks[k, j, int(y), int(x)]
                moved = np.hypot(*(c.points[seen, j] - c.points[seen[0], j]).T)
                assert moved.max() == np.hypot(*(c.points[k, j] - c.points[seen[0], j]))
                assert task["question"] == f"Point to the {c.names[j]} at {t} s."
    assert {"appears", "leaves", "starts moving", "touches", "overtakes"} <= kinds


def test_heldout_clips_hold_a_heldout_composition_and_train_clips_none():
    for i in range(20):
        assert any((m.obj.color, m.obj.shape) in HELD_OUT_PAIRS for m in clip(0, "heldout", i).movers)
        assert not any((m.obj.color, m.obj.shape) in HELD_OUT_PAIRS for m in clip(0, "train", i).movers)
    with pytest.raises(ConfigError):
        clip(0, "concepts", 0)


def test_video_points_round_trip_and_times_outside_the_clip_are_refused():
    pts = [(0.5, 1, 10.0, 20.0), (0.0, 2, 63.0, 0.0), (2.0, 1, 32.0, 32.0)]
    text = format_video_points(pts, 64, 64, "red circles")
    assert text.startswith('<points coords="0.0 2 984 000; 0.5 1 156 312; 2.0 1 500 500">')
    back = parse_video_points(text, duration=3.5, width=64, height=64)
    assert [(t, k) for t, k, _, _ in back] == [(0.0, 2), (0.5, 1), (2.0, 1)]
    assert max(abs(x - x0) + abs(y - y0) for (_, _, x, y), (_, _, x0, y0)
               in zip(back, sorted(pts, key=lambda p: p[0]))) < 0.2
    with pytest.raises(InvalidText, match="outside the clip"):
        parse_video_points(text, duration=1.0)
    with pytest.raises(InvalidText):
        parse_video_points('<points coords="0.5 1 1200 3">x</points>', duration=4)
    with pytest.raises(InvalidText):
        parse_video_points('<points coords="0.5 1 12">x</points>', duration=4)


def test_video_files_round_trip_and_sample_like_molmo2(tmp_path):
    c = clip(0, "train", 1, frames=12, fps=6.0)
    write_video(c.frames, tmp_path / "c.mp4", fps=6.0)
    write_video(draw_points(c.frames, [[(0, 5.0, 5.0)]] * 12, scale=2), tmp_path / "c.gif", fps=6.0)
    v = read_video(tmp_path / "c.mp4", max_frames=64, max_fps=2.0)
    assert v.total == 12 and v.fps == 6.0
    assert v.timestamps == [0.0, 0.5, 1.0, 1.5, 11 / 6]  # 2 s at 2 fps and the last frame, as transformers samples
    assert np.abs(v.frames[0].astype(int) - c.frames[0]).mean() < 12  # a lossy codec, the same picture
    g = read_video(tmp_path / "c.gif", max_frames=3)
    assert g.frames.shape == (3, 128, 128, 3)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(c.frames[:5]):
        from PIL import Image

        Image.fromarray(f).save(folder / f"{i:03d}.png")
    d = read_video(folder, fps=1.0)
    assert d.total == 5 and np.array_equal(d.frames, c.frames[:5])


def test_bad_videos_are_typed_errors(tmp_path):
    (tmp_path / "junk.mp4").write_bytes(b"\x00\x01 not a video" * 100)
    with pytest.raises(InvalidImage):
        read_video(tmp_path / "junk.mp4")
    good = write_video(clip(0, "train", 0).frames, tmp_path / "ok.mp4")
    (tmp_path / "cut.mp4").write_bytes(good.read_bytes()[:200])  # truncated: no frame survives
    with pytest.raises(InvalidImage):
        read_video(tmp_path / "cut.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidImage, match="no frames"):
        read_video(tmp_path / "empty")
    with pytest.raises(InvalidImage, match="no such"):
        read_video(tmp_path / "missing.mp4")
    with pytest.raises(InvalidImage):
        write_video([], tmp_path / "none.gif")


def test_world_video_command_writes_clips_and_ground_truth(tmp_path):
    from typer.testing import CliRunner

    from mmfm.cli.main import app

    r = CliRunner().invoke(app, ["world", "video", "--out", str(tmp_path), "--n", "2", "--frames", "6", "--mp4"])
    assert r.exit_code == 0, r.output
    gt = json.loads((tmp_path / "ground_truth.json").read_text())
    assert len(gt) == 2 and len(gt[0]["tracks"]) == 6 and gt[0]["events"]
    assert read_video(tmp_path / "train_00000.gif").total == 6
    assert read_video(tmp_path / "train_00001.mp4").total == 6


def test_video_scores_reward_the_truth_and_punish_mistakes():
    from mmfm.eval.video import count_scores, point_at_score, st_point_scores, track_scores

    c = next(c for c in (clip(3, "test", i) for i in range(50))
             if len({m.obj.shape for m in c.movers}) < len(c.movers) or len(c.movers) >= 3)
    tasks = video_tasks(c)
    for task in (t for t in tasks if t["task"] == "point"):
        perfect = [(t, x, y) for t, _, x, y in task["points"]]
        assert st_point_scores(perfect, c, task["shape"])["f1"] == 1.0
        late = [(t + 2.0, x, y) for t, x, y in perfect]  # right place, wrong time
        assert st_point_scores(late, c, task["shape"])["recall"] == 0.0
        doubled = perfect + perfect  # the same object twice: one match only
        assert st_point_scores(doubled, c, task["shape"])["precision"] == 0.5
    for task in (t for t in tasks if t["task"] == "track"):
        pts = [(t, x, y) for t, _, x, y in task["points"]]
        s = track_scores(pts, c, task["object"])
        assert s["in_mask"] == 1.0 and s["switches"] == 0
        assert track_scores(pts[: len(pts) // 2], c, task["object"])["in_mask"] <= 0.5 + 1e-9
        assert track_scores([(t, 0, 0) for t, _, _ in pts], c, task["object"])["in_mask"] < 1.0
    for task in (t for t in tasks if t["task"] == "point_at"):
        (t, j, x, y), = task["points"]
        assert point_at_score([(t, x, y)], c, j, task["frame"]) == 1.0
        assert point_at_score([], c, j, task["frame"]) == 0.0 == point_at_score([(t, -1, y)], c, j, task["frame"])
    stale = 0  # the first frame's place written again is wrong once the object has left it
    for c in (clip(3, "test", i) for i in range(6)):
        for task in (t for t in video_tasks(c) if t["task"] == "point_at"):
            j, k = task["object"], task["frame"]
            x0, y0 = c.points[np.nonzero(c.visible[:, j])[0][0], j]
            if not c.masks[k, j, int(y0), int(x0)]:
                stale += 1
                assert point_at_score([(task["points"][0][0], x0, y0)], c, j, k) == 0.0
    assert stale >= 3
    s = count_scores([3, 2, None, 5], [3, 3, 1, 5])
    assert s["exact"] == 0.5 and s["within_one"] == 0.75 and s["exact_ci95"] > 0


def test_image_sets_ground_truth_answers_and_scores():
    """World image sets: deterministic; every pointing task's points on its objects in the right scene;
    the answers in both layouts parse back to the truth (F1 1) and score 0 on the wrong image; 'most'
    and 'how many in all' agree with counting the scenes' objects."""
    from mmfm.data.molmo2_world import set_answer_text
    from mmfm.eval.molmo2_world import _set_points
    from mmfm.eval.video import set_point_scores
    from mmfm.world.facts import select
    from mmfm.world.image_sets import image_set, set_tasks

    a, b = image_set(0, "test", 2), image_set(0, "test", 2)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a.scenes, b.scenes))
    assert not np.array_equal(a.scenes[0].image, image_set(0, "test", 3).scenes[0].image)
    with pytest.raises(ConfigError, match="layout"):
        set_tasks(a, "grid")
    wrong_image = most = 0
    for i in range(4):
        s = image_set(0, "heldout", i, n=4)
        assert all(any((o.color, o.shape) in HELD_OUT_PAIRS for o in r.scene.objects) for r in s.scenes)
        for layout in ("images", "video"):
            tasks = set_tasks(s, layout)
            kinds = {t["task"] for t in tasks}
            assert kinds == {"point_in"} if layout == "video" else kinds >= {"point_in", "point_every", "count_all"}
            for t in tasks:
                if "points" not in t:
                    continue
                for k, obj, x, y in t["points"]:
                    assert s.scenes[k].masks[obj, int(y), int(x)]
                text = set_answer_text(t, s, layout)
                got = _set_points(text, s, layout)
                assert set_point_scores(got, s, t["points"])["f1"] == 1.0
                assert t["question"].endswith(f"in image {t['image'] + 1}." if layout == "images" and
                                              t["task"] == "point_in" else ".")
                if t["task"] == "point_in":
                    if layout == "video":
                        assert f"at {s.time(t['image'])} s" in t["question"]
                    shifted = [((k + 1) % len(s.scenes), x, y) for k, x, y in got]
                    wrong_image += set_point_scores(shifted, s, t["points"])["f1"] == 0.0
        for t in set_tasks(s, "images"):
            counts = [len(select(r, shape=t.get("shape"))) for r in s.scenes]
            if t["task"] == "count_all":
                assert t["count"] == sum(counts)
            if t["task"] == "most":
                most += 1
                assert t["answer"] == f"image {counts.index(max(counts)) + 1}" and counts.count(max(counts)) == 1
    assert wrong_image >= 12 and most >= 1


def test_moved_sets_are_one_scene_re_placed_frame_by_frame():
    """The 'moved' layout: the same objects in every frame, each frame at new places; the question names a
    time, its answer parses back to the truth, and the same points read on another frame miss."""
    from mmfm.data.molmo2_world import set_answer_text
    from mmfm.eval.molmo2_world import _set_points
    from mmfm.eval.video import set_point_scores
    from mmfm.world.image_sets import moved_set, set_tasks

    s = moved_set(0, "test", 1, n=8)
    assert np.array_equal(s.scenes[3].image, moved_set(0, "test", 1, n=8).scenes[3].image)
    first = s.scenes[0].scene.objects
    for r in s.scenes[1:]:
        assert [(o.color, o.shape, o.size) for o in r.scene.objects] == [(o.color, o.shape, o.size) for o in first]
        assert any((o.x, o.y) != (p.x, p.y) for o, p in zip(r.scene.objects, first))
    tasks = set_tasks(s, "moved")
    assert tasks.pop()["task"] == "track"
    assert len(tasks) == 8 and {t["task"] for t in tasks} == {"point_in"}
    misses = 0
    for t in tasks:
        assert t["question"].endswith(f"at {s.time(t['image'])} s.")
        got = _set_points(set_answer_text(t, s, "moved"), s, "moved")
        assert set_point_scores(got, s, t["points"])["f1"] == 1.0
        other = (t["image"] + 1) % 8  # the same points written for another frame's time
        misses += set_point_scores([(other, x, y) for _, x, y in got], s, t["points"])["f1"] == 0.0
    assert misses == 8


def test_moved_set_track_follows_the_object_and_a_still_track_scores_low():
    """Tracking on a moved set: the first frame's object, a point on each frame where it is visible, in
    the clips' track markup; the answer parses back to in-mask 1, while repeating the first frame's place
    on every frame (what a still track does) hits only where the object happens to stay."""
    from mmfm.data.molmo2_world import set_answer_text
    from mmfm.eval.molmo2_world import _set_points
    from mmfm.eval.video import set_track_score
    from mmfm.world.image_sets import moved_set, set_tasks

    s = moved_set(0, "test", 1, n=8)
    t = set_tasks(s, "moved")[-1]
    assert t["task"] == "track" and t["question"] == f"Track the {t['label']}."
    obj = t["object"]
    assert [k for k, *_ in t["points"]] == [k for k, r in enumerate(s.scenes) if r.masks[obj].any()]
    assert all(p[1] == obj for p in t["points"])
    text = set_answer_text(t, s, "moved")
    got = _set_points(text, s, "moved")
    assert [k for k, _, _ in got] == [k for k, *_ in t["points"]]
    assert set_track_score(got, s, t["points"]) == 1.0
    k0, _, x0, y0 = t["points"][0]
    still = [(k, x0, y0) for k, *_ in t["points"]]
    assert set_track_score(still, s, t["points"]) <= 0.5
    assert set_track_score([], s, t["points"]) == 0.0
    assert set_track_score(got[:1], s, t["points"]) == 1 / len(t["points"])
