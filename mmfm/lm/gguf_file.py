"""GGUF files (llama.cpp's format) -> DecoderConfig + state dict + tokenizer, dequantized with the
`gguf` package (F32, F16, BF16, Q8_0, Q4_0, Q4_1 and every other type it knows). The header is
parsed here with bounds checks (a corrupt or cut file is a CheckpointError, never a giant allocation),
and tensors are dequantized a few rows at a time straight into the model's tensors, so loading
needs little memory beyond the weights themselves.

llama.cpp's converter stores Llama's q/k projections with the rows of each head interleaved for
its rotary kernel; they are permuted back here to the rotate-half layout mmfm (and HF) use.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmfm.errors import CheckpointError, DependencyError
from mmfm.lm.tokenizer import LMTokenizer
from mmfm.nn.decoder import DecoderConfig
from mmfm.runtime import release_freed_memory

SUPPORTED_ARCHS = ("llama",)


# GGUF value types -> struct format (numbers), per the GGUF spec.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_NP = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32, 7: np.bool_,
       10: np.uint64, 11: np.int64, 12: np.float64}
MAX_NESTING = 8  # llama.cpp's files nest arrays one deep; a deeper header is corrupt or hostile
_STRING, _ARRAY = 8, 9
# Limits against a malicious or broken header asking for absurd allocations.
MAX_COUNT, MAX_STRING, MAX_DIMS = 50_000_000, 64 << 20, 4


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (rows, ..., ne0): GGUF lists dims innermost first
    qtype: int
    offset: int  # absolute, in the file
    nbytes: int


class GGUFHeader:
    """Metadata and tensor table of a GGUF (v2/v3) file, read with struct and bounds checks; the
    tensor data itself is read later, a few rows at a time."""

    def __init__(self, path: Path):
        self.path = path
        self.size = path.stat().st_size
        with open(path, "rb") as f:
            self.f = f
            magic = f.read(4)
            if magic != b"GGUF":
                raise CheckpointError(f"{path}: not a GGUF file (it starts with {magic!r}, a GGUF file with b'GGUF')")
            version = self._num("I")
            if version not in (2, 3):
                raise CheckpointError(f"{path}: GGUF version {version} is not supported (2 or 3)")
            n_tensors, n_kv = self._num("Q"), self._num("Q")
            if n_tensors > 1_000_000 or n_kv > 1_000_000:
                raise CheckpointError(f"{path}: implausible header ({n_tensors} tensors, {n_kv} keys); corrupt file")
            self.meta = {}
            for _ in range(n_kv):
                key = self._str()
                self.meta[key] = self._value(self._num("I"))
            infos = []
            for _ in range(n_tensors):
                name, nd = self._str(), self._num("I")
                if nd > MAX_DIMS:
                    raise CheckpointError(f"{path}: tensor {name!r} has {nd} dims; corrupt file")
                dims = [self._num("Q") for _ in range(nd)]
                infos.append((name, dims, self._num("I"), self._num("Q")))
            align = int(self.meta.get("general.alignment", 32))
            data_start = -(-f.tell() // align) * align
        self.f = None
        self.tensors: dict[str, TensorInfo] = {}
        for name, dims, qtype, off in infos:
            block, type_size = _quant_size(qtype, name, path)
            n = int(np.prod(dims)) if dims else 1
            if dims[0] % block:
                raise CheckpointError(f"{path}: tensor {name!r} rows of {dims[0]} are not whole {block}-blocks")
            info = TensorInfo(name, tuple(reversed(dims)), qtype, data_start + off, n // block * type_size)
            if info.offset + info.nbytes > self.size:
                raise CheckpointError(f"{path}: truncated GGUF file: tensor {name!r} ends at byte "
                                      f"{info.offset + info.nbytes:,} of {self.size:,}")
            self.tensors[name] = info

    def _read(self, n: int) -> bytes:
        b = self.f.read(n)
        if len(b) != n:
            raise CheckpointError(f"{self.path}: truncated GGUF file (header ends early at byte {self.f.tell():,})")
        return b

    def _num(self, fmt: str):
        return struct.unpack("<" + fmt, self._read(struct.calcsize(fmt)))[0]

    def _str(self) -> str:
        n = self._num("Q")
        if n > MAX_STRING:
            raise CheckpointError(f"{self.path}: a {n:,}-byte string in the header; corrupt file")
        return self._read(n).decode("utf-8", errors="replace")

    def _value(self, vtype: int, depth: int = 0):
        if depth > MAX_NESTING:
            raise CheckpointError(f"{self.path}: header arrays nested over {MAX_NESTING} deep; corrupt file")
        if vtype in _SCALARS:
            return self._num(_SCALARS[vtype])
        if vtype == _STRING:
            return self._str()
        if vtype == _ARRAY:
            itype, n = self._num("I"), self._num("Q")
            if n > MAX_COUNT:
                raise CheckpointError(f"{self.path}: an array of {n:,} items in the header; corrupt file")
            if itype in _NP:
                return np.frombuffer(self._read(n * np.dtype(_NP[itype]).itemsize), dtype=_NP[itype]).tolist()
            return [self._value(itype, depth + 1) for _ in range(n)]
        raise CheckpointError(f"{self.path}: unknown GGUF value type {vtype}; corrupt file")

    def read_into(self, name: str, out: torch.Tensor, chunk_bytes: int = 2 << 20) -> torch.Tensor:
        """Dequantize tensor `name` into `out` (any dtype, shape (rows, ne0)) a few rows at a time, so
        the float32 copy never exists whole (the embedding alone would be 113 MB)."""
        from gguf import GGMLQuantizationType, quants

        if name not in self.tensors:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing")
        t = self.tensors[name]
        shape = (int(np.prod(t.shape[:-1])) if len(t.shape) > 1 else 1, t.shape[-1])
        if tuple(out.shape) != shape:
            raise CheckpointError(
                f"{self.path}: tensor {name!r} has shape {t.shape}, the model expects {tuple(out.shape)}"
            )
        row_bytes = t.nbytes // shape[0]
        step = max(1, chunk_bytes // max(row_bytes, 1))
        qtype = GGMLQuantizationType(t.qtype)
        with open(self.path, "rb") as f:
            f.seek(t.offset)
            for r0 in range(0, shape[0], step):
                rows = min(step, shape[0] - r0)
                buf = bytearray(rows * row_bytes)  # writable, so F32 rows need no extra copy
                if f.readinto(buf) != len(buf):
                    raise CheckpointError(f"{self.path}: truncated GGUF file (tensor {name} is cut short)")
                raw = np.frombuffer(buf, dtype=np.uint8).reshape(rows, row_bytes)
                try:
                    w = quants.dequantize(raw, qtype)
                except Exception as e:  # noqa: BLE001 - an unimplemented type, a short buffer
                    raise CheckpointError(f"{self.path}: tensor {name} ({qtype.name}) cannot be read ({e})") from e
                out[r0 : r0 + rows] = torch.from_numpy(
                    np.ascontiguousarray(w, dtype=np.float32).reshape(rows, shape[1])
                )
        return out

    def read_q4(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A Q4_0 / Q4_1 tensor as it is stored, not dequantized: (codes (rows, cols) uint8 in 0..15,
        scale (rows, cols / 32) float32, offset (rows, cols / 32) float32) with w = scale * code + offset
        (Q4_1's d and m; Q4_0 is d * (code - 8), so its offset is -8 d). ggml's block: fp16 d, [fp16 m],
        16 bytes whose low nibbles are values 0..15 of the block and high nibbles values 16..31."""
        t = self.tensors.get(name)
        if t is None:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing")
        kind = {2: "Q4_0", 3: "Q4_1"}.get(t.qtype)
        if kind is None:
            raise CheckpointError(f"{self.path}: tensor {name!r} is not 4-bit (ggml type {t.qtype}); "
                                  f"int4 runs Q4_0 / Q4_1 files")
        rows, cols = (int(np.prod(t.shape[:-1])) if len(t.shape) > 1 else 1), t.shape[-1]
        head = 2 if kind == "Q4_0" else 4
        with open(self.path, "rb") as f:
            f.seek(t.offset)
            raw = np.frombuffer(f.read(t.nbytes), dtype=np.uint8)
        if raw.size != t.nbytes:
            raise CheckpointError(f"{self.path}: truncated GGUF file (tensor {name} is cut short)")
        blocks = raw.reshape(rows * cols // 32, head + 16)
        d = blocks[:, :2].copy().view(np.float16).astype(np.float32).reshape(rows, cols // 32)
        m = (blocks[:, 2:4].copy().view(np.float16).astype(np.float32).reshape(rows, cols // 32) if kind == "Q4_1"
             else -8.0 * d)
        qs = blocks[:, head:]
        codes = np.concatenate([qs & 0x0F, qs >> 4], axis=1).reshape(rows, cols)
        return codes, d, m

    def read_q8(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A Q8_0 tensor as it is stored: (codes (rows, cols) int8, scales (rows, cols / 32) fp16), w = scale *
        code. ggml's block: fp16 d, then 32 int8 values."""
        t = self.tensors.get(name)
        if t is None or t.qtype != 8:
            raise CheckpointError(f"{self.path}: tensor {name!r} is not Q8_0")
        rows, cols = (int(np.prod(t.shape[:-1])) if len(t.shape) > 1 else 1), t.shape[-1]
        codes = torch.empty(rows, cols, dtype=torch.int8)
        scales = torch.empty(rows, cols // 32, dtype=torch.float16)
        row_bytes = cols // 32 * 34
        step = max(1, (2 << 20) // row_bytes)
        with open(self.path, "rb") as f:
            f.seek(t.offset)
            for r0 in range(0, rows, step):
                n = min(step, rows - r0)
                raw = np.frombuffer(f.read(n * row_bytes), dtype=np.uint8)
                if raw.size != n * row_bytes:
                    raise CheckpointError(f"{self.path}: truncated GGUF file (tensor {name} is cut short)")
                blocks = raw.reshape(n, cols // 32, 34)
                scales[r0 : r0 + n] = torch.from_numpy(blocks[..., :2].copy().view(np.float16)[..., 0])
                codes[r0 : r0 + n] = torch.from_numpy(blocks[..., 2:].copy().view(np.int8).reshape(n, cols))
        return codes, scales

    def load(self, name: str, dtype=torch.float32) -> torch.Tensor:
        t = self.tensors.get(name)
        if t is None:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing")
        rows = int(np.prod(t.shape[:-1])) if len(t.shape) > 1 else 1
        out = self.read_into(name, torch.empty(rows, t.shape[-1], dtype=dtype))
        return out.reshape(t.shape)


def _quant_size(qtype: int, name: str, path: Path) -> tuple[int, int]:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        return GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
    except (ValueError, KeyError):
        raise CheckpointError(f"{path}: tensor {name!r} has unknown type {qtype}") from None


def open_gguf(path: Path) -> GGUFHeader:
    try:
        import gguf  # noqa: F401 - dequantization needs it
    except ImportError as e:
        raise DependencyError("reading GGUF files needs the gguf package: pip install gguf") from e
    if not path.is_file():
        raise CheckpointError(f"{path}: no such GGUF file")
    try:
        return GGUFHeader(path)
    except CheckpointError:
        raise
    except (struct.error, UnicodeDecodeError, OverflowError, ValueError, MemoryError, RecursionError, EOFError,
            KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f"{path}: corrupt GGUF header ({type(e).__name__}: {str(e)[:200]})") from e


def config_from_metadata(meta: dict, path: Path) -> DecoderConfig:
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported (mmfm reads {SUPPORTED_ARCHS})")

    def get(key, default=None, required=True):
        v = meta.get(f"{arch}.{key}", default)
        if v is None and required:
            raise CheckpointError(f"{path}: GGUF metadata {arch}.{key} is missing")
        return v

    dim, heads = int(get("embedding_length")), int(get("attention.head_count"))
    if dim <= 0 or heads <= 0:
        raise CheckpointError(f"{path}: GGUF metadata gives embedding_length {dim} and head_count {heads}")
    head_dim = int(get("attention.key_length", dim // heads))
    rot = int(get("rope.dimension_count", head_dim))
    if rot != head_dim:
        raise CheckpointError(f"{path}: partial rotary ({rot} of {head_dim} dims) is not supported")
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise CheckpointError(f"{path}: rope scaling {scaling!r} is not supported yet")
    tokens = meta.get("tokenizer.ggml.tokens") or []
    return DecoderConfig(
        vocab_size=int(get("vocab_size", len(tokens) or None)),
        dim=dim,
        layers=int(get("block_count")),
        heads=heads,
        kv_heads=int(get("attention.head_count_kv", heads)),
        head_dim=head_dim,
        hidden=int(get("feed_forward_length")),
        style="llama",
        norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        max_seq_len=int(get("context_length", 2048)),
        tie_embeddings=True,  # set from the tensors below
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
        extra={"source": "gguf", "name": meta.get("general.name"), "file_type": meta.get("general.file_type")},
    )


def unpermute_rotary(w, heads: int):
    """Undo llama.cpp's per-head interleave of q/k rows: (heads * Dh, in) -> same shape (numpy or torch)."""
    half = w.shape[0] // heads // 2
    return w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)



def read_metadata(path: str | Path) -> dict:
    """The key/value metadata of a GGUF file (architecture, tokenizer, chat template, ...)."""
    return open_gguf(Path(path)).meta


def read_gguf_int4(path: str | Path, embed_int8: bool = False):
    """(DecoderConfig, state dict, LMTokenizer, metadata) with the block Linears kept in the file's 4-bit
    blocks (Q4_0 / Q4_1) as mmfm.nn.lowbit's `<linear>.packed` and `.scales_and_zeros`, fused as mmfm
    fuses them (q, k, v rows; gate, up rows); embeddings and norms in bf16."""
    from mmfm.nn.lowbit import pack_int4

    path = Path(path)
    config, sd, tokenizer, meta = read_gguf(path, torch.bfloat16, skip_linears=True, embed_int8=embed_int8)
    g = open_gguf(path)
    c = config

    def fused(*parts) -> tuple[np.ndarray, ...]:
        return tuple(np.concatenate(x, axis=0) for x in zip(*parts))

    def rotary_rows(part, heads):
        return tuple(unpermute_rotary(a, heads) for a in part)

    for i in range(c.layers):
        p, q = f"blk.{i}.", f"transformer.blocks.{i}."
        linears = {
            "attn.qkv": fused(rotary_rows(g.read_q4(p + "attn_q.weight"), c.heads),
                              rotary_rows(g.read_q4(p + "attn_k.weight"), c.kv_heads), g.read_q4(p + "attn_v.weight")),
            "attn.out": g.read_q4(p + "attn_output.weight"),
            "mlp.gate_up": fused(g.read_q4(p + "ffn_gate.weight"), g.read_q4(p + "ffn_up.weight")),
            "mlp.down": g.read_q4(p + "ffn_down.weight"),
        }
        for name, (codes, scale, offset) in linears.items():
            packed, sz = pack_int4(torch.from_numpy(codes), torch.from_numpy(scale), torch.from_numpy(offset))
            sd[q + name + ".packed"], sd[q + name + ".scales_and_zeros"] = packed, sz
        del linears
        release_freed_memory()  # a layer's scratch (codes, int32 copies) back to the OS before the next
    config.extra = {**config.extra, "weights": "int4 (the GGUF's own Q4 blocks)"}
    return config, sd, tokenizer, meta


def read_gguf(path: str | Path, dtype: torch.dtype = torch.float32, skip_linears: bool = False,
              embed_int8: bool = False):
    """(DecoderConfig, mmfm state dict in `dtype`, LMTokenizer, metadata). Each weight is dequantized
    straight into its place in the (fused) mmfm tensor; `skip_linears` leaves out the blocks' Linears
    (read_gguf_int4 keeps them quantized); `embed_int8` keeps a Q8_0 embedding table tied to the head as
    stored (`embed.codes`, `embed.scales`: mmfm.nn.lowbit.Int8Embedding)."""
    path = Path(path)
    g = open_gguf(path)
    meta = g.meta
    config = config_from_metadata(meta, path)
    tokenizer = LMTokenizer.from_gguf_metadata(meta)
    c = config
    if "token_embd.weight" not in g.tensors:
        raise CheckpointError(f"{path}: tensor 'token_embd.weight' is missing; not a language model file")
    if g.tensors["token_embd.weight"].shape != (c.vocab_size, c.dim):
        raise CheckpointError(f"{path}: token_embd.weight is {g.tensors['token_embd.weight'].shape}, "
                              f"metadata says ({c.vocab_size}, {c.dim})")
    sd: dict[str, torch.Tensor] = {"norm.weight": g.load("output_norm.weight", dtype)}
    if embed_int8 and g.tensors["token_embd.weight"].qtype == 8 and "output.weight" not in g.tensors:
        sd["embed.codes"], sd["embed.scales"] = g.read_q8("token_embd.weight")
    else:
        sd["embed.weight"] = g.load("token_embd.weight", dtype)
    if "output.weight" in g.tensors:
        config.tie_embeddings = False
        sd["lm_head.weight"] = g.load("output.weight", dtype)
    q_rows, kv_rows = c.heads * c.head_dim, c.kv_heads * c.head_dim
    for i in range(c.layers):
        p, q = f"blk.{i}.", f"transformer.blocks.{i}."
        sd[q + "norm1.weight"] = g.load(p + "attn_norm.weight", dtype)
        sd[q + "norm2.weight"] = g.load(p + "ffn_norm.weight", dtype)
        if skip_linears:
            continue
        qkv = torch.empty(q_rows + 2 * kv_rows, c.dim, dtype=dtype)
        qkv[:q_rows] = unpermute_rotary(g.load(p + "attn_q.weight"), c.heads)
        qkv[q_rows : q_rows + kv_rows] = unpermute_rotary(g.load(p + "attn_k.weight"), c.kv_heads)
        g.read_into(p + "attn_v.weight", qkv[q_rows + kv_rows :])
        sd[q + "attn.qkv.weight"] = qkv
        sd[q + "attn.out.weight"] = g.load(p + "attn_output.weight", dtype)
        gate_up = torch.empty(2 * c.hidden, c.dim, dtype=dtype)
        g.read_into(p + "ffn_gate.weight", gate_up[: c.hidden])
        g.read_into(p + "ffn_up.weight", gate_up[c.hidden :])
        sd[q + "mlp.gate_up.weight"] = gate_up
        sd[q + "mlp.down.weight"] = g.load(p + "ffn_down.weight", dtype)
        release_freed_memory()
    if tokenizer.vocab_size > c.vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens, the model only {c.vocab_size}")
    return config, sd, tokenizer, meta


__all__ = ["read_gguf", "read_gguf_int4", "read_metadata", "open_gguf", "GGUFHeader", "unpermute_rotary",
           "config_from_metadata"]
