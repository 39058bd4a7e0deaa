"""Program generation: in-context examples for VisProg's four tasks (written for mmfm's module set),
sent to any LLM client; a program that does not parse or validate goes back to the LLM with the error,
a bounded number of times."""

from __future__ import annotations

from dataclasses import dataclass

from mmfm.chain.visprog.interpreter import Registry, validate
from mmfm.chain.visprog.program import Program, parse
from mmfm.errors import ProgramError

INPUTS = {"image_question": {"IMAGE": "image"}, "two_images": {"LEFT": "image", "RIGHT": "image"},
          "edit": {"IMAGE": "image"}, "tag": {"IMAGE": "image"}}

EXAMPLES = {
    "image_question": [
        (
            "How many red circles are there?",
            "BOX0=Loc(image=IMAGE, object='red circle')\nANSWER0=Count(box=BOX0)\nRESULT=Result(var=ANSWER0)",
        ),
        (
            "What color is the shape to the left of the star?",
            "BOX0=Loc(image=IMAGE, object='star')\nIMAGE0=CropLeftOf(image=IMAGE, box=BOX0)\n"
            "ANSWER0=Vqa(image=IMAGE0, question='What color is the shape?')\nRESULT=Result(var=ANSWER0)",
        ),
        (
            "Are there more squares than triangles?",
            "BOX0=Loc(image=IMAGE, object='square')\nBOX1=Loc(image=IMAGE, object='triangle')\n"
            "ANSWER0=Count(box=BOX0)\nANSWER1=Count(box=BOX1)\n"
            "ANSWER2=Eval(expr='{ANSWER0} > {ANSWER1}')\nRESULT=Result(var=ANSWER2)",
        ),
    ],
    "two_images": [
        (
            "The left image has exactly two circles.",
            "BOX0=Loc(image=LEFT, object='circle')\nANSWER0=Count(box=BOX0)\n"
            "ANSWER1=Eval(expr='{ANSWER0} == 2')\nRESULT=Result(var=ANSWER1)",
        ),
        (
            "Both images contain a blue shape.",
            "ANSWER0=Vqa(image=LEFT, question='Is there a blue shape?')\n"
            "ANSWER1=Vqa(image=RIGHT, question='Is there a blue shape?')\n"
            "ANSWER2=Eval(expr='{ANSWER0} and {ANSWER1}')\nRESULT=Result(var=ANSWER2)",
        ),
        (
            "There are more stars in the right image than in the left image.",
            "BOX0=Loc(image=LEFT, object='star')\nBOX1=Loc(image=RIGHT, object='star')\n"
            "ANSWER0=Count(box=BOX0)\nANSWER1=Count(box=BOX1)\n"
            "ANSWER2=Eval(expr='{ANSWER1} > {ANSWER0}')\nRESULT=Result(var=ANSWER2)",
        ),
    ],
    "edit": [
        (
            "Hide the face of the woman with a heart",
            "OBJ0=FaceDet(image=IMAGE)\nIMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji='heart')\nRESULT=Result(var=IMAGE0)",  # noqa: E501
        ),
        (
            "Make everything black and white except the person",
            "OBJ0=Loc(image=IMAGE, object='person')\nIMAGE0=ColorPop(image=IMAGE, object=OBJ0)\nRESULT=Result(var=IMAGE0)",  # noqa: E501
        ),
        (
            "Blur the background behind the dog",
            "OBJ0=Loc(image=IMAGE, object='dog')\nIMAGE0=BgBlur(image=IMAGE, object=OBJ0)\nRESULT=Result(var=IMAGE0)",
        ),
        (
            "Remove the cup",
            "OBJ0=Seg(image=IMAGE)\nOBJ1=Select(image=IMAGE, object=OBJ0, query='cup')\n"
            "IMAGE0=Replace(image=IMAGE, object=OBJ1, prompt='table')\nRESULT=Result(var=IMAGE0)",
        ),
    ],
    "tag": [
        ("Tag the faces", "OBJ0=FaceDet(image=IMAGE)\nIMAGE0=Tag(image=IMAGE, object=OBJ0)\nRESULT=Result(var=IMAGE0)"),
        (
            "Tag the fruits with their names",
            "OBJ0=Seg(image=IMAGE)\nLIST0=List(query='fruits', max=10)\n"
            "OBJ1=Classify(image=IMAGE, object=OBJ0, categories='apple,banana,orange')\n"
            "IMAGE0=Tag(image=IMAGE, object=OBJ1)\nRESULT=Result(var=IMAGE0)",
        ),
    ],
}

HEADER = ("You write short programs that do what the user asks, one step per line: VAR=Module(name=value, ...). "
          "Values are 'text', numbers or variables defined on an earlier line. The inputs are {inputs}. "
          "The last line is RESULT=Result(var=...). Use only these modules, with exactly these arguments: "
          "{signatures}. Answer with the program only.")


BARE_SYSTEM = ("Write a VisProg program for the request. The inputs are {inputs}. One step per line: "
               "VAR=Module(name=value, ...). The last line is RESULT=Result(var=...).")


