"""Every speed comparison in one command: one fresh process per pair, each side in its best setting on
this host, paired medians, one JSON. A change that slows anything shows up against the last run.

    python bench/run_all.py [--quick] [--only clip_train_step,lm_decode] [--out bench/run_all.json]
                            [--compare OLD.json]

A pair times a reference (transformers, open_clip, segment-anything, llama.cpp, ONNX Runtime) and mmfm on
the same weights and inputs. Each side has candidate settings (precision; for mmfm also torch.compile
through mmfm.compiled, with frozen weights for inference, and the LM's int4 weights): all candidates are
warmed up (compiling, where they compile), then called in turn, round after round. Each side's setting
with the lowest median is its best; the ratio is the median over rounds of reference time / mmfm time for
those two (> 1: mmfm faster). The reference is given the same precision choices as mmfm (bf16 with the
math attention kernel included), so a ratio never comes from a kernel the reference could have used too.
Compile times (first call, cold cache) are reported.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp())  # compile times from a cold cache

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent


@dataclass
class Pair:
    reference: str  # the library, with its version
    ref: dict  # label -> fn(); a fn may return the seconds to count (else its wall time counts)
    ours: dict
    unit: str
    notes: dict = field(default_factory=dict)


def _precisions():
    from mmfm.precision import PRECISIONS

    return {name: PRECISIONS[name] for name in ("fp32", "bf16", "bf16-math")}


def _in(p, fn, *args):
    def run():
        with torch.inference_mode(), p.context():
            fn(*args)
    return run


# ------------------------------------------------------------------------------------------------ pairs
def clip_encode(quick: bool) -> Pair:
    """CLIP image encoding at the world-tiny shape (patch stem + class token: the layout transformers can
    express), batch 256, vs transformers' CLIPModel on the same weights."""
    import transformers
    from clip_speed import hf_and_ours

    from mmfm.compiled import compiled

    tiny = dict(image_size=64, patch_size=8, hidden_size=96, intermediate_size=384, num_hidden_layers=4,
                num_attention_heads=3)
    hf, ours = hf_and_ours(tiny, 128)
    x = torch.randn(256, 3, 64, 64)
    with torch.no_grad():
        diff = (hf.get_image_features(pixel_values=x).pooler_output - ours.encode_image(x)).abs().max().item()
    ref = lambda: hf.visual_projection(hf.vision_model(pixel_values=x).pooler_output)  # noqa: E731
    precs = _precisions()
    fast = compiled(ours.encode_image, freeze=True)
    return Pair(f"transformers {transformers.__version__}", {k: _in(p, ref) for k, p in precs.items()},
                {**{k: _in(p, ours.encode_image, x) for k, p in precs.items()},
                 **{f"{k} compiled": _in(p, fast, x) for k, p in precs.items()}},
                "ms per batch of 256", {"max_abs_diff_fp32": diff})


def clip_train_step(quick: bool) -> Pair:
    """The world-tiny CLIP training step (both towers, contrastive loss, backward, AdamW), batch 256, vs
    open_clip's CLIP + ClipLoss on the same weights (patch stem + class token, the layout both run)."""
    import open_clip
    import torch.nn.functional as F
    from open_clip.loss import ClipLoss
    from open_clip.model import CLIP as OpenCLIP

    from mmfm.compiled import compiled
    from mmfm.interop.open_clip import config_to_open_clip, state_dict_to_open_clip
    from mmfm.models.clip import CLIP
    from mmfm.nn.losses import clip_loss
    from mmfm.train.clip import world_tiny_config

    cfg = world_tiny_config(stem="patch", pool="cls")
    torch.manual_seed(0)
    ours = CLIP(cfg).train()
    ref = OpenCLIP(**config_to_open_clip(cfg)).train()
    ref.load_state_dict(state_dict_to_open_clip(ours.state_dict()))
    x = torch.randn(256, 3, 64, 64)
    ids = torch.randint(0, cfg.text.vocab_size - 2, (256, cfg.text.context_length))
    ids[:, 10] = cfg.text.eot_token_id
    opt_o, opt_r = torch.optim.AdamW(ours.parameters(), 1e-4), torch.optim.AdamW(ref.parameters(), 1e-4)
    ref_loss = ClipLoss()

    def loss_ours(x, ids):
        img, txt = F.normalize(ours.encode_image(x), dim=-1), F.normalize(ours.encode_text(ids), dim=-1)
        return clip_loss(img.float(), txt.float(), ours.scale())

    fast = compiled(loss_ours)

    def step(p, loss_fn, model, opt):
        def run():
            with p.context():
                loss = loss_fn()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    def loss_ref():
        img, txt = ref.encode_image(x, normalize=True), ref.encode_text(ids, normalize=True)
        return ref_loss(img.float(), txt.float(), ref.logit_scale.exp())

    precs = _precisions()
    return Pair(f"open_clip {open_clip.__version__}", {k: step(p, loss_ref, ref, opt_r) for k, p in precs.items()},
                {**{k: step(p, lambda: loss_ours(x, ids), ours, opt_o) for k, p in precs.items()},
                 **{f"{k} compiled": step(precs[k], lambda: fast(x, ids), ours, opt_o) for k in precs}},
                "ms per step of 256 pairs")


