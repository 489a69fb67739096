"""GGUF header parser over a bytes buffer: IO-free, skips vocabulary strings, reports what it still needs.

A caller reads the first bytes of a local file or an HTTP Range, calls `parse_header(buf)`, and on
`NeedMoreBytes` reads at least `exc.needed` bytes from the start and calls again.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from contracts.vram import NO_KV_ARCHITECTURES, ModelShape, swa_layers

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
#: Arrays longer than this keep only their length (token lists, scores, merges): nobody sizes memory with them.
MAX_KEPT_ARRAY = 4096

#: ggml tensor type id -> (name, elements per block, bytes per block)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}  # fmt: skip

#: general.file_type -> the quantization name people use (Q4_K_M, ...)
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
}  # fmt: skip

# GGUF value types: id -> struct format of one scalar (strings and arrays are handled apart).
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class GgufError(ValueError):
    """The bytes are not a GGUF header this parser understands."""


class NeedMoreBytes(GgufError):
    """The buffer ends inside the header; read at least `needed` bytes from the file's start and retry."""

    def __init__(self, needed: int):
        super().__init__(f"need more bytes: {needed}")
        self.needed = needed


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES.get(self.type_id, (f"type{self.type_id}", 1, 0))[0]

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        _, block, size = GGML_TYPES[self.type_id]
        return self.n_elements // block * size


@dataclass(frozen=True)
class GgufHeader:
    version: int
    metadata: dict[str, Any]
    #: length of every array that was too long to keep (tokenizer.ggml.tokens: 151936, ...)
    array_lengths: dict[str, int]
    tensors: tuple[TensorInfo, ...]
    header_bytes: int
    alignment: int
    data_offset: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def tensor_data_bytes(self) -> int:
        """Bytes of the data region as the tensors lay it out (offset of the last + its size)."""
        if not self.tensors:
            return 0
        last = max(self.tensors, key=lambda t: t.offset)
        return last.offset + last.nbytes

    @property
    def file_type(self) -> str | None:
        ft = self.metadata.get("general.file_type")
        return FILE_TYPES.get(ft, f"type{ft}") if isinstance(ft, int) else None


class _Cursor:
    __slots__ = ("buf", "off")

    def __init__(self, buf: bytes | memoryview):
        self.buf = buf
        self.off = 0

    def need(self, n: int) -> None:
        if self.off + n > len(self.buf):
            raise NeedMoreBytes(self.off + n)

    def unpack(self, fmt: str, size: int) -> Any:
        self.need(size)
        value = struct.unpack_from(fmt, self.buf, self.off)[0]
        self.off += size
        return value

    def u32(self) -> int:
        return int(self.unpack("<I", 4))

    def u64(self) -> int:
        return int(self.unpack("<Q", 8))

    def string(self) -> str:
        n = self.u64()
        self.need(n)
        raw = bytes(self.buf[self.off : self.off + n])
        self.off += n
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        buf, off, end, unpack = self.buf, self.off, len(self.buf), struct.unpack_from
        for _ in range(count):
            if off + 8 > end:
                raise NeedMoreBytes(off + 8)
            off += 8 + unpack("<Q", buf, off)[0]
        if off > end:
            raise NeedMoreBytes(off)
        self.off = off


def _value(cur: _Cursor, vtype: int, key: str, lengths: dict[str, int]) -> Any:
    if vtype in _SCALAR:
        fmt = _SCALAR[vtype]
        return cur.unpack("<" + fmt, struct.calcsize(fmt))
    if vtype == _STRING:
        return cur.string()
    if vtype == _ARRAY:
        etype, count = cur.u32(), cur.u64()
        if etype == _STRING:
            if count > 64:
                cur.skip_strings(count)
                lengths[key] = count
                return None
            return [cur.string() for _ in range(count)]
        if etype not in _SCALAR:
            raise GgufError(f"metadata {key!r}: unsupported array element type {etype}")
        fmt = _SCALAR[etype]
        size = struct.calcsize(fmt) * count
        cur.need(size)
        if count > MAX_KEPT_ARRAY:
            cur.off += size
            lengths[key] = count
            return None
        values = list(struct.unpack_from(f"<{count}{fmt}", cur.buf, cur.off))
        cur.off += size
        return values
    raise GgufError(f"metadata {key!r}: unknown value type {vtype}")


