"""The VisProg language: a program is lines `VAR=Module(name=value, ...)`, the last one assigning the
answer (`RESULT=...` or VisProg's `FINAL_RESULT=RESULT(var=X)`).

    BOX0=Loc(image=IMAGE, object='face')
    IMAGE0=Emoji(image=IMAGE, object=BOX0, emoji='smiling_face')
    RESULT=Result(var=IMAGE0)

Values are strings ('...' or "..."), numbers, None, True/False, or variables. A small hand-written
tokenizer and parser (no `eval`, no `ast` of Python: a program is data, never code) turns the text into
`Step`s and reports the line and column of the first error."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mmfm.errors import ProgramError

MAX_PROGRAM_CHARS = 20_000
MAX_LINES = 100
MAX_ARGS = 16


@dataclass(frozen=True)
class Var:
    name: str


@dataclass(frozen=True)
class Step:
    line: int  # 1-based line number in the source
    target: str
    module: str  # as written
    args: dict  # name -> str | int | float | None | bool | Var
    source: str = field(default="", compare=False)

    def inputs(self) -> list[str]:
        return [v.name for v in self.args.values() if isinstance(v, Var)]


@dataclass
class Program:
    steps: list[Step]
    source: str

    @property
    def result(self) -> str:
        return self.steps[-1].target


_TOKEN = re.compile(r"""
    (?P<ws>[ \t]+)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
  | (?P<string>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
  | (?P<punct>[=(),])
""", re.VERBOSE)
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", "'": "'", '"': '"'}


def _unquote(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), s[1:-1])


def _tokens(text: str, line_no: int) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            what = "an unterminated string" if text[pos] in "'\"" else f"unexpected character {text[pos]!r}"
            raise ProgramError(f"line {line_no}, column {pos + 1}: {what}")
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group(0), pos + 1))
        pos = m.end()
    return out


def _parse_line(text: str, line_no: int) -> Step:
    toks = _tokens(text, line_no)
    i = 0

    def fail(msg: str, col: int | None = None):
        col = col if col is not None else (toks[i][2] if i < len(toks) else len(text) + 1)
        raise ProgramError(f"line {line_no}, column {col}: {msg} in {text.strip()!r}")

    def expect(kind: str, value: str | None = None, what: str = ""):
        nonlocal i
        if i >= len(toks) or toks[i][0] != kind or (value is not None and toks[i][1] != value):
            got = f"{toks[i][1]!r}" if i < len(toks) else "the end of the line"
            fail(f"expected {what or value or kind}, found {got}")
        i += 1
        return toks[i - 1]

    target = expect("name", what="a variable name")[1]
    expect("punct", "=", "'='")
    module = expect("name", what="a module name")[1]
    expect("punct", "(", "'('")
    args: dict = {}
    while i < len(toks) and toks[i][1] != ")":
        name_tok = expect("name", what="an argument name")
        if name_tok[1] in args:
            fail(f"argument {name_tok[1]!r} given twice", name_tok[2])
        expect("punct", "=", "'=' after the argument name")
        if i >= len(toks):
            fail("expected a value")
        kind, val, _ = toks[i]
        if kind == "string":
            value = _unquote(val)
        elif kind == "number":
            value = float(val) if any(c in val for c in ".eE") else int(val)
        elif kind == "name":
            value = {"None": None, "True": True, "False": False}.get(val, Var(val))
        else:
            fail(f"expected a value, found {val!r}")
        i += 1
        args[name_tok[1]] = value
        if len(args) > MAX_ARGS:
            fail(f"more than {MAX_ARGS} arguments")
        if i < len(toks) and toks[i][1] == ",":
            i += 1
        elif i < len(toks) and toks[i][1] != ")":
            fail(f"expected ',' or ')', found {toks[i][1]!r}")
    expect("punct", ")", "')'")
    if i < len(toks):
        fail(f"unexpected {toks[i][1]!r} after the call")
    return Step(line_no, target, module, args, text.strip())


def parse(source: str) -> Program:
    """Program text -> Program. Blank lines and lines starting with # are skipped."""
    if not isinstance(source, str):
        raise ProgramError(f"a program is text, got {type(source).__name__}")
    if len(source) > MAX_PROGRAM_CHARS:
        raise ProgramError(f"the program has {len(source)} characters; at most {MAX_PROGRAM_CHARS} are allowed")
    steps = []
    for n, line in enumerate(source.splitlines(), 1):
        if line.strip() and not line.strip().startswith("#"):
            steps.append(_parse_line(line, n))
    if not steps:
        raise ProgramError("the program is empty: write lines like BOX0=Loc(image=IMAGE, object='dog')")
    if len(steps) > MAX_LINES:
        raise ProgramError(f"the program has {len(steps)} steps; at most {MAX_LINES} are allowed")
    if steps[-1].target not in ("RESULT", "FINAL_RESULT"):
        raise ProgramError(f"line {steps[-1].line}: the last step must assign RESULT (or FINAL_RESULT), "
                           f"not {steps[-1].target}")
    return Program(steps, source)


__all__ = ["Program", "Step", "Var", "parse"]
