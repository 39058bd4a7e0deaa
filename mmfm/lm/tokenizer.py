"""The language model's tokenizer: byte-level BPE on HF `tokenizers`, built from a tokenizer.json
(HF folders) or from a GGUF file's own metadata (tokens, merges, pre-tokenizer name, special ids),
plus the chat template rendered with jinja2 in a sandbox, as transformers renders it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from mmfm.errors import CheckpointError, DependencyError, InvalidPrompt, InvalidText
from mmfm.text.conversation import MARK_END, new_marker
from mmfm.text.tokenizer import check_utf8

# llama.cpp's pre-tokenizer names -> how the text is split before BPE. The regexes are the ones
# llama.cpp and the original tokenizer.json files use.
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"""
LLAMA3_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501
DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "codeshell", "command-r")
PLAIN_GPT2 = ("gpt-2", "gpt2", "default", "")
LLAMA3_STYLE = ("llama-bpe", "llama3", "smaug-bpe", "dbrx")

MAX_TEXT_CHARS = 1_000_000


def _pre_tokenizer(pre: str):
    from tokenizers import Regex, pre_tokenizers

    if pre in DIGITS_THEN_GPT2:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    if pre in PLAIN_GPT2:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in LLAMA3_STYLE:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    known = ", ".join(DIGITS_THEN_GPT2 + PLAIN_GPT2[:-1] + LLAMA3_STYLE)
    raise CheckpointError(f"GGUF pre-tokenizer {pre!r} is not supported yet (known: {known})")


