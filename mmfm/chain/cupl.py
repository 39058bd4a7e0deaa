"""CuPL (Pratt et al., 2023): an LLM writes descriptions of each class ("customized prompts"), and
CLIP's zero-shot classifier averages their embeddings instead of (or with) hand-written templates.

    prompts = generate_descriptions(llm, ["snowman", "traffic light"], n=10)
    save_prompts("prompts.json", prompts)          # CuPL's format: {class: [sentences]}
    w = cupl_classifier(clip, clip.tokenizer, classes, prompts, mode="both")

Each class gets CuPL's five questions (a/an chosen by the first letter of the class name), `n`
samples each at a high temperature, each answer cut at its first period."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mmfm.errors import InvalidPrompt, InvalidText, LLMError
from mmfm.eval.templates import fill
from mmfm.eval.zeroshot import check_labels, cupl_classifier

# the five ImageNet prompts of the CuPL paper
CUPL_PROMPTS = (
    "Describe what {a} {} looks like",
    "How can you identify {a} {}?",
    "What does {a} {} look like?",
    "Describe an image from the internet of {a} {}",
    "A caption of an image of {a} {}:",
)
MAX_SENTENCE_CHARS = 300


def first_sentence(text: str) -> str:
    """An LLM answer -> its first sentence, ended by a period ('' when nothing usable)."""
    text = re.sub(r"\s+", " ", text.strip().strip('"').strip())
    text = re.sub(r"^(sure|certainly|here is[^:]*:|answer:)\s*[,:!.]?\s*", "", text, flags=re.I)
    m = re.match(r"(.+?[.!?])(\s|$)", text)
    s = (m.group(1) if m else text).strip()
    if not s or len(s) > MAX_SENTENCE_CHARS:
        return ""
    return s if s.endswith((".", "!", "?")) else s + "."


def generate_descriptions(llm, classes, n: int = 10, temperature: float = 0.99, max_tokens: int = 50,
                          prompts=CUPL_PROMPTS, seed: int = 0, progress: bool = True) -> dict[str, list[str]]:
    """{class: [sentences]} from any mmfm.chain.llm.LLM (local or OpenAI-compatible)."""
    from tqdm.auto import tqdm


    classes = check_labels(list(classes))
    if n < 1:
        raise InvalidPrompt(f"n must be >= 1, got {n}")
    out: dict[str, list[str]] = {}
    bar = tqdm(total=len(classes) * len(prompts), desc="CuPL descriptions", disable=not progress, dynamic_ncols=True)
    for ci, name in enumerate(classes):
        sents: list[str] = []
        for pi, p in enumerate(prompts):
            answers = llm.complete(fill(p, name), n=n, temperature=temperature, max_tokens=max_tokens, stop=["."],
                                   seed=seed + 1000 * ci + pi)
            for a in [answers] if isinstance(answers, str) else answers:
                s = first_sentence(a)
                if s and s not in sents:
                    sents.append(s)
            bar.update()
        if not sents:
            raise LLMError(f"the LLM gave no usable description of {name!r}")
        out[name] = sents
    bar.close()
    return out


def save_prompts(path, prompts: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(check_prompts(prompts), indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def load_prompts(path) -> dict[str, list[str]]:
    path = Path(path)
    if not path.is_file():
        raise InvalidPrompt(f"{path}: no such prompts file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidPrompt(f"{path}: not JSON ({e}); CuPL prompts are {{class: [sentences]}}") from None
    return check_prompts(data, str(path))


def check_prompts(data, source: str = "prompts") -> dict[str, list[str]]:
    if not isinstance(data, dict) or not data:
        raise InvalidPrompt(f"{source}: CuPL prompts are a non-empty JSON object {{class: [sentences]}}")
    for k, v in data.items():
        if not isinstance(v, list) or not v or not all(isinstance(s, str) and s.strip() for s in v):
            raise InvalidText(f"{source}: class {k!r} needs a non-empty list of non-empty sentences")
    return {str(k): [s.strip() for s in v] for k, v in data.items()}


__all__ = ["CUPL_PROMPTS", "generate_descriptions", "save_prompts", "load_prompts", "check_prompts",
           "cupl_classifier", "first_sentence"]
