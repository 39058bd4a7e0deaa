"""VisProg's `Eval` module without `eval`: an expression over numbers, strings and booleans, with
`{VAR}` replaced by the variables' values, evaluated by walking a whitelisted syntax tree.

Allowed: literals, + - * / // % ** (bounded), comparisons (== != < <= > >= in, chained), and / or /
not / xor, `a if c else b`, parentheses, and the words yes/no/True/False. Refused (ProgramError before
anything runs): names other than those words, attribute access, subscripts, calls, lambdas,
comprehensions, f-strings, and anything over the size, depth or magnitude limits. `ast.parse` only
builds the tree; nothing is compiled or executed."""

from __future__ import annotations

import ast
import operator
import re

from mmfm.errors import ProgramError

MAX_CHARS = 1000
MAX_NODES = 200
MAX_DEPTH = 24
MAX_INT_BITS = 256
MAX_STR = 10_000

_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow, ast.BitXor: operator.xor}
_CMP = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
        ast.GtE: operator.ge, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
_WORDS = {"yes": True, "no": False, "True": True, "False": False, "true": True, "false": False, "None": None}
_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def substitute(expr: str, values: dict) -> str:
    """Replace {VAR}: inside quotes by its text, outside by a literal (yes/no become booleans)."""
    out, quote, i = [], None, 0
    while i < len(expr):
        ch = expr[i]
        m = _VAR.match(expr, i) if ch == "{" else None
        if m:
            name = m.group(1)
            if name not in values:
                raise ProgramError(f"Eval: {{{name}}} is not a variable defined before this step")
            v = values[name]
            if quote:
                out.append(str(v).replace("\\", "\\\\").replace(quote, "\\" + quote))
            else:
                out.append(_literal(v, name))
            i = m.end()
            continue
        if ch in "'\"" and (quote is None or quote == ch) and (i == 0 or expr[i - 1] != "\\"):
            quote = None if quote else ch
        out.append(ch)
        i += 1
    return "".join(out)


def _literal(v, name: str) -> str:
    if isinstance(v, bool) or v is None:
        return repr(v)
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        low = v.strip().lower()
        if low in ("yes", "no"):
            return repr(low == "yes")
        try:
            float(low)
            return low if low not in ("nan", "inf", "-inf", "infinity") else repr(v)
        except ValueError:
            return repr(v)
    raise ProgramError(f"Eval: {{{name}}} holds a {type(v).__name__}, not a number, text or yes/no")


def safe_eval(expr: str, values: dict | None = None):
    """Evaluate a VisProg Eval expression. Returns a number, string or bool."""
    if not isinstance(expr, str):
        raise ProgramError("Eval: the expression must be text")
    text = substitute(expr, values or {})
    text = re.sub(r"\bxor\b", "^", text)
    if len(text) > MAX_CHARS:
        raise ProgramError(f"Eval: the expression has {len(text)} characters; at most {MAX_CHARS} are allowed")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ProgramError(f"Eval: {text!r} is not a valid expression ({type(e).__name__})") from None
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_NODES:
        raise ProgramError(f"Eval: the expression is too large ({len(nodes)} syntax nodes, at most {MAX_NODES})")
    _check_depth(tree.body, 0)
    return _eval(tree.body)


def _check_depth(node, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ProgramError(f"Eval: the expression nests deeper than {MAX_DEPTH} levels")
    for child in ast.iter_child_nodes(node):
        _check_depth(child, depth + 1)


def _bounded(v):
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > MAX_INT_BITS:
        raise ProgramError(f"Eval: an intermediate number exceeds {MAX_INT_BITS} bits")
    if isinstance(v, str) and len(v) > MAX_STR:
        raise ProgramError(f"Eval: an intermediate string exceeds {MAX_STR} characters")
    return v


def _eval(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        return _bounded(node.value)
    if isinstance(node, ast.Name) and node.id in _WORDS:
        return _WORDS[node.id]
    if isinstance(node, ast.BoolOp):
        vals = [_eval(v) for v in node.values]  # no short-circuit needed: nothing has side effects
        return all(vals) if isinstance(node.op, ast.And) else any(vals)
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand)
        if isinstance(node.op, ast.Not):
            return not v
        if isinstance(node.op, (ast.USub, ast.UAdd)) and isinstance(v, (int, float)):
            return -v if isinstance(node.op, ast.USub) else +v
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        a, b = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            if not isinstance(b, (int, float)) or abs(b) > 64 or (isinstance(a, (int, float)) and abs(a) > 2**32):
                raise ProgramError("Eval: exponents are limited to |b| <= 64 and |a| <= 2**32")
        if isinstance(node.op, ast.Mult) and (isinstance(a, str) or isinstance(b, str)):
            n = b if isinstance(a, str) else a
            if not isinstance(n, int) or len(a if isinstance(a, str) else b) * max(n, 0) > MAX_STR:
                raise ProgramError(f"Eval: a repeated string would exceed {MAX_STR} characters")
        if isinstance(node.op, ast.BitXor) and not (isinstance(a, bool) and isinstance(b, bool)):
            raise ProgramError("Eval: xor takes yes/no values")
        try:
            return _bounded(_BIN[type(node.op)](a, b))
        except (TypeError, ZeroDivisionError, OverflowError, ValueError) as e:
            raise ProgramError(f"Eval: {type(e).__name__}: {e}") from None
    if isinstance(node, ast.Compare) and all(type(op) in _CMP for op in node.ops):
        left = _eval(node.left)
        for op, right_node in zip(node.ops, node.comparators):
            right = _eval(right_node)
            try:
                if not _CMP[type(op)](left, right):
                    return False
            except TypeError as e:
                raise ProgramError(f"Eval: cannot compare: {e}") from None
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _eval(node.body) if _eval(node.test) else _eval(node.orelse)
    raise ProgramError(f"Eval: {type(node).__name__} is not allowed (only arithmetic, comparisons, "
                       "and/or/not/xor and 'a if c else b')")


__all__ = ["safe_eval", "substitute"]
