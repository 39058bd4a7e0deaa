"""VisProg on the world's two-image statements: the template programs are valid for every statement
kind, and the three answerers (LLM-written program, template program, end-to-end VQA) run on real
models (the shipped world LLaVA as Vqa, the shipped world CLIP, the local SmolLM2 as the writer)."""

import pytest

from mmfm.chain.visprog.interpreter import validate
from mmfm.chain.visprog.modules import default_registry
from mmfm.chain.visprog.program import parse
from mmfm.chain.visprog.prompts import INPUTS
from mmfm.chain.visprog.world_eval import as_bool, evaluate_statements, template_program
from mmfm.world import World


def test_template_programs_validate_for_every_statement_kind():
    reg, kinds = default_registry(), set()
    world = World(seed=0)
    for i in range(80):
        st = world.statement("test", i)
        validate(parse(template_program(st.spec)), reg, INPUTS["two_images"], "two_images")
        kinds.add(st.spec["kind"])
    assert kinds == {"more", "both", "total", "side", "neither"}


def test_as_bool_reads_answers():
    assert as_bool(True) is True and as_bool("Yes.") is True and as_bool("no") is False and as_bool("2") is None


@pytest.mark.slow
def test_statement_evaluation_runs_with_real_models():
    import mmfm
    from mmfm.chain.llm import LocalLLM
    from mmfm.weights import path

    llava = mmfm.load(path("llava-world-tiny"))
    clip = mmfm.load(path("clip-world-tiny")).float().eval()
    res = evaluate_statements(llava, n=4, llm=LocalLLM(), clip=clip, progress=False)
    assert set(res) >= {"program (template)", "program (LLM)", "end-to-end", "by_kind"}
    for k in ("program (template)", "program (LLM)", "end-to-end"):
        assert 0.0 <= res[k]["accuracy"] <= 1.0 and 0 <= res[k]["no_answer"] <= 4


def test_diffusers_backend_errors_are_clear(tmp_path):
    from mmfm.chain.visprog.backends import diffusers_inpainter
    from mmfm.errors import CheckpointError, DependencyError

    try:
        import diffusers  # noqa: F401
    except ImportError:
        with pytest.raises(DependencyError, match="pip install diffusers"):
            diffusers_inpainter(tmp_path)
    else:
        with pytest.raises(CheckpointError, match="model_index.json"):
            diffusers_inpainter(tmp_path)
