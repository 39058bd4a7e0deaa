"""Hard-negative captions by rule, for any English caption (NegCLIP / ARO / SugarCREPE style).

A light tagger, not a parser. What it covers:
- determiners / numbers (a, an, the, two, some, ...) open a noun phrase;
- adjectives: a lexicon of colors, sizes, materials, shapes-as-adjectives and common descriptive words,
  plus words ending in -y, -ful, -ous, -ish, -ive, -al, -ed before a noun;
- nouns: the last word of a noun phrase (a determiner, then adjectives, then the noun), or a known noun;
- relations: a lexicon of spatial / action phrases ("to the left of", "on top of", "in", "on",
  "under", "next to", "holding", "riding", ...).
Words it cannot tag are left alone; a perturbation that finds nothing to change returns None.

Perturbations (each returns a caption different from the input, or None):
  swap_attributes    the adjectives of the first two noun phrases trade places
  swap_relation      the two noun phrases around a relation trade places
  replace            one noun or adjective replaced by another of its kind (a lexicon, or `vocab`)
  shuffle_nouns_adjectives  nouns permuted among themselves, adjectives among themselves (ARO)
  shuffle_allbut_nouns_adjectives  every other word permuted, nouns and adjectives kept in place (ARO)
  shuffle_within_trigrams  words shuffled within each consecutive trigram (ARO)
  shuffle_trigrams   the order of the consecutive trigrams shuffled (ARO)
"""

from __future__ import annotations

import re

import numpy as np

from mmfm.errors import ConfigError

DETERMINERS = {"a", "an", "the", "one", "two", "three", "four", "five", "six", "some", "many", "several", "this",
               "that", "these", "those", "his", "her", "its", "their", "my", "your", "our", "no", "each", "every"}
COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink", "brown", "gray", "grey",
          "silver", "gold", "cyan"]
SIZES = ["small", "large", "big", "little", "tiny", "huge", "tall", "short", "long"]
OTHER_ADJ = [
    "wooden",
    "metal",
    "plastic",
    "glass",
    "old",
    "young",
    "new",
    "empty",
    "full",
    "open",
    "closed",
    "wet",
    "dry",
    "hot",
    "cold",
    "round",
    "square",
    "striped",
    "dark",
    "bright",
    "happy",
    "sad",
    "clean",
    "dirty",
    "soft",
    "hard",
    "thick",
    "thin",
    "fresh",
    "ripe",
]
ADJECTIVES = set(COLORS) | set(SIZES) | set(OTHER_ADJ)
NOUNS = [
    "man",
    "woman",
    "person",
    "dog",
    "cat",
    "horse",
    "car",
    "bus",
    "train",
    "table",
    "chair",
    "cup",
    "mug",
    "grass",
    "tree",
    "shirt",
    "plate",
    "bowl",
    "bird",
    "boat",
    "ball",
    "bike",
    "bicycle",
    "street",
    "building",
    "window",
    "door",
    "sign",
    "circle",
    "square",
    "triangle",
    "star",
    "hexagon",
    "cross",
    "heart",
    "shape",
    "object",
    "kitchen",
    "room",
    "bed",
    "phone",
    "book",
    "water",
    "sky",
    "field",
    "pizza",
    "cake",
    "child",
    "girl",
    "boy",
]
NOUN_SET = set(NOUNS) | {n + "s" for n in NOUNS} | {"men", "women", "people", "children", "crosses", "buses"}
RELATIONS = ["to the left of", "to the right of", "on top of", "in front of", "next to", "close to", "far from",
             "behind", "above", "below", "under", "over", "beside", "inside", "near", "on", "in", "with", "holding",
             "riding", "wearing", "eating", "carrying", "watching", "sitting on", "standing on", "lying on"]
STOP = {"is", "are", "was", "were", "be", "been", "being", "has", "have", "had", "and", "or", "but", "of", "at", "by",
        "for", "to", "from", "while", "that", "which", "who", "very", "there", "it", "they", "he", "she"}
_COMMON = DETERMINERS | ADJECTIVES | NOUN_SET
_ADJ_SUFFIX = ("y", "ful", "ous", "ish", "ive", "al", "ed")
_WORD = re.compile(r"[A-Za-z']+|[^A-Za-z'\s]")


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text)


def detokenize(words: list[str]) -> str:
    out = ""
    for w in words:
        out += w if (not out or not w[0].isalnum() and w not in ("'",)) else " " + w
    return out


