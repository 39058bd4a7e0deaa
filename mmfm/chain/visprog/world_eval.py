"""VisProg on the world's two-image statements (NLVR style): is a statement about a LEFT and a RIGHT
scene true? Three answerers on the same items:

- `program (LLM)`: the LLM writes a program from the statement (VisProg's in-context prompt, bounded
  repairs), the interpreter runs it with the VQA model as `Vqa` and the world CLIP as `Loc`/`Select`.
  A program that cannot be written or fails while running counts as wrong (and is counted).
- `program (template)`: the program a correct writer would produce for the statement's kind, from the
  world's own spec: what chaining gives when the writing step is right.
- `end-to-end`: the VQA model sees both images in one prompt and answers yes or no.
"""

from __future__ import annotations

import re

import numpy as np

from mmfm.chain.visprog import VisProg
from mmfm.chain.visprog.program import parse
from mmfm.errors import MMFMError
from mmfm.world import World
from mmfm.world.vocab import article, plural


def _count_q(shape: str) -> str:
    return f"How many {plural(shape, 2)} are there?"


def template_program(spec: dict) -> str:
    """The program for a statement of the world's kinds (more, both, total, side, neither)."""
    k = spec["kind"]
    if k == "more":
        q = _count_q(spec["shape"])
        return (f"ANSWER0=Vqa(image=LEFT, question='{q}')\nANSWER1=Vqa(image=RIGHT, question='{q}')\n"
                "ANSWER2=Eval(expr='{ANSWER0} > {ANSWER1}')\nRESULT=Result(var=ANSWER2)")
    if k == "both":
        thing = f"{spec['color']} {spec['shape']}" if "shape" in spec else f"{spec['color']} object"
        q = f"Is there {article(thing)} {thing}?"
        return (f"ANSWER0=Vqa(image=LEFT, question='{q}')\nANSWER1=Vqa(image=RIGHT, question='{q}')\n"
                "ANSWER2=Eval(expr='{ANSWER0} and {ANSWER1}')\nRESULT=Result(var=ANSWER2)")
    if k == "total":
        q = _count_q(spec["shape"])
        return (f"ANSWER0=Vqa(image=LEFT, question='{q}')\nANSWER1=Vqa(image=RIGHT, question='{q}')\n"
                f"ANSWER2=Eval(expr='{{ANSWER0}} + {{ANSWER1}} == {spec['n']}')\nRESULT=Result(var=ANSWER2)")
    if k == "side":
        img = spec["side"].upper()
        thing = f"{spec['color']} {spec['shape']}"
        return f"ANSWER0=Vqa(image={img}, question='Is there {article(thing)} {thing}?')\nRESULT=Result(var=ANSWER0)"
    q = _count_q(spec["shape"])
    return (f"ANSWER0=Vqa(image=LEFT, question='{q}')\nANSWER1=Vqa(image=RIGHT, question='{q}')\n"
            "ANSWER2=Eval(expr='{ANSWER0} == 0 and {ANSWER1} == 0')\nRESULT=Result(var=ANSWER2)")


def as_bool(value) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    m = re.search(r"\b(yes|no|true|false)\b", str(value), re.I)
    return None if m is None else m.group(1).lower() in ("yes", "true")


class MemoVQA:
    """`Vqa` from a LLaVA, answers remembered per (image, question) and asked in batches beforehand
    (`prefetch`): the template and LLM-written programs of a statement mostly ask the same questions.
    Batched greedy answers (left padding) can differ from one-by-one answers in rare near-ties."""

    def __init__(self, llava, max_new_tokens: int = 8, batch: int = 16):
        self.llava, self.max_new_tokens, self.batch = llava, max_new_tokens, batch
        self.cache: dict = {}
        self.keep: list = []  # the images asked about stay alive, so their ids stay unique

    def _ask(self, pairs: list) -> list[str]:
        return self.llava.ask_batch([im for im, _ in pairs], [q for _, q in pairs], max_new_tokens=self.max_new_tokens)

    def prefetch(self, pairs: list, progress: bool = False) -> None:
        from tqdm.auto import tqdm

        todo = list({(id(im), q): (im, q) for im, q in pairs if (id(im), q) not in self.cache}.values())
        for start in tqdm(range(0, len(todo), self.batch), desc="vqa (batched)", disable=not progress,
                          dynamic_ncols=True):
            chunk = todo[start : start + self.batch]
            for (im, q), a in zip(chunk, self._ask(chunk)):
                self.cache[(id(im), q)] = a
                self.keep.append(im)

    def __call__(self, image, question: str) -> str:
        key = (id(image), question)
        if key not in self.cache:
            self.cache[key] = self._ask([(image, question)])[0]
            self.keep.append(image)
        return self.cache[key]


def _vqa_calls(program, images: dict) -> list:
    """The (image, question) of each Vqa step on an input image with a written question."""
    out = []
    for step in program.steps:
        im, q = step.args.get("image"), step.args.get("question")
        if step.module.lower() == "vqa" and getattr(im, "name", None) in images and isinstance(q, str):
            out.append((images[im.name], q))
    return out


