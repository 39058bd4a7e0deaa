"""CLIP's byte-level BPE tokenizer, on HF `tokenizers`.

Follows CLIP's conventions (open_clip's SimpleTokenizer and HF's CLIPTokenizer): ftfy + HTML-unescape
cleaning, whitespace folding, lowercasing; CLIP's split pattern; words end in `</w>`; every sequence is
`<|startoftext|> ... <|endoftext|>`, padded with 0 to the context length (77); truncation keeps the
end token in the last slot. Reads the files shipped with HF CLIP checkpoints (vocab.json + merges.txt,
or tokenizer.json) and open_clip's `bpe_simple_vocab_16e6.txt.gz`.
"""

from __future__ import annotations

import gzip
import html
import json
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from mmfm.checkpoint import verify_file
from mmfm.errors import CheckpointError, ConfigError, InvalidText

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
MAX_CHARS = 100_000  # longer inputs are refused rather than tokenized for seconds


def clip_pipeline(model: BPE) -> Tokenizer:
    """Wrap a BPE model in CLIP's normalizer, pre-tokenizer and decoder."""
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def bpe_model(vocab: dict[str, int], merges: list[tuple[str, str]]) -> BPE:
    return BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
               fuse_unk=False, unk_token=EOT)


def basic_clean(text: str) -> str:
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:  # ftfy is a dependency; keep working (minus mojibake repair) if it is gone
        pass
    return html.unescape(html.unescape(text)).strip()


def check_utf8(text: str) -> None:
    """A lone surrogate (invalid UTF-8 bytes passed through the shell, or JSON's "\\udcff") cannot be
    tokenized: say so instead of failing inside the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidText(f"the text is not valid UTF-8 (character {e.start}: {text[e.start]!r}); "
                          "pass UTF-8 text") from e


def whitespace_clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


class CLIPTokenizer:
    """texts -> (B, context_length) int64 token ids."""

    def __init__(self, tokenizer: Tokenizer, context_length: int = 77, pad_id: int = 0, clean: bool = True):
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.pad_id = pad_id
        self.clean = clean
        vocab = tokenizer.get_vocab()
        if SOT not in vocab or EOT not in vocab:
            raise ConfigError(f"a CLIP tokenizer needs {SOT} and {EOT} in its vocabulary")
        self.sot_token_id, self.eot_token_id = vocab[SOT], vocab[EOT]
        tokenizer.add_special_tokens([SOT, EOT])

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def from_files(cls, vocab_file, merges_file, **kw) -> CLIPTokenizer:
        """HF CLIP checkpoint files: vocab.json + merges.txt (first line `#version...` is skipped)."""
        vocab = json.loads(Path(vocab_file).read_text(encoding="utf-8"))
        lines = Path(merges_file).read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        return cls(clip_pipeline(bpe_model(vocab, merges)), **kw)

    @classmethod
    def from_tokenizer_json(cls, path, **kw) -> CLIPTokenizer:
        return cls(Tokenizer.from_file(str(path)), **kw)

    @classmethod
    def from_bpe_gz(cls, path, **kw) -> CLIPTokenizer:
        """open_clip / OpenAI's `bpe_simple_vocab_16e6.txt.gz`: the vocabulary is the 256 byte symbols,
        the same with `</w>`, one entry per merge (the first 48,894 lines after the header), then the
        two special tokens."""
        lines = gzip.open(path).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1] if m.strip()]
        base = list(_bytes_to_unicode().values())
        tokens = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + [SOT, EOT]
        return cls(clip_pipeline(bpe_model({t: i for i, t in enumerate(tokens)}, merges)), **kw)

    @classmethod
    def from_pretrained(cls, folder, **kw) -> CLIPTokenizer:
        """vocab.json + merges.txt or tokenizer.json; a damaged file is a CheckpointError naming it."""
        folder = Path(folder)
        try:
            if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
                verify_file(folder / "vocab.json")
                verify_file(folder / "merges.txt")
                return cls.from_files(folder / "vocab.json", folder / "merges.txt", **kw)
            if (folder / "tokenizer.json").is_file():
                verify_file(folder / "tokenizer.json")
                return cls.from_tokenizer_json(folder / "tokenizer.json", **kw)
        except (CheckpointError, ConfigError):
            raise
        except Exception as e:  # noqa: BLE001 - json, UTF-8, the Rust BPE builder: all mean a damaged file
            raise CheckpointError(f"{folder}: the tokenizer files are unreadable ({type(e).__name__}: "
                                  f"{str(e)[:200]})") from e
        raise ConfigError(f"{folder}: no vocab.json + merges.txt or tokenizer.json to load a CLIP tokenizer from")

    @classmethod
    def world(cls, context_length: int = 32) -> CLIPTokenizer:
        """The small BPE tokenizer of the Shapes world, shipped with mmfm (built by mmfm.world.build_tokenizer)."""
        return cls(_load_world(), context_length=context_length)

    def save(self, folder) -> None:
        """Write vocab.json + merges.txt (HF CLIP's format, which transformers' CLIPTokenizer reads)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = json.loads(self.tokenizer.to_str())["model"]
        (folder / "vocab.json").write_text(json.dumps(state["vocab"], ensure_ascii=False), encoding="utf-8")
        merges = [" ".join(m) if isinstance(m, list) else m for m in state["merges"]]
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")

    # ------------------------------------------------------------------------------ use
    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def _prepare(self, text) -> str:
        if not isinstance(text, str):
            raise InvalidText(f"text must be a string, got {type(text).__name__}")
        if len(text) > MAX_CHARS:
            raise InvalidText(f"text of {len(text):,} characters is over the {MAX_CHARS:,} limit; shorten it")
        check_utf8(text)
        return whitespace_clean(basic_clean(text)).lower() if self.clean else text

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens."""
        return self.tokenizer.encode(self._prepare(text), add_special_tokens=False).ids

    def __call__(self, texts, context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)):
            raise InvalidText(f"expected a string or a list of strings, got {type(texts).__name__}")
        texts = list(texts)
        ctx = context_length or self.context_length
        if ctx < 2:
            raise ConfigError("context_length must leave room for the start and end tokens (>= 2)")
        encs = self.tokenizer.encode_batch([self._prepare(t) for t in texts], add_special_tokens=False)
        out = torch.full((len(texts), ctx), self.pad_id, dtype=torch.long)
        for i, e in enumerate(encs):
            ids = [self.sot_token_id] + e.ids[: ctx - 2] + [self.eot_token_id]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        ids = [i for i in ids if i not in (self.sot_token_id, self.pad_id)]
        if self.eot_token_id in ids:
            ids = ids[: ids.index(self.eot_token_id)]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return text.replace("</w>", " ").strip()


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode table (the order CLIP's vocabulary starts with)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _load_world() -> Tokenizer:
    base = resources.files("mmfm.text") / "assets"
    vocab = json.loads((base / "world_vocab.json").read_text(encoding="utf-8"))
    lines = (base / "world_merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
    return clip_pipeline(bpe_model(vocab, merges))