def tag(words: list[str]) -> list[str]:
    """One tag per word: DET, ADJ, NOUN, REL (first word of a relation phrase; the rest REL_), O."""
    low = [w.lower() for w in words]
    tags = ["O"] * len(words)
    i = 0
    while i < len(words):  # relation phrases, longest first
        for rel in sorted(RELATIONS, key=lambda r: -len(r.split())):
            parts = rel.split()
            if low[i : i + len(parts)] == parts:
                tags[i] = "REL"
                for j in range(i + 1, i + len(parts)):
                    tags[j] = "REL_"
                i += len(parts) - 1
                break
        i += 1
    for i, w in enumerate(low):
        if tags[i] != "O":
            continue
        if w in DETERMINERS:
            tags[i] = "DET"
        elif w in ADJECTIVES:
            tags[i] = "ADJ"
        elif w in NOUN_SET:
            tags[i] = "NOUN"
    # inside a noun phrase (after a determiner), unknown words before the last word are adjectives
    # when they look like one, and the phrase's last word is its noun
    i = 0
    while i < len(words):
        if tags[i] == "DET":
            j = i + 1
            while j < len(words) and tags[j] in ("O", "ADJ", "NOUN") and words[j][0].isalpha() and low[j] not in STOP:
                j += 1
            span = list(range(i + 1, j))
            if span:
                last = span[-1]
                if tags[last] == "O" or low[last] in NOUN_SET:  # "a red square": the last word is the noun
                    tags[last] = "NOUN"
                for k in span[:-1]:
                    if tags[k] == "O" and low[k].endswith(_ADJ_SUFFIX):
                        tags[k] = "ADJ"
            i = j
        else:
            i += 1
    return tags


def noun_phrases(words: list[str], tags: list[str]) -> list[tuple[int, int]]:
    """(start, end) spans: optional determiner, adjectives, a noun."""
    spans, i = [], 0
    while i < len(words):
        if tags[i] in ("DET", "ADJ", "NOUN"):
            j = i
            while j < len(words) and tags[j] in ("DET", "ADJ"):
                j += 1
            if j < len(words) and tags[j] == "NOUN":
                spans.append((i, j + 1))
                i = j + 1
                continue
        i += 1
    return spans


def _fix_article(words: list[str]) -> list[str]:
    out = list(words)
    for i in range(len(out) - 1):
        if out[i].lower() in ("a", "an"):
            an = out[i + 1][0].lower() in "aeiou"
            art = "an" if an else "a"
            out[i] = art.capitalize() if out[i][0].isupper() else art
    return out


def _done(words, original, fix_articles: bool = True) -> str | None:
    words = list(words)
    if words and original[:1].isupper():  # sentence case follows the sentence, not the word
        words = [x.lower() if x[:1].isupper() and x.lower() in _COMMON else x for x in words]
        words[0] = words[0][:1].upper() + words[0][1:]
    text = detokenize(_fix_article(words) if fix_articles else words)
    return None if text == original else text


def swap_attributes(caption: str) -> str | None:
    w = tokenize(caption)
    t = tag(w)
    nps = [(s, e) for s, e in noun_phrases(w, t) if any(t[k] == "ADJ" for k in range(s, e))]
    if len(nps) < 2:
        return None
    (s1, e1), (s2, e2) = nps[:2]
    a1 = [k for k in range(s1, e1) if t[k] == "ADJ"]
    a2 = [k for k in range(s2, e2) if t[k] == "ADJ"]
    out = list(w)
    words1, words2 = [w[k] for k in a1], [w[k] for k in a2]
    new = out[:a1[0]] + words2 + out[a1[-1] + 1 : a2[0]] + words1 + out[a2[-1] + 1 :]
    return _done(new, caption)


def swap_relation(caption: str) -> str | None:
    w = tokenize(caption)
    t = tag(w)
    nps = noun_phrases(w, t)
    for k, tg in enumerate(t):
        if tg != "REL":
            continue
        before = [sp for sp in nps if sp[1] <= k]
        after = [sp for sp in nps if sp[0] > k]
        if before and after:
            (s1, e1), (s2, e2) = before[-1], after[0]
            return _done(w[:s1] + w[s2:e2] + w[e1:s2] + w[s1:e1] + w[e2:], caption)
    return None


