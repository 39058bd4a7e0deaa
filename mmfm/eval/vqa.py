"""Scoring answers as VQAv2 and Molmo do.

- `normalize_answer`: the VQAv2 evaluation's normalisation (punctuation, periods not between digits,
  number words to digits, articles dropped, contractions restored, lower case).
- `vqa_accuracy`: VQAv2's min(1, #matching humans / 3) averaged over the 10 leave-one-out subsets;
  with a single reference answer it is exact match after normalisation.
- `parse_count`: the number in a counting answer ("3", "three", "Counting the <points ...> shows a
  total of 3.", "There are none.").
- `point_scores`: Molmo's pointing metric: predicted points matched one-to-one to true objects
  (maximum bipartite matching; a pair can match only when the point lies inside the object's mask),
  then precision, recall and F1.
"""

from __future__ import annotations

import re

import numpy as np

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't",
    "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't",
    "isnt": "isn't", "shouldnt": "shouldn't", "wasnt": "wasn't", "werent": "weren't", "wont": "won't",
    "wouldnt": "wouldn't", "youre": "you're", "theyre": "they're", "thats": "that's", "whats": "what's",
}
NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
           "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_DIGITS = re.compile(r"(\d)(,)(\d)")


def normalize_answer(ans: str) -> str:
    text = ans.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for p in _PUNCT:  # VQAv2: drop a mark next to a space (or in a number), else make it a space
        if (p + " " in text or " " + p in text) or _COMMA_DIGITS.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD.sub("", out)
    words = []
    for w in out.lower().split():
        w = NUMBERS.get(w, w)
        if w in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(w, w))
    return " ".join(words)


def vqa_accuracy(pred: str, answers: list[str]) -> float:
    p = normalize_answer(pred)
    gts = [normalize_answer(a) for a in answers]
    if len(gts) == 1:
        return float(p == gts[0])
    accs = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1 :]
        accs.append(min(1.0, sum(g == p for g in others) / 3.0))
    return float(np.mean(accs))


_NUM = re.compile(r"\b(\d+|" + "|".join(NUMBERS) + r")\b", re.I)


def parse_count(text: str) -> int | None:
    """The count an answer states, or None when it states none. "total of N" wins (Molmo's
    point-then-count answers); otherwise the last number or number word outside point markup."""
    plain = re.sub(r"<points?\b.*?</points?>", " ", text, flags=re.S)
    m = re.search(r"total of\s+(\d+|" + "|".join(NUMBERS) + r")\b", plain, re.I)
    if m:
        tok = m.group(1).lower()
        return int(NUMBERS.get(tok, tok))
    found = _NUM.findall(plain)
    if not found:
        return 0 if re.search(r"\b(no|none)\b", plain, re.I) else None
    tok = found[-1].lower()
    return int(NUMBERS.get(tok, tok))


def max_matching(ok: np.ndarray) -> int:
    """Size of a maximum matching in the bipartite graph ok (P predictions x G objects) (Kuhn's algorithm,
    exact; what Hungarian matching with 0/1 costs finds)."""
    P, G = ok.shape
    owner = [-1] * G

    def augment(p, seen):
        for g in np.nonzero(ok[p])[0]:
            if not seen[g]:
                seen[g] = True
                if owner[g] == -1 or augment(owner[g], seen):
                    owner[g] = p
                    return True
        return False

    return sum(augment(p, [False] * G) for p in range(P))


def point_scores(points, masks: np.ndarray) -> dict:
    """points: [(x, y)] pixels; masks: (G, H, W) bool, one per true object. Returns tp, precision,
    recall, f1 (both empty: all 1; one empty: 0)."""
    pts = [(float(x), float(y)) for x, y in points]
    G = len(masks)
    if not pts and G == 0:
        return {"tp": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    ok = np.zeros((len(pts), G), dtype=bool)
    for i, (x, y) in enumerate(pts):
        xi, yi = int(x), int(y)
        if G and 0 <= yi < masks.shape[1] and 0 <= xi < masks.shape[2]:
            ok[i] = masks[:, yi, xi]
    tp = max_matching(ok) if pts and G else 0
    prec = tp / len(pts) if pts else 0.0
    rec = tp / G if G else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"tp": tp, "precision": prec, "recall": rec, "f1": f1}


__all__ = ["normalize_answer", "vqa_accuracy", "parse_count", "point_scores", "max_matching", "NUMBERS"]
