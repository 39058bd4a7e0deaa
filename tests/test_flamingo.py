"""Flamingo model: the frozen LM is unchanged at initialisation (gates 0, images present), cached
generation equals the uncached forward, media masking, OpenFlamingo's label masking, world episodes,
few-shot prompts and RICES, save / load, the CLI and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import mmfm
from mmfm.data.flamingo_world import TRAIN_WORDS, WorldEpisodes, episode_prompt, flamingo_labels
from mmfm.errors import ConfigError, InvalidImage, InvalidPrompt
from mmfm.models.clip import CLIPVisionConfig
from mmfm.models.flamingo import EOC_TOKEN, IMAGE_TOKEN, Flamingo, FlamingoConfig
from mmfm.nn.decoder import DecoderConfig
from mmfm.nn.generate import GenerationConfig, generate
from mmfm.text.conversation import IGNORE
from mmfm.world import World
from mmfm.world.world import NEW_WORDS

V = 100
IMG, EOC = V, V + 1


def tiny(vocab=V, every=2, seed=0, gates=None, tie=True) -> Flamingo:
    torch.manual_seed(seed)
    c = FlamingoConfig(vision=CLIPVisionConfig(image_size=32, patch_size=8, width=48, layers=2, heads=3),
                       lm=DecoderConfig(vocab_size=vocab, dim=64, layers=4, heads=4, kv_heads=2, hidden=96,
                                        tie_embeddings=tie, max_seq_len=128),
                       cross_attn_every_n_layers=every, num_latents=8, resampler_depth=2, resampler_heads=2,
                       resampler_dim_head=16, xattn_heads=2, xattn_dim_head=16)
    m = Flamingo(c).eval()
    with torch.no_grad():  # a sharper LM than the 0.02 init, so that greedy tokens vary
        m.lm.embed.weight.normal_(0, 1.0)
        if gates is not None:
            for b in m.xattn.values():
                b.attn_gate.fill_(gates)
                b.ff_gate.fill_(gates)
    return m


def test_gated_blocks_sit_before_every_nth_layer():
    m = tiny(every=2)
    assert list(m.xattn) == ["1", "3"]
    assert FlamingoConfig(lm=DecoderConfig(layers=30), cross_attn_every_n_layers=5).xattn_layers == [
        4,
        9,
        14,
        19,
        24,
        29,
    ]
    with pytest.raises(ConfigError):
        FlamingoConfig(lm=DecoderConfig(layers=4), cross_attn_every_n_layers=5)


def test_at_init_logits_equal_the_frozen_lm_exactly_with_images():
    m = tiny()
    ids = torch.tensor([[5, IMG, 7, 8, EOC, IMG, 9, 10, 11]])
    pix = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        got = m(ids, pix).logits
        ref = m.lm(inputs_embeds=m.embed(ids)).logits
        assert torch.equal(got[..., :V], ref)
        text = torch.tensor([[5, 6, 7, 8, 9]])  # no new token at all: the plain LM on its own ids
        assert torch.equal(m(text, pix[:, :0]).logits[..., :V], m.lm(text).logits)
        # the gated blocks did see the images: opening the gates changes the output after the first image
        for b in m.xattn.values():
            b.attn_gate.fill_(1.0)
        assert (m(ids, pix).logits[..., :V] - ref)[:, 1:].abs().max() > 1e-3
        # a text-only prompt gets the gated feed-forward whether no media or zero images are passed
        for b in m.xattn.values():
            b.ff_gate.fill_(0.5)
        assert torch.equal(m(text).logits, m(text, pix[:, :0]).logits)
        assert not torch.equal(m(text).logits[..., :V], m.lm(text).logits)


def test_real_smollm2_flamingo_at_init_is_smollm2():
    from mmfm.lm.model import load_lm, smollm2_path
    from mmfm.train.flamingo import PRESETS, build_world_flamingo

    lm = load_lm(smollm2_path(), dtype="float32")
    m = build_world_flamingo(lm=lm, **PRESETS["world-tiny"]["model"]).eval()
    assert m.tokenizer.token_to_id(IMAGE_TOKEN) == m.config.image_token_id == lm.config.vocab_size
    w = World(seed=0)
    ep = w.episode("test", 0, "color", shots=2)
    text = episode_prompt([(p, a) for _, p, a in ep.demos], ep.query[1])
    ids = torch.tensor([m.tokenizer.encode(text)])
    assert int((ids == m.config.image_token_id).sum()) == 3
    pix = torch.stack([m.preprocess(r.image) for r, _, _ in ep.demos + [ep.query]])[None]
    with torch.no_grad():
        got = m(ids, pix).logits[..., : lm.config.vocab_size]
        ref = lm.model(inputs_embeds=m.embed(ids)).logits
        assert torch.equal(got, ref)
        plain = lm.tokenizer.encode("Question: What color is the sky? Short answer:")
        assert torch.equal(m(torch.tensor([plain])).logits[..., : lm.config.vocab_size],
                           lm.model(torch.tensor([plain])).logits)


def test_text_before_the_first_image_gets_no_visual_signal():
    m = tiny(gates=0.8)
    ids = torch.tensor([[5, 6, 7, IMG, 8, 9]])
    a, b = torch.randn(1, 1, 3, 32, 32), torch.randn(1, 1, 3, 32, 32)
    with torch.no_grad():
        la, lb = m(ids, a).logits, m(ids, b).logits
    assert torch.equal(la[:, :3], lb[:, :3])
    assert (la[:, 3:] - lb[:, 3:]).abs().max() > 1e-4


def test_cached_generation_equals_the_uncached_forward():
    m = tiny(gates=0.7)
    rows = [[5, IMG, 7, 8, EOC, IMG, 9], [IMG, 11, 12]]  # two images, one image (its second slot is padding)
    ids = torch.zeros(2, 7, dtype=torch.long)
    mask = torch.zeros(2, 7, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, 7 - len(r):] = torch.tensor(r)
        mask[i, 7 - len(r):] = 1
    media = m.encode_media(torch.randn(2, 2, 3, 32, 32))
    out = generate(m, ids, mask, config=GenerationConfig(max_new_tokens=6), forward_kwargs={"media": media})
    for i, r in enumerate(rows):  # each row alone, no cache, no padding
        seq = torch.tensor([r])
        for _ in range(6):
            with torch.no_grad():
                nxt = m(seq, media=media[i : i + 1, : r.count(IMG)]).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
        assert out.tokens[i] == seq[0, len(r):].tolist()[: len(out.tokens[i])]
    assert len(set(map(tuple, out.tokens))) == 2
    beams = generate(
        m, ids, mask, config=GenerationConfig(max_new_tokens=4, num_beams=3), forward_kwargs={"media": media}
    )
    assert len(beams.tokens) == 2


def test_only_new_parts_train():
    m = tiny()
    n = m.freeze()
    names = {k.split(".")[0] for k, p in m.named_parameters() if p.requires_grad}
    assert names == {"resampler", "xattn", "new_embed"}
    assert n == sum(p.numel() for k, p in m.named_parameters() if k.split(".")[0] in names)
    m.train()
    assert m.resampler.training and not m.vision.training  # the frozen tower stays in eval mode
    ids = torch.tensor([[IMG, 5, 6, EOC, IMG, 7, 8, EOC]])
    out = m(ids, torch.randn(1, 2, 3, 32, 32), labels=torch.tensor([flamingo_labels(ids[0].tolist(), IMG, EOC)]))
    loss = out.loss
    loss.backward()
    assert m.lm.embed.weight.grad is None and m.vision.pos_embed.grad is None
    assert all(b.attn_gate.grad is not None and b.attn_gate.grad.abs() > 0 for b in m.xattn.values())
    assert m.new_embed.weight.grad.abs().sum() > 0


def test_openflamingo_label_masking():
    ids = [3, 4, IMG, 5, 6, EOC, 7, 8, IMG, 9, EOC]
    assert flamingo_labels(ids, IMG, EOC) == [IGNORE, IGNORE, IGNORE, 5, 6, EOC, IGNORE, IGNORE, IGNORE, 9, EOC]


def test_bad_input_is_a_clear_error():
    m = tiny()
    pix = torch.randn(1, 2, 3, 32, 32)
    with pytest.raises(InvalidPrompt, match="image"):
        m(torch.tensor([[IMG, 5, IMG, 6, IMG]]), pix)  # three <image> tokens, two images
    with pytest.raises(InvalidPrompt, match="image"):
        m(torch.tensor([[IMG, 5, 6]]), pix)  # two images, one <image> token
    with pytest.raises(InvalidImage, match="shape"):
        m(torch.tensor([[IMG, 5]]), torch.randn(1, 1, 3, 16, 16))
    with pytest.raises(InvalidImage):
        m(torch.tensor([[IMG, 5]]), torch.randn(1, 3, 32, 32))


def _tokenized_tiny(tmp_path):
    """A tiny Flamingo with SmolLM2's tokenizer (and the two new tokens), saved and loaded back."""
    from mmfm.lm.model import load_lm, smollm2_path
    from mmfm.models.flamingo import add_flamingo_tokens

    tok = load_lm(smollm2_path()).tokenizer
    m = tiny(vocab=tok.vocab_size, gates=0.5)
    m.tokenizer = add_flamingo_tokens(tok, tok.vocab_size)
    m.save_pretrained(tmp_path / "fl")
    return m, mmfm.load(tmp_path / "fl")