def sam_encode(quick: bool) -> Pair:
    """SAM's image encoder at the world-tiny config, batch 32, vs segment-anything on the same weights."""
    from sam_speed import reference_model

    from mmfm.compiled import compiled
    from mmfm.interop.sam import from_official
    from mmfm.models.sam import SAM, sam_config

    ref = reference_model("world-tiny")
    ours = SAM(sam_config("world-tiny")).eval()
    ours.load_state_dict(from_official(ref.state_dict()))
    x = ours.preprocess(torch.rand(32, 3, ours.image_size, ours.image_size) * 255)
    with torch.no_grad():
        diff = (ref.image_encoder(x) - ours.image_encoder(x)).abs().max().item()
    precs = _precisions()
    fast = compiled(ours.image_encoder, freeze=True)
    return Pair(f"segment-anything {importlib.metadata.version('segment_anything')}",
                {k: _in(p, ref.image_encoder, x) for k, p in precs.items()},
                {**{k: _in(p, ours.image_encoder, x) for k, p in precs.items()},
                 "fp32 compiled": _in(precs["fp32"], fast, x)}, "ms per batch of 32", {"max_abs_diff_fp32": diff})


def _decode_timer(run):
    """fn() -> decode seconds: a 33-token call minus a 1-token call (the prefill), one after the other."""
    def fn():
        t = time.perf_counter()
        run(1)
        t1 = time.perf_counter() - t
        t = time.perf_counter()
        run(33)
        return max(time.perf_counter() - t - t1, 1e-9)
    return fn


def lm_decode(quick: bool) -> Pair:
    """SmolLM2-135M-Instruct (the shipped GGUF), batch 1, prompt 128, 32 decode steps, greedy, vs
    transformers' generate on the same file's weights."""
    import transformers

    import mmfm.lm as L
    from mmfm.nn.generate import GenerationConfig, generate

    path = L.smollm2_path()
    ids = torch.randint(100, 40000, (1, 128))
    mask = torch.ones_like(ids)
    ref32 = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                               dtype=torch.float32).eval()
    refs = {"fp32": ref32, "bf16": transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).to(torch.bfloat16).eval()}
    ours = {"fp32": L.load_lm(path, "float32"), "bf16": L.load_lm(path, "bfloat16"), "int4": L.load_lm(path, "int4")}

    def hf(m):
        def run(n):
            with torch.inference_mode():
                m.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           eos_token_id=None, pad_token_id=0)
        return _decode_timer(run)

    def mm(lm):
        return _decode_timer(lambda n: generate(lm.model, ids, mask, config=GenerationConfig(max_new_tokens=n)))

    return Pair(f"transformers {transformers.__version__}", {k: hf(m) for k, m in refs.items()},
                {k: mm(m) for k, m in ours.items()}, "ms for 32 decode steps, batch 1")