def bare_prompt(instruction: str, task: str) -> list[dict]:
    """The messages a fine-tuned writer is trained on and asked with: it knows the module language, so
    the rules and in-context examples an untuned LLM needs are left out (a sequence stays ~150 tokens)."""
    if task not in INPUTS:
        raise ProgramError(f"unknown task {task!r}; use one of {', '.join(INPUTS)}")
    return [{"role": "system", "content": BARE_SYSTEM.format(inputs=", ".join(INPUTS[task]))},
            {"role": "user", "content": instruction.strip()}]


def signatures(registry: Registry, task: str) -> str:
    out = []
    for name in registry.names(task):
        spec = registry.get(name)
        args = [n if p.required else f"{n}=None" for n, p in spec.params.items()]
        out.append(f"{name}({', '.join(args)})")
    return "; ".join(out)


def build_prompt(instruction: str, task: str, registry: Registry) -> list[dict]:
    """Chat messages: the rules and module signatures, the task's examples as earlier turns (small
    instruction-tuned models follow turns better than one long prompt), then the request."""
    if task not in EXAMPLES:
        raise ProgramError(f"unknown task {task!r}; use one of {', '.join(EXAMPLES)}")
    msgs = [{"role": "system", "content": HEADER.format(inputs=", ".join(INPUTS[task]),
                                                         signatures=signatures(registry, task))}]
    for q, prog in EXAMPLES[task]:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": prog}]
    return msgs + [{"role": "user", "content": instruction.strip()}]


@dataclass
class Generated:
    program: Program
    attempts: list  # (text, error or None) of each attempt


def _clean(reply: str) -> str:
    """The program part of a reply: drop code fences and anything after the RESULT line."""
    lines = []
    for line in reply.strip().replace("```python", "```").split("\n"):
        if line.strip().startswith("```"):
            continue
        lines.append(line)
        if line.strip().startswith(("RESULT=", "FINAL_RESULT=")):
            break
    return "\n".join(lines).strip()


def _check_instruction(instruction) -> None:
    if not isinstance(instruction, str) or not instruction.strip():
        raise ProgramError("the request is empty: say what the program should do")
    if len(instruction) > 2000:
        raise ProgramError(f"the request has {len(instruction)} characters; at most 2000 are allowed")


def _first_messages(llm, instruction: str, task: str, registry: Registry) -> list[dict]:
    tuned = getattr(llm, "purpose", {}).get("visprog", {}).get("prompt") == "bare"
    return bare_prompt(instruction, task) if tuned else build_prompt(instruction, task, registry)


def _attempts(llm, messages: list[dict], task: str, registry: Registry, max_repairs: int, max_tokens: int,
              first_reply: str | None = None) -> Generated:
    attempts = []
    for k in range(max_repairs + 1):
        reply = first_reply if k == 0 and first_reply is not None else llm.complete(
            messages, max_tokens=max_tokens, temperature=0.0, stop=["\n\n"])
        text = _clean(reply)
        try:
            program = parse(text)
            validate(program, registry, INPUTS[task], task)
            attempts.append((text, None))
            return Generated(program, attempts)
        except ProgramError as e:
            attempts.append((text, str(e)))
            messages = messages + [{"role": "assistant", "content": text},
                         {"role": "user", "content": f"That program is invalid: {e}\nWrite the corrected program "
                                                     f"only, one step per line, ending with RESULT=Result(var=...)."}]
    n = len(attempts)
    raise ProgramError(f"the LLM wrote no valid program in {n} attempt{'s' if n > 1 else ''}; "
                       f"last error: {attempts[-1][1]}")


def generate_program(llm, instruction: str, task: str, registry: Registry, max_repairs: int = 2,
                     max_tokens: int = 200) -> Generated:
    """Ask the LLM for a program; on a parse/validation error, send the error back (at most
    `max_repairs` times). Raises ProgramError with every attempt's error when none validates.
    An LLM fine-tuned for VisProg (its `purpose`, e.g. `mmfm train visprog-writer`) is asked with the
    bare prompt it was trained on; any other with the rules and in-context examples."""
    _check_instruction(instruction)
    return _attempts(llm, _first_messages(llm, instruction, task, registry), task, registry, max_repairs, max_tokens)


def generate_programs(llm, instructions: list[str], task: str, registry: Registry, max_repairs: int = 2,
                      max_tokens: int = 200, batch: int = 16) -> list[Generated | ProgramError]:
    """generate_program for many requests: the first attempts go to the LLM `batch` at a time
    (`LLM.complete_batch`), repairs one by one. A request with no valid program gives its ProgramError
    in its place instead of raising."""
    out: list[Generated | ProgramError | None] = [None] * len(instructions)
    todo = []
    for i, ins in enumerate(instructions):
        try:
            _check_instruction(ins)
            todo.append(i)
        except ProgramError as e:
            out[i] = e
    for start in range(0, len(todo), batch):
        idx = todo[start : start + batch]
        msgs = [_first_messages(llm, instructions[i], task, registry) for i in idx]
        replies = llm.complete_batch(msgs, max_tokens=max_tokens, temperature=0.0, stop=["\n\n"])
        for i, m, reply in zip(idx, msgs, replies):
            try:
                out[i] = _attempts(llm, m, task, registry, max_repairs, max_tokens, first_reply=reply)
            except ProgramError as e:
                out[i] = e
    return out  # type: ignore[return-value]


__all__ = ["build_prompt", "bare_prompt", "BARE_SYSTEM", "generate_program", "generate_programs", "signatures",
           "Generated", "EXAMPLES", "INPUTS"]
