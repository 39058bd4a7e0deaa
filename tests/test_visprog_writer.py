"""The VisProg program writer: request -> program pairs (training and held-out wordings), LoRA
fine-tuning of the real SmolLM2 with adapters saved and merged back on load, the bare prompt a tuned
writer is asked with, batched writing, and the shipped writer on wordings it never read."""

import json

import pytest
import torch

from mmfm.chain.visprog.interpreter import validate
from mmfm.chain.visprog.modules import default_registry
from mmfm.chain.visprog.program import parse
from mmfm.chain.visprog.prompts import INPUTS, _first_messages, bare_prompt
from mmfm.chain.visprog.writer import KINDS, WORDINGS, conversations, make_pairs, render
from mmfm.errors import CheckpointError
from mmfm.world import World


def test_heldout_wordings_include_the_worlds_own_and_never_meet_training():
    world = World(seed=0)
    for i in range(60):
        st = world.statement("test", 50_000 + i)
        assert render(WORDINGS[st.spec["kind"]]["heldout"][0], st.spec) == st.text
    for kind in KINDS:
        assert not set(WORDINGS[kind]["train"]) & set(WORDINGS[kind]["heldout"])
    train = {p.request for p in make_pairs(500, "train")}
    held = {p.request for p in make_pairs(200, "heldout")}
    assert not train & held


def test_every_pair_is_a_valid_two_image_program_and_kinds_are_balanced():
    reg = default_registry()
    pairs = make_pairs(50, "train", seed=3)
    for p in pairs:
        validate(parse(p.program), reg, INPUTS["two_images"], "two_images")
        assert p.request.strip() and "{" not in p.request
    assert {p.spec["kind"] for p in pairs} == set(KINDS)
    conv = conversations(pairs[:1])[0]
    assert [m["role"] for m in conv] == ["system", "user", "assistant"] and conv[2]["content"] == pairs[0].program


def _llm_lm():
    from mmfm.lm import load_lm, smollm2_path

    return load_lm(smollm2_path(), dtype="float32")


@pytest.mark.slow
def test_lora_adapters_train_save_and_merge_back_on_load(tmp_path):
    from mmfm.chain.llm import LocalLLM
    from mmfm.lm import load_lm
    from mmfm.train.lm_lora import encode_conversations, train_lm_lora
    from mmfm.train.trainer import TrainConfig

    lm = _llm_lm()
    convs = conversations(make_pairs(8, "train"))
    rows = encode_conversations(lm, convs)
    ids, labels = rows[0]
    supervised = [t for t, lab in zip(ids, labels) if lab != -100]
    assert lm.tokenizer.decode(supervised).strip().startswith(make_pairs(8, "train")[0].program.split("\n")[0])
    log = train_lm_lora(lm, convs, tmp_path / "w", TrainConfig(steps=2, batch_size=4, lr=5e-3, warmup=0,
                                                               weight_decay=0.0, progress=False, precision="fp32"),
                        r=4, alpha=8.0, purpose={"visprog": {"prompt": "bare"}})
    assert len(log) >= 1 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    folder = tmp_path / "w"
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["model_type"] == "mmfm-lm-lora" and cfg["r"] == 4
    x = torch.tensor([ids])
    with torch.no_grad():
        want = lm.model(x).logits
        back = load_lm(folder)
        got = back.model(x).logits
    assert back.purpose == {"visprog": {"prompt": "bare"}}
    assert not any("lora" in n for n, _ in back.model.named_parameters())  # merged into the base weights
    assert (want - got).abs().max().item() < 1e-3
    assert (want - _llm_lm().model(x).logits).abs().max().item() > 1e-3  # the adapters changed something
    # a tuned writer is asked with the bare prompt it was trained on, an untuned LLM with examples
    req = "Both images contain a red circle."
    assert _first_messages(LocalLLM(back), req, "two_images", default_registry()) == bare_prompt(req, "two_images")
    assert len(_first_messages(LocalLLM(_llm_lm()), req, "two_images", default_registry())) > 2
    # damaged adapters are a clear error
    from safetensors.torch import load_file, save_file

    sd = load_file(folder / "adapter.safetensors")
    sd.pop(sorted(sd)[0])
    save_file(sd, folder / "adapter.safetensors")
    with pytest.raises(CheckpointError):  # the manifest sees the file changed
        load_lm(folder)
    from mmfm.checkpoint import write_manifest

    write_manifest(folder)  # a consistent folder whose adapters do not fit their config
    with pytest.raises(CheckpointError, match="do not match"):
        load_lm(folder)


@pytest.mark.slow
def test_batched_writing_equals_one_by_one():
    from mmfm.chain.llm import LocalLLM

    llm = LocalLLM(_llm_lm())
    prompts = [bare_prompt(p.request, "two_images") for p in make_pairs(3, "heldout")]
    one = [llm.complete(p, max_tokens=12) for p in prompts]
    assert llm.complete_batch(prompts, max_tokens=12) == one


@pytest.mark.slow
def test_shipped_writer_writes_valid_programs_for_wordings_it_never_read():
    from mmfm.chain.llm import LocalLLM
    from mmfm.chain.visprog.writer import evaluate_writer
    from mmfm.weights import path

    res = evaluate_writer(LocalLLM(path("visprog-writer-world")), n=20, seed=5, progress=False)
    assert res["valid"] >= 19 and res["exact"] >= 15, res["misses"][:3]


def test_eval_writer_cli_rejects_unknown_split(capsys):
    import sys

    from mmfm.cli import main as entry

    argv, sys.argv = sys.argv, ["mmfm", "eval", "visprog-writer", "--split", "nope", "--n", "2"]
    try:
        with pytest.raises(SystemExit) as e:
            entry.main()
    finally:
        sys.argv = argv
    err = capsys.readouterr().err
    assert e.value.code == 2 and "heldout or train" in err and "Traceback" not in err