def evaluate_statements(llava, n: int = 100, split: str = "test", seed: int = 0, llm=None, clip=None, sam=None,
                        progress: bool = True, batch: int = 16) -> dict:
    """Accuracy of the three answerers on `n` statements (labels balanced). `llm`: an mmfm.chain.llm
    client for the program writer (None skips that row); `sam`: a SAM for Loc's candidate regions
    (else windows). Programs are written in batches, Vqa answers asked in batches and shared."""
    from tqdm.auto import tqdm

    from mmfm.chain.visprog.prompts import generate_programs

    world = World(seed=seed)
    items = [world.statement(split, 50_000 + i) for i in range(n)]
    images = [{"LEFT": st.left.pil(), "RIGHT": st.right.pil()} for st in items]
    vqa = MemoVQA(llava, max_new_tokens=8, batch=batch)
    vp = VisProg(llm=llm, vqa=vqa, clip=clip, sam=sam)
    programs: dict[str, list] = {"program (template)": [parse(template_program(st.spec)) for st in items]}
    if llm is not None:
        written = []
        for start in tqdm(range(0, n, 32), desc="write programs", disable=not progress, dynamic_ncols=True):
            written += generate_programs(llm, [st.text for st in items[start : start + 32]], "two_images",
                                         vp.registry, max_repairs=vp.max_repairs)
        programs["program (LLM)"] = [None if isinstance(g, MMFMError) else g.program for g in written]
    vqa.prefetch([c for k in programs for prog, imgs in zip(programs[k], images) if prog is not None
                  for c in _vqa_calls(prog, imgs)], progress)
    ph = llava.config.image_token
    e2e = []
    for start in tqdm(range(0, n, batch), desc="end-to-end (batched)", disable=not progress, dynamic_ncols=True):
        chunk = range(start, min(n, start + batch))
        e2e += llava.generate([f"{ph}\n{ph}\nThe first picture is the left image, the second the right image. "
                               f"Is this statement true? {items[i].text} Answer yes or no." for i in chunk],
                              [[images[i]["LEFT"], images[i]["RIGHT"]] for i in chunk], max_new_tokens=4)
    rows: dict[str, list] = {k: [] for k in programs} | {"end-to-end": []}
    failures = {k: 0 for k in rows}
    by_kind: dict[str, dict[str, list]] = {}
    for i, st in enumerate(tqdm(items, desc="run programs", disable=not progress, dynamic_ncols=True)):
        got = {}
        for k, progs in programs.items():
            if progs[i] is None:
                got[k] = None
                continue
            try:
                res = vp.run_program(progs[i], images[i], "two_images")
                got[k] = as_bool(res.result) if res.ok else None
            except MMFMError:
                got[k] = None
        got["end-to-end"] = as_bool(e2e[i])
        for k, v in got.items():
            rows[k].append(v == st.label)
            failures[k] += v is None
            by_kind.setdefault(st.spec["kind"], {}).setdefault(k, []).append(v == st.label)
    out = {k: {"accuracy": float(np.mean(v)), "no_answer": failures[k], "correct": [bool(x) for x in v]}
           for k, v in rows.items()}
    out["by_kind"] = {kind: {k: round(float(np.mean(v)), 3) for k, v in d.items()} for kind, d in by_kind.items()}
    if llm is not None:
        pairs = zip(programs["program (LLM)"], programs["program (template)"])
        same = [p is not None and same_program(p, t) for p, t in pairs]
        out["llm_programs_equal_template"] = float(np.mean(same))
    out["n"] = n
    out["labels_true"] = float(np.mean([s.label for s in items]))
    return out


def same_program(a, b) -> bool:
    """Same steps (targets, modules, arguments), whatever the spacing and quoting."""
    return [(s.target, s.module, s.args) for s in a.steps] == [(s.target, s.module, s.args) for s in b.steps]


def evaluate_counting(llava, clip, sam=None, n: int = 200, seed: int = 0, progress: bool = True) -> dict:
    """Exact count accuracy of VisProg's ways to count a shape in a world scene: the VQA model's answer
    (`Vqa`), and `Loc` + `Count` on CLIP-scored candidate regions from windows or, with `sam`, from SAM's
    automatic masks. Half the queries name a shape in the scene, half a random shape."""
    from tqdm.auto import tqdm

    from mmfm.eval.vqa import parse_count
    from mmfm.world import SHAPES, select

    world = World(seed=seed)
    rng = np.random.default_rng([seed, 7])
    scenes, shapes, truth = [], [], []
    for i in range(n):
        r = world.statement("test", 70_000 + i).left
        present = sorted({o.shape for o in r.scene.objects})
        s = present[rng.integers(len(present))] if present and rng.random() < 0.5 else SHAPES[rng.integers(len(SHAPES))]
        scenes.append(r.pil())
        shapes.append(s)
        truth.append(len(select(r, None, s)))
    vqa = MemoVQA(llava, max_new_tokens=8)
    vqa.prefetch([(im, _count_q(s)) for im, s in zip(scenes, shapes)], progress)
    ways = {"Vqa (LLaVA)": [parse_count(vqa(im, _count_q(s))) for im, s in zip(scenes, shapes)]}
    loc = {"Loc + Count (windows)": VisProg(clip=clip)}
    if sam is not None:
        loc["Loc + Count (SAM masks)"] = VisProg(clip=clip, sam=sam)
    for name, vp in loc.items():
        got = []
        for im, s in tqdm(list(zip(scenes, shapes)), desc=name, disable=not progress, dynamic_ncols=True):
            res = vp.run_program(parse(f"BOX0=Loc(image=IMAGE, object='{s}')\nANSWER0=Count(box=BOX0)\n"
                                       "RESULT=Result(var=ANSWER0)"), {"IMAGE": im}, "image_question")
            got.append(res.result if res.ok else None)
        ways[name] = got
    out = {"n": n, "truth_mean": float(np.mean(truth))}
    for name, got in ways.items():
        ok = [g == t for g, t in zip(got, truth)]
        out[name] = {"accuracy": float(np.mean(ok)), "correct": ok,
                     "by_truth": {str(t): round(float(np.mean([o for o, tt in zip(ok, truth) if tt == t])), 3)
                                  for t in sorted(set(truth))}}
    return out


__all__ = ["template_program", "evaluate_statements", "evaluate_counting", "as_bool", "MemoVQA", "same_program"]
