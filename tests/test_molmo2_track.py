"""Tracking frame by frame with a second look (mmfm.models.molmo2_track), with the shipped world Molmo2:
the track's shape (one point a frame, at the clip's times, each second-look point inside the crop around
its first), how often it is in the object's mask on test clips it never saw against the one-pass answer,
`mmfm track --per-frame` on a GIF, and bad requests; pointing frame by frame the same way (linking points
into tracks, each object where its track starts), scored against the one-pass answer, and `mmfm point
--per-frame`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import mmfm
from mmfm.cli.main import app
from mmfm.errors import ConfigError, InvalidPrompt
from mmfm.eval.molmo2_world import _points
from mmfm.eval.video import st_point_scores, track_scores
from mmfm.models.molmo2_track import FramePoints, link_points, point_by_frames, track_by_frames
from mmfm.text.pointing import parse_video_points
from mmfm.vision.video import write_video
from mmfm.weights import path
from mmfm.world.video import clip, video_tasks
from tests.test_reliability import refused


@pytest.fixture(scope="module")
def model():
    return mmfm.load(path("molmo2-world-video"))


def _times(c) -> list[float]:
    return [c.time(k) for k in range(len(c.frames))]


def test_a_track_by_frames_has_a_point_a_frame_and_looks_again_inside_its_crop(model):
    c = clip(0, "test", 1)
    task = next(t for t in video_tasks(c) if t["task"] == "track")
    tr = track_by_frames(model, c.frames, _times(c), task["name"], zoom=2.0)
    times = [t for t, _, _ in tr.points]
    assert len(tr.answers) == len(c.frames) and len(set(times)) == len(times)  # at most one point a frame
    assert times == [t for t, _, _ in tr.first_look] and set(times) <= set(_times(c))
    for (_, x, y), (_, x1, y1) in zip(tr.points, tr.first_look):
        assert 0 <= x < c.size and 0 <= y < c.size
        assert abs(x - x1) <= c.size / 2 and abs(y - y1) <= c.size / 2  # inside the half-size crop around it
    assert any(p != q for p, q in zip(tr.points, tr.first_look))  # the second look moved some point
    # the markup is the track, in Molmo2's video format, at 0-1000
    back = parse_video_points(tr.markup(c.size, c.size, task["name"]), times[-1], c.size, c.size)
    assert [(t, k) for t, k, _, _ in back] == [(t, 1) for t in times]
    assert all(abs(x - x0) <= 0.04 and abs(y - y0) <= 0.04 for (_, _, x, y), (_, x0, y0) in zip(back, tr.points))
    once = track_by_frames(model, c.frames, _times(c), task["name"], zoom=1.0)  # no second look
    assert once.points == once.first_look == tr.first_look


def _one_pass_and_by_frames(model, kind: str, clips: int, score, by_frames) -> tuple[list, list]:
    """For each `kind` task of the first test clips: score(points, clip, task) of the one-pass answer and of
    by_frames(clip, task)'s points."""
    from mmfm.data.molmo2_world import WorldVideoData
    from mmfm.eval.molmo2_world import ask_clip

    data = WorldVideoData(model, model._tok(), seed=0, split="test", size=model.config.vision.image_size)
    one, frames = [], []
    for i in range(clips):
        ex, c, tasks = data.example(i)
        mine = [t for t in tasks if t["task"] == kind]
        answers = ask_clip(model, data, ex.context, ex.patches, ex.pooling, [t["question"] for t in mine])
        for t, a in zip(mine, answers):
            one.append(score(_points(a, c), c, t))
            frames.append(score(by_frames(c, t), c, t))
    return one, frames


def test_frame_by_frame_tracks_land_in_the_mask_more_often_than_the_one_pass_answer(model):
    """On 4 test clips (12 tracks) the shipped model never saw."""
    one_pass, by_frames = _one_pass_and_by_frames(
        model, "track", 4, lambda pts, c, t: track_scores(pts, c, t["object"])["in_mask"],
        lambda c, t: track_by_frames(model, c.frames, _times(c), t["name"]).points)
    # measured on these tracks when written: one pass 0.33, frame by frame 0.83 (greedy: it repeats)
    assert np.mean(by_frames) >= 0.6 and np.mean(by_frames) >= np.mean(one_pass) + 0.15, (one_pass, by_frames)


