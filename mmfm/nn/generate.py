"""Autoregressive generation shared by every generative model (the language model, LLaVA, CoCa,
Flamingo, Molmo): greedy, temperature / top-k / top-p sampling with a seed, beam search, end
tokens, stop strings, max new tokens, batched prompts with left padding, and streaming.

The model protocol is small: `model(input_ids=..., inputs_embeds=..., attention_mask=...,
position_ids=..., caches=..., logits_to_keep=1, **forward_kwargs)` returns an object with
`.logits (B, T', vocab)`, and `model.new_caches(batch, max_len)` preallocates the KV cache.
The prompt is prefilled in one pass; each new token is then one forward of one position from the
cache. Nothing per step grows with the sequence: the cache and the attention mask are preallocated
and sliced, positions are a counter, stop strings are matched on a short window of new text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from mmfm.errors import ConfigError
from mmfm.nn.packed import PackedLinears


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    seed: int | None = None
    num_beams: int = 1
    length_penalty: float = 1.0  # beam scores are sum(logprob) / length ** length_penalty
    eos_token_ids: Sequence[int] = ()
    stop_strings: Sequence[str] = ()
    min_new_tokens: int = 0
    pad_token_id: int = 0
    prepack: bool | None = None  # decode steps on MKL / oneDNN-packed weights (mmfm.nn.packed); None = when it pays

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:  # NaN too: it would silently mean greedy
            raise ConfigError(f"temperature must be a number >= 0, got {self.temperature}")
        if self.temperature == 0:  # OpenAI's convention: temperature 0 means greedy
            self.do_sample, self.temperature = False, 1.0
        if not 0 < self.top_p <= 1:  # NaN fails this too
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.num_beams < 1:
            raise ConfigError("top_k must be >= 0 and num_beams >= 1")
        if self.num_beams > 1 and self.do_sample:
            raise ConfigError("beam search is deterministic here: use num_beams > 1 or do_sample, not both")
        self.eos_token_ids = tuple(int(e) for e in self.eos_token_ids)
        self.stop_strings = tuple(s for s in self.stop_strings if s)


@dataclass
class GenerationOutput:
    tokens: list[list[int]]  # new tokens per row, end token included when one ended the row
    finish_reasons: list[str]  # "stop" (end token or stop string) or "length"
    scores: list[float] | None = None  # beam search: the length-normalised log-probability
    stop_string_hit: list[str | None] = field(default_factory=list)


def sampling_config(max_new_tokens: int, *, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                    seed: int | None = None, num_beams: int = 1, length_penalty: float = 1.0, stop=None,
                    do_sample: bool | None = None, eos_token_ids: Sequence[int] = (),
                    pad_token_id: int = 0) -> GenerationConfig:
    """The sampling arguments of every model's `generate` (OpenAI's meanings: temperature 0 is greedy,
    `stop` is a string or a list of them) as a GenerationConfig. do_sample, when given, overrides what
    the temperature implies (CoCa samples with top-p at temperature 1)."""
    stop = [stop] if isinstance(stop, str) else list(stop or [])
    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=temperature > 0 if do_sample is None else do_sample,
        temperature=temperature or 1.0, top_k=top_k, top_p=top_p, seed=seed, num_beams=num_beams,
        length_penalty=length_penalty, eos_token_ids=eos_token_ids, stop_strings=stop, pad_token_id=pad_token_id,
    )


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """`text` up to the earliest stop string it holds (the stop string itself is never returned)."""
    at = min((text.index(s) for s in stop_strings if s in text), default=len(text))
    return text[:at]


def texts(out: GenerationOutput, decode: Callable[[list[int]], str], cfg: GenerationConfig,
          strip: bool = False) -> list[str]:
    """Each row's new tokens as text, cut before its stop string."""
    rows = [cut_at_stop(decode(toks), cfg.stop_strings) for toks in out.tokens]
    return [r.strip() for r in rows] if strip else rows