def replace(caption: str, rng: np.random.Generator, vocab: dict | None = None) -> str | None:
    """Replace one adjective (by one of its group: colors by colors, sizes by sizes) or one noun."""
    w = tokenize(caption)
    t = tag(w)
    groups = vocab or {"color": COLORS, "size": SIZES, "noun": NOUNS}
    cands = []
    for k, tg in enumerate(t):
        low = w[k].lower()
        for words in groups.values():
            if low in words and (tg in ("ADJ", "NOUN")):
                cands.append((k, [x for x in words if x != low]))
    if not cands:
        return None
    k, options = cands[rng.integers(len(cands))]
    new = list(w)
    new[k] = options[rng.integers(len(options))]
    return _done(new, caption)


def _retry(fn, caption: str, rng: np.random.Generator, tries: int = 8) -> str | None:
    """A shuffle may give back the input; try a few permutations before giving up."""
    for _ in range(tries):
        out = fn(caption, rng)
        if out is not None:
            return out
    return None


def shuffle_nouns_adjectives(caption: str, rng: np.random.Generator) -> str | None:
    return _retry(_shuffle_na, caption, rng)


def shuffle_within_trigrams(caption: str, rng: np.random.Generator) -> str | None:
    return _retry(_shuffle_tri, caption, rng)


def shuffle_trigrams(caption: str, rng: np.random.Generator) -> str | None:
    def f(c, r):
        w = tokenize(c)
        tris = [w[i : i + 3] for i in range(0, len(w), 3)]
        return _done([x for k in r.permutation(len(tris)) for x in tris[k]], c, fix_articles=False)

    return _retry(f, caption, rng)


def shuffle_allbut_nouns_adjectives(caption: str, rng: np.random.Generator) -> str | None:
    def f(c, r):
        w = tokenize(c)
        t = tag(w)
        idx = [k for k, tg in enumerate(t) if tg not in ("NOUN", "ADJ")]
        new = list(w)
        for k, p in zip(idx, r.permutation(len(idx))):
            new[k] = w[idx[p]]
        return _done(new, c, fix_articles=False)

    return _retry(f, caption, rng)


def _shuffle_na(caption: str, rng: np.random.Generator) -> str | None:
    w = tokenize(caption)
    t = tag(w)
    new = list(w)
    for kind in ("NOUN", "ADJ"):
        idx = [k for k, tg in enumerate(t) if tg == kind]
        if len(idx) > 1:
            perm = rng.permutation(len(idx))
            for k, p in zip(idx, perm):
                new[k] = w[idx[p]]
    return _done(new, caption)


def _shuffle_tri(caption: str, rng: np.random.Generator) -> str | None:
    w = tokenize(caption)
    new = []
    for i in range(0, len(w), 3):
        tri = w[i : i + 3]
        new += [tri[j] for j in rng.permutation(len(tri))]
    return _done(new, caption, fix_articles=False)


PERTURBATIONS = ("swap_attributes", "swap_relation", "replace", "shuffle_nouns_adjectives",
                 "shuffle_allbut_nouns_adjectives", "shuffle_within_trigrams", "shuffle_trigrams")


def perturb(caption: str, kind: str, rng: np.random.Generator | None = None) -> str | None:
    rng = rng or np.random.default_rng(0)
    if kind == "swap_attributes":
        return swap_attributes(caption)
    if kind == "swap_relation":
        return swap_relation(caption)
    if kind == "replace":
        return replace(caption, rng)
    if kind == "shuffle_nouns_adjectives":
        return shuffle_nouns_adjectives(caption, rng)
    if kind == "shuffle_allbut_nouns_adjectives":
        return shuffle_allbut_nouns_adjectives(caption, rng)
    if kind == "shuffle_within_trigrams":
        return shuffle_within_trigrams(caption, rng)
    if kind == "shuffle_trigrams":
        return shuffle_trigrams(caption, rng)

    raise ConfigError(f"unknown perturbation {kind!r}; use one of {', '.join(PERTURBATIONS)}")


def bindings(text: str) -> list[tuple[str, ...]]:
    """The content words of each noun phrase, sorted within the phrase, in order: two captions with the
    same bindings say the same thing up to adjective order ("a large white cross" = "a white large cross")."""
    w = tokenize(text)
    t = tag(w)
    return [tuple(sorted(w[k].lower() for k in range(s, e) if t[k] != "DET")) for s, e in noun_phrases(w, t)]


__all__ = [
    "bindings",
    "tag",
    "tokenize",
    "noun_phrases",
    "perturb",
    "PERTURBATIONS",
    "swap_attributes",
    "swap_relation",
    "replace",
    "shuffle_nouns_adjectives",
    "shuffle_allbut_nouns_adjectives",
    "shuffle_within_trigrams",
    "shuffle_trigrams",
]
