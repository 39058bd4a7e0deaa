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
from mmfm.chain.visprog.backends import llava_vqa
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


def evaluate_statements(llava, n: int = 100, split: str = "test", seed: int = 0, llm=None, clip=None,
                        progress: bool = True) -> dict:
    """Accuracy of the three answerers on `n` statements (labels balanced). `llm`: an mmfm.chain.llm
    client for the program writer (None skips that row)."""
    from tqdm.auto import tqdm


    world = World(seed=seed)
    items = [world.statement(split, 50_000 + i) for i in range(n)]

    vp = VisProg(llm=llm, vqa=llava_vqa(llava, max_new_tokens=8), clip=clip)
    rows: dict[str, list] = {"program (template)": [], "end-to-end": []}
    if llm is not None:
        rows["program (LLM)"] = []
    failures = {k: 0 for k in rows}
    by_kind: dict[str, dict[str, list]] = {}
    bar = tqdm(items, desc="statements", disable=not progress, dynamic_ncols=True)
    ph = llava.config.image_token
    for st in bar:
        imgs = {"LEFT": st.left.pil(), "RIGHT": st.right.pil()}
        got = {}
        res = vp.run_program(parse(template_program(st.spec)), imgs, "two_images")
        got["program (template)"] = as_bool(res.result) if res.ok else None
        if llm is not None:
            try:
                res = vp(st.text, imgs, "two_images")
                got["program (LLM)"] = as_bool(res.result) if res.ok else None
            except MMFMError:
                got["program (LLM)"] = None
        ans = llava.generate([f"{ph}\n{ph}\nThe first picture is the left image, the second the right image. "
                              f"Is this statement true? {st.text} Answer yes or no."],
                             [[imgs["LEFT"], imgs["RIGHT"]]], max_new_tokens=4)[0]
        got["end-to-end"] = as_bool(ans)
        for k, v in got.items():
            rows[k].append(v == st.label)
            failures[k] += v is None
            by_kind.setdefault(st.spec["kind"], {}).setdefault(k, []).append(v == st.label)
    out = {k: {"accuracy": float(np.mean(v)), "no_answer": failures[k]} for k, v in rows.items()}
    out["by_kind"] = {kind: {k: round(float(np.mean(v)), 3) for k, v in d.items()} for kind, d in by_kind.items()}
    out["n"] = n
    out["labels_true"] = float(np.mean([s.label for s in items]))
    return out


__all__ = ["template_program", "evaluate_statements", "as_bool"]
