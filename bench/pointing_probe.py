"""What the world LLaVA's language model can read off its image tokens, for pointing (issue 29, point 2).
Linear probes (ridge) on the tokens the LM sees, 80 % of the objects to fit, 20 % to score:

1. Where inside its token is an object? For each visible object, the token whose cell holds the object's
   point (its `interior_points`): the cell's centre, and a linear map from that token's feature to the
   point's offset in the cell. Scored as a point is scored: inside the object's mask or not. This bounds
   what pointing "at the right token" can reach with 16 pooled tokens (4x4 cells of 16 px) or 64 (8 px).
2. Does a token know which token it is? A linear one-hot classifier from one token's feature to its own
   index in the grid (chance 1/16 or 1/64), at each hidden state of the tower and after the connector:
   the LM can only write coordinates if the image tokens carry their position (RoPE gives it the
   distance to each token, not the place in the image).
3. Does a token know what is in its cell? Linear classifiers from the token holding an object's point to
   the object's color and shape, next to the same from a random token of the scene (what is global).
4. Does the LM know where one object is? Teacher-forced, on single-object point queries of new scenes:
   how often the LM's most likely first digit of x and of y (the tens of a percent, the digit that
   says where; the rest is within a token's cell) is right, and its mean log-probability, next to
   always guessing the most common digit. Cheap (a forward pass per item), so it tracks training
   long before pointing F1 moves.
5. Does the LM read a token's place from the sequence? Probe 4 again with a few timestamps ("0.0 0.5 ...",
   as a video writes them) put before the image in the user's turn: the image's tokens move along the
   sequence, nothing else changes.
6. Does a video Molmo2 start from what the image Molmo reads? Probe 4 on the Molmo2 that
   mmfm.train.molmo2.build_from_molmo makes of the model (untrained; vision tokens causal), each scene a
   one-frame video: A the LLaVA's own sequence with the frame's tokens in the image's place (equal to the
   LLaVA's), B A with the frame's timestamp, C Molmo2's layout (the frame first, then the user's turn,
   no system prompt) with Molmo's answer, D C answered in Molmo2's video markup (t k x y on 0-1000).
7. What does a trained world Molmo2 read? (`--molmo2 DIR`) Probe 6's D on the model itself, and the
   first digits of every point of its `point` answers on test clips, teacher-forced, split by the point's
   time: at 0.0 s (objects there from the first frame, anywhere in it) or later (objects that enter, which
   the world makes come in from the left or right border).

    python bench/pointing_probe.py [--model DIR] [--scenes 3000] [--digits 300] [--filler 0,4,16,40] [--layouts]
    python bench/pointing_probe.py --molmo2 DIR [--digits 160] [--clips 40]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def ridge(x: np.ndarray, y: np.ndarray, k: int, lam: float = 1.0) -> np.ndarray:
    """Fit on the first k rows, predict the rest."""
    xa = np.c_[x, np.ones(len(x))]
    w = np.linalg.solve(xa[:k].T @ xa[:k] + lam * np.eye(xa.shape[1]), xa[:k].T @ y[:k])
    return xa[k:] @ w


def object_cells(samples, g: int, size: int = 64):
    """(scene, object, x, y, cell column, cell row) of every visible object's point on a g x g token grid."""
    from mmfm.world.annotate import interior_points

    cell = size / g
    for n, s in enumerate(samples):
        for i, (px, py) in enumerate(interior_points(s.rendered)):
            if not np.isnan(px):
                yield n, i, px, py, min(int(px // cell), g - 1), min(int(py // cell), g - 1)


def where_inside(feats: torch.Tensor, samples, size: int = 64) -> dict:
    g = int(round(feats.shape[1] ** 0.5))
    cell = size / g
    x, off, corner, who = [], [], [], []
    for n, i, px, py, gx, gy in object_cells(samples, g, size):
        x.append(feats[n, gy * g + gx].numpy())
        off.append((px - gx * cell, py - gy * cell))
        corner.append((gx * cell, gy * cell))
        who.append((n, i))
    x, off, corner = np.array(x), np.array(off), np.array(corner)
    k = int(0.8 * len(x))

    def in_mask(pred: np.ndarray) -> float:
        at = np.clip(pred + corner[k:], 0, size - 1).astype(int)
        hits = [samples[n].rendered.masks[i, y, x] for (n, i), (x, y) in zip(who[k:], at)]
        return float(np.mean(hits))

    return {"tokens": g * g, "objects": len(x), "cell centre in mask": in_mask(np.full((len(x) - k, 2), cell / 2)),
            "linear offset in mask": in_mask(ridge(x, off, k))}


def own_index(feats: torch.Tensor) -> float:
    n, t, d = feats.shape
    x, idx = feats.reshape(n * t, d).numpy(), np.tile(np.arange(t), n)
    k = int(0.8 * len(x))
    return float((ridge(x, np.eye(t)[idx], k).argmax(1) == idx[k:]).mean())


def what_inside(feats: torch.Tensor, samples, size: int = 64, seed: int = 0) -> dict:
    """Color and shape accuracy of linear classifiers from the token of an object's cell, and from a random
    token of the same scene, with the most common class for reference."""
    g = int(round(feats.shape[1] ** 0.5))
    rng = np.random.default_rng(seed)
    own, other, labels = [], [], {"color": [], "shape": []}
    for n, i, _, _, gx, gy in object_cells(samples, g, size):
        o = samples[n].rendered.scene.objects[i]
        own.append(feats[n, gy * g + gx].numpy())
        other.append(feats[n, int(rng.integers(g * g))].numpy())
        labels["color"].append(o.color)
        labels["shape"].append(o.shape)
    k = int(0.8 * len(own))
    out = {}
    for what, names in labels.items():
        classes = sorted(set(names))
        y = np.array([classes.index(v) for v in names])
        out[what] = {"majority": float(np.bincount(y).max() / len(y))}
        for where, x in (("own cell", np.array(own)), ("random cell", np.array(other))):
            out[what][where] = float((ridge(x, np.eye(len(classes))[y], k, 10.0).argmax(1) == y[k:]).mean())
    return out


def first_digits(model, n: int = 300, seed: int = 0, batch: int = 16, filler: int = 0) -> dict:
    """Teacher-forced first digit of x and y of single-object point answers on new (test) scenes;
    `filler`: that many timestamps written before the image (probe 5)."""
    from mmfm.data.instructions import collate
    from mmfm.data.llava_world import point_question, world_pixels

    model.eval()
    enc, tok = model.conversation(), model.tokenizer
    items = _single_object_queries(n, seed)
    pre = " ".join(f"{0.5 * k:.1f}" for k in range(filler)) + "\n" if filler else ""
    right = {"x": [], "y": []}
    logp = {"x": [], "y": []}
    truth = {"x": [], "y": []}
    for j in range(0, n, batch):
        chunk = items[j : j + batch]
        exs = [enc.example([{"role": "user", "content": f"{pre}{enc.image_token}\n{point_question(pq.query)}"},
                            {"role": "assistant", "content": pq.answer}], "chat", 512) for _, pq in chunk]
        pixels = world_pixels([s.rendered.image for s, _ in chunk], model.config.image_mean, model.config.image_std)
        batch_ids = collate([e.input_ids for e in exs], [e.labels for e in exs], pixels)  # right-padded: causal
        with torch.no_grad():
            logits = model(batch_ids["input_ids"], pixels).logits.float()
        shift = logits.shape[1] - batch_ids["input_ids"].shape[1]  # the placeholder became tokens_per_image
        for r, ((_, pq), e) in enumerate(zip(chunk, exs)):
            first = next(t for t, lab in enumerate(e.labels) if lab != -100)
            for axis in ("x", "y"):
                t = _token_at(tok, e.input_ids, first, pq.answer.index(f' {axis}="') + 4)  # x's / y's first digit
                lp = torch.log_softmax(logits[r, t - 1 + shift], -1)
                right[axis].append(int(lp.argmax()) == e.input_ids[t])
                logp[axis].append(float(lp[e.input_ids[t]]))
                truth[axis].append(e.input_ids[t])
    out = {"n": n, "filler_tokens": len(tok.encode_plain(pre)) if pre else 0}
    for axis in ("x", "y"):
        _, counts = np.unique(truth[axis], return_counts=True)
        out[axis] = {"right": float(np.mean(right[axis])), "log_prob": float(np.mean(logp[axis])),
                     "most_common_digit": float(counts.max() / len(truth[axis]))}
    return out


def _token_at(tok, ids, first: int, at: int) -> int:
    """The index in `ids` of the token that holds character `at` of the text that starts at ids[first]."""
    t, text = first, ""
    while len(text) <= at:
        text += tok.decode([ids[t]])
        t += 1
    return t - 1


def _single_object_queries(n: int, seed: int = 0) -> list:
    from mmfm.world import World

    world, items, i = World(seed=seed), [], 200_000
    while len(items) < n:
        s = world.sample("test", i)
        i += 1
        one = [pq for pq in s.ann.points if len(pq.points) == 1]
        if one:
            items.append((s, one[0]))
    return items


def layouts(llava, n: int = 160, seed: int = 0) -> dict:
    """Probe 6: {variant: {"x": right, "y": right, "guess_x", "guess_y"}} for the layouts A-D above."""
    from mmfm.data.llava_world import point_question
    from mmfm.text.pointing import format_video_points
    from mmfm.train.molmo2 import build_from_molmo

    enc, tok, ph = llava.conversation(), llava.tokenizer, llava.config.image_token_id
    m2 = build_from_molmo(llava, lm_dtype="float32")  # merges the LLaVA's LoRA into its LM, which is not used after
    m2.config.bidirectional_vision = False  # a frame's block read as the image model read its images
    m2.eval()
    end = tok.encode(m2.END, add_special_tokens=False)

    def digit_at(answer, axis, video):
        if not video:
            return answer.index(f' {axis}="') + 4
        start = answer.index('coords="') + len('coords="')
        t, k, x = answer[start:].split(" ")[:3]  # "0.0 1 xxx yyy"
        at = start + len(t) + 1 + len(k) + 1
        return at if axis == "x" else at + len(x) + 1

    right = {v: {"x": [], "y": []} for v in "ABCD"}
    truth = {v: {"x": [], "y": []} for v in "ABCD"}
    for s, pq in _single_object_queries(n, seed):
        ex = enc.example([{"role": "user", "content": f"{enc.image_token}\n{point_question(pq.query)}"},
                          {"role": "assistant", "content": pq.answer}], "chat", 512)
        ids = list(ex.input_ids)
        k, nph = ids.index(ph), ids.count(ph)  # the encoder writes the image's run of placeholders
        frame = torch.from_numpy(s.rendered.image).permute(2, 0, 1)[None].contiguous()
        vids, patches, pooling = m2.video_context(frame, [0.0])
        cut = vids.index(m2.config.frame_start_id)
        stamp, ftoks = vids[:cut], vids[cut:]
        assert len(ftoks) == nph, "the frame's tokens must take the image's place one for one"
        first = next(t for t, lab in enumerate(ex.labels) if lab >= 0)
        q = m2.turn_ids(point_question(pq.query))
        (x, y), = pq.points
        video = format_video_points([(0.0, 1, x, y)], s.rendered.size, s.rendered.size, pq.query)
        seqs = {"A": (ids[:k] + ftoks + ids[k + nph:], first, pq.answer, False),
                "B": (ids[:k] + stamp + ftoks + ids[k + nph:], first + len(stamp), pq.answer, False),
                "C": (vids + q + tok.encode_plain(pq.answer) + end, len(vids) + len(q), pq.answer, False),
                "D": (vids + q + tok.encode_plain(video) + end, len(vids) + len(q), video, True)}
        with torch.no_grad():
            feats = m2.encode(patches, pooling)
            for v, (seq, at, answer, is_video) in seqs.items():
                logits = m2(torch.tensor([seq]), image_features=feats).logits.float()[0]
                for axis in ("x", "y"):
                    t = _token_at(tok, seq, at, digit_at(answer, axis, is_video))
                    right[v][axis].append(int(logits[t - 1].argmax()) == seq[t])
                    truth[v][axis].append(seq[t])
    out = {}
    for v in "ABCD":
        out[v] = {axis: float(np.mean(right[v][axis])) for axis in ("x", "y")}
        for axis in ("x", "y"):
            _, counts = np.unique(truth[v][axis], return_counts=True)
            out[v][f"guess_{axis}"] = float(counts.max() / len(truth[v][axis]))
    return out


class _Digits:
    """Teacher-forced first digits of the coordinates in Molmo2's video markup, by group."""

    def __init__(self, tok):
        self.tok, self.right, self.truth = tok, {}, {}

    def positions(self, answer: str) -> list[tuple[float, int, int]]:
        """(time, character of x's first digit, of y's) for every point of the markup."""
        import re

        out = []
        for tag in re.finditer(r'coords="([^"]*)"', answer):
            at = tag.start(1)
            for group in tag.group(1).split("; "):
                nums, pos, k = group.split(" "), [], at
                for v in nums:
                    pos.append(k)
                    k += len(v) + 1
                out += [(float(nums[0]), pos[j + 1], pos[j + 2]) for j in range(1, len(nums) - 2, 3)]
                at += len(group) + 2
        return out

    def score(self, logits: torch.Tensor, seq: list[int], first: int, answer: str, group) -> None:
        """logits (T, V) of seq, whose answer (text `answer`) starts at seq[first]."""
        ends, text = [], ""
        for t in range(first, len(seq)):  # the character offset where each answer token ends
            text += self.tok.decode([seq[t]])
            ends.append(len(text))
        for time, cx, cy in self.positions(answer):
            g = group(time)
            for axis, c in (("x", cx), ("y", cy)):
                t = first + next(j for j, e in enumerate(ends) if e > c)
                self.right.setdefault((g, axis), []).append(int(logits[t - 1].argmax()) == seq[t])
                self.truth.setdefault((g, axis), []).append(seq[t])

    def table(self) -> dict:
        out = {}
        for (g, axis), r in sorted(self.right.items()):
            _, counts = np.unique(self.truth[(g, axis)], return_counts=True)
            out.setdefault(g, {})[axis] = (float(np.mean(r)), float(counts.max() / len(r)), len(r))
        return out


def molmo2_digits(m2, n_scenes: int = 160, n_clips: int = 40, seed: int = 0) -> dict:
    """Probe 7 on a world Molmo2: {group: {axis: (right, most common digit's share, points)}}."""
    from mmfm.data.llava_world import point_question
    from mmfm.data.molmo2_world import WorldVideoData, answer_text
    from mmfm.text.pointing import format_video_points
    from mmfm.train.molmo2 import PRESETS

    tok = m2.tokenizer
    end = tok.encode(m2.END, add_special_tokens=False)
    d = _Digits(tok)
    m2.eval()
    with torch.no_grad():
        for s, pq in _single_object_queries(n_scenes, seed):
            frame = torch.from_numpy(s.rendered.image).permute(2, 0, 1)[None].contiguous()
            ids, patches, pooling = m2.video_context(frame, [0.0])
            q = m2.turn_ids(point_question(pq.query))
            answer = format_video_points([(0.0, 1, *pq.points[0])], s.rendered.size, s.rendered.size, pq.query)
            seq = ids + q + tok.encode_plain(answer) + end
            d.score(m2(torch.tensor([seq]), patches, pooling).logits.float()[0], seq, len(ids) + len(q), answer,
                    lambda t: "stills (one-frame videos of test scenes)")
        data = WorldVideoData(m2, tok, seed=seed, split="test", **PRESETS["world-video"]["data"])
        for i in range(n_clips):
            ex, c, tasks = data.example(i)
            feats = m2.encode(ex.patches, ex.pooling)
            for qa, task in zip(ex.qas, tasks):
                if task["task"] != "point" or not task["points"]:
                    continue
                seq = ex.context + qa.question + qa.answer
                logits = m2(torch.tensor([seq]), image_features=feats).logits.float()[0]
                d.score(logits, seq, len(ex.context) + len(qa.question), answer_text(task, c),
                        lambda t: "clips, points at 0.0 s" if t == 0.0 else "clips, points later")
    return d.table()


def grid_tokens(model, pixels: torch.Tensor) -> torch.Tensor:
    """The connector's image tokens (N, h * w, C) in row order, without Molmo's layout tokens if it has them."""
    feats = model.encode_images(pixels)
    if getattr(model.projector, "layout", None) is None:
        return feats
    h = -(-model.grid // model.projector.pool)
    return feats[:, 1:-1].reshape(len(feats), h, h + 1, -1)[:, :, :h].flatten(1, 2)


def main() -> None:
    import mmfm
    from mmfm.data.llava_world import world_pixels
    from mmfm.weights import path as weights_path
    from mmfm.world import World

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="A world LLaVA folder (default: the shipped one).")
    ap.add_argument("--scenes", type=int, default=3000)
    ap.add_argument("--digits", type=int, default=300, help="single-object point queries for probe 4 (0: skip)")
    ap.add_argument("--filler", default="", help="probe 5: timestamps before the image, e.g. 0,4,16,40")
    ap.add_argument("--layouts", action="store_true", help="probe 6: the image as a one-frame video in a Molmo2 "
                    "made from the model (molmo-world-tiny)")
    ap.add_argument("--molmo2", default=None, help="probe 7 on this world Molmo2 folder")
    ap.add_argument("--clips", type=int, default=40, help="test clips for probe 7")
    args = ap.parse_args()
    if args.molmo2:
        for group, axes in molmo2_digits(mmfm.load(args.molmo2), args.digits or 160, args.clips).items():
            print(group + ": " + ", ".join(f"first digit of {a} right {r:.3f} ({n} points; most common digit {g:.3f})"
                                           for a, (r, g, n) in axes.items()), flush=True)
        return
    model = mmfm.load(args.model or weights_path("llava-world-tiny")).eval()
    if args.layouts:
        names = {"A": "LLaVA's sequence, frame tokens", "B": "A + timestamp", "C": "Molmo2's layout",
                 "D": "C, video markup"}
        for v, d in layouts(model, args.digits or 160).items():
            print(f"{v} ({names[v]}): first digit of x right {d['x']:.3f}, of y {d['y']:.3f} (most common digit: "
                  f"{d['guess_x']:.3f} / {d['guess_y']:.3f})", flush=True)
        return
    for k in (int(v) for v in args.filler.split(",") if v):
        d = first_digits(model, args.digits or 160, filler=k)
        print(f"LM, {k} timestamps ({d['filler_tokens']} tokens) before the image: first digit of x right "
              f"{d['x']['right']:.3f}, of y {d['y']['right']:.3f} (most common digit: "
              f"{d['x']['most_common_digit']:.3f} / {d['y']['most_common_digit']:.3f})", flush=True)
    if args.filler:
        return
    world = World(seed=0)
    samples = [world.sample("train", i) for i in range(args.scenes)]
    pixels = world_pixels([s.rendered.image for s in samples], model.config.image_mean, model.config.image_std)
    v, pool = model.vision, model.projector.pool
    with torch.no_grad():
        x = v.ln_pre(v.embed(pixels[:400]))
        states = [x]
        for blk in v.transformer.blocks:
            x = blk(x)
            states.append(x)
        for i, s in enumerate(states):
            print(f"tower hidden state {i}: a token's own index from its feature (64 tokens): "
                  f"{own_index(s[:, v.num_prefix_tokens:]):.3f}")
        for p in (2, 1):
            model.projector.pool = p
            feats = torch.cat([grid_tokens(model, pixels[j : j + 200]) for j in range(0, len(pixels), 200)])
            r = where_inside(feats, samples)
            print(f"connector, {r['tokens']} tokens: own index {own_index(feats[:400]):.3f}; "
                  f"{r['objects']} objects: cell centre in the mask {r['cell centre in mask']:.3f}, "
                  f"linear offset in the mask {r['linear offset in mask']:.3f}")
            for what, d in what_inside(feats, samples).items():
                print(f"connector, {r['tokens']} tokens: the object's {what} from its own cell's token "
                      f"{d['own cell']:.3f}, from a random token {d['random cell']:.3f} "
                      f"(most common {d['majority']:.3f})")
        model.projector.pool = pool
    if args.digits:
        d = first_digits(model, args.digits)
        for axis in ("x", "y"):
            a = d[axis]
            print(f"LM, {d['n']} single-object point queries: first digit of {axis} right {a['right']:.3f} "
                  f"(always the most common digit: {a['most_common_digit']:.3f}), log-prob {a['log_prob']:.3f}")


if __name__ == "__main__":
    main()
