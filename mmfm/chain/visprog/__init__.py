"""VisProg (Gupta & Kembhavi, 2023): an LLM writes a short program of module calls; mmfm parses it
(no eval), validates it against a task's module set, runs it step by step under time limits, and
renders a visual rationale.

    from mmfm.chain.visprog import VisProg
    vp = VisProg(llm=LocalLLM(), clip=..., sam=...)
    run = vp.run_program("OBJ0=FaceDet(image=IMAGE)\\nIMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji='smiley')\\n"
                         "RESULT=Result(var=IMAGE0)", images={"IMAGE": img}, task="edit")
"""

from mmfm.chain.visprog.interpreter import (
           Context,
           Interpreter,
           ModuleSpec,
           Param,
           Registry,
           RunResult,
           validate,
)
from mmfm.chain.visprog.modules import Region, default_registry
from mmfm.chain.visprog.program import Program, Step, Var, parse
from mmfm.chain.visprog.prompts import generate_program
from mmfm.chain.visprog.rationale import render_html, write_html
from mmfm.chain.visprog.safe_eval import safe_eval
from mmfm.chain.visprog.visprog import VisProg

__all__ = ["Context", "Interpreter", "ModuleSpec", "Param", "Program", "Region", "Registry", "RunResult", "Step",
           "Var", "VisProg", "default_registry", "generate_program", "parse", "render_html", "safe_eval",
           "validate", "write_html"]