def test_mmfm_track_per_frame_on_a_gif(tmp_path, capsys):
    c = clip(0, "test", 1)
    name = next(t for t in video_tasks(c) if t["task"] == "track")["name"]
    write_video(c.frames, tmp_path / "c.gif", fps=c.fps)
    r = CliRunner().invoke(app, ["track", str(tmp_path / "c.gif"), f"the {name}", "--per-frame", "--json",
                                 "-o", str(tmp_path / "t.gif")])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output.strip().splitlines()[-1])
    assert got["answer"].startswith("<points coords=") and got["points"] and (tmp_path / "t.gif").is_file()
    assert all(k == 1 for _, k, _, _ in got["points"])
    refused(capsys, "track", tmp_path / "c.gif", "the red circle", "--per-frame", "--zoom", "9", match="--zoom")
    # mmfm point --per-frame: each object where its track starts, numbered, in the one-pass answer's markup
    shape = next(t for t in video_tasks(c) if t["task"] == "point")["shape"]
    r = CliRunner().invoke(app, ["point", str(tmp_path / "c.gif"), shape, "--per-frame", "--json",
                                 "-o", str(tmp_path / "p.gif")])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output.strip().splitlines()[-1])
    ids = [k for _, k, _, _ in got["points"]]
    assert (tmp_path / "p.gif").is_file() and ids == list(range(1, len(ids) + 1))
    assert got["answer"].startswith("<points coords=") or got["answer"] == "There are none."


def test_bad_frame_tracking_requests_are_typed_errors(model):
    c = clip(0, "test", 0)
    with pytest.raises(ConfigError, match="zoom"):
        track_by_frames(model, c.frames, _times(c), "red circle", zoom=0.5)
    with pytest.raises(InvalidPrompt, match="timestamps"):
        track_by_frames(model, c.frames, _times(c)[:-1], "red circle")
    with pytest.raises(InvalidPrompt, match="uint8"):
        track_by_frames(model, c.frames.astype(np.float32), _times(c), "red circle")
    with pytest.raises(InvalidPrompt, match="empty"):
        track_by_frames(model, c.frames, _times(c), "  ")


def test_link_points_follows_two_objects_that_pass_each_other_and_drops_nothing_it_cannot_place():
    # two objects moving toward each other along a row, a third entering at frame 3; frame 2 misses one
    a = [(10 + 8 * k, 20) for k in range(6)]
    b = [(50 - 8 * k, 24) for k in range(6)]
    per = [[a[0], b[0]], [b[1], a[1]], [a[2]], [b[3], a[3], (60, 60)], [a[4], b[4], (58, 58)], [(56, 56), a[5], b[5]]]
    tracks = link_points(per, gate=10)  # the first step has no velocity yet: the gate holds a step of 8
    assert len(tracks) == 3
    ta, tb, tc = tracks[0], tracks[1], tracks[2]
    assert [(x, y) for _, x, y in ta] == a and [k for k, _, _ in ta] == list(range(6))
    assert [k for k, _, _ in tb] == [0, 1, 3, 4, 5]  # one missed frame does not end a track
    assert [(x, y) for _, x, y in tb] == [b[k] for k in (0, 1, 3, 4, 5)]
    assert tc[0] == (3, 60, 60) and len(tc) == 3
    # a gate too small for the motion: every point starts its own track
    assert len(link_points([[(0, 0)], [(8, 0)]], gate=4)) == 2
    # a track not continued for `patience` frames ends; a point later at its place starts a new one
    assert len(link_points([[(0, 0)], [], [], [(0, 0)]], gate=4, patience=2)) == 2


def test_pointing_by_frames_gives_each_object_once_where_its_track_starts(model):
    c = clip(0, "test", 3)
    shape = next(t for t in video_tasks(c) if t["task"] == "point")["shape"]
    fp = point_by_frames(model, c.frames, _times(c), shape)
    assert len(fp.answers) == len(c.frames) and len(fp.points) == len(fp.tracks)
    assert fp.points == [tr[0] for tr in fp.tracks]
    assert [t for t, _, _ in fp.points] == sorted(t for t, _, _ in fp.points)
    for tr in fp.tracks:  # at most one point a frame per track, at the clip's times, inside the frame
        times = [t for t, _, _ in tr]
        assert times == sorted(set(times)) and set(times) <= set(_times(c))
        assert len(tr) >= 3 or times[0] > _times(c)[-3]  # min_frames: a short track only where the clip ends
        assert all(0 <= x <= c.size and 0 <= y <= c.size for _, x, y in tr)
    back = parse_video_points(fp.markup(c.size, c.size, shape), _times(c)[-1], c.size, c.size)
    assert [(t, k) for t, k, _, _ in back] == [(t, k) for k, (t, _, _) in enumerate(fp.points, 1)]
    assert FramePoints([], [], []).markup(64, 64, shape) == "There are none."
    loose = point_by_frames(model, c.frames, _times(c), shape, zoom=1.0, min_frames=1)
    assert loose.answers == fp.answers and len(loose.points) >= len(
        point_by_frames(model, c.frames, _times(c), shape, zoom=1.0, min_frames=3).points)


