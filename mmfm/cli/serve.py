"""`mmfm serve`: the models, the photo index and the web page behind one local server."""

from __future__ import annotations

from pathlib import Path

import typer

from mmfm.cli import options

NONE = "none"


def _pick(value: str | None, shipped: str | None) -> str | None:
    """The model to load: the given one, the shipped default, or nothing for "none"."""
    if value is not None and value.lower() == NONE:
        return None
    return value or shipped


def serve(
    llava: str = typer.Option(None, "--llava", help="A LLaVA folder for images in chat, ask and point (default: the "
                              "shipped world Molmo, a LLaVA that also points; none: off)."),
    clip: str = typer.Option(None, "--clip", help="A CLIP for embeddings, search and classify (default: the shipped "
                             "world CLIP; none: off)."),
    sam: str = typer.Option(None, "--sam", help="A SAM (mmfm / transformers folder or official .pth) for "
                            "click-to-segment (default: the shipped world SAM; none: off)."),
    index: Path = typer.Option(None, "--index", help="A photo index made by `mmfm index` (searched with --clip, "
                               "which must be the index's model)."),
    lm: str = typer.Option(None, "--lm", help="The language model for text chat: GGUF, HF Llama or mmfm folder "
                           "(default: SmolLM2-135M-Instruct; none: off)."),
    dtype: str = options.dtype_option("auto"),
    compile_lm: bool = options.COMPILE_LM,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (default: this machine only)."),
    port: int = options.bounded(8000, "--port", lo=1, hi=65535),
    api_key: str = typer.Option(None, "--api-key", envvar="MMFM_API_KEY", help="Require this bearer key on /v1."),
    max_queue: int = options.bounded(16, "--max-queue", lo=0, hi=4096, help="Requests that may wait; more get 503."),
    max_body_mb: float = typer.Option(20.0, "--max-body-mb", help="Largest request body (images are inside it)."),
    allow_files: Path = typer.Option(None, "--allow-files", help="Let image_url be a file:// URL under this folder."),
    allow_http: bool = typer.Option(False, "--allow-http", help="Let image_url be an http(s) URL (off: the server "
                                    "would fetch whatever it is told)."),
    sam_cache: Path = typer.Option(None, "--sam-cache", help="Keep SAM image embeddings here as safetensors."),
) -> None:
    """Serve the models over the OpenAI API (chat with images, embeddings) plus search, classify,
    segment, point and ask, with a web page at / (FastAPI on uvicorn)."""
    from mmfm.cli import load_model
    from mmfm.cli.search import load_clip
    from mmfm.errors import ConfigError
    from mmfm.serve.app import create_server, run
    from mmfm.serve.images import ImagePolicy
    from mmfm.weights import NAMES

    if not 0.01 <= max_body_mb <= 1024:
        raise ConfigError(f"--max-body-mb must be 0.01..1024, got {max_body_mb}")
    if allow_files is not None and not allow_files.is_dir():
        raise ConfigError(f"--allow-files {allow_files}: not a folder")
    names, models = {}, {}
    llava_name = _pick(llava, "molmo-world-tiny")
    if llava_name:
        from mmfm.models.llava import Llava

        models["llava"] = load_model(llava_name, Llava, "serve --llava",
                                     "answers", dtype=dtype if dtype in ("int4", "int8") else "float32")
        names["llava"] = Path(llava_name).name
    clip_name = _pick(clip, None)
    if clip_name or (clip is None):
        if clip is None and index is not None:  # the index's own model, unless told otherwise
            from mmfm.index.store import PhotoIndex

            clip_name = PhotoIndex(index).info["model"]
        models["clip"], _ = load_clip(clip_name)
        names["clip"] = Path(clip_name or "clip-world-tiny").name
    sam_name = _pick(sam, "sam-world-tiny" if "sam-world-tiny" in NAMES else None)
    if sam_name:
        from mmfm.models.sam import SAM

        models["sam"] = load_model(sam_name, SAM, "serve --sam")
        names["sam"] = Path(sam_name).name
    lm_name = _pick(lm, "default")
    if lm_name:
        from mmfm.cli.lm import _load

        models["lm"] = _load(lm_name, dtype)
        if compile_lm:
            options.compile_lm(models["lm"])
        names["lm"] = getattr(models["lm"], "name", Path(lm_name).name)
    app = create_server(models.get("lm"), llava=models.get("llava"), clip=models.get("clip"), sam=models.get("sam"),
                        index=index, api_key=api_key, names=names, max_queue=max_queue, max_body_mb=max_body_mb,
                        image_policy=ImagePolicy(allow_files=allow_files, allow_http=allow_http), sam_cache=sam_cache)
    loaded = ", ".join(f"{k}: {v}" for k, v in names.items()) or "no models"
    print(f"loaded {loaded}{f'; index {index}' if index else ''}", flush=True)
    run(app, host=host, port=port, max_queue=max_queue)
