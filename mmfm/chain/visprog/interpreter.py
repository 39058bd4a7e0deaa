"""Validating and running VisProg programs.

A `Registry` holds `ModuleSpec`s: a module's name, its parameters with the kind of value each takes,
the kind it returns, and the tasks it belongs to. `validate` checks a parsed program against one task's
module set before anything runs (known module, known and required arguments, variables defined before
use, kinds that fit); `Interpreter.run` then executes the steps one by one, each under a time limit,
recording a trace for the visual rationale. Any failure becomes a ProgramError naming the step, and the
partial trace is kept (`RunResult.error`)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mmfm.chain.visprog.program import Program, Step, Var, parse
from mmfm.errors import MMFMError, ProgramError

# value kinds; "any" accepts everything
KINDS = ("image", "regions", "text", "number", "bool", "list", "any")
TASKS = ("image_question", "two_images", "edit", "tag")


@dataclass(frozen=True)
class Param:
    kind: str
    required: bool = True
    literal: bool = False  # must be written in the program (a string / number), not a variable


@dataclass
class ModuleSpec:
    name: str
    fn: Callable  # fn(ctx, **args) -> value
    params: dict  # name -> Param
    returns: str
    tasks: tuple = TASKS
    doc: str = ""
    needs_env: bool = False  # fn also gets env= (the variables so far): Eval's {VAR} substitution


def _norm(name: str) -> str:
    return name.replace("_", "").lower()


class Registry:
    def __init__(self):
        self._specs: dict[str, ModuleSpec] = {}

    def add(self, spec: ModuleSpec) -> None:
        self._specs[_norm(spec.name)] = spec

    def get(self, name: str) -> ModuleSpec | None:
        """Loc, LOC and CROP_LEFTOF / CropLeftOf all name the same module."""
        return self._specs.get(_norm(name))

    def names(self, task: str | None = None) -> list[str]:
        return sorted(s.name for s in self._specs.values() if task is None or task in s.tasks)


def _fits(value_kind: str, wanted: str) -> bool:
    return (
        wanted == "any" or value_kind == "any" or value_kind == wanted or (wanted == "number" and value_kind == "bool")
    )


def _literal_kind(v) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "text"
    return "any"  # None


def validate(program: Program, registry: Registry, inputs: dict[str, str], task: str | None = None) -> None:
    """inputs: the state's variables and their kinds, e.g. {"IMAGE": "image"}. Raises ProgramError."""
    kinds = dict(inputs)
    for step in program.steps:
        where = f"line {step.line} ({step.source!r})"
        spec = registry.get(step.module)
        if spec is None or (task is not None and task not in spec.tasks):
            known = ", ".join(registry.names(task))
            raise ProgramError(f"{where}: unknown module {step.module!r}" + (f" for task {task!r}" if task else "")
                               + f"; known: {known}")
        for name, value in step.args.items():
            if name not in spec.params:
                raise ProgramError(f"{where}: {spec.name} has no argument {name!r}; it takes "
                                   f"{', '.join(spec.params)}")
            p = spec.params[name]
            if isinstance(value, Var):
                if value.name not in kinds:
                    raise ProgramError(f"{where}: variable {value.name} is used before it is defined")
                if p.literal:
                    raise ProgramError(f"{where}: {spec.name}'s {name!r} must be written out, not a variable")
                vk = kinds[value.name]
            else:
                vk = _literal_kind(value)
                if value is None and not p.required:
                    continue
            if not _fits(vk, p.kind):
                raise ProgramError(f"{where}: {spec.name}'s {name!r} takes {p.kind}, got {vk}")
        if spec.needs_env:  # {VAR} inside a text argument must name a variable defined before
            for value in step.args.values():
                for ref in re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", value if isinstance(value, str) else ""):
                    if ref not in kinds:
                        raise ProgramError(f"{where}: {{{ref}}} is used before it is defined")
        missing = [n for n, p in spec.params.items() if p.required and n not in step.args]
        if missing:
            raise ProgramError(f"{where}: {spec.name} needs {', '.join(repr(m) for m in missing)}")
        if step.target in inputs:
            raise ProgramError(f"{where}: {step.target} is an input of the program; assign a new variable")
        kinds[step.target] = spec.returns


