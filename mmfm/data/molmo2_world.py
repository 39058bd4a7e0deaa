"""Molmo2 training data from world videos (mmfm.world.video): one example per clip, its frames as the
shared context, its video tasks as question-answer branches (mmfm.data.molmo2 packs them as message
trees).

Layout, as Molmo2's chat template puts it (vision first, then the turns):
    context:  for each frame "<time> " then <frame_start> patches <frame_end>
    branch:   <|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n   (not learned)
              {answer}<|im_end|>                                                    (learned)
Answers: counts as number words, "the <name>", colours, places, "yes" / "no"; pointing and tracking
in Molmo2's spatio-temporal markup (mmfm.text.pointing.format_video_points). Each batch is a pure
function of (seed, step), so a resumed run sees the batches it would have seen.

Stills (`stills` per batch, off by default): world scenes (mmfm.world.World, the train split) as
one-frame videos with the image Molmo's point questions ("Point to the red circles.") answered in the
same video markup at 0.0 s. Molmo2 trains on images and videos together; here a still is exactly a
clip's first frame, where the video tasks point most, at a fraction of a clip's tokens. With `tasks=()`
a batch holds the stills alone (a first stage that teaches the place in Molmo2's layout).

Frame stills (`frame_stills` per batch, off by default): single frames of training clips as one-frame videos,
"Point to every <shape>." for each shape of the clip and for one shape it lacks, answered with every object of
that shape visible in that frame (or "There are none."). The scenes' questions say the count by their grammar
("the circle" / "the circles"); this one does not, so a model asked it about each frame alone has to find how
many there are, and it sees the clips' frames (objects at the border, half hidden) rather than whole scenes.
With `entering` K > 1, K - 1 of every K frame stills show their clip one frame after one of its objects came
into view (clips where none does keep their usual frame): an object entering at the border is what a model
asked frame by frame misses most, and the frame after its entry is the last one where pointing at it is in time.
With `grey` P > 0, that share of the frame stills (a seeded choice per still) is drawn in grey (the mean of its
channels; mmfm.vision.transforms.greyscale): the question names a shape, not a colour, and a frame in grey shows the
shape of a colour-shape pair never trained on as it shows any other (what `point_by_frames(grey=True)` asks).

Image sets (`sets` per batch, off by default): a few world scenes asked about together
(mmfm.world.image_sets), in turn as several images (multi-image pointing and QA, points in Molmo2's
multi-image markup) and as a slideshow video of `frames` scenes ("Point to the red circles at 1.5 s.":
each frame a different scene, so only reading the frame that time names is right); `set_layouts` may add
"moved" (one scene, its objects re-placed in every frame).
"""

from __future__ import annotations

import numpy as np
import torch

from mmfm.data.molmo2 import QA, Batch, Example, pack, unpacked
from mmfm.errors import ConfigError
from mmfm.text.pointing import format_points_v2, format_video_points
from mmfm.vision.transforms import greyscale
from mmfm.world import World
from mmfm.world.image_sets import ImageSet, check_layouts, image_set, moved_set, set_tasks
from mmfm.world.video import Clip, clip, video_tasks
from mmfm.world.vocab import PLURAL, SHAPES

TASK_KINDS = {"point": "pointing", "track": "pointing", "point_at": "pointing", "point_in": "pointing",
              "point_every": "pointing"}
SET_IMAGES = 4  # scenes in an image set shown as images (a slideshow has as many as a clip has frames)
SET_LAYOUTS = ("images", "video")  # what --sets trains on unless told (mmfm.world.image_sets.LAYOUTS)


def point_answer(points, size: int, label: str) -> str:
    """(time, x, y) pixel points, numbered in order -> Molmo2's video markup, or "There are none."."""
    return format_video_points([(t, k, x, y) for k, (t, x, y) in enumerate(points, 1)], size, size,
                               label) or "There are none."


def answer_text(task: dict, c: Clip) -> str:
    if task["task"] == "point":
        return point_answer([(t, x, y) for t, _, x, y in sorted(task["points"])], c.size, PLURAL[task["shape"]])
    if task["task"] == "point_at":
        return point_answer([(t, x, y) for t, _, x, y in task["points"]], c.size, task["name"])
    if task["task"] == "track":
        return format_video_points([(t, 1, x, y) for t, _, x, y in task["points"]], c.size, c.size, task["name"])
    return task["answer"]


def set_answer_text(task: dict, s: ImageSet, layout: str) -> str:
    """An image-set task's answer: points in the multi-image markup ("images") or the video markup at the
    scene's time ("video"); the other kinds in words."""
    if "points" not in task:
        return task["answer"]
    if task["task"] == "track":  # one object: the same index at every time, as a clip's track
        return format_video_points([(s.time(k), 1, x, y) for k, _, x, y in task["points"]], s.size, s.size,
                                   task["label"])
    if layout != "images":  # a slideshow: the video markup at the scene's time
        return point_answer(sorted((s.time(k), x, y) for k, _, x, y in task["points"]), s.size, task["label"])
    by_image: dict[int, list] = {}
    for k, _, x, y in task["points"]:
        by_image.setdefault(k + 1, []).append((x, y))
    sizes = {k: (s.size, s.size) for k in by_image}
    return format_points_v2(by_image, sizes, task["label"]) or "There are none."