def parse_header(buf: bytes | memoryview) -> GgufHeader:
    """Metadata and tensor table of a GGUF file from its first bytes; raises NeedMoreBytes if `buf` is short."""
    cur = _Cursor(buf)
    cur.need(24)
    if bytes(buf[:4]) != MAGIC:
        raise GgufError(f"not a GGUF file: magic is {bytes(buf[:4])!r}, expected {MAGIC!r}")
    cur.off = 4
    version = cur.u32()
    if version not in (2, 3):
        raise GgufError(f"GGUF version {version} is not supported (only 2 and 3)")
    n_tensors, n_kv = cur.u64(), cur.u64()
    if n_tensors > 1_000_000 or n_kv > 1_000_000:
        raise GgufError(f"implausible GGUF header: {n_tensors} tensors, {n_kv} metadata entries")
    metadata: dict[str, Any] = {}
    lengths: dict[str, int] = {}
    for _ in range(n_kv):
        key = cur.string()
        value = _value(cur, cur.u32(), key, lengths)
        if value is not None:
            metadata[key] = value
    tensors = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.u32()
        if n_dims > 8:
            raise GgufError(f"tensor {name!r}: {n_dims} dimensions")
        cur.need(8 * n_dims + 12)
        shape = struct.unpack_from(f"<{n_dims}Q", buf, cur.off)
        cur.off += 8 * n_dims
        type_id = cur.u32()
        offset = cur.u64()
        if type_id not in GGML_TYPES:
            raise GgufError(f"tensor {name!r}: unknown ggml type {type_id}")
        tensors.append(TensorInfo(name, tuple(shape), type_id, offset))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0:
        raise GgufError(f"general.alignment must be a positive integer, got {alignment!r}")
    header_bytes = cur.off
    data_offset = (header_bytes + alignment - 1) // alignment * alignment
    return GgufHeader(version, metadata, lengths, tuple(tensors), header_bytes, alignment, data_offset)


def next_read_size(current: int, needed: int, cap: int = 1 << 30) -> int:
    """How many bytes to read next: at least what the parser asked for, doubling to keep retries few."""
    if needed > cap:
        raise GgufError(f"GGUF header larger than {cap} bytes (needs {needed})")
    return min(cap, max(needed, current * 2))


def _per_layer(value: Any, n: int, name: str) -> list[int]:
    if isinstance(value, list):
        if len(value) != n:
            raise GgufError(f"{name} has {len(value)} entries for {n} layers")
        return [int(v) for v in value]
    return [int(value)] * n


def _swa_layers(header: GgufHeader, n: int, window: int) -> list[bool]:
    pattern = header.arch_value("attention.sliding_window_pattern")
    if isinstance(pattern, list):
        pattern = [bool(p) for p in pattern]
    return swa_layers(header.architecture, n, window, pattern if isinstance(pattern, int | list) else None)


def model_shape(header: GgufHeader, file_size_bytes: int = 0) -> ModelShape:
    """The sizing view of a parsed header; a missing required key is an error naming it."""
    arch = header.architecture
    if not arch:
        raise GgufError("metadata general.architecture is missing")

    def required(key: str) -> Any:
        value = header.arch_value(key)
        if value is None:
            raise GgufError(f"metadata {arch}.{key} is missing")
        return value

    n = int(required("block_count"))
    n_embd = int(required("embedding_length"))
    heads = required("attention.head_count")
    head_count = max(heads) if isinstance(heads, list) else int(heads)
    kv_heads = _per_layer(header.arch_value("attention.head_count_kv", heads), n, f"{arch}.attention.head_count_kv")
    head_dim = n_embd // max(1, head_count)
    layer_bytes = [0] * n
    input_bytes = output_bytes = total = 0
    has_output = False
    tied_bytes = 0
    types: dict[str, int] = {}
    for t in header.tensors:
        size = t.nbytes
        total += size
        types[t.type_name] = types.get(t.type_name, 0) + 1
        if t.name.startswith("blk."):
            idx = t.name.split(".", 2)[1]
            if idx.isdigit() and int(idx) < n:
                layer_bytes[int(idx)] += size
                continue
        if t.name.startswith(("token_embd", "position_embd", "token_types")):
            input_bytes += size
            if t.name == "token_embd.weight":
                tied_bytes = size
        else:
            has_output = has_output or t.name == "output.weight"
            output_bytes += size
    if not has_output and arch not in NO_KV_ARCHITECTURES:
        output_bytes += tied_bytes  # llama.cpp duplicates a tied embedding onto the output device (an encoder has none)
    vocab = header.arch_value("vocab_size") or header.array_lengths.get("tokenizer.ggml.tokens")
    if not vocab:
        tokens = header.metadata.get("tokenizer.ggml.tokens")
        vocab = len(tokens) if isinstance(tokens, list) else 0
    if not vocab:
        raise GgufError(f"metadata {arch}.vocab_size is missing and the file has no tokenizer.ggml.tokens")
    window = int(header.arch_value("attention.sliding_window", 0) or 0)
    ff = header.arch_value("feed_forward_length", 0)
    return ModelShape(
        architecture=arch, block_count=n, context_length=int(header.arch_value("context_length", 0) or 0),
        embedding_length=n_embd, feed_forward_length=max(ff) if isinstance(ff, list) else int(ff or 0),
        head_count=head_count, head_count_kv=kv_heads,
        key_length=int(header.arch_value("attention.key_length", head_dim) or head_dim),
        value_length=int(header.arch_value("attention.value_length", head_dim) or head_dim),
        sliding_window=window, swa_layers=_swa_layers(header, n, window),
        expert_count=int(header.arch_value("expert_count", 0) or 0),
        expert_used_count=int(header.arch_value("expert_used_count", 0) or 0),
        expert_feed_forward_length=int(header.arch_value("expert_feed_forward_length", 0) or 0),
        vocab_size=int(vocab), file_type=header.file_type, tensor_types=types, layer_bytes=layer_bytes,
        input_bytes=input_bytes, output_bytes=output_bytes, weights_bytes=total, file_size_bytes=file_size_bytes,
    )  # fmt: skip
