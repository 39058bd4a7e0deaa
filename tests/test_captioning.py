"""Captioning metrics: mmfm's BLEU and CIDEr-D give pycocoevalcap's numbers on the same tokenized
captions (pycocoevalcap's scorers are pure Python; only its tokenizer needs Java), and the tokenizer
splits like the PTB tokenizer on plain sentences."""

from __future__ import annotations

import random

import pytest

from mmfm.eval.captioning import bleu, caption_scores, cider_d, tokenize
from mmfm.world import World

pytest.importorskip("pycocoevalcap")


def _corpus(n=60, seed=0):
    world = World(seed=seed, size=32)
    rng = random.Random(seed)
    refs, hyps = {}, {}
    for i in range(n):
        _, caps = world.captioned("test", i)
        texts = [tokenize(c.text) for c in caps]
        refs[i] = texts
        words = rng.choice(texts).split()
        edit = rng.randrange(4)  # exact copy, drop a word, swap in a word, or a short generic hypothesis
        if edit == 1 and len(words) > 1:
            del words[rng.randrange(len(words))]
        elif edit == 2:
            words[rng.randrange(len(words))] = rng.choice(["red", "blue", "star", "of", "two"])
        elif edit == 3:
            words = rng.choice([["a", "shape"], ["shapes"], ["a", "red", "circle", "and", "a", "blue", "square"]])
        hyps[i] = [" ".join(words)]
    return refs, hyps


@pytest.mark.parametrize("seed", [0, 1])
def test_bleu_equals_pycocoevalcap(seed):
    from pycocoevalcap.bleu.bleu import Bleu

    refs, hyps = _corpus(seed=seed)
    ref_corpus, ref_images = Bleu(4).compute_score(refs, hyps, verbose=0)
    ours, per_image = bleu(refs, hyps)
    assert ours == pytest.approx(ref_corpus, abs=1e-12)
    for k in range(4):
        assert per_image[k] == pytest.approx(ref_images[k], abs=1e-12)
    assert 0 < ours[3] < 1


@pytest.mark.parametrize("seed", [0, 1])
def test_cider_d_equals_pycocoevalcap(seed):
    from pycocoevalcap.cider.cider import Cider

    refs, hyps = _corpus(seed=seed)
    ref_score, ref_images = Cider().compute_score(refs, hyps)
    score, per_image = cider_d(refs, hyps)
    assert score == pytest.approx(float(ref_score), abs=1e-9)
    assert per_image == pytest.approx([float(s) for s in ref_images], abs=1e-9)
    assert score > 0.5  # many hypotheses copy a reference: the score is far from zero


def test_perfect_hypotheses_score_higher_than_wrong_ones():
    refs, _ = _corpus(seed=3)
    good = {k: [v[0]] for k, v in refs.items()}
    bad = {k: ["an empty background"] for k in refs}
    assert cider_d(refs, good)[0] > 10 * max(cider_d(refs, bad)[0], 1e-3)
    assert bleu(refs, good)[0][3] > 0.9 and bleu(refs, bad)[0][3] < 0.01


def test_tokenizer_splits_like_ptb():
    assert tokenize("A man's dog, running.") == "a man 's dog running"
    assert tokenize("Two RED circles; one (blue) star!") == "two red circles one blue star"  # brackets dropped
    assert tokenize("It isn't 3.5 m... \"wide\"") == "it is n't 3.5 m wide"
    assert tokenize("") == ""


def test_caption_scores_tokenizes_raw_text():
    s = caption_scores({0: ["A red circle.", "a red circle to the left of a star"]}, {0: ["a RED circle!"]})
    assert s["BLEU-1"] == pytest.approx(1.0) and "CIDEr-D" in s


def test_mismatched_ids_are_rejected():
    with pytest.raises(ValueError):
        bleu({0: ["a"]}, {1: ["a"]})