def test_save_load_generate_and_fewshot_helpers(tmp_path):
    from mmfm.eval.fewshot import answer_from_demos, evaluate_fewshot, fewshot_prompt

    m, back = _tokenized_tiny(tmp_path)
    assert isinstance(back, Flamingo)
    w = World(seed=0, size=32)
    ims = [w.classification("test", i)[0].image for i in range(3)]
    prompts = [f"{IMAGE_TOKEN}Output: a{EOC_TOKEN}\n{IMAGE_TOKEN}Output:", f"{IMAGE_TOKEN}Output:"]
    a = m.generate(prompts, [ims[:2], ims[2:]], max_new_tokens=5)
    assert a == back.generate(prompts, [ims[:2], ims[2:]], max_new_tokens=5)
    with pytest.raises(InvalidPrompt, match="image"):
        m.generate([f"{IMAGE_TOKEN}Output:"], [ims[:2]])
    with pytest.raises(InvalidPrompt, match="image"):
        m.generate([f"{IMAGE_TOKEN}{IMAGE_TOKEN}Output:"], [ims[:1]])
    with pytest.raises(InvalidPrompt, match="demonstration"):
        answer_from_demos(m, [], ims[0], "What color?")
    assert isinstance(answer_from_demos(m, [(ims[0], "red"), (ims[1], "blue")], ims[2], "What color?"), str)
    # OpenFlamingo's 0-shot: two text-only demonstrations, then the query with its image
    demos = [(None, "Output:", "dax"), (None, "Output:", "wug")]
    text, used = fewshot_prompt(demos, "Output:", 0)
    assert used == 0 and text == f"Output: dax{EOC_TOKEN}\nOutput: wug{EOC_TOKEN}\n{IMAGE_TOKEN}Output:"
    res = evaluate_fewshot(m, tasks=("color", "new_names"), shots=(0, 2), n=2, out=tmp_path / "ev", progress=False)
    assert set(res["tasks"]["new_names"]) == {"random", "rices"}
    assert 0.0 <= res["tasks"]["color"]["rices"]["2"]["accuracy"] <= 1.0
    for f in ("fewshot.json", "fewshot.csv", "fewshot.png"):
        assert (tmp_path / "ev" / f).is_file()


