"""ONNX export of the embedding towers (CLIP's image and text towers, CoCa's image tower) and of SAM
(image encoder, mask decoder with segment-anything's input names, and the whole model), with PyTorch's
dynamo exporter (onnxscript), checked in ONNX Runtime against mmfm's own outputs.

Any mmfm CLIP exports, conv stems and attention-pooled towers included (which transformers' CLIP
cannot express). A folder holds one `.onnx` file per tower, `onnx.json` (input / output names, image
size, mean and std, context length, the largest difference from mmfm measured at export) and the
tokenizer files when the model has a tokenizer. Batch size is dynamic; image size and text length are
the model's own (text is padded to the context length, as mmfm's tokenizers do).

SAM's folder follows segment-anything's split (scripts/export_onnx_model.py): `encoder.onnx` embeds a
resized image once, `decoder.onnx` takes that embedding and one prompt under the reference's names
(image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size -> masks,
iou_predictions, low_res_masks), so code written for segment-anything's ONNX decoder runs on it; and
`sam.onnx` is both in one graph (a resized image and a prompt in, masks at the original size out).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmfm.errors import ConfigError, DependencyError, ExportError

TOLERANCE = 1e-4  # fp32, max abs difference between ONNX Runtime and mmfm (issue 30's parity bar)


class Tower(nn.Module):
    """One encoder of a model as a graph: `encode_image` (pixels (B, 3, S, S), preprocessed) or
    `encode_text` (input_ids (B, T) int64) -> embeddings (B, D), not normalized."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(x)


def _need_onnx():
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise DependencyError(f"ONNX export needs onnx, onnxscript and onnxruntime ({e.name} is missing): "
                              f"pip install onnx onnxscript onnxruntime") from e


def export_graph(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str) -> float:
    """Export `module(example)` with a dynamic batch, run it in ONNX Runtime on another batch size and
    return the max abs difference from the module's own output."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    check = torch.cat([example, example[:1]])  # a batch size the export did not see
    return _export_checked(module, [(example,), (check,)], path, [input_name], [output_name], ({0: batch},))


class SamDecoder(nn.Module):
    """segment-anything's ONNX decoder contract, on mmfm's SAM.

    image_embeddings (1, D, h, w); point_coords (1, N, 2) in the resized frame; point_labels (1, N)
    float: 1 foreground, 0 background, 2 / 3 a box's top-left / bottom-right corner, -1 padding (append
    a (0, 0) point labelled -1 when there is no box, as the reference's notebook does); mask_input
    (1, 1, 4h, 4w) and has_mask_input (1,) (0 or 1); orig_im_size (2,) float (H, W).
    -> masks (1, C, H, W) logits at the original size, iou_predictions (1, C), low_res_masks (1, C, 4h, 4w);
    C = 4 (every mask token, as the reference's default), or 1 with `single_mask` (the reference's
    --return-single-mask: mask 0 for several points, the best of 1..3 by predicted IoU for one).
    """

    def __init__(self, sam: nn.Module, single_mask: bool = False):
        super().__init__()
        self.sam, self.single_mask, self.size = sam, single_mask, sam.image_size

    def _dense(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        pe = self.sam.prompt_encoder
        return has_mask_input * pe.mask_downscaling(mask_input) + \
            (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def _upscale(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        """SAM.postprocess_masks with the sizes read from a tensor (data-dependent shapes in the graph)."""
        s = self.size
        masks = F.interpolate(masks, (s, s), mode="bilinear", align_corners=False)
        size = orig_im_size.to(torch.float32)
        resized = torch.floor(size * (s / size.max()) + 0.5).to(torch.int64)  # sam_resize_shape
        rh, rw = resized[0].item(), resized[1].item()
        torch._check(rh >= 1), torch._check(rw >= 1), torch._check(rh <= s), torch._check(rw <= s)
        masks = masks[..., :rh, :rw]
        h, w = orig_im_size[0].to(torch.int64).item(), orig_im_size[1].to(torch.int64).item()
        torch._check(h >= 1), torch._check(w >= 1)
        return F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False)

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size):
        sam = self.sam
        masks, iou = sam.mask_decoder.predict_masks(image_embeddings, sam.prompt_encoder.get_dense_pe(),
                                                    sam.prompt_encoder.embed_points(point_coords, point_labels,
                                                                                     pad=False),
                                                    self._dense(mask_input, has_mask_input))
        if self.single_mask:  # the reference's select_masks: no control flow on the number of points
            reweight = torch.zeros_like(iou[:1])
            reweight[:, 0] = 1000.0
            best = torch.argmax(iou + (point_coords.shape[1] - 2.5) * reweight, dim=1)
            rows = torch.arange(masks.shape[0])
            masks, iou = masks[rows, best][:, None], iou[rows, best][:, None]
        return self._upscale(masks, orig_im_size), iou, masks


class SamEncoder(nn.Module):
    """image (1, 3, h, w): RGB 0..255 resized so its longest side is the model's image size
    (ResizeLongestSide) -> image_embeddings (1, D, h', w'). Normalisation and padding are in the graph."""

    def __init__(self, sam: nn.Module):
        super().__init__()
        self.sam = sam

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.sam.encode_image(self.sam.preprocess(image))


class SamWhole(nn.Module):
    """The encoder and the decoder in one graph: image (1, 3, h, w) as SamEncoder, then SamDecoder's
    prompt inputs -> SamDecoder's outputs."""

    def __init__(self, sam: nn.Module, single_mask: bool = False):
        super().__init__()
        self.encoder, self.decoder = SamEncoder(sam), SamDecoder(sam, single_mask)

    def forward(self, image, point_coords, point_labels, mask_input, has_mask_input, orig_im_size):
        return self.decoder(self.encoder(image), point_coords, point_labels, mask_input, has_mask_input,
                            orig_im_size)