def lm_llamacpp(quick: bool) -> Pair:
    """The same GGUF as shipped (Q4_1) in llama.cpp (llama-cpp-python, same threads), batch 1, prompt 128,
    32 greedy decode steps, vs mmfm with the file's 4-bit blocks (int4; and without --quick, int4 with its
    batch-1 steps compiled ahead of time, mmfm.nn.static_decode) and in bf16."""
    import llama_cpp
    import numpy as np

    import mmfm.lm as L
    from mmfm.nn.generate import GenerationConfig, generate

    path = L.smollm2_path()
    threads = torch.get_num_threads()
    llm = llama_cpp.Llama(str(path), n_threads=threads, n_threads_batch=threads, n_ctx=1024, n_batch=512,
                          verbose=False)
    prompt = np.random.default_rng(0).integers(100, 40000, 128).tolist()
    ids = torch.tensor([prompt])

    def llama(n):
        llm.reset()
        llm.eval(prompt)
        for _ in range(n - 1):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])

    ours = {k: L.load_lm(path, d).model for k, d in (("bf16", "bfloat16"), ("int4", "int4"))}
    if not quick:  # + the batch-1 steps compiled ahead of time, as `serve --compile` runs them (~30 s to compile)
        from mmfm.nn.static_decode import StaticDecoder

        ours["int4 static"] = StaticDecoder(L.load_lm(path, "int4", head="int8").model, "aot")
        ours["int4 static"].warm(1, 161)

    def mm(model):
        return _decode_timer(lambda n: generate(model, ids, torch.ones_like(ids),
                                                config=GenerationConfig(max_new_tokens=n)))

    return Pair(f"llama.cpp (llama-cpp-python {llama_cpp.__version__})", {"Q4_1": _decode_timer(llama)},
                {k: mm(m) for k, m in ours.items()}, "ms for 32 decode steps, batch 1")


def onnx_image(quick: bool) -> Pair:
    """The shipped world CLIP's image tower (conv stem, attention pooling), batch 256: the graph `mmfm export
    onnx` writes, in ONNX Runtime fp32, vs mmfm eager and compiled."""
    import onnxruntime as ort

    import mmfm
    from mmfm.compiled import compiled
    from mmfm.interop.onnx_export import export_onnx
    from mmfm.weights import path

    model = mmfm.load(path("clip-world-tiny")).float().eval()
    out = tempfile.mkdtemp()
    export_onnx(model, out)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(f"{out}/image.onnx", opts, providers=["CPUExecutionProvider"])
    x = torch.randn(256, 3, 64, 64)
    precs = _precisions()
    fast = compiled(model.encode_image, freeze=True)
    return Pair(f"ONNX Runtime {ort.__version__}", {"fp32": lambda: sess.run(None, {"pixels": x.numpy()})},
                {**{k: _in(p, model.encode_image, x) for k, p in precs.items()},
                 **{f"{k} compiled": _in(p, fast, x) for k, p in precs.items()}},
                "ms per batch of 256")


PAIRS = {"clip_encode": clip_encode, "clip_train_step": clip_train_step, "sam_encode": sam_encode,
         "lm_decode": lm_decode, "lm_llamacpp": lm_llamacpp, "onnx_image": onnx_image}


# ------------------------------------------------------------------------------------------------ timing
def _rounds(fns: dict, repeats: int) -> dict:
    times = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t = time.perf_counter()
            got = fn()
            times[key].append(got if isinstance(got, float) else time.perf_counter() - t)
    return times


REUSED_S = 2.0  # a first call this short compiled nothing (the smallest real compile here: ~4 s)


def measure(pair: Pair, repeats: int) -> dict:
    """Warm every candidate up (compiled ones: their first call compiles, timed), then time them in turn for
    `repeats` rounds. mmfm's compiled candidates run in every precision, the eager-fastest first: a
    Compiled keeps one graph per attention kernel (mmfm.compiled), so the faster kernel compiled need not be
    the faster one eagerly. A compiled candidate whose first call compiled nothing (under REUSED_S: dynamo
    reached a frame past a graph break that another precision had compiled, whose cache does not tell the
    kernels apart) is left out: its time would be that graph's under another label."""
    fns = {("ref", k): f for k, f in pair.ref.items()} | {("ours", k): f for k, f in pair.ours.items()
                                                           if not k.endswith(" compiled")}
    first, reused = {}, []
    for fn in fns.values():  # warm-up
        fn()
    eager = {k: statistics.median(v) for k, v in _rounds({k: f for k, f in fns.items() if k[0] == "ours"}, 2).items()}
    order = sorted((k for k in pair.ours if k.endswith(" compiled")),
                   key=lambda k: eager.get(("ours", k.removesuffix(" compiled")), float("inf")))
    for label in order:
        t = time.perf_counter()
        pair.ours[label]()  # compiles
        if time.perf_counter() - t < REUSED_S:
            reused.append(label)
            continue
        first[("ours", label)] = time.perf_counter() - t
        fns[("ours", label)] = pair.ours[label]
    times = _rounds(fns, repeats)
    med = {key: statistics.median(v) for key, v in times.items()}
    best = {side: min((k for k in fns if k[0] == side), key=med.get) for side in ("ref", "ours")}
    ratio = statistics.median(a / b for a, b in zip(times[best["ref"]], times[best["ours"]]))
    return {
        "reference": pair.reference, "unit": pair.unit, "ratio": ratio,
        "best_reference": best["ref"][1], "best_mmfm": best["ours"][1],
        "median_ms": {f"{side} {label}": round(v * 1000, 2) for (side, label), v in med.items()},
        "first_call_s": {f"{side} {label}": round(v, 1) for (side, label), v in first.items()
                         if "compiled" in label},
        "compiled_reusing_another_graph": reused,
        **pair.notes,
    }


