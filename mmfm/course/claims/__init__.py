"""The course's claims, each measured on the shipped world models (or read from a recorded run).

A claim is the lecture's statement, the bar it is judged by, and a function that measures it and
returns a `Result`: rows of numbers with 95% intervals, whether the bar is met, and why. Every claim
reads its settings from the `Context` (quick: the reduced setting CI runs; the default: what a person
runs by hand in ~15 minutes) and saves its figure through it. Claims that need long training runs
(batch size, CoCa, Flamingo, NegCLIP; Molmo's bar over training seeds) show the recorded numbers of
`recorded.json`, or with `--full` are retrained once per seed (mmfm.course.retrain). A claim whose part
is missing (no local LLM, ...) is "not measured"."""

from __future__ import annotations

import time

from mmfm.course.claims.base import Claim, Context, Result, Row
from mmfm.course.claims.chaining import cupl, visprog
from mmfm.course.claims.clip import bag_of_words, clip_zeroshot, prompt_ensembles, simclr_vs_clip
from mmfm.course.claims.recorded import batch_size, coca, flamingo, negclip
from mmfm.course.claims.sam import sam_ambiguity
from mmfm.course.claims.vlm import llava_vqa, molmo_pointing
from mmfm.errors import MMFMError

__all__ = ["CLAIMS", "Claim", "Context", "Result", "Row", "run_claim"]

CLAIMS: tuple[Claim, ...] = (
    Claim("clip_zeroshot", "CLIP classifies zero-shot",
          "Contrastive pre-training on image-text pairs names classes never seen as labels.",
          "held-out colour x shape pairs: top-1 far above chance (> 10x) and within 10 points of seen pairs",
          clip_zeroshot),
    Claim("simclr", "Labels-free features need a probe; language names classes",
          "SimCLR learns features without labels (two crops of an image agree); CLIP is the same contrastive "
          "objective with text as the second view, which names the classes.",
          "SimCLR's colour x shape probe > 5x chance and above a random-init tower; CLIP's probe and zero-shot "
          "above it (paired intervals above 0)", simclr_vs_clip),
    Claim("prompt_ensembles", "Prompt ensembles help",
          "Averaging the text embeddings of many templates beats a single template (CLIP: +3.5 on ImageNet).",
          "on templates CLIP never trained on (held-out phrasings; OpenAI's 80) the ensemble beats the mean "
          "single template (paired interval above 0)", prompt_ensembles),
    Claim("batch_size", "Bigger batches learn finer concepts",
          "The contrastive loss gets more and harder negatives from a bigger batch.",
          "fine-grained accuracy rises from batch 8 to 32 to 128; swaps stay at chance", batch_size),
    Claim("bag_of_words", "CLIP is a bag of words",
          "CLIP's text embedding ignores word order: it cannot tell 'red square left of blue circle' from its swap.",
          "attribute / relation swaps and word order within 0.1 of chance; replacements well above", bag_of_words),
    Claim("negclip", "Hard negatives fix it",
          "Fine-tuning with swapped captions as negatives (NegCLIP) teaches order without losing zero-shot.",
          "relation and attribute swaps each >= +20 points over the starting CLIP, mean of 3 seeds", negclip),
    Claim("coca", "CoCa captions and still classifies",
          "A captioning loss next to the contrastive one gives captions without hurting zero-shot.",
          "zero-shot within 2 points of the same model without the captioning loss", coca),
    Claim("llava_vqa", "LLaVA answers questions about images",
          "A vision encoder, a projector and visual instruction tuning turn an LLM into a VQA model.",
          "colour, shape and existence accuracy above chance (interval)", llava_vqa),
    Claim("molmo_pointing", "Molmo points when it counts",
          "Pointing first, then counting the points, beats answering directly, most with many objects.",
          "pointing F1 >= 0.7 and point-then-count beats the direct answer on 4+ objects, mean of 3 training seeds",
          molmo_pointing),
    Claim("flamingo", "Flamingo learns in context",
          "Interleaved images and text let a frozen LLM learn a task from a few demonstrations.",
          "new names: +50 points from 0 to 4 shots", flamingo),
    Claim("sam_ambiguity", "SAM needs 3 masks for an ambiguous point",
          "One point can mean a part or the whole; three outputs ranked by predicted IoU resolve it.",
          "on ambiguous points, best of 3 beats the single output by >= 10 IoU points; the oracle bounds both",
          sam_ambiguity),
    Claim("cupl", "CuPL names unseen concepts",
          "An LLM's descriptions of a class beat the bare class name as zero-shot prompts.",
          "LLM descriptions beat names on the concepts CLIP never read (paired interval above 0)", cupl),
    Claim("visprog", "VisProg composes modules",
          "An LLM writes a program over vision modules that beats end-to-end models on compositional questions.",
          "held-out program validity >= 0.95; programs of the LoRA-tuned writer beat end-to-end LLaVA on "
          "two-image statements (paired interval above 0, n >= 300)", visprog),
)


def run_claim(claim: Claim, ctx: Context) -> dict:
    """The claim measured, as the report's JSON holds it. A missing part (MMFMError: no local LLM, ...)
    leaves the claim "not measured" instead of ending the report."""
    t0 = time.perf_counter()
    try:
        r = claim.measure(ctx)
    except MMFMError as e:
        r = Result([], None, f"not measured: {e}", source="not measured", headline="not measured")
    return {"key": claim.key, "title": claim.title, "statement": claim.statement, "bar": claim.bar,
            "holds": r.holds, "why": r.why, "figure": r.figure, "source": r.source,
            "headline": r.headline or (f"{r.rows[0].name}: {r.rows[0].value}" if r.rows else ""),
            "rows": [vars(row) for row in r.rows], "extra": r.extra, "seconds": round(time.perf_counter() - t0, 1)}
