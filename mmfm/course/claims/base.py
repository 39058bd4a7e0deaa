"""What every claim shares: a `Claim` (the lecture's statement, its bar, the function that measures it),
the `Result` it returns (rows of numbers with 95% intervals, whether the bar is met and why), and the
`Context` a report run gives every claim (quick or default setting, the shipped models loaded once, the
figures folder)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

RECORDED = json.loads((Path(__file__).parent.parent / "recorded.json").read_text())
# questions per type (quick, default): the pointing answers run to 160 tokens, ~4 min at 100 on 2 cores
LLAVA_N = (12, 100)
SEEDS = (0, 1, 2)  # world seeds of `--full` runs: the "at least three"


@dataclass
class Row:
    name: str
    value: float
    low: float | None = None
    high: float | None = None
    n: int | None = None

    @classmethod
    def of(cls, name: str, m: tuple[float, float, float], n: int | None = None) -> Row:
        return cls(name, round(m[0], 4), round(m[1], 4), round(m[2], 4), n)


@dataclass
class Result:
    rows: list[Row]
    holds: bool | None  # None: not measurable in this setting
    why: str
    figure: str | None = None
    source: str = "measured in this run"
    extra: dict = field(default_factory=dict)
    headline: str = ""  # the measurement in one line, for the report's table


@dataclass
class Context:
    out: Path
    quick: bool = False
    seed: int = 0
    progress: bool = True
    cache: dict = field(default_factory=dict)
    full: bool = False  # retrain the claims that rest on training runs (mmfm.course.retrain), one run per seed
    seeds: tuple[int, ...] = SEEDS
    full_scale: float = 1.0  # < 1: shortened runs that only check the wiring

    def records(self, key: str) -> tuple[list[dict], str]:
        """The runs a training claim rests on, one dict per seed in recorded.json's shape, and where they
        come from: retrained now (--full) or read from recorded.json."""
        if self.full:
            from mmfm.course.retrain import seed_records

            recs = seed_records(key, self.out, self.seeds, self.full_scale, self.progress)
            how = f"retrained in this run (`mmfm course report --full`), seeds {', '.join(map(str, self.seeds))}"
            if self.full_scale != 1:
                how += f", runs shortened to {self.full_scale:g} of the recipe: a wiring check, not a result"
            return recs, how
        r = RECORDED[key]
        return (r["runs"] if "runs" in r else [r]), f"recorded: {r['source']} (`{r['command']}`)"

    def n(self, quick: int, default: int) -> int:
        return quick if self.quick else default

    def figure(self, name: str, image) -> str:
        (self.out / "figures").mkdir(parents=True, exist_ok=True)
        image.save(self.out / "figures" / name)
        return f"figures/{name}"

    def _shipped(self, name: str):
        if name not in self.cache:
            import mmfm
            from mmfm.weights import path

            model = mmfm.load(path(name))
            # a model built on a language model keeps the dtype it loaded in; the small towers run in fp32
            self.cache[name] = model.eval() if hasattr(model, "lm") else model.float().eval()
        return self.cache[name]

    def clip(self):
        return self._shipped("clip-world-tiny")

    def simclr(self):
        return self._shipped("simclr-world-tiny")

    def sam(self, name: str = "sam-world-tiny"):
        return self._shipped(name)

    def llava(self):
        return self._shipped("llava-world-tiny")

    def molmo(self):
        """The shipped world Molmo: the world LLaVA with Molmo's image layout and its whole LM trained to
        point, kept as rank-32 adapters."""
        return self._shipped("molmo-world-tiny")

    def llm(self):
        if "llm" not in self.cache:
            from mmfm.chain.llm import LocalLLM

            self.cache["llm"] = LocalLLM(dtype="auto")  # bf16 where the host computes it, else fp32
        return self.cache["llm"]

    def writer(self):
        """The shipped VisProg program writer (SmolLM2 + LoRA adapters, `mmfm train visprog-writer`)."""
        if "writer" not in self.cache:
            from mmfm.chain.llm import LocalLLM
            from mmfm.weights import path

            self.cache["writer"] = LocalLLM(model=path("visprog-writer-world"))
        return self.cache["writer"]

    def llava_eval(self) -> dict:
        if "llava_eval" not in self.cache:
            from mmfm.eval.llava_world import evaluate_llava_world

            self.cache["llava_eval"] = evaluate_llava_world(self.llava(), n=self.n(*LLAVA_N), seed=self.seed,
                                                            splits=("test",), progress=self.progress,
                                                            grounding=False)  # the VQA claim's answers only
        return self.cache["llava_eval"]["test"]

    def molmo_eval(self) -> dict:
        """The world Molmo on new scenes (pointing F1 and the rest of evaluate_llava_world), plus counting
        on as many crowded scenes (4 or more of the subject)."""
        if "molmo_eval" not in self.cache:
            from mmfm.eval.llava_world import evaluate_counting, evaluate_llava_world

            n = self.n(*LLAVA_N)
            ev = evaluate_llava_world(self.molmo(), n=n, seed=self.seed, splits=("test",), progress=self.progress)
            ev["test"]["crowded"] = evaluate_counting(self.molmo(), n=n, seed=self.seed, min_count=4,
                                                      progress=self.progress)
            self.cache["molmo_eval"] = ev["test"]
        return self.cache["molmo_eval"]


@dataclass(frozen=True)
class Claim:
    key: str
    title: str
    statement: str  # what the lecture says
    bar: str  # what must be measured for it to hold here
    measure: Callable[[Context], Result]