def child(name: str, quick: bool, repeats: int, out: str) -> None:
    sys.path.insert(0, str(HERE))
    from _timing import tune_malloc  # noqa: F401 - the allocator setting every bench runs with

    try:
        res = measure(PAIRS[name](quick), repeats)
    except ImportError as e:
        res = {"skipped": f"{e.name or e} is not installed"}
    Path(out).write_text(json.dumps(res))


def host() -> dict:
    from mmfm.precision import cpu_name

    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE)
    return {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": datetime.date.today().isoformat(), "commit": rev.stdout.strip() or None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(PAIRS)}")
    ap.add_argument("--repeats", type=int, default=None, help="rounds per pair (default 7, quick 3)")
    ap.add_argument("--out", default=str(HERE / "run_all.json"))
    ap.add_argument("--compare", default=None, help="an earlier run's JSON: print each ratio's change")
    ap.add_argument("--child", nargs=2, metavar=("PAIR", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    repeats = a.repeats or (3 if a.quick else 7)
    if a.child:
        return child(a.child[0], a.quick, repeats, a.child[1])
    names = a.only.split(",") if a.only else list(PAIRS)
    unknown = [n for n in names if n not in PAIRS]
    if unknown:
        sys.exit(f"unknown pair(s) {unknown}; known: {', '.join(PAIRS)}")
    old = json.loads(Path(a.compare).read_text())["pairs"] if a.compare else {}
    info = host()
    print(f"{info['cpu']}, {info['threads']} threads, torch {info['torch']}, {info['date']}, {repeats} rounds")
    print("| pair | reference (best setting) | mmfm (best setting) | ref ms | mmfm ms | ratio (paired median) |"
          + (" before |" if old else ""))
    print("| --- | --- | --- | --- | --- | --- |" + (" --- |" if old else ""))
    results = {}
    for name in names:
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            cmd = [sys.executable, __file__, "--child", name, f.name, "--repeats", str(repeats)]
            proc = subprocess.run(cmd + (["--quick"] if a.quick else []), capture_output=True, text=True)
            if proc.returncode != 0:
                results[name] = {"failed": proc.stderr.strip().splitlines()[-1][:300] if proc.stderr else "?"}
                print(f"| {name} | failed: {results[name]['failed']} | | | | |", flush=True)
                continue
            r = results[name] = json.loads(Path(f.name).read_text())
        if "skipped" in r:
            print(f"| {name} | skipped: {r['skipped']} | | | | |", flush=True)
            continue
        ms = r["median_ms"]
        before = old.get(name, {}).get("ratio")
        print(f"| {name} | {r['reference']} ({r['best_reference']}) | {r['best_mmfm']} | "
              f"{ms['ref ' + r['best_reference']]:.1f} | {ms['ours ' + r['best_mmfm']]:.1f} | {r['ratio']:.2f}x |"
              + (f" {before:.2f}x |" if before else (" |" if old else "")), flush=True)
    Path(a.out).write_text(json.dumps({"host": info, "repeats": repeats, "quick": a.quick, "pairs": results},
                                      indent=2))
    print(f"written: {a.out}")


if __name__ == "__main__":
    main()
