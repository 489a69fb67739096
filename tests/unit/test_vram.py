"""The VRAM estimator, fit classes and recommendations (pure): formulas, placements, boundaries, properties."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts.fit import HostCapacity, fit_report
from contracts.gguf_header import model_shape
from contracts.vram import (
    GIB,
    MIB,
    EstimateSettings,
    FitClass,
    ModelChoice,
    ModelShape,
    Placement,
    QuantOption,
    best_placement,
    best_quantization,
    estimate,
    fit_class,
    recommend_model,
    recommend_profile,
    recommend_settings,
    simple_estimate,
)
from services.runtime.gguf_io import read_file_header
from tests.harness.gguf_builder import SHAPE_7B, SHAPE_70B, write_sparse_llama

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelShape]:
    d = tmp_path_factory.mktemp("vram")
    out = {}
    for name, s in (("7b", SHAPE_7B), ("70b", SHAPE_70B)):
        path = write_sparse_llama(d / f"{name}.gguf", s)
        out[name] = model_shape(read_file_header(path), path.stat().st_size)
    return out


def test_kv_cache_of_a_7b_at_4096_is_2_gib(shapes: dict[str, ModelShape]) -> None:
    # 32 layers x 4096 cells x (K + V) x 4096 dims x 2 bytes (f16)
    e = estimate(shapes["7b"], EstimateSettings(num_ctx=4096))
    assert e.kv_cache_bytes == 32 * 4096 * 2 * 4096 * 2 == 2 * GIB
    assert e.placement is Placement.FULL and e.gpu_layers == e.total_layers == 33


def test_cache_type_and_parallel_slots_scale_the_kv(shapes: dict[str, ModelShape]) -> None:
    sh = shapes["70b"]
    f16 = estimate(sh, EstimateSettings(num_ctx=8192)).kv_cache_bytes
    assert f16 == 80 * 8192 * 2 * 8 * 128 * 2  # GQA: 8 KV heads of 128
    assert estimate(sh, EstimateSettings(num_ctx=8192, cache_type="q8_0")).kv_cache_bytes == f16 * 17 // 32
    assert estimate(sh, EstimateSettings(num_ctx=8192, cache_type="q4_0")).kv_cache_bytes == f16 * 9 // 32
    assert estimate(sh, EstimateSettings(num_ctx=8192, parallel=4)).kv_cache_bytes == 4 * f16


def test_kv_cells_are_padded_to_256(shapes: dict[str, ModelShape]) -> None:
    assert estimate(shapes["7b"], EstimateSettings(num_ctx=1000)).kv_cells == 1024


def test_sliding_window_and_layers_without_attention(shapes: dict[str, ModelShape]) -> None:
    base = shapes["7b"]
    swa = base.model_copy(update={"sliding_window": 1024, "swa_layers": [i % 2 == 0 for i in range(32)]})
    s = EstimateSettings(num_ctx=32768)
    full = estimate(base, s).kv_cache_bytes
    # half the layers hold only window + ubatch cells (1024 + 512 -> padded 1536)
    assert estimate(swa, s).kv_cache_bytes == full // 2 + full // 2 * 1536 // 32768
    no_attn = base.model_copy(update={"head_count_kv": [0] * 16 + [32] * 16})
    assert estimate(no_attn, s).kv_cache_bytes == full // 2


def test_partial_placement_fits_the_most_layers(shapes: dict[str, ModelShape]) -> None:
    sh, s = shapes["70b"], EstimateSettings(num_ctx=4096)
    full = estimate(sh, s)
    part = best_placement(sh, s, 24 * GIB)
    assert part.placement is Placement.PARTIAL
    assert 0 < part.gpu_layers < 80
    assert part.total_bytes <= 24 * GIB < estimate(sh, s, part.gpu_layers + 1).total_bytes
    assert part.cpu_bytes > 0 and part.weights_bytes < full.weights_bytes
    assert best_placement(sh, s, full.total_bytes) == full
    cpu = best_placement(sh, s, 256 * MIB)
    assert cpu.placement is Placement.CPU and cpu.total_bytes == 0 and cpu.cpu_bytes > sh.weights_bytes


@settings(max_examples=60, deadline=None)
@given(free_gib=st.floats(min_value=0.1, max_value=60), ctx=st.integers(min_value=256, max_value=32768))
def test_more_memory_never_means_fewer_layers(shapes: dict[str, ModelShape], free_gib: float, ctx: int) -> None:
    sh, s = shapes["70b"], EstimateSettings(num_ctx=ctx)
    a = best_placement(sh, s, int(free_gib * GIB))
    b = best_placement(sh, s, int(free_gib * 1.25 * GIB))
    assert b.gpu_layers >= a.gpu_layers
    assert estimate(sh, EstimateSettings(num_ctx=ctx + 256)).total_bytes >= estimate(sh, s).total_bytes


def test_simple_form_without_metadata() -> None:
    e = simple_estimate(4 * GIB, num_ctx=8000)
    assert e.simple
    assert e.total_bytes == int(4 * GIB * 1.2) + 8 * MIB + 500 * MIB
    with pytest.raises(ValueError, match="file_size_bytes"):
        simple_estimate(-1, 10)


@pytest.mark.parametrize(
    ("needed", "fit"),
    [(0, FitClass.PERFECT), (899, FitClass.PERFECT), (900, FitClass.TIGHT), (1000, FitClass.TIGHT),
     (1001, FitClass.WONT_FIT)],
)  # fmt: skip
def test_fit_class_boundaries(needed: int, fit: FitClass) -> None:
    assert fit_class(needed, 1000) is fit


def test_no_free_memory_never_fits() -> None:
    assert fit_class(0, 0) is FitClass.WONT_FIT


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(ValidationError, match="cache_type"):
        EstimateSettings(cache_type="q5")
    with pytest.raises(ValidationError, match="num_ctx"):
        EstimateSettings(num_ctx=0)


CHOICES = [
    ModelChoice(name="tiny-0.5b", parameters_b=0.5, size_bytes=400 * MIB, quality=1),
    ModelChoice(name="small-2b", parameters_b=2, size_bytes=1600 * MIB, quality=3),
    ModelChoice(name="mid-4b", parameters_b=4, size_bytes=3 * GIB, quality=5),
    ModelChoice(name="big-9b", parameters_b=9, size_bytes=6 * GIB, quality=8),
    ModelChoice(name="huge-27b", parameters_b=27, size_bytes=17 * GIB, quality=9),
]


@pytest.mark.parametrize(
    ("mem_gib", "pick", "tier", "warned"),
    [(3, "tiny-0.5b", "<4GB", True), (6, "small-2b", "4-8GB", False), (12, "mid-4b", "8-16GB", False),
     (20, "huge-27b", ">16GB", False), (16.5, "big-9b", ">16GB", False)],
)  # fmt: skip
def test_model_by_memory_tier(mem_gib: float, pick: str, tier: str, warned: bool) -> None:
    r = recommend_model(int(mem_gib * GIB), CHOICES)
    assert r.model is not None and r.model.name == pick
    assert r.tier == tier
    assert (r.warning is not None) is warned


def test_above_16_gb_prefers_9b_and_up_even_over_a_better_rated_small_model() -> None:
    choices = [*CHOICES, ModelChoice(name="star-4b", parameters_b=4, size_bytes=3 * GIB, quality=10)]
    r = recommend_model(20 * GIB, choices)
    assert r.model is not None and r.model.name == "huge-27b"
    only_small = recommend_model(20 * GIB, [*choices[:3], choices[-1]]).model  # nothing of 9B+: quality first
    assert only_small is not None and only_small.name == "star-4b"


def test_profile_and_settings_by_ram_and_cores() -> None:
    assert recommend_profile(64 * GIB, 16) == "quality"
    assert recommend_profile(64 * GIB, 4) == "balanced"
    assert recommend_profile(16 * GIB, 2) == "balanced"
    assert recommend_profile(8 * GIB, 16) == "fast"
    low, high = recommend_settings(4 * GIB, 2), recommend_settings(64 * GIB, 16)
    assert (low.max_tokens, low.context_length, low.num_thread, low.batch_size) == (512, 2048, 1, 1)
    assert (high.max_tokens, high.context_length, high.num_thread, high.batch_size) == (2048, 8192, 14, 2)
    assert recommend_settings(12 * GIB, 8).num_thread == 6


def test_best_quantization_prefers_quality_that_fits() -> None:
    options = [QuantOption(quant=q, needed_bytes=b * GIB) for q, b in (("Q3_K_M", 4), ("Q4_K_M", 5), ("Q8_0", 9))]
    assert best_quantization(options, 11 * GIB) == (options[2], FitClass.PERFECT)
    # Q8_0 would be tight (90 %) at 10 GiB: headroom wins over the better quantization
    assert best_quantization(options, 10 * GIB) == (options[1], FitClass.PERFECT)
    assert best_quantization(options, 6 * GIB) == (options[1], FitClass.PERFECT)
    assert best_quantization(options, int(4.2 * GIB)) == (options[0], FitClass.TIGHT)
    assert best_quantization(options, 3 * GIB) is None


def test_fit_report_per_host(shapes: dict[str, ModelShape]) -> None:
    hosts = [
        HostCapacity(host_id="big", gpus_free=[8 * GIB, 80 * GIB], ram_available=256 * GIB),
        HostCapacity(host_id="small", gpus_free=[12 * GIB], ram_available=32 * GIB),
        HostCapacity(host_id="cpu", ram_available=64 * GIB),
    ]
    r = fit_report("70b", "gguf", EstimateSettings(num_ctx=4096), hosts, shape=shapes["70b"])
    by = {h.host_id: h for h in r.hosts}
    assert by["big"].device == "gpu1" and by["big"].fit is FitClass.PERFECT and by["big"].placement is Placement.FULL
    assert by["small"].fit is FitClass.WONT_FIT and by["small"].placement is Placement.PARTIAL
    assert by["cpu"].device == "ram" and by["cpu"].fit is FitClass.PERFECT
    parts = r.weights_bytes + r.kv_cache_bytes + r.compute_bytes + r.overhead_bytes
    assert r.total_bytes == parts and r.gpu_layers == 81


def test_fit_report_best_quant_per_host() -> None:
    quants = [("Q4_K_M", 5 * GIB), ("Q8_0", 9 * GIB)]
    hosts = [HostCapacity(host_id="a", gpus_free=[24 * GIB]), HostCapacity(host_id="b", gpus_free=[8 * GIB])]
    r = fit_report("m", "catalog", EstimateSettings(), hosts, size_bytes=9 * GIB, quant="Q8_0", quants=quants)
    assert r.best_quant == {"a": "Q8_0", "b": "Q4_K_M"}
    assert r.simple and r.total_bytes == simple_estimate(9 * GIB, 2048).total_bytes


def test_estimate_from_a_real_file_is_stable(tmp_path: Path, shapes: dict[str, ModelShape]) -> None:
    """The same shape through JSON (as it travels to the gateway) gives the same estimate."""
    sh = shapes["7b"]
    again = ModelShape.model_validate_json(sh.model_dump_json())
    assert estimate(again, EstimateSettings(num_ctx=8192)) == estimate(sh, EstimateSettings(num_ctx=8192))
