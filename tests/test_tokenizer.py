"""CLIP tokenizer: the same ids as transformers' CLIPTokenizer on the same files, CLIP's conventions
(start/end, context 77, truncation that keeps the end token, cleaning), every file format, and the
shipped world tokenizer is reproducible."""

import gzip
import json

import pytest
import torch

from mmfm.errors import ConfigError, InvalidText
from mmfm.text.tokenizer import EOT, SOT, CLIPTokenizer
from mmfm.world.build_tokenizer import build, train_clip_bpe

CORPUS = [
    "A photo of a dog playing in the grass, next to a red ball.",
    "Two cats sleeping on a sofa; one is black and the other is white!",
    "The quick brown fox jumps over the lazy dog 1234567890 times.",
    "It's a mug in some grass, and it's not some grass in a mug.",
    "Café au lait, naïve résumé, Ünïcödé — emoji 😀 and 中文 text.",
    "we've seen they'll go, you'd think I'm here; don't stop!!!",
] * 20

PROBES = [
    "a photo of a cat",
    "A PHOTO OF A CAT",
    "  extra   spaces\tand\nnewlines  ",
    "it's they'll we've I'm you'd don't",
    "numbers 3.14159 and 2024-11-26",
    "punctuation!!! ??? ... ,,,",
    "Café naïve résumé Ünïcödé",
    "emoji 😀🐶 and 中文 and ελληνικά",
    "a snowman next to a traffic light",
    "",
    "a" * 300,
    "<|startoftext|> literal specials <|endoftext|>",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    vocab, merges = train_clip_bpe(CORPUS, vocab_size=900, min_frequency=1)
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return d, vocab, merges


def test_same_ids_as_transformers(files):
    from transformers import CLIPTokenizer as HFCLIPTokenizer

    d, vocab, _ = files
    ours = CLIPTokenizer.from_files(d / "vocab.json", d / "merges.txt")
    hf = HFCLIPTokenizer.from_pretrained(str(d))
    assert len(vocab) > 600
    for text in PROBES[:-1]:  # HF splits literal special strings; CLIP pipelines see them as text
        want = hf(text, padding="max_length", max_length=77, truncation=True)["input_ids"]
        got = ours(text)[0].tolist()
        n = want.index(vocab[EOT], 1) + 1  # HF pads with EOT, open_clip (and we) with 0
        assert got[:n] == want[:n], text
        assert all(t == 0 for t in got[n:])
    # transformers reads what we save
    ours.save(d / "saved")
    hf2 = HFCLIPTokenizer.from_pretrained(str(d / "saved"))
    assert hf2("a photo of a cat")["input_ids"] == hf("a photo of a cat")["input_ids"]


def test_clip_conventions(files):
    d, vocab, _ = files
    tok = CLIPTokenizer.from_files(d / "vocab.json", d / "merges.txt")
    ids = tok(["a photo of a cat", ""])
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    assert ids[0, 0] == vocab[SOT] and ids[1].tolist()[:3] == [vocab[SOT], vocab[EOT], 0]
    long = tok("a" * 5 + " word" * 200)
    assert long[0, -1] == vocab[EOT] and (long[0] != 0).all()
    assert tok("x", context_length=16).shape == (1, 16)
    # cleaning: HTML entities (twice-escaped too), whitespace, case
    assert tok("fish &amp;amp; chips").tolist() == tok("FISH  &  chips").tolist()
    assert tok.decode(tok("A photo of a CAT")[0]) == "a photo of a cat"
    enc = tok.encode("a cat")
    assert tok("a cat")[0, : len(enc) + 2].tolist() == [vocab[SOT]] + enc + [vocab[EOT]]


def test_open_clip_gz_format(files, tmp_path):
    d, vocab, merges = files
    gz = tmp_path / "bpe.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("\"bpe_simple_vocab_16e6.txt#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    a = CLIPTokenizer.from_bpe_gz(gz)
    b = CLIPTokenizer.from_files(d / "vocab.json", d / "merges.txt")
    assert a.vocab_size == b.vocab_size
    for text in PROBES:
        assert torch.equal(a(text), b(text)), text


def test_tokenizer_json_and_folder(files, tmp_path):
    d, _, _ = files
    tok = CLIPTokenizer.from_pretrained(d)
    tok.tokenizer.save(str(tmp_path / "tokenizer.json"))
    again = CLIPTokenizer.from_pretrained(tmp_path)
    assert torch.equal(again(PROBES[:6]), tok(PROBES[:6]))
    with pytest.raises(ConfigError):
        CLIPTokenizer.from_pretrained(tmp_path / "empty")


def test_bad_text():
    tok = CLIPTokenizer.world()
    with pytest.raises(InvalidText):
        tok([None])
    with pytest.raises(InvalidText):
        tok("x" * 200_000)
    with pytest.raises(ConfigError):
        tok("x", context_length=1)


def test_world_tokenizer_is_shipped_and_reproducible():
    tok = CLIPTokenizer.world()
    assert tok.eot_token_id == tok.vocab_size - 1 and tok.sot_token_id == tok.vocab_size - 2
    ids = tok("a small red circle to the left of two blue hexagons")[0]
    assert (ids != 0).sum() == 13  # one token per word + start + end
    # unseen words still encode (byte fallback), never to the end token
    unseen = tok("a snowman and a traffic light")[0].tolist()
    assert unseen.count(tok.eot_token_id) == 1
    vocab, merges = build()
    shipped = CLIPTokenizer.world()
    assert json.loads(shipped.tokenizer.to_str())["model"]["vocab"] == vocab
    assert [
        tuple(m) if isinstance(m, list) else tuple(m.split())
        for m in json.loads(shipped.tokenizer.to_str())["model"]["merges"]
    ] == merges
