"""`mmfm chat` and `mmfm serve-llm`."""

from __future__ import annotations

import sys

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
