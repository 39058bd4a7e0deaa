"""`mmfm ask` / `mmfm point` on videos and image sets, `mmfm track`, `mmfm train molmo2`, `mmfm eval molmo2`.

One image goes to LLaVA as before (or to a Molmo2 given with --model); a video (MP4, WebM, an animated
GIF, a folder of frames) or several images go to Molmo2.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mmfm.cli import options
from mmfm.errors import CheckpointError, ConfigError, InvalidPrompt

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")


def is_video(path: Path) -> bool:
    if path.is_dir() or path.suffix.lower() in VIDEO_SUFFIXES:
        return True
    if path.suffix.lower() == ".gif" and path.is_file():
        from PIL import Image

        try:
            with Image.open(path) as im:
                return getattr(im, "n_frames", 1) > 1
        except OSError:
            return True  # let the video reader say what is wrong with it
    return False


def _load_molmo2(model: Path | None, dtype: str = "float32"):
    from mmfm.cli import load_model
    from mmfm.models.molmo2 import Molmo2

    if model is None:
        from mmfm.weights import path

        try:
            model = path("molmo2-world-video")
        except CheckpointError as e:  # no shipped Molmo2 in this install
            raise ConfigError("videos and image sets need a Molmo2 model: pass --model DIR (a transformers "
                              "Molmo2 folder or one `mmfm train molmo2` wrote)") from e
    return load_model(model, Molmo2, "ask / point / track on videos", "answers", dtype=dtype)


def _split(args: list[str], what: str) -> tuple[list[Path], str]:
    if len(args) < 2:
        raise InvalidPrompt(f"give one or more files, then the {what}")
    text = args[-1].strip()
    if not text:
        raise InvalidPrompt(f"the {what} is empty")
    return [Path(a) for a in args[:-1]], text


def _video(path: Path, m, max_frames: int, fps: float | None):
    from mmfm.vision.video import read_video

    return read_video(path, max_frames=min(max_frames, m.config.max_frames), max_fps=m.config.max_fps, fps=fps)


FILES = typer.Argument(..., help="A video (MP4, WebM, animated GIF, a folder of frames) or images, then the text.")
MODEL = typer.Option(None, "--model", help="A Molmo2 folder (mmfm or transformers); one image: a LLaVA too.")
MAX_FRAMES = options.bounded(64, "--max-frames", lo=1, hi=1024, help="At most this many frames are sampled.")
FPS = typer.Option(None, "--fps", help="Frame rate of a folder of frames (a video file knows its own).")


def ask(
    args: list[str] = FILES,
    model: Path = MODEL,
    max_tokens: int = options.bounded(64, "--max-tokens", lo=1, hi=4096, help="At most this many new tokens."),
    max_frames: int = MAX_FRAMES,
    fps: float = FPS,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    dtype: str = options.dtype_option("float32"),
) -> None:
    """Answer a question about an image, several images or a video: mmfm ask clip.mp4 "How many stars appear?"."""
    files, question = _split(args, "question")
    if len(files) == 1 and not is_video(files[0]):
        from mmfm.cli import llava

        if model is None or _model_type(model) != "molmo2":
            return llava.ask(files[0], question, model=model, max_tokens=max_tokens, as_json=as_json, dtype=dtype)
    m = _load_molmo2(model, dtype)
    if len(files) == 1 and is_video(files[0]):
        answer = m.ask(question, video=_video(files[0], m, max_frames, fps), max_new_tokens=max_tokens)
    else:
        if any(is_video(f) for f in files):
            raise InvalidPrompt("ask about one video, or about images: not both")
        answer = m.ask(question, images=files, max_new_tokens=max_tokens)
    typer.echo(json.dumps({"files": [str(f) for f in files], "question": question, "answer": answer})
               if as_json else answer)


def _model_type(folder: Path) -> str:
    """"molmo2" for Molmo2 folders (mmfm's or transformers'), else ""."""
    cfg = Path(folder) / "config.json"
    try:
        kind = json.loads(cfg.read_text()).get("model_type", "")
    except (OSError, ValueError, AttributeError):
        return ""
    return "molmo2" if kind in ("molmo2", "mmfm-molmo2") else ""


def _object(query: str) -> str:
    """"the red circles" -> "red circles": the question puts its own article."""
    return query[4:] if query.lower().startswith("the ") else query


def _grounded(files, query, model, out, max_frames, fps, question, what, by_frames=None):
    """The video's answer to `question` (or by_frames(model, video): the markup of an answer asked frame by
    frame), its points drawn into `out`."""
    from mmfm.text.pointing import parse_video_points
    from mmfm.vision.video import draw_points, write_video

    if len(files) != 1 or not is_video(files[0]):
        raise InvalidPrompt(f"{what} takes one video")
    m = _load_molmo2(model)
    v = _video(files[0], m, max_frames, fps)
    w, h = v.size
    duration = v.timestamps[-1] if v.timestamps else 0.0
    if by_frames is not None:  # asked frame by frame (mmfm.models.molmo2_track)
        answer = by_frames(m, v)
    else:
        answer = m.ask(question, video=v, max_new_tokens=512)
    pts = parse_video_points(answer, duration + 0.5, w, h)
    per_frame = [[] for _ in v.timestamps]
    for t, k, x, y in pts:
        f = min(range(len(v.timestamps)), key=lambda i: abs(v.timestamps[i] - t))
        per_frame[f].append((k, x, y))
    scale = max(1, 256 // max(w, h))
    write_video(draw_points(v.frames, per_frame, scale=scale, trail=what == "track"), out,
                fps=max(1.0, len(v.timestamps) / max(duration, 1e-6)) if duration else 2.0)
    return answer, pts


def _report(video, query, answer, pts, out, as_json: bool, what: str) -> None:
    if as_json:
        typer.echo(json.dumps({"video": str(video), "query": query, "answer": answer,
                               "points": [list(p) for p in pts], "out": str(out)}))
    else:
        typer.echo(f"{answer}\n{len(pts)} {what} -> {out}")


def point(
    args: list[str] = FILES,
    model: Path = MODEL,
    out: Path = typer.Option(None, "-o", "--out", help="PNG (an image) or GIF / MP4 (a video) with the points."),
    max_frames: int = MAX_FRAMES,
    fps: float = FPS,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    per_frame: bool = typer.Option(False, "--per-frame", help="In a video: ask about each frame alone (\"Point to "
                                   "every X.\"), link the points frame to frame, and give each track's first: "
                                   "pointing by detection with the same model, instead of its one-pass answer."),
    grey: bool = typer.Option(False, "--grey", help="With --per-frame: ask about the frames in grey, for a query that "
                              "names no colour and a model trained with --grey-stills."),
) -> None:
    """Point at things: in an image (Molmo's format), or in a video at the time each appears (Molmo2's)."""
    if grey and not per_frame:
        raise ConfigError("--grey: with --per-frame (the frames asked about one by one)")
    files, query = _split(args, "query")
    if len(files) == 1 and not is_video(files[0]):
        from mmfm.cli import llava

        return llava.point(files[0], query, model=model, out=out or Path("points.png"), as_json=as_json)
    q = _object(query)
    out = out or Path("points.gif")

    def by_frames(m, v):
        from mmfm.models.molmo2_track import point_by_frames

        return point_by_frames(m, v.frames, v.timestamps, q, grey=grey).markup(*v.size, q)

    answer, pts = _grounded(files, query, model, out, max_frames, fps, f"Point to every {q} when it appears.", "point",
                            by_frames if per_frame else None)
    _report(files[0], query, answer, pts, out, as_json, "point(s)")


def track(
    args: list[str] = FILES,
    model: Path = MODEL,
    out: Path = typer.Option(Path("track.gif"), "-o", "--out", help="GIF or MP4 with the track drawn."),
    max_frames: int = MAX_FRAMES,
    fps: float = FPS,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    per_frame: bool = typer.Option(False, "--per-frame", help="Ask about each frame alone (\"Point to the X.\"), "
                                   "then again on a crop around the point, enlarged: tracking by detection with "
                                   "the same model, instead of its one-pass answer."),
    zoom: float = options.bounded(2.0, "--zoom", lo=1.0, hi=8.0, help="With --per-frame: how many times the "
                                  "second look enlarges its crop (1: no second look)."),
) -> None:
    """Track an object through a video: a point on every sampled frame where it is, drawn as a trail."""
    files, query = _split(args, "object to track")
    q = _object(query)

    def by_frames(m, v):
        from mmfm.models.molmo2_track import track_by_frames

        return track_by_frames(m, v.frames, v.timestamps, q, zoom).markup(*v.size, q)

    answer, pts = _grounded(files, query, model, out, max_frames, fps, f"Track the {q}.", "track",
                            by_frames if per_frame else None)
    _report(files[0], query, answer, pts, out, as_json, "frame(s) tracked")


def train_molmo2(
    preset: str = typer.Option("world-video", help="Training preset."),
    out: Path = typer.Option(Path("runs/molmo2"), "--out", help="Run folder."),
    steps: int = options.STEPS,
    batch_size: int = options.BATCH_SIZE,
    lr: float = options.LR,
    seed: int = options.SEED,
    resume: bool = typer.Option(False, "--resume", help="Continue from out/checkpoint.pt."),
    save_every: int = options.SAVE_EVERY,
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate on test and held-out clips after."),
    eval_n: int = options.bounded(50, "--eval-n", lo=1, hi=10**5, help="Clips per split for the evaluation."),
    packed: bool = typer.Option(True, "--packed/--padded", help="Message trees packed into rows, or one padded "
                                "row per question (the ablation)."),
    weighting: bool = typer.Option(True, "--token-weighting/--no-token-weighting", help="Molmo2's token weighting."),
    bidirectional: bool = typer.Option(True, "--bidirectional/--causal-vision",
                                       help="Vision tokens attend to each other both ways (Molmo2) or causally."),
    train_lm: bool = typer.Option(False, "--train-lm", help="On world videos: train every LM weight (as Molmo2 "
                                  "does) instead of LoRA adapters."),
    frame_layout: bool = typer.Option(False, "--frame-layout", help="On world videos: a column token after each "
                                      "row of a frame's patches (mmfm's option; transformers cannot load it)."),
    frame_rows: bool = typer.Option(False, "--frame-rows", help="On world videos, with --frame-layout: a different "
                                    "column token after each row, so a patch's row is read from the layout."),
    frame_index: bool = typer.Option(False, "--frame-index", help="On world videos: the patches of each frame on "
                                     "their own token, so a frame's tokens say which frame they are (mmfm's "
                                     "option; transformers cannot load it)."),
    stills: int = options.bounded(0, "--stills", lo=0, hi=4096, help="On world videos: that many world scenes per "
                                  "batch as one-frame videos with point questions (images beside the videos)."),
    frame_stills: int = options.bounded(0, "--frame-stills", lo=0, hi=4096, help="On world videos: that many "
                                        "single frames of clips per batch, 'Point to every <shape>.' about each "
                                        "frame alone (what `mmfm point --per-frame` asks)."),
    entering_stills: int = options.bounded(0, "--entering-stills", lo=0, hi=4096, help="With --frame-stills: K - 1 "
                                           "of every K of them one frame after an object of their clip came into "
                                           "view (K >= 2; 0: off), the objects `mmfm point --per-frame` misses most."),
    grey_stills: float = options.bounded(0.0, "--grey-stills", lo=0.0, hi=1.0, help="With --frame-stills: that share "
                                         "of them drawn in grey (the mean of the channels), for `mmfm point "
                                         "--per-frame --grey`."),
    tower_lr_scale: float = options.bounded(0.0, "--tower-lr-scale", lo=0.0, hi=100.0, help="On world videos: the "
                                            "vision tower learns at this share of --lr, its BatchNorm statistics "
                                            "kept (0: frozen)."),
    sets: int = options.bounded(0, "--sets", lo=0, hi=4096, help="On world videos: that many image sets per batch "
                                "(a few scenes as several images, or as a slideshow video), with multi-image "
                                "pointing and QA and pointing at a time; the evaluation asks --eval-sets of them."),
    set_layouts: str = typer.Option("images,video", "--set-layouts", help="With --sets: the layouts they take in "
                                    "turn, of images, video (a slideshow of scenes), moved (one scene re-placed in "
                                    "every frame)."),
    eval_sets: int = options.bounded(0, "--eval-sets", lo=0, hi=10**5, help="Image sets per split for the "
                                     "evaluation (0: none)."),
    tasks: str = typer.Option(None, "--tasks", help="On world videos: train on these task kinds only, e.g. "
                              "point,track,count (the evaluation asks every kind); none: no clips, the "
                              "--stills alone."),
    precision: str = options.PRECISION,
    bf16: bool = options.BF16,
    compile_step: bool = options.COMPILE,
    data: Path = typer.Option(None, "--data", help="Your LLaVA-style JSON of videos ('video') or images ('image', "
                              "one or a list), every human / gpt pair a branch of the record's message tree."),
    images: Path = options.IMAGES,
    init: str = typer.Option(None, "--from", help="With --data: the Molmo2 to fine-tune (mmfm or transformers). "
                             "On world videos: a Molmo2 to train further (a second stage), or an mmfm LLaVA with "
                             "Molmo's connector and layout to start from, e.g. molmo-world-tiny (its tower, "
                             "connector and pointing LM; default: SmolLM2 and a new adapter)."),
    val_data: Path = options.VAL_DATA,
    val_images: Path = options.VAL_IMAGES,
    val_n: int = options.bounded(None, "--val-n", lo=1, hi=10**6, help="Evaluate at most N records of --val-data."),
    lora_rank: int = options.bounded(16, "--lora-rank", lo=0, hi=4096, help="With --data: LoRA rank (0: the whole "
                                     "LM); a model with adapters keeps its own."),
    max_len: int = options.bounded(2048, "--max-len", lo=16, hi=1 << 20, help="Tokens per packed row."),
    max_frames: int = options.bounded(None, "--max-frames", lo=1, hi=1024, help="Frames sampled per video "
                                      "(default and maximum: the model's)."),
    epochs: float = options.EPOCHS,
    warmup: int = options.WARMUP,
    accum: int = options.ACCUM,
    max_bad: float = options.MAX_BAD,
) -> None:
    """Train Molmo2 on world videos with SmolLM2-135M-Instruct and the world CLIP tower, or fine-tune one
    on your videos and image sets (--data --from)."""
    prec = options.precision_of(precision, bf16)
    world_only = [o for o, on in (("--train-lm", train_lm), ("--frame-layout", frame_layout),
                                  ("--frame-rows", frame_rows), ("--frame-index", frame_index),
                                  ("--stills", stills > 0), ("--frame-stills", frame_stills > 0), ("--sets", sets > 0),
                                  ("--entering-stills", entering_stills > 0), ("--grey-stills", grey_stills > 0),
                                  ("--tower-lr-scale", tower_lr_scale > 0),
                                  ("--eval-sets", eval_sets > 0),
                                  ("--tasks", tasks is not None)) if on]
    if data is not None and world_only:  # said rather than ignored: --data has its own switches
        raise ConfigError(f"{', '.join(world_only)}: world-video options; with --data the whole LM "
                          "is --lora-rank 0 and the layout is the --from model's")
    if data is not None:
        from mmfm.cli.files import print_finetune
        from mmfm.train.files import finetune_molmo2

        if init is None:
            raise InvalidPrompt("--data needs --from: the Molmo2 to fine-tune")
        report = finetune_molmo2(data, init, out, images, lora_rank, val_data, val_images, max_len, max_frames,
                                 packed, weighting, epochs=epochs, max_bad=max_bad, val_n=val_n, resume=resume,
                                 steps=steps, batch_size=batch_size, lr=lr, seed=seed, precision=prec,
                                 compile=compile_step or None, warmup=warmup, accum=accum,
                                 save_every=save_every)
        print_finetune(report, out)
        return
    from mmfm.train.molmo2 import preset as preset_of
    from mmfm.train.molmo2 import train_world_molmo2

    kinds = _task_kinds(tasks)
    layouts = tuple(v.strip() for v in set_layouts.split(",") if v.strip())
    from mmfm.world.image_sets import check_layouts

    try:
        check_layouts(layouts)  # before the model loads
    except ConfigError as e:
        raise ConfigError(f"--set-layouts: {e}") from None
    if kinds == () and not stills and not sets and not frame_stills:
        raise ConfigError("--tasks none trains on stills or image sets alone: give --stills N, --frame-stills N "
                          "or --sets N")
    from mmfm.data.molmo2_world import check_entering, check_grey

    for flag, check, value in (("--entering-stills", check_entering, entering_stills),
                               ("--grey-stills", check_grey, grey_stills)):
        try:
            check(value, frame_stills)  # before the model loads
        except ConfigError as e:
            raise ConfigError(f"{flag} {e}") from None
    report = train_world_molmo2(preset, out, resume=resume, evaluate=evaluate, eval_n=eval_n, packed=packed,
                                weighting=weighting, bidirectional=bidirectional, train_lm=train_lm,
                                frame_layout=frame_layout, frame_rows=frame_rows, tasks=kinds,
                                frame_index=preset_of(preset)["data"]["frames"] if frame_index else 0,
                                stills=stills, sets=sets, frame_stills=frame_stills, eval_sets=eval_sets,
                                entering=entering_stills, grey=grey_stills, tower_lr_scale=tower_lr_scale,
                                set_layouts=layouts, precision=prec,
                                compile=compile_step or None, steps=steps, batch_size=batch_size, lr=lr,
                                seed=seed, save_every=save_every, start=init)
    for split in ("test", "heldout"):
        if split in report:
            typer.echo(f"{split}: {format_scores(report[split])}")
    typer.echo(f"model: {out / 'model'}   curves: {out / 'curves.png'}")


def _task_kinds(text: str | None) -> tuple[str, ...] | None:
    from mmfm.world.video import TASK_KINDS

    if text is None:
        return None
    if text.strip() == "none":
        return ()  # no clips: the caller checks that --stills or --sets gives some
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in TASK_KINDS]
    if not kinds or unknown:
        raise ConfigError(f"--tasks {text!r}: the world's video task kinds are {', '.join(TASK_KINDS)} "
                          "(or none: stills only)")
    return kinds


def format_scores(r: dict) -> str:
    c, p, t = r["counting"], r["pointing"], r["tracking"]
    qa = ", ".join(f"{k} {v['accuracy']:.2f}" for k, v in r["qa"].items() if v["accuracy"] is not None)
    f1 = "n/a" if p["f1"] is None else f"{p['f1']:.2f} +- {p['ci95']:.2f}"
    tm = "n/a" if t["in_mask"] is None else f"{t['in_mask']:.2f} +- {t['ci95']:.2f}"
    pa = r["point_at"]
    at = "n/a" if pa["in_mask"] is None else f"{pa['in_mask']:.2f} +- {pa['ci95']:.2f}"
    bf = r.get("tracking_by_frames")
    by = "" if not bf or bf["in_mask"] is None else (
        f" (frame by frame {bf['in_mask']:.2f} +- {bf['ci95']:.2f}, first look {bf['first_look_in_mask']:.2f})")
    pf = r.get("pointing_by_frames")
    f1 += "" if not pf or pf["f1"] is None else (f" (frame by frame{' in grey' if pf.get('grey') else ''} "
                                                 f"{pf['f1']:.2f} +- {pf['ci95']:.2f})")
    return (f"counting exact {c['exact']:.2f} +- {c['exact_ci95']:.2f} (within one {c['within_one']:.2f}); "
            f"pointing F1 {f1}; tracking in-mask {tm}{by}; pointing at a time in-mask {at}; {qa}" + _set_scores(r))


def _set_scores(r: dict) -> str:
    if "image_sets" not in r:
        return ""
    s = r["image_sets"]
    parts = [f"{name} {s[k]['mean']:.2f} +- {s[k]['ci95']:.2f}" for name, k in (
        ("pointing in image k F1", "pointing_in_image_f1"), ("pointing in all images F1", "pointing_every_f1"),
        ("slideshow at a time F1", "slideshow_at_a_time_f1"),
        ("one scene re-placed, at a time F1", "moved_at_a_time_f1"),
        ("tracking on it in-mask", "moved_track_in_mask"), ("most", "most_accuracy"),
        ("count in all", "count_all_exact")) if s.get(k, {}).get("mean") is not None]
    return f"; image sets ({s['sets']}): " + ", ".join(parts)


def eval_molmo2(
    model: Path = typer.Option(..., "--model", help="A Molmo2 folder trained on world videos."),
    n: int = options.bounded(50, "--n", lo=1, hi=10**5, help="Clips per split."),
    sets: int = options.bounded(0, "--sets", lo=0, hi=10**5, help="World image sets per split: multi-image "
                                "pointing and QA, and pointing at a time in a slideshow of scenes."),
    seed: int = options.SEED,
    out: Path = typer.Option(None, "--out", help="Folder for eval.json."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    data: Path = typer.Option(None, "--data", help="Your LLaVA-style JSON of videos / images: every question "
                              "asked, exact match with the reference (--n records at most)."),
    images: Path = options.IMAGES,
    max_bad: float = options.MAX_BAD,
    frame_tracks: float = options.bounded(0.0, "--frame-tracks", lo=0.0, hi=8.0, help="Also track frame by "
                                          "frame (`mmfm track --per-frame`) with this zoom for the second look "
                                          "(1: none; 0: off), and point frame by frame (`mmfm point "
                                          "--per-frame`) with the same zoom."),
    grey_frames: bool = typer.Option(False, "--grey-frames", help="With --frame-tracks: point frame by frame in grey "
                                     "(`mmfm point --per-frame --grey`; tracks name a colour and stay in colour)."),
    split: str = typer.Option("both", "--split", help="World clips of `test`, `heldout` (colour-shape pairs no "
                              "training clip has) or `both`."),
) -> None:
    """Video QA by type, counting, spatio-temporal pointing and tracking on test and held-out world videos;
    with --data, exact match on your videos and image sets."""
    from mmfm.data.molmo2_world import WorldVideoData
    from mmfm.eval.molmo2_world import evaluate_molmo2_world

    if 0 < frame_tracks < 1:
        raise ConfigError(f"--frame-tracks {frame_tracks}: 0 (off), or a zoom of 1 to 8")
    if grey_frames and not frame_tracks:
        raise ConfigError("--grey-frames: with --frame-tracks (pointing frame by frame)")
    splits = {"test": ("test",), "heldout": ("heldout",), "both": ("test", "heldout")}.get(split)
    if splits is None:
        raise ConfigError(f"--split {split!r}: test, heldout or both")
    m = _load_molmo2(model)
    if data is not None:
        from mmfm.data.files import detect_format
        from mmfm.data.molmo2_files import read_media_instructions
        from mmfm.eval.files import molmo2_files

        detect_format(data, ("llava",))
        records, report = read_media_instructions(data, images, max_bad)
        res = molmo2_files(m, records[:n], report)
        typer.echo(report.summary())
        typer.echo(f"{res['questions']} questions: exact match {res['exact_match']:.3f} "
                   f"({', '.join(f'{k} {v:.3f}' for k, v in res['by_kind'].items())})")
        path = (out or model) / "eval_data.json"
        path.write_text(json.dumps({**res, "data": report.to_dict()}, indent=1))
        typer.echo(f"wrote {path}")
        return
    data = WorldVideoData(m, m._tok(), seed=seed or 0, size=m.config.vision.image_size)
    report = evaluate_molmo2_world(m, data, n=n, splits=splits, out=out, sets=sets, frame_tracks=frame_tracks,
                                   grey_frames=grey_frames)
    if as_json:
        typer.echo(json.dumps(report, default=str))
    else:
        for name in splits:
            typer.echo(f"{name}: {format_scores(report[name])}")