# ------------------------------------------------------------------------------------------ sampling
def process_logits(logits: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor:
    """Temperature, then top-k, then top-p (transformers' order), on fp32 logits (B, V)."""
    if cfg.temperature != 1.0:
        scaled = logits / cfg.temperature
        if cfg.temperature < 1.0 and not torch.isfinite(scaled.max()):  # a tiny temperature overflowed
            # (or is 0 in fp32; +inf or NaN is the max): softmax's limit as T -> 0, the mass on the top tokens
            top = logits.amax(-1, keepdim=True)
            scaled = torch.zeros_like(logits).masked_fill(logits < top, float("-inf"))
        logits = scaled
    if cfg.top_k:
        k = min(cfg.top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=False, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum <= 1 - cfg.top_p
        remove[:, -1] = False  # always keep the most likely token
        logits = logits.masked_fill(remove.scatter(1, idx, remove), float("-inf"))
    return logits


def select_next(logits: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    if not cfg.do_sample:
        return logits.argmax(-1)
    probs = process_logits(logits, cfg).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


# ------------------------------------------------------------------------------------------ text
class IncrementalDetokenizer:
    """Text of a growing token list, one piece per new token, decoding only a short window (the
    trick text-generation servers use): a piece is released once it no longer ends in a partial
    UTF-8 character."""

    def __init__(self, decode: Callable[[list[int]], str]):
        self.decode = decode
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self.decode(self.ids[self.prefix : self.read])
        after = self.decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""


class StopStringMatcher:
    """Watches each row's new text for stop strings, keeping only the last few characters."""

    def __init__(self, stops: Sequence[str], batch: int, decode: Callable[[list[int]], str]):
        self.stops = tuple(stops)
        self.keep = max(len(s) for s in self.stops) - 1
        self.detok = [IncrementalDetokenizer(decode) for _ in range(batch)]
        self.tail = [""] * batch

    def push(self, row: int, token_id: int) -> str | None:
        piece = self.detok[row].push(token_id)
        if not piece:
            return None
        window = self.tail[row] + piece
        hit = next((s for s in self.stops if s in window), None)
        self.tail[row] = window[-self.keep :] if self.keep else ""
        return hit


# ------------------------------------------------------------------------------------------ loops
def _prefill(model, input_ids, inputs_embeds, attention_mask, max_len, forward_kwargs):
    """Run the prompt once; returns (last logits fp32, caches, full mask or None, next positions)."""
    src = input_ids if input_ids is not None else inputs_embeds
    b, t = src.shape[:2]
    device = src.device
    caches = model.new_caches(b, max_len)
    full_mask = None
    if attention_mask is not None and not bool(attention_mask.all()):
        full_mask = torch.ones(b, max_len, dtype=torch.long, device=device)
        full_mask[:, :t] = attention_mask
        positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        next_pos = attention_mask.long().sum(-1)
    else:
        positions = torch.arange(t, device=device)[None].expand(b, t)
        next_pos = torch.full((b,), t, dtype=torch.long, device=device)
    out = model(
        input_ids=input_ids, inputs_embeds=inputs_embeds,
        attention_mask=full_mask[:, :t] if full_mask is not None else None,
        position_ids=positions, caches=caches, logits_to_keep=1, **forward_kwargs,
    )
    return out.logits[:, -1].float(), caches, full_mask, next_pos


def _step(model, tokens, caches, full_mask, pos, forward_kwargs, packs: PackedLinears | None = None):
    cur = caches[0].pos + 1
    with packs.active() if packs is not None else contextlib.nullcontext():
        out = model(
            input_ids=tokens[:, None], attention_mask=full_mask[:, :cur] if full_mask is not None else None,
            position_ids=pos[:, None], caches=caches, logits_to_keep=1, **forward_kwargs,
        )
    return out.logits[:, -1].float()


def _check_inputs(input_ids, inputs_embeds, cfg):
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    src = input_ids if input_ids is not None else inputs_embeds
    if src.shape[1] == 0:
        raise ValueError("the prompt is empty: generation needs at least one token")
    return src.shape[0], src.shape[1]


@torch.inference_mode()
def stream_tokens(
    model,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    inputs_embeds: torch.Tensor | None = None,
    config: GenerationConfig | None = None,
    decode: Callable[[list[int]], str] | None = None,
    forward_kwargs: dict | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str | None]]]:
    """Greedy or sampled decoding, one step at a time. Yields (tokens (B,), active (B,) bool: rows
    that produced a real token this step, stop-string hits per row). `decode` (ids -> text) is needed
    only for stop strings."""
    cfg = config or GenerationConfig()
    if cfg.num_beams > 1:
        raise ConfigError("stream_tokens does not do beam search; call generate()")
    forward_kwargs = forward_kwargs or {}
    b, t = _check_inputs(input_ids, inputs_embeds, cfg)
    generator = None
    if cfg.do_sample and cfg.seed is not None:
        generator = torch.Generator(device="cpu").manual_seed(int(cfg.seed))
    stops = None
    if cfg.stop_strings:
        if decode is None:
            raise ConfigError("stop strings need a tokenizer (decode) to read the generated text")
        stops = StopStringMatcher(cfg.stop_strings, b, decode)
    eos = torch.tensor(cfg.eos_token_ids, dtype=torch.long) if cfg.eos_token_ids else None

    logits, caches, full_mask, pos = _prefill(model, input_ids, inputs_embeds, attention_mask,
                                              t + cfg.max_new_tokens, forward_kwargs)
    packs = PackedLinears.maybe(model, b, cfg.max_new_tokens - 1, cfg.prepack)
    finished = torch.zeros(b, dtype=torch.bool)
    for step in range(cfg.max_new_tokens):
        if eos is not None and step < cfg.min_new_tokens:
            logits[:, eos] = float("-inf")
        nxt = select_next(logits, cfg, generator).cpu()
        active = ~finished
        nxt = torch.where(active, nxt, torch.full_like(nxt, cfg.pad_token_id))
        hits: list[str | None] = [None] * b
        if eos is not None:
            finished |= active & torch.isin(nxt, eos)
        if stops is not None:
            for r in active.nonzero().flatten().tolist():
                hits[r] = stops.push(r, int(nxt[r]))
                if hits[r] is not None:
                    finished[r] = True
        yield nxt, active, hits
        if bool(finished.all()) or step == cfg.max_new_tokens - 1:
            return
        logits = _step(model, nxt.to(pos.device), caches, full_mask, pos, forward_kwargs, packs)
        pos = pos + 1


def generate(
    model,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    inputs_embeds: torch.Tensor | None = None,
    config: GenerationConfig | None = None,
    decode: Callable[[list[int]], str] | None = None,
    forward_kwargs: dict | None = None,
    on_tokens: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> GenerationOutput:
    """Generate for a batch of (left-padded) prompts. `on_tokens(tokens, active)` is called each step
    (streaming). Returns the new tokens of each row and why it stopped."""
    cfg = config or GenerationConfig()
    if cfg.num_beams > 1:
        return beam_search(model, input_ids, attention_mask, inputs_embeds=inputs_embeds, config=cfg,
                           forward_kwargs=forward_kwargs)
    b = (input_ids if input_ids is not None else inputs_embeds).shape[0]
    steps, actives = [], []
    hit_strings: list[str | None] = [None] * b
    for nxt, active, hits in stream_tokens(model, input_ids, attention_mask, inputs_embeds=inputs_embeds,
                                           config=cfg, decode=decode, forward_kwargs=forward_kwargs):
        if on_tokens is not None:
            on_tokens(nxt, active)
        steps.append(nxt)
        actives.append(active)
        if cfg.stop_strings:
            hit_strings = [h if h is not None else old for h, old in zip(hits, hit_strings)]
    # rows are assembled once at the end, not token by token
    tokens, kept = torch.stack(steps, 1), torch.stack(actives, 1)
    rows = [t[k].tolist() for t, k in zip(tokens, kept)]
    reasons = ["stop" if (r and r[-1] in cfg.eos_token_ids) or h is not None else "length"
               for r, h in zip(rows, hit_strings)]
    return GenerationOutput(tokens=rows, finish_reasons=reasons, stop_string_hit=hit_strings)


@torch.inference_mode()
def beam_search(
    model,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    inputs_embeds: torch.Tensor | None = None,
    config: GenerationConfig,
    forward_kwargs: dict | None = None,
) -> GenerationOutput:
    """Beam search as transformers does it (early_stopping=False): per step the 2 * beams best
    continuations; one that ends with an end token becomes a finished hypothesis scored
    sum(logprob) / new_length ** length_penalty; a row is done when its `beams` finished hypotheses
    cannot be beaten by the best running beam. One function on purpose (~90 lines): the step loop reads
    and rewrites the beams, their scores, caches, mask and hypotheses together, and reads top to bottom
    as transformers' algorithm does; split, each piece would take and return all of them."""
    cfg = config
    nb = cfg.num_beams
    forward_kwargs = forward_kwargs or {}
    b, t = _check_inputs(input_ids, inputs_embeds, cfg)
    rep = lambda x: None if x is None else x.repeat_interleave(nb, 0)  # noqa: E731
    # per-row conditioning (image tokens...) follows its row into every beam; beams of a row share it
    forward_kwargs = {k: rep(v) if torch.is_tensor(v) and v.shape[0] == b else v for k, v in forward_kwargs.items()}
    logits, caches, full_mask, pos = _prefill(model, rep(input_ids), rep(inputs_embeds), rep(attention_mask),
                                              t + cfg.max_new_tokens, forward_kwargs)
    packs = PackedLinears.maybe(model, b * nb, cfg.max_new_tokens - 1, cfg.prepack)
    scores = torch.zeros(b, nb)
    scores[:, 1:] = float("-inf")  # all beams start identical: only the first may expand
    history = torch.zeros(b * nb, cfg.max_new_tokens, dtype=torch.long)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    done = [False] * b
    eos = set(cfg.eos_token_ids)
    vocab = logits.shape[-1]
    for step in range(cfg.max_new_tokens):
        logp = torch.log_softmax(logits, -1)
        if eos and step < cfg.min_new_tokens:
            logp[:, list(eos)] = float("-inf")
        cand = (logp.view(b, nb, vocab) + scores[:, :, None]).view(b, nb * vocab)
        top, idx = cand.topk(2 * nb, dim=-1)
        beam_of, tok_of = idx // vocab, idx % vocab
        new_scores = torch.full((b, nb), float("-inf"))
        new_src = torch.zeros(b, nb, dtype=torch.long)
        new_tok = torch.full((b, nb), cfg.pad_token_id, dtype=torch.long)
        length = step + 1
        for r in range(b):
            if done[r]:
                new_src[r] = r * nb
                continue
            k = 0
            for j in range(2 * nb):
                s, src, tok = float(top[r, j]), int(beam_of[r, j]), int(tok_of[r, j])
                if s == float("-inf"):
                    break
                if tok in eos:
                    if j >= nb:  # only the top `beams` candidates may finish (transformers' rule)
                        continue
                    seq = history[r * nb + src, :step].tolist() + [tok]
                    _add_hypothesis(finished[r], nb, s / length**cfg.length_penalty, seq)
                else:
                    new_scores[r, k], new_src[r, k], new_tok[r, k] = s, r * nb + src, tok
                    k += 1
                    if k == nb:
                        break
            best_running = float(new_scores[r].max()) / length**cfg.length_penalty
            if len(finished[r]) == nb and min(h[0] for h in finished[r]) >= best_running:
                done[r] = True
        if all(done):
            break
        src = new_src.flatten()
        history = history.index_select(0, src)
        history[:, step] = new_tok.flatten()
        scores = new_scores
        if step == cfg.max_new_tokens - 1:
            break
        for c in caches:
            c.reorder(src.to(c.k.device))
        if full_mask is not None:
            full_mask = full_mask.index_select(0, src.to(full_mask.device))
        pos = pos.index_select(0, src.to(pos.device))
        logits = _step(model, new_tok.flatten().to(pos.device), caches, full_mask, pos, forward_kwargs, packs)
        pos = pos + 1
    n = step + 1
    for r in range(b):
        if done[r]:
            continue
        for j in range(nb):
            if scores[r, j] > float("-inf"):
                _add_hypothesis(finished[r], nb, float(scores[r, j]) / n**cfg.length_penalty,
                                history[r * nb + j, :n].tolist())
    best = [max(f, key=lambda h: h[0]) for f in finished]
    return GenerationOutput(
        tokens=[h[1] for h in best],
        finish_reasons=["stop" if h[1] and h[1][-1] in eos else "length" for h in best],
        scores=[h[0] for h in best],
        stop_string_hit=[None] * b,
    )


def _add_hypothesis(hyps: list, beams: int, score: float, seq: list[int]) -> None:
    if len(hyps) < beams:
        hyps.append((score, seq))
    else:
        worst = min(range(len(hyps)), key=lambda i: hyps[i][0])
        if score > hyps[worst][0]:
            hyps[worst] = (score, seq)


__all__ = [
    "GenerationConfig", "GenerationOutput", "generate", "stream_tokens", "beam_search",
    "process_logits", "select_next", "IncrementalDetokenizer", "StopStringMatcher",
]
