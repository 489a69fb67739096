"""Sparse GGUF headers of any architecture, written from a ModelArchitecture (the library's published figures).

The tensors are llama.cpp's, named and shaped as its converters write them (attention, a dense or gated FFN or the
experts of a MoE layer, norms in F32); matrices in Q4_K, or Q8_0 where a row is not a multiple of 256. The data
region is left empty (a sparse file), so a 70B-shaped file costs a few MiB of disk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType
from gguf.quants import quant_shape_to_byte_shape

from contracts.architecture import ModelArchitecture
from contracts.vram import SWA_PERIOD

Q4_K, Q8_0, F32 = GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q8_0, GGMLQuantizationType.F32


def _tensors(a: ModelArchitecture) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, numpy shape, is a matrix) of every tensor, in llama.cpp's naming."""
    e = a.embedding_length
    out: list[tuple[str, tuple[int, ...], bool]] = [("token_embd.weight", (a.vocab_size, e), True)]
    out.append(("output_norm.weight", (e,), False))
    if a.kind == "decoder" and not a.tied_embeddings:
        out.append(("output.weight", (a.vocab_size, e), True))
    for i, kv in enumerate(a.kv_heads()):
        b = f"blk.{i}."
        out += [
            (b + "attn_norm.weight", (e,), False),
            (b + "attn_q.weight", (a.head_count * a.key_length, e), True),
            (b + "attn_k.weight", (kv * a.key_length, e), True),
            (b + "attn_v.weight", (kv * a.value_length, e), True),
            (b + "attn_output.weight", (e, a.head_count * a.value_length), True),
            (b + "ffn_norm.weight", (e,), False),
        ]
        moe = a.expert_count and (i + 1) % a.moe_every_n_layers == 0
        if moe:
            n, ff = a.expert_count, a.expert_feed_forward_length
            out.append((b + "ffn_gate_inp.weight", (n, e), False))
            if a.ffn_gated:
                out.append((b + "ffn_gate_exps.weight", (n, ff, e), True))
            out += [(b + "ffn_up_exps.weight", (n, ff, e), True), (b + "ffn_down_exps.weight", (n, e, ff), True)]
        else:
            ff = a.feed_forward_length
            if a.ffn_gated:
                out.append((b + "ffn_gate.weight", (ff, e), True))
            out += [(b + "ffn_up.weight", (ff, e), True), (b + "ffn_down.weight", (e, ff), True)]
    return out


def write_sparse_gguf(path: Path, a: ModelArchitecture) -> Path:
    """A GGUF header for `a` (no tokenizer: `<arch>.vocab_size` says the vocabulary) over an empty data region."""
    w = GGUFWriter(path, a.architecture)
    w.add_name(f"modelfleet test {a.architecture}")
    w.add_file_type(int(LlamaFileType.MOSTLY_Q4_K_M))
    w.add_context_length(a.context_length)
    w.add_embedding_length(a.embedding_length)
    w.add_block_count(a.block_count)
    w.add_feed_forward_length(a.feed_forward_length)
    w.add_head_count(a.head_count)
    if isinstance(a.head_count_kv, int):
        w.add_head_count_kv(a.head_count_kv)
    else:
        w.add_array(f"{a.architecture}.attention.head_count_kv", a.head_count_kv)
    w.add_key_length(a.key_length)
    w.add_value_length(a.value_length)
    w.add_vocab_size(a.vocab_size)
    if a.expert_count:
        w.add_expert_count(a.expert_count)
        w.add_expert_used_count(a.expert_used_count)
        w.add_expert_feed_forward_length(a.expert_feed_forward_length)
    if a.sliding_window:
        w.add_sliding_window(a.sliding_window)
        pattern = a.sliding_window_pattern
        if isinstance(pattern, int) and pattern != SWA_PERIOD.get(a.architecture):
            w.add_uint32(f"{a.architecture}.attention.sliding_window_pattern", pattern)
        elif isinstance(pattern, list):
            w.add_array(f"{a.architecture}.attention.sliding_window_pattern", pattern)
    for name, dims, matrix in _tensors(a):
        qtype = (Q4_K if dims[-1] % 256 == 0 else Q8_0) if matrix else F32
        nbytes = 4 * int(np.prod(dims)) if qtype == F32 else int(np.prod(quant_shape_to_byte_shape(dims, qtype)))
        w.add_tensor_info(name, dims, np.dtype(np.float32), nbytes, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    assert w.fout is not None
    header_end = w.fout[0].tell()
    data_start = -(-header_end // w.data_alignment) * w.data_alignment
    total = sum(GGUFWriter.ggml_pad(ti.nbytes, w.data_alignment) for ti in w.tensors[0].values())
    w.close()
    with path.open("r+b") as f:
        f.truncate(data_start + total)
    return path