def test_rices_puts_the_most_similar_demonstration_last():
    from mmfm.eval.fewshot import Rices

    w = World(seed=0)
    ims = [w.classification("test", i)[0].image for i in range(6)]
    r = Rices()
    top = r.top(ims[0], ims, 3)
    assert top[-1] == 0 and len(top) == 3  # the query itself is the most similar candidate
    sims = (r.embed(ims) @ r.embed([ims[0]])[0]).tolist()
    assert sims[top[0]] <= sims[top[1]] <= sims[top[2]]


def test_world_episodes_batch():
    from mmfm.lm.model import load_lm, smollm2_path
    from mmfm.models.flamingo import add_flamingo_tokens

    tok = add_flamingo_tokens(load_lm(smollm2_path()).tokenizer, 49152)
    data = WorldEpisodes(tok, 49152, 49153, 6, (0.5,) * 3, (0.25,) * 3, World(seed=0))
    b = data.batch(3)
    n_img = b["pixels"].shape[1]
    assert b["pixels"].shape == (6, n_img, 3, 64, 64)
    assert ((b["input_ids"] == 49152).sum(-1) == n_img).all()
    assert ((b["labels"] == 49152).sum() == 0) and (b["labels"] != IGNORE).any()
    assert data.batch(3)["input_ids"].equal(b["input_ids"])  # a pure function of the step
    ep = data.episode(7, "new_names", 4)
    words = [a for _, _, a in ep.demos + [ep.query]]
    assert all(x in TRAIN_WORDS and x not in NEW_WORDS for x in words)
    assert ep.query[2] in [a for _, _, a in ep.demos]


def _mmfm(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "mmfm.cli.main", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_fewshot(tmp_path):
    _tokenized_tiny(tmp_path)
    w = World(seed=0, size=32)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        w.classification("test", i)[0].pil().save(paths[-1])
    r = _mmfm("fewshot", "--model", tmp_path / "fl", "--demo", paths[0], "red", "--demo", paths[1], "blue",
              paths[2], "What color is it?", "--json", "--max-tokens", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["question"] == "What color is it?" and len(out["demos"]) == 2 and isinstance(out["answer"], str)
    r = _mmfm("fewshot", "--model", tmp_path / "fl", paths[2], "What color?")  # no demonstration
    assert r.returncode == 2 and "demonstration" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    r = _mmfm("fewshot", "--model", tmp_path / "fl", "--demo", bad, "red", paths[2])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = _mmfm("fewshot", "--model", tmp_path / "fl", "--demo", paths[0])
    assert r.returncode == 2 and "two values" in r.stderr


@pytest.mark.slow
def test_train_and_eval_flamingo_end_to_end(tmp_path):
    out = tmp_path / "fl"
    r = _mmfm("train", "flamingo", "--steps", "2", "--batch-size", "2", "--out", out, "--eval-n", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    model = out / "model"
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["base_lm"] == "smollm2" and cfg["cross_attn_every_n_layers"] == 5
    assert (model / "model.safetensors").stat().st_size < 60e6  # the frozen LM is not copied
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["fewshot"]["tasks"]) == {"color", "shape", "count", "new_names"}
    assert (out / "fewshot.png").is_file() and (out / "curves.png").is_file()
    r = _mmfm("eval", "flamingo", "--model", model, "--n", "2", "--shots", "0,2", "--tasks", "color",
              "--selection", "rices", "--out", tmp_path / "ev")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "ev" / "fewshot.json").read_text())
    assert set(res["tasks"]["color"]["rices"]) == {"0", "2"}