DECODER_INPUTS = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]
DECODER_OUTPUTS = ["masks", "iou_predictions", "low_res_masks"]


def _export_checked(module: nn.Module, examples: list[tuple], path: Path, input_names: list[str],
                    output_names: list[str], dynamic_shapes) -> float:
    """Export `module(*examples[0])`, then run every example in ONNX Runtime (the later ones with shapes
    and values the export did not see) and return the max abs difference from the module's outputs."""
    import onnxruntime as ort

    module = module.eval().float()
    with torch.no_grad():
        program = torch.onnx.export(module, examples[0], dynamo=True, input_names=input_names,
                                    output_names=output_names, dynamic_shapes=dynamic_shapes, verbose=False)
    program.save(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for args in examples:
        got = sess.run(output_names, {n: a.numpy() for n, a in zip(input_names, args)})
        with torch.no_grad():
            want = module(*args)
        want = want if isinstance(want, tuple) else (want,)
        for g_, w_ in zip(got, want):
            if g_.shape != tuple(w_.shape):
                raise ExportError(f"{path.name}: ONNX Runtime gave shape {g_.shape}, mmfm {tuple(w_.shape)}")
            worst = max(worst, float(np.abs(g_ - w_.numpy()).max()))
    return worst


def _sam_examples(sam: nn.Module, seed: int) -> tuple[list, list]:
    """Encoder inputs of two sizes (landscape and portrait) and prompts of several kinds: one click with
    its padding point, clicks and a box, a previous mask, an original size of another aspect."""
    g = torch.Generator().manual_seed(seed)
    s, e = sam.image_size, sam.config.embedding_size
    images = [(torch.rand(1, 3, s * 3 // 4, s, generator=g) * 255,), (torch.rand(1, 3, s, s // 2, generator=g) * 255,)]
    emb = torch.randn(1, sam.config.prompt_dim, e, e, generator=g)
    no_mask, mask = torch.zeros(1, 1, 4 * e, 4 * e), torch.randn(1, 1, 4 * e, 4 * e, generator=g)
    f = lambda *v: torch.tensor(v, dtype=torch.float32)  # noqa: E731 - f(a, b) is (2,), f([...]) is (1, ...)
    prompts = [
        (f([[s * 0.3, s * 0.4], [0.0, 0.0]]), f([1.0, -1.0]), no_mask, f(0.0), f(3 * s, 4 * s)),
        (f([[s * 0.5, s * 0.2], [s * 0.1, s * 0.6], [s * 0.05, s * 0.1], [s * 0.7, s * 0.6]]), f([1.0, 0.0, 2.0, 3.0]),
         mask, f(1.0), f(2 * s + 3, s - 5)),
        (f([[s * 0.9, s * 0.1], [0.0, 0.0]]), f([0.0, -1.0]), mask, f(1.0), f(s // 2, s)),
    ]
    return images, [(emb, *p) for p in prompts]


def export_sam_onnx(model: nn.Module, out: str | Path, single_mask: bool = False, seed: int = 0) -> dict:
    """Write `out/encoder.onnx`, `out/decoder.onnx` (segment-anything's names), `out/sam.onnx` (both) and
    `out/onnx.json`; raises ExportError when ONNX Runtime differs from mmfm by more than 1e-4."""
    _need_onnx()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    c = model.config
    images, decodes = _sam_examples(model, seed)
    points = torch.export.Dim("num_points", min=1, max=256)
    height, width = torch.export.Dim("height", min=1, max=c.image_size), torch.export.Dim("width", min=1,
                                                                                           max=c.image_size)
    image_dims = {2: height, 3: width}
    prompt_dims = ({1: points}, {1: points}, None, None, None)
    info: dict = {"model": "SAM", "graphs": {}, "image_size": c.image_size, "pixel_mean": list(c.pixel_mean),
                  "pixel_std": list(c.pixel_std), "mask_threshold": model.mask_threshold,
                  "single_mask": single_mask,
                  "preprocess": "RGB 0..255, longest side resized to image_size (bilinear), shape (1, 3, h, w); "
                                "point coordinates scaled the same way; append a (0, 0) point labelled -1 "
                                "when there is no box"}
    diff = _export_checked(SamEncoder(model), images, out / "encoder.onnx", ["image"], ["image_embeddings"],
                           (image_dims,))
    info["graphs"]["encoder"] = {"file": "encoder.onnx", "inputs": ["image"], "outputs": ["image_embeddings"],
                                 "max_abs_diff": diff}
    diff = _export_checked(SamDecoder(model, single_mask), decodes, out / "decoder.onnx", DECODER_INPUTS,
                           DECODER_OUTPUTS, (None, *prompt_dims))
    info["graphs"]["decoder"] = {"file": "decoder.onnx", "inputs": DECODER_INPUTS, "outputs": DECODER_OUTPUTS,
                                 "max_abs_diff": diff}
    whole = [(images[i % 2][0], *d[1:]) for i, d in enumerate(decodes)]
    names = ["image", *DECODER_INPUTS[1:]]
    diff = _export_checked(SamWhole(model, single_mask), whole, out / "sam.onnx", names, DECODER_OUTPUTS,
                           (image_dims, *prompt_dims))
    info["graphs"]["sam"] = {"file": "sam.onnx", "inputs": names, "outputs": DECODER_OUTPUTS, "max_abs_diff": diff}
    return _finish(out, info)


def _finish(out: Path, info: dict) -> dict:
    (out / "onnx.json").write_text(json.dumps(info, indent=2))
    worst = max(g_["max_abs_diff"] for g_ in info["graphs"].values())
    if worst > TOLERANCE:
        raise ExportError(f"ONNX export: ONNX Runtime differs from mmfm by {worst:.2e} (> {TOLERANCE}); "
                          f"the graphs are in {out} for inspection")
    return info


def export_onnx(model: nn.Module, out: str | Path, seed: int = 0, single_mask: bool = False) -> dict:
    """Write `out/image.onnx` (and `out/text.onnx` for models with a text tower) + `out/onnx.json`;
    raises ExportError when a graph's ONNX Runtime output differs from mmfm's by more than 1e-4."""
    _need_onnx()
    from mmfm.models.clip import CLIP
    from mmfm.models.coca import CoCa
    from mmfm.models.sam import SAM

    if isinstance(model, SAM):
        return export_sam_onnx(model, out, single_mask=single_mask, seed=seed)
    if not isinstance(model, (CLIP, CoCa)):
        raise ConfigError(f"ONNX export covers CLIP and CoCa towers and SAM; this is a {type(model).__name__}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    c = model.config
    g = torch.Generator().manual_seed(seed)
    size = c.vision.image_size
    pixels = torch.randn(2, 3, size, size, generator=g)
    info: dict = {"model": type(model).__name__, "opset": "dynamo exporter default", "graphs": {},
                  "image_size": size, "image_mean": list(c.image_mean), "image_std": list(c.image_std)}
    diff = export_graph(Tower(model, "encode_image"), pixels, out / "image.onnx", "pixels", "image_embeds")
    info["graphs"]["image"] = {"file": "image.onnx", "input": "pixels", "output": "image_embeds",
                               "max_abs_diff": diff}
    if isinstance(model, CLIP):
        t = c.text
        ids = torch.randint(1, t.vocab_size, (2, t.context_length), generator=g)
        ids[:, 0] = t.sot_token_id
        ids[0, 5:] = t.pad_token_id
        ids[0, 4] = t.eot_token_id
        ids[1, -1] = t.eot_token_id
        diff = export_graph(Tower(model, "encode_text"), ids, out / "text.onnx", "input_ids", "text_embeds")
        info["graphs"]["text"] = {"file": "text.onnx", "input": "input_ids", "output": "text_embeds",
                                  "max_abs_diff": diff, "context_length": t.context_length}
        info["logit_scale"] = float(model.scale().detach())
    if getattr(model, "tokenizer", None) is not None and hasattr(model.tokenizer, "save"):
        model.tokenizer.save(out)  # vocab.json + merges.txt: the graphs take token ids
    return _finish(out, info)


__all__ = ["export_onnx", "export_sam_onnx", "export_graph", "Tower", "SamDecoder", "SamEncoder", "SamWhole",
           "DECODER_INPUTS", "DECODER_OUTPUTS", "TOLERANCE"]
