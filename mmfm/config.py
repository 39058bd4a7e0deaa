"""The base of every model config: a dataclass that checks itself and round-trips through JSON.

On construction each field is checked against its annotation (int, float, bool, str, `Literal[...]`
choices, optional and union types, tuples, nested configs given as dicts), the fields named in
`POSITIVE` must be > 0, and only then does the subclass's `validate()` run its own rules (so a zero head
count is a ConfigError naming the field, never a ZeroDivisionError). Every failure is a ConfigError
that names the config, the field, what it got and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import types
import typing
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

from mmfm.errors import ConfigError


@dataclasses.dataclass
class Config:
    POSITIVE: ClassVar[tuple[str, ...]] = ()  # fields that must be > 0 when set
    # A model past this (80 GB of fp32 weights) is a typo or a hostile file, not something to allocate.
    MAX_PARAMETERS: ClassVar[int] = 20_000_000_000
    IGNORED_KEYS: ClassVar[frozenset[str]] = frozenset({"model_type", "mmfm_version"})  # written beside a config

    def __post_init__(self):
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _check(type(self).__name__, f.name, getattr(self, f.name), hints[f.name]))
        for name in self.POSITIVE:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{type(self).__name__}.{name} must be positive, got {value!r}")
        self.validate()
        n = self.parameters()
        if n is not None and n > self.MAX_PARAMETERS:
            raise ConfigError(f"{type(self).__name__} asks for about {n:,} parameters ({n * 4 / 1e9:,.0f} GB in fp32), "
                              f"over mmfm's limit of {self.MAX_PARAMETERS:,}; check its sizes")

    def validate(self) -> None:
        """Rules between fields; runs after every field has its type."""

    def parameters(self) -> int | None:
        """About how many parameters the model of this config has (None: not estimated); checked
        against MAX_PARAMETERS before anything is allocated."""
        return None

    def to_dict(self) -> dict:
        """JSON-ready: nested configs as dicts, tuples as lists."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Config):
                v = v.to_dict()
            elif isinstance(v, (tuple, list)):
                v = list(v)
            elif isinstance(v, dict):
                v = copy.deepcopy(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: Any):
        """The inverse of to_dict; unknown keys are refused (a typo must not load as the default)."""
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.__name__}: a config is a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - cls.IGNORED_KEYS)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(known)}")
        return cls(**{k: v for k, v in d.items() if k in known})


_HINTS: dict[type, dict] = {}


def _hints(cls: type) -> dict:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _describe(tp) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _check(owner: str, name: str, value, tp):
    """`value` as the type `tp` asks for, or ConfigError. Lists become tuples where a tuple is asked for,
    dicts become nested configs, ints become floats."""
    origin = get_origin(tp)
    where = f"{owner}.{name}"
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        for arm in get_args(tp):
            try:
                return _check(owner, name, value, arm)
            except ConfigError:
                continue
        raise ConfigError(f"{where} must be {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp) or isinstance(value, bool) != any(isinstance(a, bool) for a in get_args(tp)):
            raise ConfigError(f"{where} must be {_describe(tp)}, got {value!r}")
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where} must be null, got {value!r}")
        return None
    if isinstance(tp, type) and issubclass(tp, Config):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return tp.from_dict(value)
        raise ConfigError(f"{where} must be a {tp.__name__} (a JSON object), got {type(value).__name__}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:  # numpy integers too (GGUF metadata)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if tp is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check(owner, f"{name}[{i}]", v, args[0]) for i, v in enumerate(value))
        return tuple(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a JSON object, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_check(owner, f"{name}[{i}]", v, get_args(tp)[0]) for i, v in enumerate(value)]
    return value


def choices(tp) -> tuple:
    """The allowed values of a Literal type (for help texts and CLI choices)."""
    return get_args(tp)


__all__ = ["Config", "choices"]
