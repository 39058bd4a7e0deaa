"""Instruction data in LLaVA's JSON (a list, or JSON Lines, of {"id", "image", "conversations": [{"from":
"human" | "gpt" | "system", "value"}]}, the image placeholder `<image>` in the first human turn), for
LLaVA's stage 1 (template "plain": the image, then the answer) and stage 2 (the LM's chat template).
Answers that carry Molmo's points (`<point x=".." y="..">`) are text like any other answer.

A record is unusable (counted, listed, skipped) when its image is missing, it has no `<image>` or more
than its images, its turns do not alternate human / gpt, a turn is empty, or nothing in it is learned
(every answer cut by max_len)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmfm.data.files import DataReport, ImageCache, image_root, positions, read_json_data, resolve_image, take
from mmfm.errors import DataError, InvalidPrompt
from mmfm.text.conversation import IGNORE

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
IMAGE_TOKEN = "<image>"


@dataclass
class Instruction:
    id: str
    image: Path
    messages: list[dict]  # {role, content}, the placeholder as `IMAGE_TOKEN`


def to_messages(conv, image_token: str = IMAGE_TOKEN) -> list[dict]:
    """LLaVA's turns -> chat messages; InvalidPrompt says what is wrong with them."""
    if not isinstance(conv, list) or not conv:
        raise InvalidPrompt("no conversations")
    msgs = []
    for t in conv:
        if not isinstance(t, dict) or t.get("from") not in ROLES or not isinstance(t.get("value"), str):
            raise InvalidPrompt("a turn is not {from: human|gpt|system, value: text}")
        if not t["value"].strip():
            raise InvalidPrompt("an empty turn")
        msgs.append({"role": ROLES[t["from"]], "content": t["value"].replace(IMAGE_TOKEN, image_token)})
    turns = [m for m in msgs if m["role"] != "system"]
    if [m["role"] for m in turns] != ["user", "assistant"] * (len(turns) // 2) or len(turns) % 2:
        raise InvalidPrompt("turns do not alternate human, gpt")
    n = sum(m["content"].count(image_token) for m in msgs)
    if n == 0:
        raise InvalidPrompt("no <image> in the conversation")
    if n > 1:
        raise InvalidPrompt(f"{n} <image> placeholders for one image")
    if image_token not in turns[0]["content"]:
        raise InvalidPrompt("the <image> is not in the first human turn")
    return msgs


def read_records(path, images, max_bad: float, parse) -> tuple[list, DataReport]:
    """A JSON list (or JSON Lines) of LLaVA-style records -> [parse(record, image root, id)], a record
    whose parse raises InvalidPrompt skipped with the message as its reason."""
    path = Path(path)
    root = image_root(path, images)
    report = DataReport(str(path), max_bad)
    records = read_json_data(path)
    if not isinstance(records, list):
        raise DataError(f"{path}: LLaVA data is a JSON list of records (or JSON Lines)")
    out = []
    for i, rec in enumerate(records):
        report.seen()
        rid = str(rec.get("id", i)) if isinstance(rec, dict) else str(i)
        try:
            if not isinstance(rec, dict):
                raise InvalidPrompt("not a record")
            out.append(parse(rec, root, rid))
        except InvalidPrompt as e:
            report.skip(str(e), rid)
    report.check()
    return out, report


def _instruction(rec: dict, root: Path, rid: str) -> Instruction:
    name = rec.get("image")
    if isinstance(name, list):  # LLaVA-OneVision's list of images: one is read here
        name = name[0] if len(name) == 1 else None
    img = resolve_image(root, name)
    if img is None:
        raise InvalidPrompt("missing image" if name else "no image (text-only records are not read)")
    return Instruction(rid, img, to_messages(rec.get("conversations")))


def read_instructions(path, images=None, max_bad: float = 0.1) -> tuple[list[Instruction], DataReport]:
    return read_records(path, images, max_bad, _instruction)


@dataclass
class InstructionBatches:
    """batch(step, ...) -> {"input_ids", "labels", "pixels"} of LLaVA JSON records: a pure function of
    the step; a record that cannot be encoded or read is replaced by the next one and counted."""

    records: list[Instruction]
    report: DataReport
    encoder: object  # ConversationEncoder
    preprocess: object  # PIL -> (3, S, S)
    batch_size: int
    template: str = "chat"
    max_len: int = 512
    seed: int = 0
    cache: ImageCache = field(init=False)

    def __post_init__(self):
        self.cache = ImageCache(self.report)
        self.bad: set[int] = set()

    def example(self, i: int):
        if i in self.bad:
            return None
        rec = self.records[i]
        try:
            ex = self.encoder.example(rec.messages, self.template, self.max_len)
        except InvalidPrompt as e:
            self.bad.add(i)
            self.report.skip(str(e).split(";")[0], rec.id)
            self.report.check()
            return None
        img = self.cache.load(rec.image)
        if img is None:
            self.bad.add(i)
            return None
        return ex, self.preprocess(img)

    def batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1, accum: int = 1) -> dict:
        idx = positions(len(self.records), self.batch_size, step, self.seed, micro, rank, world, accum)
        got = take(idx, len(self.records), self.example)
        return collate([e.input_ids for e, _ in got], [e.labels for e, _ in got], torch.stack([p for _, p in got]))


def collate(rows: list[list[int]], labels: list[list[int]], pixels: torch.Tensor | None, pad_id: int = 0) -> dict:
    """Right-padded ids with IGNORE labels on the padding (causal attention needs no mask then); the
    images' pixels ride along (None: a text-only batch)."""
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    lab = torch.full((len(rows), n), IGNORE, dtype=torch.long)
    for k, (r, lb) in enumerate(zip(rows, labels)):
        ids[k, : len(r)] = torch.tensor(r)
        lab[k, : len(lb)] = torch.tensor(lb)
    return {"input_ids": ids, "labels": lab} | ({} if pixels is None else {"pixels": pixels})


__all__ = ["Instruction", "InstructionBatches", "read_instructions", "read_records", "to_messages", "collate",
           "IMAGE_TOKEN"]