@dataclass
class TraceStep:
    step: Step
    module: str
    inputs: dict  # argument name -> value (variables resolved)
    output: object = None
    seconds: float = 0.0
    error: str | None = None


@dataclass
class RunResult:
    result: object
    state: dict
    trace: list[TraceStep]
    program: Program
    error: ProgramError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Context:
    """What modules may use besides their arguments: the models (loaded lazily), the LLM, options."""

    models: dict = field(default_factory=dict)
    loaders: dict = field(default_factory=dict)  # name -> () -> model, called once on first use
    options: dict = field(default_factory=dict)

    def model(self, name: str):
        if name not in self.models:
            if name not in self.loaders:
                raise ProgramError(f"this module needs a {name} model; pass one (e.g. --{name}) or add a loader")
            self.models[name] = self.loaders[name]()
        return self.models[name]


class Interpreter:
    def __init__(self, registry: Registry, context: Context | None = None, step_timeout: float = 120.0):
        self.registry, self.context, self.step_timeout = registry, context or Context(), step_timeout

    def run(self, program: Program | str, state: dict, task: str | None = None) -> RunResult:
        """Validate, then run. Never raises for a failing step: the error is in the result, with the
        trace up to it (call `.raise_for_error()`-style code yourself: `if r.error: raise r.error`).
        A program that does not parse or validate raises ProgramError at once."""
        if isinstance(program, str):
            program = parse(program)
        validate(program, self.registry, {k: kind_of(v) for k, v in state.items()}, task)
        env, trace = dict(state), []
        for step in program.steps:
            spec = self.registry.get(step.module)
            args = {k: env[v.name] if isinstance(v, Var) else v for k, v in step.args.items()}
            rec = TraceStep(step, spec.name, args)
            trace.append(rec)
            t0 = time.perf_counter()
            try:
                rec.output = self._call(spec, {**args, "env": dict(env)} if spec.needs_env else args)
            except ProgramError as e:
                rec.error = str(e)
            except MMFMError as e:
                rec.error = f"{type(e).__name__}: {e}"
            except Exception as e:  # a module bug must not crash the caller: it ends the program
                rec.error = f"{type(e).__name__}: {e}"
            rec.seconds = time.perf_counter() - t0
            if rec.error is not None:
                err = ProgramError(f"step {len(trace)} (line {step.line}, {step.source!r}) failed: {rec.error}")
                return RunResult(None, env, trace, program, err)
            env[step.target] = rec.output
        return RunResult(env[program.result], env, trace, program)

    def _call(self, spec: ModuleSpec, args: dict):
        """Run one module in a worker thread and wait at most step_timeout seconds. A module that
        overruns is abandoned (its thread cannot be killed, it finishes in the background)."""
        box: dict = {}

        def work():
            try:
                box["value"] = spec.fn(self.context, **args)
            except BaseException as e:  # handed to the caller's thread
                box["error"] = e

        th = threading.Thread(target=work, daemon=True, name=f"visprog-{spec.name}")
        th.start()
        th.join(self.step_timeout)
        if th.is_alive():
            raise ProgramError(f"{spec.name} did not finish within {self.step_timeout:g} s")
        if "error" in box:
            raise box["error"]
        return box["value"]


def kind_of(value) -> str:
    from PIL import Image

    if isinstance(value, Image.Image):
        return "image"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "regions" if value and all(hasattr(v, "box") for v in value) else "list"
    return "any"


__all__ = ["Context", "Interpreter", "ModuleSpec", "Param", "Registry", "RunResult", "TraceStep", "validate", "kind_of"]
