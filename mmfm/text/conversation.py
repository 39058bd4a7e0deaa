"""Conversations with images -> token ids and training labels, from token spans, never string splits.

Templates:
- "plain" (LLaVA stage 1): the image, then the caption and a newline; only the caption and the
  newline are learned. The user's words are dropped, as LLaVA's `plain` conversation does.
- "chat" (stage 2): the language model's own chat template. For every assistant turn k the template
  is rendered twice, messages[:k] with the generation prompt and messages[:k+1] without it; the text
  between the two renderings is that turn's answer (with the template's end-of-turn tokens), every
  other character is prompt. Each piece is tokenized on its own and the pieces are concatenated, so
  the label of a token is known from the piece it came from, whatever the template looks like.

The image placeholder (`<image>` by default) is never given to the BPE: text is split at it and the
placeholder becomes `image_token_id`, repeated `tokens_per_image` times (the LM sees one position per
image feature, as transformers' processors expand it).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from mmfm.errors import InvalidPrompt

IGNORE = -100
TEMPLATES = ("plain", "chat")
MARK_END = "\ue001"


def new_marker() -> str:
    """Where a chat template puts a message's content, marked so that the content can be encoded as plain
    text apart from the template's control tokens: private-use characters around a random nonce, which no
    user text can forge."""
    return f"\ue000{secrets.token_hex(8)}:"


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE on prompt and image positions
    n_images: int


class ConversationEncoder:
    def __init__(self, tokenizer, image_token: str, image_token_id: int, tokens_per_image: int,
                 system_prompt: str | None = None):
        self.tok = tokenizer
        self.image_token, self.image_token_id = image_token, image_token_id
        self.tokens_per_image = tokens_per_image
        self.system_prompt = system_prompt

    # ---------------------------------------------------------------------------- pieces
    def encode_text(self, text: str, plain: bool = False) -> tuple[list[int], int]:
        """Text with placeholders -> (ids with each placeholder expanded, number of placeholders).
        plain: a message's words, where a special-token string stays text (`LMTokenizer.encode_plain`)."""
        parts = text.split(self.image_token)
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i:
                ids += [self.image_token_id] * self.tokens_per_image
            if part:
                ids += self.tok.encode_plain(part) if plain else self.tok.encode(part, add_special_tokens=False)
        return ids, len(parts) - 1

    def encode_rendered(self, text: str, marker: str, messages: list[dict]) -> tuple[list[int], int]:
        """A piece of a chat rendered with `marker`: the template's text with its control tokens, the
        messages' contents as plain text."""
        ids: list[int] = []
        n = 0
        for piece, content in self.tok.split_marked(text, marker, messages):
            piece_ids, k = self.encode_text(piece, plain=content)
            ids += piece_ids
            n += k
        return ids, n

    def _with_system(self, messages: list[dict]) -> list[dict]:
        if self.system_prompt is not None and (not messages or messages[0]["role"] != "system"):
            return [{"role": "system", "content": self.system_prompt}] + list(messages)
        return list(messages)

    # ---------------------------------------------------------------------------- inference
    def prompt(self, messages: list[dict] | str, template: str = "chat") -> tuple[list[int], int]:
        """The ids that ask for the next assistant turn, and how many images they hold."""
        _check_template(template)
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if template == "plain":
            n = sum(m["content"].count(self.image_token) for m in messages)
            return [self.image_token_id] * (self.tokens_per_image * n), n
        msgs = self._with_system(messages)
        marker = new_marker()
        return self.encode_rendered(self.tok.apply_chat_template(msgs, True, marker=marker), marker, msgs)

    # ---------------------------------------------------------------------------- training
    def example(self, messages: list[dict], template: str = "chat", max_len: int | None = None) -> Example:
        """Ids and labels for a conversation ending with an assistant turn. A conversation with no
        supervised token (no assistant answer, or every answer cut by `max_len`) raises InvalidPrompt:
        training on it would add a zero loss and say nothing."""
        _check_template(template)
        if not messages or not isinstance(messages, list):
            raise InvalidPrompt("a training conversation is a non-empty list of {role, content} messages")
        pieces: list[tuple[str, bool]] = []  # (text, supervised)
        marker, msgs = None, messages
        if template == "plain":
            n = sum(m["content"].count(self.image_token) for m in messages if m["role"] == "user")
            answers = [m["content"] for m in messages if m["role"] == "assistant"]
            pieces = [(self.image_token * max(n, 1), False)] + [(a + "\n", True) for a in answers]
        else:
            msgs = self._with_system(messages)
            marker = new_marker()  # contents are rendered as markers and encoded as plain text
            done = 0
            for k, m in enumerate(msgs):
                if m["role"] != "assistant":
                    continue
                before = self.tok.apply_chat_template(msgs[:k], add_generation_prompt=True, marker=marker)
                after = self.tok.apply_chat_template(msgs[: k + 1], add_generation_prompt=False, marker=marker)
                if not (after.startswith(before) and before.startswith(_joined(pieces))):
                    raise InvalidPrompt("the chat template does not render conversations as growing prefixes; "
                                        "labels cannot be placed by spans with it")
                pieces += [(before[done:], False), (after[len(before):], True)]
                done = len(after)
        ids: list[int] = []
        labels: list[int] = []
        n_images = 0
        for text, supervised in pieces:
            if not text:
                continue
            if marker is None:  # the plain template: an image, then the answers (plain text)
                piece, n = self.encode_text(text, plain=supervised)
            else:
                piece, n = self.encode_rendered(text, marker, msgs)
            if supervised and n:
                raise InvalidPrompt("an assistant answer contains an image placeholder; images go in user turns")
            n_images += n
            ids += piece
            labels += piece if supervised else [IGNORE] * len(piece)
        if max_len is not None and len(ids) > max_len:
            if any(t == self.image_token_id for t in ids[max_len:]) and any(
                t == self.image_token_id for t in ids[:max_len]
            ):
                raise InvalidPrompt(f"max_len {max_len} cuts through an image's tokens; raise it")
            ids, labels = ids[:max_len], labels[:max_len]
        if all(lab == IGNORE for lab in labels):
            raise InvalidPrompt("this conversation has no token to learn from (no assistant answer, or the "
                                "answers were cut by max_len)")
        return Example(ids, labels, n_images)


def _joined(pieces) -> str:
    return "".join(t for t, _ in pieces)


def _check_template(template: str) -> None:
    if template not in TEMPLATES:
        raise InvalidPrompt(f"unknown conversation template {template!r}; use {' or '.join(TEMPLATES)}")


__all__ = ["ConversationEncoder", "Example", "IGNORE", "TEMPLATES"]
