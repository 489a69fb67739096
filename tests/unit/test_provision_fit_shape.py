"""The provisioner's fit estimate (services/provisioner/domain.estimate_need): the library's shape when known (the
estimate `fit` makes), the simple file-size form otherwise."""

from __future__ import annotations

import pytest

from contracts.architecture import ModelArchitecture, shape_from_architecture
from contracts.vram import EstimateSettings, estimate, simple_estimate
from services.provisioner import domain

pytestmark = pytest.mark.unit

GIB = 1 << 30
QWEN3_8B = ModelArchitecture(
    architecture="qwen3", source="https://huggingface.co/Qwen/Qwen3-8B/blob/main/config.json",
    block_count=36, embedding_length=4096, feed_forward_length=12288, head_count=32,
    head_count_kv=8, key_length=128, value_length=128, vocab_size=151936, context_length=40960,
)  # fmt: skip


def test_with_a_shape_the_full_estimate_and_its_kv_cache_grows_with_the_context():
    size = 5 * GIB
    short, how = domain.estimate_need(size, 4096, QWEN3_8B, "Q4_K_M")
    long, _ = domain.estimate_need(size, 40960, QWEN3_8B, "Q4_K_M")
    assert how == "shape"
    shape = shape_from_architecture(QWEN3_8B, size, "Q4_K_M")
    assert short == estimate(shape, EstimateSettings(num_ctx=4096)).total_bytes
    assert long - short >= 36 * 8 * 128 * 2 * 2 * (40960 - 4096)  # f16 K and V per layer, per token


def test_without_a_shape_or_for_a_diffusion_model_the_file_size_form():
    assert domain.estimate_need(GIB, 4096) == (simple_estimate(GIB, 4096).total_bytes, "file-size")
    diffusion = QWEN3_8B.model_copy(update={"kind": "diffusion"})
    assert domain.estimate_need(GIB, 4096, diffusion)[1] == "file-size"
    assert domain.estimate_need(GIB, 0, QWEN3_8B, "Q4_K_M")[1] == "shape"  # a context of 0 is sized as 1 token
