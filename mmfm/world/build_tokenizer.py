"""Train the Shapes world's BPE tokenizer on the world's training text and write it to
mmfm/text/assets (vocab.json + merges.txt in CLIP's format). Deterministic: the same world gives the
same files; a test checks the shipped files against a fresh build.

    python -m mmfm.world.build_tokenizer
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import pre_tokenizers, trainers

from mmfm.text.tokenizer import (
    EOT,
    SOT,
    _bytes_to_unicode,
    basic_clean,
    bpe_model,
    clip_pipeline,
    whitespace_clean,
)
from mmfm.world.world import World

ASSETS = Path(__file__).parent.parent / "text" / "assets"
VOCAB_SIZE = 1024


def world_corpus(n: int = 3000, seed: int = 0):
    """Every kind of text the world's training split produces."""
    world = World(seed=seed)
    for i in range(n):
        yield from world.sample("train", i).ann.texts()
        st = world.statement("train", i)
        yield st.text
    for task in ("color", "shape", "count", "caption", "new_names"):
        for i in range(50):
            ep = world.episode("train", i, task, shots=2)
            for _, prompt, answer in ep.demos + [ep.query]:
                yield f"{prompt} {answer}"


def train_clip_bpe(texts, vocab_size: int = VOCAB_SIZE, min_frequency: int = 2):
    """Train a byte-level BPE with CLIP's cleaning and split pattern. Returns (vocab, merges) in CLIP's
    layout: the 256 byte symbols, the same with `</w>`, one token per merge, then SOT and EOT last.
    Every byte has a token, so no text ever maps to the unknown id."""
    tok = clip_pipeline(bpe_model({}, []))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
    )
    tok.train_from_iterator([whitespace_clean(basic_clean(t)).lower() for t in texts], trainer=trainer)
    state = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in state["merges"]]
    base = list(_bytes_to_unicode().values())
    tokens = list(dict.fromkeys(base + [b + "</w>" for b in base] + ["".join(m) for m in merges]))
    return {t: i for i, t in enumerate(tokens + [SOT, EOT])}, merges


def build(n: int = 3000, vocab_size: int = VOCAB_SIZE):
    return train_clip_bpe(world_corpus(n), vocab_size)


def main() -> None:
    vocab, merges = build()
    ASSETS.mkdir(exist_ok=True)
    (ASSETS / "world_vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0), encoding="utf-8")
    (ASSETS / "world_merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {ASSETS}")


if __name__ == "__main__":
    main()
