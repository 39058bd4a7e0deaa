"""Molmo2 training data from a user's files: LLaVA-style JSON whose records name a "video" (a file PyAV
reads, or a folder of frames) or one or more "image"s, as LLaVA-Video and LLaVA-OneVision write them.
Every human / gpt pair of a record becomes one branch of its message tree (mmfm.data.molmo2: the frames
once, then each question and answer seeing them and itself), so a video with ten questions is encoded
once. The `<image>` / `<video>` placeholders are dropped: Molmo2 puts the vision first, as its chat
template does. Answers with Molmo2's points (`<points coords=...>`) or Molmo's (`<point x=...>`) are
weighted as pointing (token weighting)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmfm.data.files import DataReport, positions, resolve_image, take
from mmfm.data.instructions import ROLES, read_records
from mmfm.data.molmo2 import QA, Example, pack, unpacked
from mmfm.errors import InvalidImage, InvalidPrompt
from mmfm.vision.io import load_image

PLACEHOLDERS = ("<image>", "<video>")


@dataclass
class MediaRecord:
    id: str
    paths: list[Path]
    video: bool
    turns: list[tuple[str, str]]  # (question, answer)


def _turns(conv) -> list[tuple[str, str]]:
    if not isinstance(conv, list) or not conv:
        raise InvalidPrompt("no conversations")
    msgs = []
    for t in conv:
        if not isinstance(t, dict) or t.get("from") not in ROLES or not isinstance(t.get("value"), str):
            raise InvalidPrompt("a turn is not {from: human|gpt|system, value: text}")
        if ROLES[t["from"]] == "system":
            continue
        text = t["value"]
        for p in PLACEHOLDERS:
            text = text.replace(p, "")
        if not text.strip():
            raise InvalidPrompt("an empty turn")
        msgs.append((ROLES[t["from"]], text.strip()))
    if [r for r, _ in msgs] != ["user", "assistant"] * (len(msgs) // 2) or len(msgs) % 2:
        raise InvalidPrompt("turns do not alternate human, gpt")
    return [(msgs[i][1], msgs[i + 1][1]) for i in range(0, len(msgs), 2)]


def _media_record(rec: dict, root: Path, rid: str) -> MediaRecord:
    video = "video" in rec
    names = rec.get("video") if video else rec.get("image")
    names = names if isinstance(names, list) else [names]
    paths = [_media(root, n, video) for n in names]
    if not names or any(p is None for p in paths) or (video and len(paths) != 1):
        raise InvalidPrompt("missing video" if video else "missing image")
    return MediaRecord(rid, paths, video, _turns(rec.get("conversations")))


def read_media_instructions(path, images=None, max_bad: float = 0.1) -> tuple[list[MediaRecord], DataReport]:
    return read_records(path, images, max_bad, _media_record)


def _media(root: Path, name, video: bool) -> Path | None:
    if video and isinstance(name, str) and (root / name).is_dir():  # a folder of frames
        return root / name
    return resolve_image(root, name)


def answer_kind(answer: str) -> str:
    return "pointing" if "<points" in answer or "<point " in answer else "qa"


class FileMolmo2Data:
    """batch(step, ...) -> Molmo2's training inputs from MediaRecords: a pure function of the step; a
    record whose video or images do not decode is counted and replaced by the next one."""

    def __init__(self, model, records: list[MediaRecord], report: DataReport, batch_size: int, max_len: int = 2048,
                 max_frames: int | None = None, weighting: bool = True, packed: bool = True, seed: int = 0):
        self.model, self.tok = model, model.tokenizer
        self.records, self.report = records, report
        self.batch_size, self.max_len, self.weighting, self.packed, self.seed = (batch_size, max_len, weighting,
                                                                                   packed, seed)
        self.max_frames = min(max_frames or model.config.max_frames, model.config.max_frames)
        self._end = self.tok.encode(model.END, add_special_tokens=False)
        self.bad: set[int] = set()

    def context(self, rec: MediaRecord):
        from mmfm.vision.video import read_video

        m = self.model
        if rec.video:
            v = read_video(rec.paths[0], max_frames=self.max_frames, max_fps=m.config.max_fps)
            frames = torch.from_numpy(np.ascontiguousarray(v.frames)).permute(0, 3, 1, 2).contiguous()
            return m.video_context(frames, v.timestamps)
        tensors = [torch.from_numpy(np.array(load_image(p))).permute(2, 0, 1).contiguous() for p in rec.paths]
        return m.images_context(tensors)

    def example(self, i: int) -> Example | None:
        if i in self.bad:
            return None
        rec = self.records[i]
        try:
            ids, patches, pooling = self.context(rec)
        except InvalidImage as e:
            self.bad.add(i)
            self.report.skip(f"unreadable {'video' if rec.video else 'image'} ({str(e).split(': ', 1)[-1][:60]})",
                             rec.id)
            self.report.check()
            return None
        qas = [QA(self.model.turn_ids(q), self.tok.encode_plain(a) + self._end, answer_kind(a)) for q, a in rec.turns]
        return Example(ids, qas, patches, pooling)

    def batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1, accum: int = 1) -> dict:
        idx = positions(len(self.records), self.batch_size, step, self.seed, micro, rank, world, accum)
        examples = take(idx, len(self.records), self.example)
        vis = self.model.config.vision_token_ids
        if self.packed:
            return pack(examples, vis, max_len=self.max_len, weighting=self.weighting).model_inputs()
        return unpacked(examples, vis, weighting=self.weighting).model_inputs()


__all__ = ["MediaRecord", "FileMolmo2Data", "read_media_instructions", "answer_kind"]
