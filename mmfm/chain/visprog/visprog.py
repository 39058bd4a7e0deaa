"""`VisProg`: the pieces together (LLM -> program -> interpreter -> rationale)."""

from __future__ import annotations

from mmfm.chain.visprog.interpreter import Context, Interpreter, RunResult
from mmfm.chain.visprog.modules import default_registry
from mmfm.chain.visprog.prompts import INPUTS, generate_program
from mmfm.errors import ProgramError


class VisProg:
    def __init__(self, llm=None, clip=None, sam=None, vqa=None, inpaint=None, loaders: dict | None = None,
                 step_timeout: float = 120.0, registry=None, max_repairs: int = 2):
        """Models: clip (an mmfm CLIP with a tokenizer), sam (an mmfm SAM), vqa (callable(image,
        question) -> str), inpaint (callable(image, mask, prompt) -> image), llm (an mmfm.chain.llm.LLM).
        `loaders` maps the same names to zero-argument functions called on first use instead."""
        models = {k: v for k, v in dict(llm=llm, clip=clip, sam=sam, vqa=vqa, inpaint=inpaint).items() if v is not None}
        self.registry = registry or default_registry()
        self.context = Context(models=models, loaders=dict(loaders or {}))
        self.interpreter = Interpreter(self.registry, self.context, step_timeout)
        self.max_repairs = max_repairs

    def write_program(self, instruction: str, task: str):
        return generate_program(self.context.model("llm"), instruction, task, self.registry, self.max_repairs)

    def run_program(self, program, images: dict, task: str | None = None) -> RunResult:
        if task is not None and set(images) != set(INPUTS[task]):
            raise ProgramError(f"task {task!r} takes the images {', '.join(INPUTS[task])}, got {', '.join(images)}")
        return self.interpreter.run(program, dict(images), task)

    def __call__(self, instruction: str, images: dict, task: str) -> RunResult:
        return self.run_program(self.write_program(instruction, task).program, images, task)