def test_pointing_by_frames_finds_more_objects_when_they_appear_than_the_one_pass_answer(model):
    """On 6 test clips (15 "Point to every X when it appears." tasks) the shipped model never saw."""
    one_pass, by_frames = _one_pass_and_by_frames(
        model, "point", 6, lambda pts, c, t: st_point_scores(pts, c, t["shape"])["f1"],
        lambda c, t: point_by_frames(model, c.frames, _times(c), t["shape"]).points)
    # measured on these tasks when written: one pass F1 0.38, frame by frame 0.54 (greedy: it repeats)
    assert len(by_frames) == 15 and np.mean(by_frames) >= np.mean(one_pass) + 0.04, (one_pass, by_frames)


def test_pointing_by_frames_in_grey_asks_both_looks_about_the_grey_frames(model):
    """grey=True: the same procedure on the frames in grey (each pixel the mean of its channels), first look and
    second look alike."""
    from mmfm.errors import InvalidImage
    from mmfm.vision.transforms import greyscale

    c = clip(0, "heldout", 1)
    g = greyscale(c.frames)
    assert g.shape == c.frames.shape and g.dtype == np.uint8
    assert (g == g[..., :1]).all() and np.abs(g[..., 0] - c.frames.mean(-1)).max() <= 0.5
    with pytest.raises(InvalidImage, match="uint8 images with 3 channels"):
        greyscale(c.frames[..., :2])
    shape = next(t for t in video_tasks(c) if t["task"] == "point")["shape"]
    grey = point_by_frames(model, c.frames, _times(c), shape, grey=True)
    want = point_by_frames(model, g, _times(c), shape)
    assert grey.answers == want.answers and grey.tracks == want.tracks


def test_pointing_by_frames_in_grey_finds_shapes_in_colours_no_training_clip_has(model):
    """Held-out clips hold colour-shape pairs no training clip has, which a tower trained on the pairs misses in
    colour; asked about the grey frames, the shipped model finds such an object where it comes into view (on 6
    held-out clips)."""
    from mmfm.eval.video import _frame
    from mmfm.world import HELD_OUT_PAIRS

    found = []
    for i in range(2, 8):
        c = clip(0, "heldout", i)
        obj, t0 = next((e["object"], e["time"]) for e in c.events if e["event"] == "appears" and (
            c.movers[e["object"]].obj.color, c.movers[e["object"]].obj.shape) in HELD_OUT_PAIRS)
        fp = point_by_frames(model, c.frames, _times(c), c.movers[obj].obj.shape, grey=True)
        found.append(any(abs(t - t0) <= 0.5 + 1e-9 and 0 <= int(x) < c.size and 0 <= int(y) < c.size
                         and c.masks[_frame(t, c.fps, len(c.frames)), obj, int(y), int(x)] for t, x, y in fp.points))
    # measured when written: found in 5 of these 6 clips in grey, in 2 asked about the frames in colour
    assert sum(found) >= 4, found

def test_bad_frame_pointing_requests_are_typed_errors(model, capsys):
    refused(capsys, "point", "clip.gif", "the circles", "--grey", match="--grey: with --per-frame")
    refused(capsys, "eval", "molmo2", "--model", "molmo2-world-video", "--grey-frames",
            match="--grey-frames: with --frame-tracks")
    refused(capsys, "eval", "molmo2", "--model", "molmo2-world-video", "--split", "train",
            match="test, heldout or both")
    c = clip(0, "test", 0)
    for kw, match in (({"gate": 0.0}, "gate"), ({"gate": 1.5}, "gate"), ({"min_frames": 0}, "gate"),
                      ({"zoom": 9.0}, "zoom")):
        with pytest.raises(ConfigError, match=match):
            point_by_frames(model, c.frames, _times(c), "circle", **kw)
    with pytest.raises(InvalidPrompt, match="empty"):
        point_by_frames(model, c.frames, _times(c), " ")
    with pytest.raises(InvalidPrompt, match="timestamps"):
        point_by_frames(model, c.frames, _times(c)[1:], "circle")
