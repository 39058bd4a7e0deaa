"""The shipped world CLIP's towers: mmfm eager (fp32, and bf16 autocast with each attention kernel)
against the same towers exported with `mmfm export onnx` in ONNX Runtime (fp32, same thread count),
alternating in one process, best of N.

    python bench/onnx_speed.py [--batch 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    import onnxruntime as ort

    import mmfm
    from mmfm.interop.onnx_export import export_onnx
    from mmfm.precision import PRECISIONS, cpu_name
    from mmfm.weights import path

    model = mmfm.load(path("clip-world-tiny")).eval()
    out = tempfile.mkdtemp()
    info = export_onnx(model, out)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = {k: ort.InferenceSession(f"{out}/{k}.onnx", opts, providers=["CPUExecutionProvider"])
            for k in ("image", "text")}
    c = model.config
    pixels = torch.randn(a.batch, 3, c.vision.image_size, c.vision.image_size)
    ids = torch.randint(3, c.text.vocab_size, (a.batch, c.text.context_length))
    inputs = {"image": ("pixels", pixels, model.encode_image), "text": ("input_ids", ids, model.encode_text)}
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, onnxruntime "
          f"{ort.__version__}, batch {a.batch}, best of {a.repeats}; export parity: "
          + ", ".join(f"{k} {g['max_abs_diff']:.1e}" for k, g in info["graphs"].items()))
    for tower, (name, x, encode) in inputs.items():
        cases = {"ONNX Runtime fp32": lambda s=sess[tower], n=name, x=x: s.run(None, {n: x.numpy()})}
        for p in ("fp32", "bf16", "bf16-math"):
            def run(p=PRECISIONS[p], x=x, encode=encode):
                with torch.inference_mode(), p.context():
                    encode(x)
            cases[f"mmfm {PRECISIONS[p].label}"] = run
        times = {k: [] for k in cases}
        for fn in cases.values():
            fn()
        for _ in range(a.repeats):
            for k, fn in cases.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
        base = min(times["mmfm fp32"])
        print(f"\n| {tower} tower | ms | vs mmfm fp32 |\n| --- | --- | --- |")
        for k, v in times.items():
            print(f"| {k} | {min(v) * 1000:.0f} | {base / min(v):.2f}x |")


if __name__ == "__main__":
    main()
