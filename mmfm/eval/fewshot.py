"""Few-shot evaluation of Flamingo as OpenFlamingo runs it, on held-out world episodes.

Prompts: `<image>Question: ... Short answer: {answer}<|endofchunk|>\\n` per demonstration, then the
query `<image>Question: ... Short answer:`; the model's continuation up to `<|endofchunk|>` (or a new
line) is the answer, scored by exact match after VQAv2 normalisation (number words = digits).
- 0 shots: two text-only demonstrations (their `<image>` tokens and images dropped), as OpenFlamingo.
- random: the episode's own demonstrations, drawn by the world with the episode's seed (for new_names
  the world guarantees that one demonstration defines the query's word).
- rices: the k demonstrations most similar to the query in CLIP image space, from a pool of 32
  candidates of the same episode (RICES, Yang et al. 2022), the most similar placed last, next to
  the query, as OpenFlamingo orders them.
Tasks: color, shape, count, and new_names, whose answers (made-up words for colors, never seen in
training) exist only in the demonstrations. `answerable` reports, for new_names, how often the query's
word appears among the chosen demonstrations (the ceiling of any model).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import mmfm
from mmfm.data.flamingo_world import episode_prompt
from mmfm.errors import ConfigError, InvalidPrompt
from mmfm.eval.vqa import normalize_answer
from mmfm.vision.plot import line_plot
from mmfm.weights import path
from mmfm.world import World

EVAL_TASKS = ("color", "shape", "count", "new_names")
SELECTIONS = ("random", "rices")
POOL = 32


class Rices:
    """Image-to-image retrieval with a CLIP's normalised image embeddings."""

    def __init__(self, clip=None):
        if clip is None:
            clip = mmfm.load(path("clip-world-tiny"))
        self.clip = clip.eval()
        self.pre = clip.preprocess

    @torch.inference_mode()
    def embed(self, images) -> torch.Tensor:
        x = torch.stack([self.pre(im) for im in images])
        return self.clip.encode_image(x, normalize=True).float()

    def ranking(self, query, candidates) -> list[int]:
        """Candidate indices, most similar to the query first."""
        sims = self.embed(candidates) @ self.embed([query])[0]
        return sims.argsort(descending=True).tolist()

    def top(self, query, candidates, k: int) -> list[int]:
        """Indices of the k candidates most similar to the query, least similar first."""
        return list(reversed(self.ranking(query, candidates)[:k]))


def _demos(world: World, split: str, index: int, task: str, shots: int, selection: str, rices: Rices | None,
           ranked: dict):
    """(query (image, prompt, answer), demonstrations [(image, prompt, answer)]) for one episode. RICES
    ranks an episode's pool once (`ranked`, keyed by task and index) for every number of shots."""
    if selection == "random" or shots == 0:
        ep = world.episode(split, index, task, shots=max(shots, 2))
        return (ep.query[0].image, ep.query[1], ep.query[2]), [(r.image, p, a) for r, p, a in ep.demos]
    if selection != "rices":
        raise ConfigError(f"unknown demonstration selection {selection!r}; use random or rices")
    if (task, index) not in ranked:
        ep = world.episode(split, index, task, shots=POOL)
        pool = [(r.image, p, a) for r, p, a in ep.demos]
        order = rices.ranking(ep.query[0].image, [x[0] for x in pool])
        ranked[(task, index)] = (ep.query[0].image, ep.query[1], ep.query[2]), [pool[i] for i in order]
    query, by_similarity = ranked[(task, index)]
    return query, list(reversed(by_similarity[:shots]))


def fewshot_prompt(demos: list[tuple], query_prompt: str, shots: int) -> tuple[str, int]:
    """The prompt text and how many demonstration images it uses (0 for the text-only 0-shot)."""
    if shots == 0:
        return episode_prompt([(p, a) for _, p, a in demos[:2]], query_prompt, images=False), 0
    return episode_prompt([(p, a) for _, p, a in demos], query_prompt), len(demos)


