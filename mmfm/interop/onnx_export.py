"""ONNX export of the embedding towers (CLIP's image and text towers, CoCa's image tower), with
PyTorch's dynamo exporter (onnxscript), checked in ONNX Runtime against mmfm's own outputs.

Any mmfm CLIP exports, conv stems and attention-pooled towers included (which transformers' CLIP
cannot express). A folder holds one `.onnx` file per tower, `onnx.json` (input / output names, image
size, mean and std, context length, the largest difference from mmfm measured at export) and the
tokenizer files when the model has a tokenizer. Batch size is dynamic; image size and text length are
the model's own (text is padded to the context length, as mmfm's tokenizers do).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
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
    import onnxruntime as ort

    module = module.eval().float()
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=[input_name],
                                    output_names=[output_name], dynamic_shapes=({0: batch},), verbose=False)
    program.save(str(path))
    check = torch.cat([example, example[:1]])  # a batch size the export did not see
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run([output_name], {input_name: check.numpy()})[0]
    with torch.no_grad():
        want = module(check).numpy()
    return float(np.abs(got - want).max())


def export_onnx(model: nn.Module, out: str | Path, seed: int = 0) -> dict:
    """Write `out/image.onnx` (and `out/text.onnx` for models with a text tower) + `out/onnx.json`;
    raises ExportError when a graph's ONNX Runtime output differs from mmfm's by more than 1e-4."""
    _need_onnx()
    from mmfm.models.clip import CLIP
    from mmfm.models.coca import CoCa

    if not isinstance(model, (CLIP, CoCa)):
        raise ConfigError(f"ONNX export covers CLIP and CoCa towers; this is a {type(model).__name__}")
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
    (out / "onnx.json").write_text(json.dumps(info, indent=2))
    worst = max(g_["max_abs_diff"] for g_ in info["graphs"].values())
    if worst > TOLERANCE:
        raise ExportError(f"ONNX export: ONNX Runtime differs from mmfm by {worst:.2e} (> {TOLERANCE}); "
                          f"the graphs are in {out} for inspection")
    return info


__all__ = ["export_onnx", "export_graph", "Tower", "TOLERANCE"]
