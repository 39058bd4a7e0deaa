"""Captioning metrics as the COCO caption evaluation computes them (pycocoevalcap), with no Java.

    tokenize(text)             PTB-style: lower case, clitics split ("man 's", "is n't"), punctuation
                               and brackets dropped (the Stanford PTBTokenizer + pycocoevalcap's
                               punctuation filter, for plain sentences)
    bleu(refs, hyps)           BLEU-1..4, corpus level, "closest" reference length (Papineni et al.)
    cider_d(refs, hyps)        CIDEr-D (Vedantam et al.): tf-idf n-gram cosine, clipped, with a
                               Gaussian length penalty (sigma 6), x 10, idf from the references

`refs` maps an image id to its reference captions and `hyps` to a one-element list, as pycocoevalcap's
`compute_score(gts, res)`; tokenized inputs give pycocoevalcap's numbers (tests/test_captioning.py).
Two quirks are kept on purpose, because published numbers carry them: CIDEr-D's length penalty counts
bigrams, not words, and BLEU adds 1e-15 / 1e-9 to avoid dividing by zero.
"""

from __future__ import annotations

import math
import re
from collections import Counter

_PUNCT = {'"', "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "{": "-LCB-", "}": "-RCB-", "[": "-LSB-", "]": "-RSB-"}
# contractions and possessives become their own tokens as in the PTB ("it's" -> "it 's")
_CLITIC = re.compile(r"(?i)('s|'re|'ve|'ll|'d|'m|n't)\b")
_SPLIT = re.compile(r"\.\.\.|--|[(){}\[\]]|[?!,;:\"]|\.(?=\s|$)|'(?=\s|$)|(?:(?<=\s)|^)'(?!(?:s|re|ve|ll|d|m)\b)")


def tokenize(text: str) -> str:
    """One caption -> space-separated lower-case tokens without punctuation."""
    s = text.replace("\n", " ").lower()
    s = _CLITIC.sub(r" \1", s)
    s = _SPLIT.sub(lambda m: f" {_BRACKETS.get(m.group(0), m.group(0))} ", s)
    return " ".join(w for w in s.split() if w not in _PUNCT)


def tokenize_all(captions: dict) -> dict:
    return {k: [tokenize(c) for c in v] for k, v in captions.items()}


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _check(refs: dict, hyps: dict) -> list:
    if refs.keys() != hyps.keys():
        raise ValueError("references and hypotheses must cover the same image ids")
    for k in refs:
        if len(hyps[k]) != 1 or not refs[k]:
            raise ValueError(f"image {k!r}: need exactly one hypothesis and at least one reference")
    return list(refs)


def bleu(refs: dict, hyps: dict, n: int = 4) -> tuple[list[float], list[list[float]]]:
    """-> ([BLEU-1..n over the corpus], [[per-image BLEU-k] for k = 1..n])."""
    small, tiny = 1e-9, 1e-15
    guess, correct = [0] * n, [0] * n
    test_total = ref_total = 0
    per_image = [[] for _ in range(n)]
    for key in _check(refs, hyps):
        words = hyps[key][0].split()
        counts = _ngrams(words, n)
        ref_lens, max_counts = [], Counter()
        for r in refs[key]:
            rw = r.split()
            ref_lens.append(len(rw))
            max_counts |= _ngrams(rw, n)  # | keeps the larger count per n-gram
        t = len(words)
        r_len = min((abs(length - t), length) for length in ref_lens)[1]
        g = [max(0, t - k) for k in range(n)]
        c = [0] * n
        for gram, cnt in counts.items():
            c[len(gram) - 1] += min(max_counts.get(gram, 0), cnt)
        test_total, ref_total = test_total + t, ref_total + r_len
        for k in range(n):
            guess[k] += g[k]
            correct[k] += c[k]
        _accumulate(per_image, c, g, t, r_len, tiny, small)
    corpus = [[] for _ in range(n)]
    _accumulate(corpus, correct, guess, test_total, ref_total, tiny, small)
    return [b[0] for b in corpus], per_image


def _accumulate(out: list, correct, guess, test_len, ref_len, tiny, small) -> None:
    score = 1.0
    brevity = 1.0
    ratio = (test_len + tiny) / (ref_len + small)
    if ratio < 1:
        brevity = math.exp(1 - 1 / ratio)
    for k in range(len(out)):
        score *= (correct[k] + tiny) / (guess[k] + small)
        out[k].append(score ** (1.0 / (k + 1)) * brevity)


def cider_d(refs: dict, hyps: dict, n: int = 4, sigma: float = 6.0) -> tuple[float, list[float]]:
    """-> (corpus CIDEr-D, per-image scores)."""
    keys = _check(refs, hyps)
    ref_counts = [[_ngrams(r.split(), n) for r in refs[k]] for k in keys]
    df = Counter(g for rc in ref_counts for g in set().union(*rc))
    log_n = math.log(float(len(keys)))

    def vec(counts: Counter):
        v = [{} for _ in range(n)]
        norm = [0.0] * n
        for gram, tf in counts.items():
            w = tf * (log_n - math.log(max(1.0, df.get(gram, 0.0))))
            v[len(gram) - 1][gram] = w
            norm[len(gram) - 1] += w * w
        bigrams = sum(tf for gram, tf in counts.items() if len(gram) == 2)  # pycocoevalcap's "length"
        return v, [math.sqrt(x) for x in norm], bigrams

    scores = []
    for key, rc in zip(keys, ref_counts):
        hv, hn, hl = vec(_ngrams(hyps[key][0].split(), n))
        total = [0.0] * n
        for r in rc:
            rv, rn, rl = vec(r)
            penalty = math.exp(-((hl - rl) ** 2) / (2 * sigma**2))
            for k in range(n):
                val = sum(min(w, rv[k].get(g, 0.0)) * rv[k].get(g, 0.0) for g, w in hv[k].items())
                if hn[k] != 0 and rn[k] != 0:
                    val /= hn[k] * rn[k]
                total[k] += val * penalty
        scores.append(sum(total) / n / len(rc) * 10.0)
    return sum(scores) / len(scores), scores


def caption_scores(refs: dict, hyps: dict) -> dict:
    """Raw captions in, tokenized here -> {"BLEU-1".."BLEU-4", "CIDEr-D"}."""
    r, h = tokenize_all(refs), tokenize_all(hyps)
    b, _ = bleu(r, h)
    out = {f"BLEU-{k + 1}": b[k] for k in range(4)}
    out["CIDEr-D"] = cider_d(r, h)[0]
    return out


__all__ = ["tokenize", "tokenize_all", "bleu", "cider_d", "caption_scores"]
