"""The project's GGUF header reader against gguf.GGUFReader and llama.cpp-shaped files written at test time."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

from contracts.gguf_header import GgufError, NeedMoreBytes, model_shape, next_read_size, parse_header
from services.runtime.gguf_io import read_file_header
from tests.harness.gguf_builder import SHAPE_7B, SHAPE_70B, TINY, smollm2_path, write_sparse_llama, write_tiny_llama

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("gguf")
    return {
        "tiny": write_tiny_llama(d / "tiny.gguf"),
        "tiny_q8": write_tiny_llama(d / "tiny-q8.gguf", matrix_type=GGMLQuantizationType.Q8_0),
        "7b": write_sparse_llama(d / "7b.gguf", SHAPE_7B),
        "70b": write_sparse_llama(d / "70b.gguf", SHAPE_70B),
    }


@pytest.mark.parametrize("name", ["tiny", "tiny_q8", "7b"])
def test_header_matches_gguf_reader(files: dict[str, Path], name: str) -> None:
    path = files[name]
    ours = read_file_header(path)
    ref = GGUFReader(path)
    assert len(ours.tensors) == len(ref.tensors)
    for mine, theirs in zip(ours.tensors, ref.tensors, strict=True):
        assert mine.name == theirs.name
        assert mine.type_id == int(theirs.tensor_type)
        assert mine.shape == tuple(int(x) for x in theirs.shape)
        assert mine.nbytes == int(theirs.n_bytes)
        assert ours.data_offset + mine.offset == int(theirs.data_offset)
    for key in ("general.architecture", "llama.block_count", "llama.attention.head_count_kv", "general.file_type"):
        assert ours.metadata[key] == ref.fields[key].contents()
    # the vocabulary is skipped, but counted
    assert ours.array_lengths["tokenizer.ggml.tokens"] == len(ref.fields["tokenizer.ggml.tokens"].contents())


def test_file_size_is_data_offset_plus_tensor_bytes(files: dict[str, Path]) -> None:
    for path in files.values():
        h = read_file_header(path)
        assert h.data_offset + h.tensor_data_bytes == path.stat().st_size


def test_shape_of_a_tiny_model_names_every_part(files: dict[str, Path]) -> None:
    shape = model_shape(read_file_header(files["tiny_q8"]))
    assert shape.architecture == "llama"
    assert (shape.block_count, shape.embedding_length, shape.head_count) == (TINY.n_layer, TINY.n_embd, TINY.n_head)
    assert shape.head_count_kv == [TINY.n_head_kv] * TINY.n_layer
    assert (shape.key_length, shape.value_length) == (TINY.head_dim, TINY.head_dim)
    assert shape.context_length == TINY.n_ctx_train
    assert shape.vocab_size == TINY.n_vocab
    assert shape.file_type == "Q8_0"
    # per-tensor quantization: matrices Q8_0, norms F32, output F16
    assert shape.tensor_types == {"Q8_0": 1 + 7 * TINY.n_layer, "F32": 1 + 2 * TINY.n_layer, "F16": 1}
    q8_row = TINY.n_embd // 32 * 34
    assert shape.input_bytes == TINY.n_vocab * q8_row
    assert shape.output_bytes == TINY.n_embd * 4 + TINY.n_vocab * TINY.n_embd * 2
    assert sum(shape.layer_bytes) + shape.input_bytes + shape.output_bytes == shape.weights_bytes


def test_sparse_70b_header_reads_without_touching_the_data(files: dict[str, Path]) -> None:
    path = files["70b"]
    assert path.stat().st_size > 39 * 10**9  # apparent size; the data region is a hole
    shape = model_shape(read_file_header(path), path.stat().st_size)
    assert (shape.block_count, shape.embedding_length, shape.head_count_kv[0]) == (80, 8192, 8)
    assert shape.file_type == "Q4_K_M"
    assert shape.tensor_types["Q4_K"] == 2 + 7 * 80
    assert shape.weights_bytes > 38 * 10**9


def test_smollm2_shape() -> None:
    shape = model_shape(read_file_header(smollm2_path()))
    assert (shape.architecture, shape.block_count, shape.head_count, shape.head_count_kv[0]) == ("llama", 30, 9, 3)
    assert shape.vocab_size == 49152
    assert shape.file_type == "Q4_1"
    assert set(shape.tensor_types) == {"F32", "Q4_1", "Q8_0"}


def test_short_buffer_says_how_many_bytes_it_needs(files: dict[str, Path]) -> None:
    data = files["tiny"].read_bytes()
    full = parse_header(data)
    size = 64
    asked: list[tuple[int, int, str]] = []
    while True:
        try:
            h = parse_header(data[:size])
            break
        except NeedMoreBytes as exc:
            asked.append((size, exc.needed, str(exc)))
            size = next_read_size(size, exc.needed)
    assert len(asked) >= 3
    assert all(needed > had and msg == f"need more bytes: {needed}" for had, needed, msg in asked)
    assert h.tensors == full.tensors and h.metadata == full.metadata


def test_small_first_read_still_reads_the_whole_header(files: dict[str, Path]) -> None:
    assert read_file_header(files["7b"], first_read=512).tensors == read_file_header(files["7b"]).tensors


def test_bad_input_is_named() -> None:
    with pytest.raises(GgufError, match="magic"):
        parse_header(b"GGML" + b"\0" * 40)
    with pytest.raises(GgufError, match="version 1"):
        parse_header(b"GGUF" + struct.pack("<IQQ", 1, 0, 0))
    with pytest.raises(GgufError, match="not a file"):
        read_file_header("/nonexistent/model.gguf")


def test_truncated_file_is_an_error_not_a_loop(files: dict[str, Path], tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(files["tiny"].read_bytes()[:5000])
    with pytest.raises(GgufError, match="ends inside the GGUF header"):
        read_file_header(cut)


def _metadata_only(path: Path, **kv: object) -> Path:
    w = GGUFWriter(path, "gemma2")
    w.add_block_count(4)
    w.add_embedding_length(256)
    w.add_head_count(8)
    w.add_vocab_size(1000)
    for key, value in kv.items():
        if isinstance(value, list):
            w.add_array(key, value)
        else:
            w.add_uint32(key, int(value))  # type: ignore[call-overload]
    w.add_tensor("blk.0.attn_q.weight", np.zeros((256, 256), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_per_layer_kv_heads_sliding_window_and_experts(tmp_path: Path) -> None:
    path = _metadata_only(
        tmp_path / "g.gguf",
        **{"gemma2.attention.head_count_kv": [4, 0, 2, 4], "gemma2.attention.sliding_window": 512,
           "gemma2.attention.key_length": 128, "gemma2.expert_count": 8, "gemma2.expert_used_count": 2},
    )  # fmt: skip
    shape = model_shape(read_file_header(path))
    assert shape.head_count_kv == [4, 0, 2, 4]
    assert shape.key_length == 128 and shape.value_length == 256 // 8
    assert shape.sliding_window == 512
    assert shape.swa_layers == [True, False, True, False]  # gemma2 alternates local and global layers
    assert (shape.expert_count, shape.expert_used_count) == (8, 2)


def test_missing_required_key_is_named(tmp_path: Path) -> None:
    w = GGUFWriter(tmp_path / "x.gguf", "llama")
    w.add_block_count(2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GgufError, match=r"llama\.embedding_length is missing"):
        model_shape(read_file_header(tmp_path / "x.gguf"))
