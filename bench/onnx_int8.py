"""ONNX Runtime int8 (dynamic quantization of the exported graphs' weights) against the fp32 graphs and
mmfm eager, on the shipped world models: speed and what it costs on the world.

- CLIP (`clip-world-tiny`): zero-shot top-1 on new scenes of seen and of held-out compositions (one
  template, 56 classes), the classifier built by the same graph kind as the images are encoded with;
  image tower time at batch 256.
- SAM (`sam-world-tiny`): one click at each object's centre on held-out scenes, mIoU of the mask SAM
  rates best of three and of the single-mask output; encoder time per image and decoder time per click.

    python bench/onnx_int8.py [--n 1000] [--scenes 200] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from _timing import timed  # bench/ is on sys.path when a script runs


def quantize(src: Path, dst: Path) -> Path:
    """Weights to int8 per channel, activations quantized on the fly (ONNX Runtime's dynamic mode, the one
    it recommends for transformers on CPU); shapes inferred first as its pre-processing step does."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, per_channel=True)
    return dst


def session(file: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(file), opts, providers=["CPUExecutionProvider"])


class OrtCLIP:
    """The two graphs behind CLIP's encode_image / encode_text, so mmfm's zero-shot code runs on them."""

    def __init__(self, image, text, config):
        self.image, self.text, self.config = image, text, config

    def encode_image(self, x, normalize=True):
        f = torch.from_numpy(self.image.run(None, {"pixels": x.numpy()})[0])
        return torch.nn.functional.normalize(f, dim=-1) if normalize else f

    def encode_text(self, ids, normalize=True):
        f = torch.from_numpy(self.text.run(None, {"input_ids": ids.numpy()})[0])
        return torch.nn.functional.normalize(f, dim=-1) if normalize else f


def best_ms(fn, repeats: int) -> float:
    return timed(fn, repeats)[0] * 1000


def bench_clip(out: Path, n: int, repeats: int) -> None:
    import mmfm
    from mmfm.eval.clip_world import SINGLE_TEMPLATE, classification_set
    from mmfm.eval.zeroshot import build_classifier, encode_images, evaluate
    from mmfm.interop.onnx_export import export_onnx
    from mmfm.weights import path
    from mmfm.world import class_names

    model = mmfm.load(path("clip-world-tiny")).float().eval()
    export_onnx(model, out)
    graphs = {"ONNX Runtime fp32": OrtCLIP(session(out / "image.onnx"), session(out / "text.onnx"), model.config)}
    graphs["ONNX Runtime int8"] = OrtCLIP(session(quantize(out / "image.onnx", out / "image.int8.onnx")),
                                          session(quantize(out / "text.onnx", out / "text.int8.onnx")), model.config)
    sizes = {k: (out / f"{k}.onnx").stat().st_size / 2**20 for k in ("image", "text", "image.int8", "text.int8")}
    sets = {name: classification_set(model, split, n) for name, split in (("seen", "test"), ("heldout", "heldout"))}
    x256 = sets["seen"][0][:256]
    rows = {"mmfm eager fp32": model, **graphs}
    print(f"\nCLIP (clip-world-tiny): graph sizes fp32 image {sizes['image']:.1f} MB + text {sizes['text']:.1f} MB, "
          f"int8 {sizes['image.int8']:.1f} + {sizes['text.int8']:.1f} MB; {n} scenes per split, one template")
    print("\n| CLIP | zero-shot top-1 seen | held-out | image tower, batch 256 (ms) |\n| --- | --- | --- | --- |")
    for name, m in rows.items():
        with torch.inference_mode():
            clf = build_classifier(m, model.tokenizer, class_names(), SINGLE_TEMPLATE)
            acc = {k: evaluate(encode_images(m, x), y, clf)["top1"] for k, (x, y) in sets.items()}
            ms = best_ms(lambda m=m: m.encode_image(x256), repeats)
        print(f"| {name} | {acc['seen']:.3f} | {acc['heldout']:.3f} | {ms:.0f} |")