def check_entering(entering: int, frame_stills: int) -> None:
    """K - 1 of every K frame stills at an entry: K >= 2 (0: off), and frame stills to take them from."""
    if entering == 1 or entering < 0 or (entering and not frame_stills):
        raise ConfigError(f"{entering}: K - 1 of every K frame stills at an entry, so K >= 2 (0: off), "
                          "with --frame-stills N (frame stills)")


def check_grey(share: float, frame_stills: int) -> None:
    """A share of the frame stills in grey: in [0, 1], and only with frame stills to draw."""
    if not 0.0 <= share <= 1.0 or (share and not frame_stills):
        raise ConfigError(f"{share}: the share of frame stills drawn in grey, in [0, 1], with frame stills")


class WorldVideoData:
    """Examples and batches of world-video tasks for a Molmo2 `model` with its LM `tokenizer`."""

    def __init__(self, model, tokenizer, seed: int = 0, split: str = "train", frames: int = 8, size: int = 64,
                 fps: float = 2.0, batch_size: int = 8, max_len: int = 2048, weighting: bool = True,
                 packed: bool = True, tasks: tuple[str, ...] | None = None, max_qas: int = 0, stills: int = 0,
                 sets: int = 0, set_layouts: tuple[str, ...] = SET_LAYOUTS, frame_stills: int = 0,
                 entering: int = 0, grey: float = 0.0):
        if tasks == () and not stills and not sets and not frame_stills:
            raise ConfigError("no clip tasks, stills or image sets: the batches would be empty")
        check_entering(entering, frame_stills)
        check_grey(grey, frame_stills)
        self.model, self.tok = model, tokenizer
        self.seed, self.split, self.frames, self.size, self.fps = seed, split, frames, size, fps
        self.batch_size, self.max_len, self.weighting, self.packed = batch_size, max_len, weighting, packed
        self.tasks, self.max_qas, self.stills, self.frame_stills = tasks, max_qas, stills, frame_stills
        self.sets, self.set_layouts, self.entering, self.grey = sets, check_layouts(set_layouts), entering, grey
        self.world = World(seed=seed, size=size)
        self._end = tokenizer.encode(model.END, add_special_tokens=False)

    def clip(self, index: int) -> Clip:
        return clip(self.seed, self.split, index, frames=self.frames, size=self.size, fps=self.fps)

    def context(self, c: Clip) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """The frames' ids (timestamps + frame tokens), patches and pooling table (Molmo2.video_context)."""
        frames = torch.from_numpy(c.frames).permute(0, 3, 1, 2).contiguous()
        return self.model.video_context(frames, [c.time(t) for t in range(len(c.frames))])

    def question_ids(self, question: str) -> list[int]:
        return self.model.turn_ids(question)

    def example(self, index: int) -> tuple[Example, Clip, list[dict]]:
        c = self.clip(index)
        ids, patches, pooling = self.context(c)
        tasks = [t for t in video_tasks(c) if self.tasks is None or t["task"] in self.tasks]
        qas = [QA(self.question_ids(t["question"]), self.tok.encode_plain(answer_text(t, c)) + self._end,
                  TASK_KINDS.get(t["task"], "qa")) for t in tasks]
        return Example(ids, qas, patches, pooling), c, tasks

    def still(self, index: int) -> tuple[Example, list]:
        """A world scene (train split) as a one-frame video at 0.0 s, a branch for each of its point
        questions, answered in the video markup; -> (example, the scene's point queries)."""
        s = self.world.sample("train", index)
        frame = torch.from_numpy(s.rendered.image).permute(2, 0, 1)[None].contiguous()
        ids, patches, pooling = self.model.video_context(frame, [0.0])
        queries = s.ann.points
        qas = [QA(self.question_ids(f"Point to the {q.query}."),
                  self.tok.encode_plain(point_answer([(0.0, x, y) for x, y in sorted(q.points)], self.size, q.query))
                  + self._end, "pointing") for q in queries]
        return Example(ids, qas, patches, pooling), queries

    def frame_still(self, index: int) -> tuple[Example, Clip, int]:
        """Frame `index % frames` of clip `index // frames` of the split, alone as a one-frame video at 0.0 s;
        a branch "Point to every <shape>." for each shape in the clip and for one shape not in it (a seeded
        choice: "There are none." is as often right as a model asked about every frame needs it to be),
        answered with the points of the objects of that shape visible in that frame; -> (example, clip, frame)."""
        c = self.clip(index // self.frames)
        k = index % self.frames
        image = c.frames[k]
        if self.grey and np.random.default_rng([self.seed, 27, index]).random() < self.grey:
            image = greyscale(image)
        frame = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()
        ids, patches, pooling = self.model.video_context(frame, [0.0])
        qas = []
        present = sorted({m.obj.shape for m in c.movers})
        absent = [s for s in SHAPES if s not in present]
        other = absent[np.random.default_rng([self.seed, 26, index]).integers(len(absent))] if absent else None
        for shape in present + [other] * (other is not None):
            pts = sorted((0.0, *map(float, c.points[k, o])) for o, m in enumerate(c.movers)
                         if m.obj.shape == shape and c.visible[k, o])
            qas.append(QA(self.question_ids(f"Point to every {shape}."),
                          self.tok.encode_plain(point_answer(pts, c.size, PLURAL[shape])) + self._end, "pointing"))
        return Example(ids, qas, patches, pooling), c, k

    def image_set(self, index: int, layout: str) -> ImageSet:
        if layout == "moved":
            return moved_set(self.seed, self.split, index, n=self.frames, size=self.size, fps=self.fps,
                             world=self.world)
        n = self.frames if layout == "video" else SET_IMAGES
        return image_set(self.seed, self.split, index, n=n, size=self.size, fps=self.fps, world=self.world)

    def set_context(self, s: ImageSet, layout: str) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        images = [torch.from_numpy(r.image).permute(2, 0, 1).contiguous() for r in s.scenes]
        if layout != "images":
            return self.model.video_context(torch.stack(images), [s.time(k) for k in range(len(images))])
        return self.model.images_context(images)

    def set_example(self, index: int, layout: str) -> tuple[Example, ImageSet, list[dict]]:
        """Image set `index` of the split in `layout` (mmfm.world.image_sets.LAYOUTS), a branch per task."""
        s = self.image_set(index, layout)
        ids, patches, pooling = self.set_context(s, layout)
        tasks = set_tasks(s, layout)
        qas = [QA(self.question_ids(t["question"]), self.tok.encode_plain(set_answer_text(t, s, layout)) + self._end,
                  TASK_KINDS.get(t["task"], "qa")) for t in tasks]
        return Example(ids, qas, patches, pooling), s, tasks

    def batch(self, step: int, micro: int = 0, rank: int = 0, world_size: int = 1, accum: int = 1) -> dict:
        per = max(1, self.batch_size // (world_size * accum)) if self.tasks != () else 0  # (): stills only
        start = ((step * accum + micro) * world_size + rank) * per
        examples = []
        for i in range(start, start + per):
            examples.append(self._subset(self.example(i)[0], step, i))
        if self.stills:
            per_still = max(1, self.stills // (world_size * accum))
            first = ((step * accum + micro) * world_size + rank) * per_still
            examples += [self.still(i)[0] for i in range(first, first + per_still)]
        if self.frame_stills:  # frames of consecutive indices come from different clips (a stride of 3)
            per_frame = max(1, self.frame_stills // (world_size * accum))
            first = ((step * accum + micro) * world_size + rank) * per_frame
            examples += [self.frame_still(self._frame_index(i))[0] for i in range(first, first + per_frame)]
        if self.sets:  # the layouts take turns, set by set
            per_set = max(1, self.sets // (world_size * accum))
            first = ((step * accum + micro) * world_size + rank) * per_set
            examples += [self._subset(self.set_example(i, self.set_layouts[i % len(self.set_layouts)])[0], step, i, 1)
                         for i in range(first, first + per_set)]
        return self.collate(examples).model_inputs()

    def _frame_index(self, i: int) -> int:
        """The i-th frame still: clip i, frame (3 i) mod frames, so a batch sees every frame position; with
        `entering` K, unless K divides i, the frame after an entry of clip i (its entries in turn), if it has one."""
        if self.entering and i % self.entering:
            c = self.clip(i)
            entries = [int(seen[0]) for seen in map(np.flatnonzero, c.visible.T) if len(seen) and seen[0] > 0]
            entries = [k for k in entries if k + 1 < self.frames]
            if entries:
                return i * self.frames + entries[(i // self.entering) % len(entries)] + 1
        return i * self.frames + (3 * i) % self.frames

    def _subset(self, ex: Example, step: int, i: int, stream: int = 0) -> Example:
        """At most max_qas of the example's branches, a seeded choice: batches stay a function of the step."""
        if not self.max_qas or len(ex.qas) <= self.max_qas:
            return ex
        keep = np.random.default_rng([self.seed, 25, step, i] + [stream] * bool(stream)).permutation(len(ex.qas))
        return Example(ex.context, [ex.qas[k] for k in sorted(keep[: self.max_qas])], ex.patches, ex.pooling)

    def collate(self, examples: list[Example]) -> Batch:
        vis = self.model.config.vision_token_ids
        if self.packed:
            return pack(examples, vis, max_len=self.max_len, weighting=self.weighting)
        return unpacked(examples, vis, weighting=self.weighting)


__all__ = ["WorldVideoData", "answer_text", "point_answer", "set_answer_text", "SET_IMAGES", "SET_LAYOUTS"]