def evaluate_fewshot(model, tasks=EVAL_TASKS, shots=(0, 4, 8), n: int = 60, split: str = "test",
                     selections=SELECTIONS, seed: int = 0, batch_size: int = 8, rices: Rices | None = None,
                     out=None, progress: bool = True, offset: int = 200_000) -> dict:
    """Accuracy per task, selection and number of shots on n held-out episodes each. With `out`, writes
    fewshot.json, fewshot.csv and fewshot.png (accuracy vs shots)."""
    from tqdm.auto import tqdm

    for t in tasks:
        if t not in EVAL_TASKS:
            raise ConfigError(f"unknown few-shot task {t!r}; use {', '.join(EVAL_TASKS)}")
    world = World(seed=seed)
    if "rices" in selections and rices is None:
        rices = Rices()
    results: dict = {"split": split, "n": n, "tasks": {}}
    ranked: dict = {}
    bar = tqdm(total=len(tasks) * len(selections) * len(shots) * n, desc="few-shot", disable=not progress)
    for task in tasks:
        per_task = results["tasks"].setdefault(task, {})
        for sel in selections:
            row = per_task.setdefault(sel, {})
            for k in shots:
                items = [_demos(world, split, offset + i, task, k, sel, rices, ranked) for i in range(n)]
                correct, answerable, examples = 0, 0, []
                for b in range(0, n, batch_size):
                    chunk = items[b : b + batch_size]
                    prompts, images = [], []
                    for (qimg, qprompt, _), demos in chunk:
                        text, used = fewshot_prompt(demos, qprompt, k)
                        prompts.append(text)
                        images.append([d[0] for d in demos[:used]] + [qimg])
                    preds = model.generate(prompts, images, max_new_tokens=8, stop=["\n"])
                    for ((_, _, ans), demos), pred in zip(chunk, preds):
                        ok = normalize_answer(pred) == normalize_answer(ans)
                        correct += ok
                        answerable += any(a == ans for _, _, a in (demos if k else []))
                        if len(examples) < 3:
                            examples.append({"answer": ans, "prediction": pred})
                    bar.update(len(chunk))
                row[str(k)] = {"accuracy": correct / n, "answerable": answerable / n, "examples": examples}
    bar.close()
    if out is not None:
        write_fewshot(results, Path(out))
    return results


def format_table(results: dict) -> str:
    tasks = results["tasks"]
    shots = sorted({int(k) for t in tasks.values() for s in t.values() for k in s}, key=int)
    lines = ["| task | selection | " + " | ".join(f"{k} shots" for k in shots) + " |",
             "| --- | --- | " + " | ".join("---" for _ in shots) + " |"]
    for task, sels in tasks.items():
        for sel, row in sels.items():
            cells = []
            for k in shots:
                r = row.get(str(k))
                cell = "" if r is None else f"{r['accuracy']:.2f}"
                if r is not None and task == "new_names" and k:
                    cell += f" (answerable {r['answerable']:.2f})"
                cells.append(cell)
            lines.append(f"| {task} | {sel} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_fewshot(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "fewshot.json").write_text(json.dumps(results, indent=2))
    rows = ["task,selection,shots,accuracy,answerable"]
    series = {}
    for task, sels in results["tasks"].items():
        for sel, row in sels.items():
            rows += [f"{task},{sel},{k},{r['accuracy']:.4f},{r['answerable']:.4f}" for k, r in row.items()]
            series[f"{task} ({sel})"] = sorted((int(k), r["accuracy"]) for k, r in row.items())
    (out / "fewshot.csv").write_text("\n".join(rows) + "\n")
    line_plot(series, title=f"Flamingo few-shot accuracy on held-out world episodes (n={results['n']} each)",
              xlabel="shots", markers=True).save(out / "fewshot.png")


def answer_from_demos(model, demos: list[tuple], image, question: str | None = None,
                      max_new_tokens: int = 16) -> str:
    """`mmfm fewshot`: answer a query image from demonstrations [(image, answer), ...], in
    OpenFlamingo's VQA format with a question, its captioning format ("Output:") without."""
    if not demos:
        raise InvalidPrompt("a few-shot call needs at least one demonstration (image, answer)")
    prompt = f"Question: {question.strip()} Short answer:" if question and question.strip() else "Output:"
    for i, d in enumerate(demos):
        if len(d) != 2 or not str(d[1]).strip():
            raise InvalidPrompt(f"demonstration {i} needs an image and a non-empty answer")
    text = episode_prompt([(prompt, str(a).strip()) for _, a in demos], prompt)
    return model.generate([text], [[im for im, _ in demos] + [image]], max_new_tokens=max_new_tokens, stop=["\n"])[0]


__all__ = ["evaluate_fewshot", "format_table", "write_fewshot", "answer_from_demos", "Rices", "EVAL_TASKS",
           "fewshot_prompt"]