def bench_sam(out: Path, scenes: int, repeats: int) -> None:
    import mmfm
    from mmfm.eval.sam_world import center_point
    from mmfm.interop.onnx_export import DECODER_INPUTS, export_onnx
    from mmfm.vision.masks import mask_ious
    from mmfm.weights import path
    from mmfm.world import World
    from mmfm.world.scene import render

    model = mmfm.load(path("sam-world-tiny")).float().eval()
    export_onnx(model, out)
    size = model.image_size
    world = World(seed=0, size=size)
    rendered = [render(world.scene("test", i), size) for i in range(scenes)]
    encoders = {"fp32": session(out / "encoder.onnx"),
                "int8": session(quantize(out / "encoder.onnx", out / "encoder.int8.onnx"))}
    decoders = {"fp32": session(out / "decoder.onnx"),
                "int8": session(quantize(out / "decoder.onnx", out / "decoder.int8.onnx"))}
    e = model.config.embedding_size
    no_mask, no_flag = np.zeros((1, 1, 4 * e, 4 * e), np.float32), np.zeros(1, np.float32)
    orig = np.array([size, size], np.float32)

    def run(enc, dec):
        """(best-of-3 IoUs, single-mask IoUs) over every object of every scene."""
        best, single = [], []
        for r in rendered:
            keep = np.flatnonzero(r.areas >= 12)
            image = r.image.transpose(2, 0, 1)[None].astype(np.float32)
            if enc is None:
                with torch.inference_mode():
                    emb = model.encode_image(model.preprocess(torch.from_numpy(image))).numpy()
            else:
                emb = enc.run(None, {"image": image})[0]
            for k in keep:
                gt = torch.from_numpy(r.masks[k])
                x, y = center_point(gt)
                feeds = dict(zip(DECODER_INPUTS, [emb, np.array([[[x, y], [0, 0]]], np.float32),
                                                  np.array([[1, -1]], np.float32), no_mask, no_flag, orig]))
                if dec is None:
                    with torch.inference_mode():
                        low, iou = model.mask_decoder.predict_masks(
                            torch.from_numpy(emb), model.prompt_encoder.get_dense_pe(),
                            *model.prompt_encoder((torch.tensor([[[x, y]]]), torch.tensor([[1]])), None, None))
                        masks = model.postprocess_masks(low, (size, size), (size, size)).numpy()
                        iou = iou.numpy()
                else:
                    masks, iou, _ = dec.run(None, feeds)
                ious = mask_ious(torch.from_numpy(masks[0] > model.mask_threshold), gt[None].expand(4, -1, -1))
                best.append(float(ious[1 + int(iou[0, 1:].argmax())]))
                single.append(float(ious[0]))
        return np.array(best), np.array(single)

    image0 = rendered[0].image.transpose(2, 0, 1)[None].astype(np.float32)
    emb0 = encoders["fp32"].run(None, {"image": image0})[0]
    feeds0 = dict(zip(DECODER_INPUTS, [emb0, np.array([[[10, 10], [0, 0]]], np.float32),
                                       np.array([[1, -1]], np.float32), no_mask, no_flag, orig]))
    print(f"\nSAM (sam-world-tiny): {scenes} held-out scenes, one centre click per object (area >= 12 px)")
    print("\n| SAM | mIoU best of 3 | mIoU single | encoder ms / image | decoder ms / click |")
    print("| --- | --- | --- | --- | --- |")
    with torch.inference_mode():
        eager_enc = best_ms(lambda: model.encode_image(model.preprocess(torch.from_numpy(image0))), repeats)
    best, single = run(None, None)
    print(f"| mmfm eager fp32 | {best.mean():.4f} | {single.mean():.4f} | {eager_enc:.1f} | |")
    for q in ("fp32", "int8"):
        best, single = run(encoders[q], decoders[q])
        enc_ms = best_ms(lambda q=q: encoders[q].run(None, {"image": image0}), repeats)
        dec_ms = best_ms(lambda q=q: decoders[q].run(None, feeds0), repeats)
        print(f"| ONNX Runtime {q} | {best.mean():.4f} | {single.mean():.4f} | {enc_ms:.1f} | {dec_ms:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000, help="CLIP: scenes per split")
    ap.add_argument("--scenes", type=int, default=200, help="SAM: held-out scenes")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    import onnxruntime as ort

    from mmfm.precision import cpu_name

    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, onnxruntime {ort.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        bench_clip(Path(tmp) / "clip", a.n, a.repeats)
        bench_sam(Path(tmp) / "sam", a.scenes, a.repeats)


if __name__ == "__main__":
    main()
