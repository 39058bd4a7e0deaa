"""`torch.compile` (inductor, CPU) against eager on the steps users wait for: the world CLIP training step
(forward + backward), CLIP's image encoding, SAM's image encoder, and the language model's decode step
(SmolLM2-135M in bf16 and int4, batch 1, 33 tokens after a 128-token prompt). Each in the precision `--precision auto`
picks for it on this host. The compile time (first call, including warm-up) is stated; then eager and
compiled calls alternate and the paired median of eager / compiled is the speed-up. Inference cases
compile with frozen weights (`compiled(..., freeze=True)`).

    python bench/compile_speed.py [--repeats 7] [--cases clip_step,clip_encode,sam_encode,lm_decode]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp())  # compile times from a cold cache

import torch  # noqa: E402
from _timing import timed_pair  # bench/ is on sys.path when a script runs


def clip_cases():
    from mmfm.compiled import compiled
    from mmfm.models.clip import CLIP
    from mmfm.precision import choose, module_signature
    from mmfm.train.clip import CLIPTrainModule, preset

    torch.manual_seed(0)
    cfg, _, _ = preset("world-tiny")
    model = CLIP(cfg)
    module = CLIPTrainModule(model)
    s = cfg.vision.image_size
    batch = {"pixels": torch.randn(256, 3, s, s), "input_ids": torch.randint(1, cfg.text.vocab_size,
                                                                              (256, cfg.text.context_length))}

    def make_step(m):
        def step():
            with prec.context():
                loss, _ = m(batch)
            loss.backward()
            module.zero_grad(set_to_none=True)
        return step

    def run_step(p):
        with p.context():
            loss, _ = module(batch)
        loss.backward()
        module.zero_grad(set_to_none=True)
    prec = choose("auto", run_step, module_signature(module)).precision
    compiled_step = compiled(module)
    pixels = batch["pixels"]

    def encode(fn):
        def run():
            with torch.inference_mode(), prec.context():
                fn(pixels)
        return run

    enc_compiled = compiled(model.encode_image, freeze=True)
    return {"clip_step": (prec.label, make_step(module), make_step(compiled_step)),
            "clip_encode": (prec.label, encode(model.encode_image), encode(enc_compiled))}


def sam_case():
    import mmfm
    from mmfm.compiled import compiled
    from mmfm.weights import path

    model = mmfm.load(path("sam-world-tiny")).float().eval()
    x = model.preprocess(torch.rand(32, 3, model.image_size, model.image_size) * 255)
    fast = compiled(model.image_encoder, freeze=True)

    def run(fn):
        def go():
            with torch.inference_mode():
                fn(x)
        return go
    return {"sam_encode": ("fp32", run(model.image_encoder), run(fast))}


def lm_cases():
    """Prompt 128 + 33 greedy tokens, batch 1. Eager runs as mmfm does by default (bf16: decode on
    oneDNN-packed Linears); compiled runs the plain model, since inductor cannot lower the packed ones."""
    from mmfm.compiled import compiled
    from mmfm.lm.model import load_lm, smollm2_path
    from mmfm.nn.generate import GenerationConfig, generate

    ids = torch.randint(100, 4000, (1, 128))
    cases = {}
    for name, dtype in (("lm_decode", "bfloat16"), ("lm_decode_int4", "int4")):
        lm = load_lm(smollm2_path(), dtype)
        fast = compiled(lm.model, dynamic=True)

        def run(m, prepack):
            def go():
                generate(m, ids, torch.ones_like(ids), config=GenerationConfig(max_new_tokens=33, prepack=prepack))
            return go
        cases[name] = ("bf16" if dtype == "bfloat16" else "int4", run(lm.model, None), run(fast, False))
    return cases


BUILDERS = {"clip_step": clip_cases, "clip_encode": clip_cases, "sam_encode": sam_case, "lm_decode": lm_cases,
            "lm_decode_int4": lm_cases}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cases", default="clip_step,clip_encode,sam_encode,lm_decode,lm_decode_int4")
    a = ap.parse_args()
    from mmfm.precision import cpu_name

    wanted = a.cases.split(",")
    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, paired medians of "
          f"{a.repeats}")
    print("| step | precision | compile (s, first call) | eager ms | compiled ms | eager / compiled |")
    print("| --- | --- | --- | --- | --- | --- |")
    built: dict = {}
    for name in wanted:
        if name not in built:
            built.update(BUILDERS[name]())
        label, eager, compiled = built[name]
        eager()
        t = time.perf_counter()
        try:
            compiled()
        except Exception as e:  # noqa: BLE001 - a failed compile is a result to report
            print(f"| {name} | {label} | failed: {type(e).__name__}: {str(e)[:80]} | | | |", flush=True)
            continue
        first = time.perf_counter() - t
        pairs, _, _ = timed_pair(eager, compiled, a.repeats)
        te, tc = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        ratio = statistics.median(p[0] / p[1] for p in pairs)
        print(f"| {name} | {label} | {first:.0f} | {te * 1000:.1f} | {tc * 1000:.1f} | {ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
