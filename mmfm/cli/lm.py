"""`mmfm chat`, `mmfm serve-llm` and `mmfm lora extract`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from mmfm.cli import options


def _load(model: str | None, dtype: str):
    from mmfm.lm import default, load_lm

    lm = default(dtype) if model in (None, "default") else load_lm(model, dtype=dtype)
    options.say_dtype(dtype)  # after loading: a file refused is one error line, nothing else
    return lm


def chat(
    prompt: str = typer.Argument(..., help="What to ask."),
    model: str = typer.Option(
        None, "--model", help="GGUF file, HF Llama folder or mmfm folder (default: SmolLM2-135M-Instruct)."
    ),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p"),
    max_tokens: int = options.bounded(256, "--max-tokens", lo=1, hi=32768, help="Most new tokens."),
    system: str = typer.Option(None, "--system", help="System message."),
    seed: int = typer.Option(None, "--seed", help="Seed for sampling."),
    dtype: str = options.dtype_option("auto"),
) -> None:
    """Ask the language model; the answer streams as it is generated."""
    from mmfm.errors import InvalidText
    from mmfm.nn.generate import sampling_config
    from mmfm.text.tokenizer import check_utf8

    if not prompt.strip():
        raise InvalidText("the prompt is empty; write a question, e.g. mmfm chat \"What is the capital of France?\"")
    check_utf8(prompt)
    sampling_config(max_tokens, temperature=temperature, top_p=top_p, seed=seed)  # bad values: before loading
    lm = _load(model, dtype)
    for piece in lm.stream(prompt, system=system, max_new_tokens=max_tokens, temperature=temperature,
                           top_p=top_p, seed=seed):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def serve_llm(
    port: int = options.bounded(8000, "--port", lo=1, hi=65535),
    host: str = typer.Option("127.0.0.1", "--host"),
    model: str = typer.Option(
        None, "--model", help="GGUF file, HF Llama folder or mmfm folder (default: SmolLM2-135M-Instruct)."
    ),
    dtype: str = options.dtype_option("auto"),
    api_key: str = typer.Option(None, "--api-key", envvar="MMFM_API_KEY", help="Require this bearer key."),
    max_queue: int = typer.Option(16, "--max-queue", help="Requests that may wait for the model; more get 503."),
    compile_lm: bool = options.COMPILE_LM,
) -> None:
    """Serve the language model over the OpenAI chat-completions API (FastAPI on uvicorn)."""
    from mmfm.errors import ConfigError
    from mmfm.serve.openai_api import serve

    if not 0 <= max_queue <= 4096:
        raise ConfigError(f"--max-queue must be 0..4096, got {max_queue}")
    lm = _load(model, dtype)
    if compile_lm:
        options.compile_lm(lm)
    serve(lm, host=host, port=port, api_key=api_key, max_queue=max_queue)


lora_app = typer.Typer(help="LoRA adapters of a model's language model.", no_args_is_help=True)


@lora_app.command(name="extract")
def lora_extract(
    model: str = typer.Argument(..., help="A LLaVA or Molmo2 folder whose whole LM was trained (--train-lm, "
                                "--lora-rank 0)."),
    out: Path = typer.Option(..., "--out", help="Folder for the model with adapters (no LM weights)."),
    rank: int = options.bounded(32, "--rank", lo=1, hi=4096, help="LoRA rank of every adapter."),
    dtype: str = typer.Option("float32", "--dtype", help="Adapters stored in float32 or bfloat16 (half the "
                              "folder; the model loads in any dtype either way)."),
) -> None:
    """A whole-LM fine-tune as rank-r LoRA adapters over the package's SmolLM2 (truncated SVD of each
    layer's change, as mergekit's extract-lora): a folder of adapters instead of the whole LM. Prints
    what is lost: the adapters' relative errors and the untargeted LM weights (embeddings, norms) put
    back to SmolLM2's."""
    import json

    import torch

    import mmfm
    from mmfm.cli import output_file
    from mmfm.errors import ConfigError
    from mmfm.lm.frozen_base import cast_adapters, to_adapters
    from mmfm.models.llava import Llava
    from mmfm.models.molmo2 import Molmo2
    from mmfm.train.llava import LORA_TARGETS
    from mmfm.train.molmo2 import LORA_TARGETS as MOLMO2_TARGETS

    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"--dtype {dtype!r}: float32 or bfloat16")
    output_file(out / "config.json")
    m = mmfm.load(model)
    if not isinstance(m, (Llava, Molmo2)):
        raise ConfigError(f"{model}: a {type(m).__name__}; adapters are extracted from a LLaVA or a Molmo2")
    lost = to_adapters(m, rank, LORA_TARGETS if isinstance(m, Llava) else MOLMO2_TARGETS)
    cast_adapters(m, getattr(torch, dtype))
    m.save_pretrained(out)
    err, dropped = lost["adapter_rel_error"], lost["dropped_rel_change"]
    summary = {"out": str(out), "rank": rank, "dtype": dtype, "adapters": len(err),
               "adapter_rel_error_mean": round(sum(err.values()) / len(err), 4),
               "adapter_rel_error_max": round(max(err.values()), 4),
               "dropped_rel_change_max": {k: round(v, 4) for k, v in list(dropped.items())[:3]},
               "folder_mb": round(sum(f.stat().st_size for f in out.iterdir()) / 1e6, 1)}
    typer.echo(json.dumps(summary))