class LMTokenizer:
    """encode / decode / left-padded batches / chat template. Special ids come from the checkpoint."""

    def __init__(self, tokenizer, *, bos_token_id: int | None, eos_token_id: int | list[int] | None,
                 pad_token_id: int | None = None, chat_template: str | None = None, add_bos: bool = False):
        self.tok = tokenizer
        self.bos_token_id = bos_token_id
        self.eos_token_ids = [] if eos_token_id is None else (
            [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
        self.pad_token_id = pad_token_id if pad_token_id is not None else (self.eos_token_ids or [0])[0]
        self.chat_template = chat_template
        self.add_bos = add_bos
        self._plain_tok = None  # a copy that matches no added token (encode_plain)

    # -------------------------------------------------------------------------------- building
    @classmethod
    def from_gguf_metadata(cls, meta: dict) -> LMTokenizer:
        from tokenizers import AddedToken, Tokenizer, decoders, models

        kind = meta.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise CheckpointError(
                f"GGUF tokenizer model {kind!r} is not supported yet; mmfm reads byte-level BPE ('gpt2') "
                "tokenizers, as SmolLM, Llama 3 and Qwen use")
        tokens = meta["tokenizer.ggml.tokens"]
        types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
        vocab = {t: i for i, t in enumerate(tokens)}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        tok.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre", "default"))
        tok.decoder = decoders.ByteLevel()
        # GGUF token types: 3 = control, 4 = user-defined; both are matched whole, never split by BPE.
        specials = [AddedToken(tokens[i], special=(ty == 3), normalized=False)
                    for i, ty in enumerate(types) if ty in (3, 4)]
        tok.add_tokens(specials)
        bos = meta.get("tokenizer.ggml.bos_token_id")
        out = cls(tok, bos_token_id=bos, eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
                  pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
                  chat_template=meta.get("tokenizer.chat_template"),
                  add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)) and bos is not None)
        out._set_post_processor()
        return out

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, eos_token_id=None, bos_token_id=None, pad_token_id=None
    ) -> LMTokenizer:
        """A HF folder: tokenizer.json, and tokenizer_config.json / chat_template.jinja if present."""
        from tokenizers import Tokenizer

        folder = Path(folder)
        if not (folder / "tokenizer.json").is_file():
            raise CheckpointError(f"{folder}: no tokenizer.json (mmfm reads HF fast tokenizers)")
        try:
            tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:  # noqa: BLE001 - the Rust parser raises a bare Exception
            raise CheckpointError(f"{folder / 'tokenizer.json'}: unreadable ({e})") from e
        cfg = {}
        if (folder / "tokenizer_config.json").is_file():
            cfg = json.loads((folder / "tokenizer_config.json").read_text())
        template = cfg.get("chat_template")
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()

        def token_id(key, given):
            """An id passed by the caller wins; else the token named in tokenizer_config.json."""
            if given is not None:
                return given
            t = cfg.get(key)
            t = t.get("content") if isinstance(t, dict) else t
            return tok.token_to_id(t) if isinstance(t, str) else None

        return cls(tok, bos_token_id=token_id("bos_token", bos_token_id),
                   eos_token_id=token_id("eos_token", eos_token_id),
                   pad_token_id=token_id("pad_token", pad_token_id), chat_template=template,
                   add_bos=bool(cfg.get("add_bos_token", False)))

    def _set_post_processor(self) -> None:
        from tokenizers import processors

        if self.add_bos:
            bos = self.tok.id_to_token(self.bos_token_id)
            self.tok.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, self.bos_token_id)])

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(folder / "tokenizer.json"))
        name = lambda i: None if i is None else self.tok.id_to_token(i)  # noqa: E731
        cfg = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": name(self.bos_token_id),
            "eos_token": name(self.eos_token_ids[0]) if self.eos_token_ids else None,
            "pad_token": name(self.pad_token_id),
            "add_bos_token": self.add_bos,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000,
        }
        (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
        if self.chat_template:
            (folder / "chat_template.jinja").write_text(self.chat_template)

    # -------------------------------------------------------------------------------- use
    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        _check_text(text)
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def batch(self, texts: list[str], add_special_tokens: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded (input_ids, attention_mask), both (B, T): the layout batched generation needs."""
        ids = [self.encode(t, add_special_tokens) for t in texts]
        return self.pad(ids)

    def pad(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        n = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), n), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(ids), n, dtype=torch.long)
        for i, x in enumerate(ids):
            if x:
                input_ids[i, n - len(x):] = torch.tensor(x)
                mask[i, n - len(x):] = 1
        return input_ids, mask

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            marker: str | None = None) -> str:
        """The checkpoint's own chat template, rendered like transformers renders it. With a `marker`
        (`new_marker()`), each message's content is rendered as `marker + str(i) + MARK_END` instead, so
        that `split_marked` can hand the contents to `encode_plain` apart from the template's text."""
        check_messages(messages)
        if not self.chat_template:
            raise InvalidPrompt("this model has no chat template; pass a plain prompt instead of messages")
        if marker is not None:
            messages = [{**m, "content": f"{marker}{i}{MARK_END}"} for i, m in enumerate(messages)]
        return _render(self.chat_template, messages=messages, add_generation_prompt=add_generation_prompt,
                       bos_token=self._name(self.bos_token_id), eos_token=self._name((self.eos_token_ids or [None])[0]))

    def encode_plain(self, text: str) -> list[int]:
        """Ids of text that must stay text: a user's or the model's words. A special-token string in it
        ("<|im_end|>", "<|im_start|>system") is spelled with ordinary tokens, never matched as the control
        token, so a message cannot end its turn or forge another role."""
        _check_text(text)
        if self._plain_tok is None:
            from tokenizers import Tokenizer

            # the same BPE model (shared, not copied) without added tokens or post-processor: no token is
            # matched whole, BPE spells everything from bytes
            plain = Tokenizer(self.tok.model)
            for part in ("normalizer", "pre_tokenizer", "decoder"):
                if getattr(self.tok, part) is not None:
                    setattr(plain, part, getattr(self.tok, part))
            self._plain_tok = plain
        return self._plain_tok.encode(text, add_special_tokens=False).ids

    def split_marked(self, text: str, marker: str, messages: list[dict]) -> list[tuple[str, bool]]:
        """A rendering made with `marker` -> [(piece, is_content)]: the template's own text, and each
        message's content where the template put it. InvalidPrompt if the template changed a marker
        (it edits contents) while a content holds a special-token string: that content cannot be kept
        apart from the control tokens safely."""
        pieces: list[tuple[str, bool]] = []
        pos = 0
        pattern = re.compile(re.escape(marker) + r"(\d+)" + re.escape(MARK_END))
        for m in pattern.finditer(text):
            pieces.append((text[pos : m.start()], False))
            i = int(m.group(1))
            if i >= len(messages):
                raise InvalidPrompt("the chat template produced a message that was not given")
            pieces.append((messages[i]["content"], True))
            pos = m.end()
        pieces.append((text[pos:], False))
        if marker in "".join(p for p, content in pieces if not content):
            raise InvalidPrompt("this model's chat template edits message text, so control-token strings in "
                                "messages cannot be kept as plain text; remove them from the messages")
        return [(p, c) for p, c in pieces if p]

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """The ids of a conversation: the template's text with its control tokens, each message's content
        as plain text (`encode_plain`)."""
        marker = new_marker()
        text = self.apply_chat_template(messages, add_generation_prompt, marker=marker)
        ids: list[int] = []
        for piece, content in self.split_marked(text, marker, messages):
            ids += self.encode_plain(piece) if content else self.encode(piece, add_special_tokens=False)
        return ids  # as transformers' apply_chat_template(tokenize=True): the template writes any BOS itself

    def _name(self, i: int | None) -> str:
        return "" if i is None else (self.tok.id_to_token(i) or "")


def _check_text(text) -> None:
    if not isinstance(text, str):
        raise InvalidText(f"expected a string, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidText(f"text of {len(text):,} characters is over the {MAX_TEXT_CHARS:,} limit; shorten it")
    check_utf8(text)


def check_messages(messages) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidPrompt("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise InvalidPrompt(f"message {i} must be a dict with string 'role' and 'content', got {m!r:.200}")
        if m["role"] not in ("system", "user", "assistant", "tool"):
            raise InvalidPrompt(f"message {i} has role {m['role']!r}; use system, user, assistant or tool")
        _check_text(m["content"])


_ENV = None


def _render(template: str, **context) -> str:
    """jinja2 in an immutable sandbox (templates come from checkpoint files: they must not reach
    Python objects), with transformers' options and helpers."""
    global _ENV
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:  # pragma: no cover - jinja2 is a dependency

        raise DependencyError("chat templates need jinja2: pip install jinja2") from e
    if _ENV is None:
        def raise_exception(message):
            raise InvalidPrompt(f"the chat template refused these messages: {message}")

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        def strftime_now(fmt):
            from datetime import datetime

            return datetime.now().strftime(fmt)

        _ENV = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        _ENV.filters["tojson"] = tojson
        _ENV.globals["raise_exception"] = raise_exception
        _ENV.globals["strftime_now"] = strftime_now
    try:
        return _ENV.from_string(template).render(**context)
    except InvalidPrompt:
        raise
    except jinja2.TemplateError as e:
        raise CheckpointError(f"the model's chat template failed to render ({type(e).__name__}: {e})") from e


__all__ = ["LMTokenizer", "check_messages"]
