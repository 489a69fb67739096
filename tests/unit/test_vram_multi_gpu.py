"""Placement across several GPUs of one host: llama.cpp's layer split by free memory, per-GPU bytes, fit, properties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from contracts.fit import HostCapacity, HostFit, LayerSplit, fit_on_host, fit_report
from contracts.gguf_header import model_shape
from contracts.vram import (
    GIB,
    MIB,
    EstimateSettings,
    FitClass,
    ModelShape,
    Placement,
    best_placement,
    compute_bytes,
    estimate,
    fit_class,
    layer_kv_bytes,
    simple_estimate,
)
from services.cli.main import app as cli
from services.runtime.embedded import free_port
from services.runtime.gguf_io import read_file_header
from tests.harness.gguf_builder import SHAPE_7B, SHAPE_70B, write_sparse_llama

pytestmark = pytest.mark.unit

S = EstimateSettings(num_ctx=4096)
RANK = {FitClass.WONT_FIT: 0, FitClass.TIGHT: 1, FitClass.PERFECT: 2}
PLACEMENT_RANK = {Placement.CPU: 0, Placement.PARTIAL: 1, Placement.FULL: 2}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelShape]:
    d = tmp_path_factory.mktemp("multi")
    out = {}
    for name, s in (("7b", SHAPE_7B), ("70b", SHAPE_70B)):
        path = write_sparse_llama(d / f"{name}.gguf", s)
        out[name] = model_shape(read_file_header(path), path.stat().st_size)
    return out


def _host(shape: ModelShape | None, frees_gib: list[float], s: EstimateSettings = S, size: int = 0) -> HostFit:
    frees = [int(f * GIB) for f in frees_gib]
    return fit_on_host("h", shape, s, gpus_free=frees, ram_available=64 * GIB, file_size_bytes=size)


def _by_hand(shape: ModelShape, s: EstimateSettings, blocks: range, with_output: bool) -> int:
    """Bytes of one GPU holding `blocks` (and the output layer if asked), computed from the shape directly."""
    kv = layer_kv_bytes(shape, s)
    weights = sum(shape.layer_bytes[i] + kv[i] for i in blocks) + (shape.output_bytes if with_output else 0)
    return weights + compute_bytes(shape, s, with_output=with_output) + s.gpu_overhead_bytes


def test_two_uneven_gpus_split_a_70b_that_fits_neither_alone(shapes: dict[str, ModelShape]) -> None:
    sh = shapes["70b"]
    assert estimate(sh, S).total_bytes > 30 * GIB  # more than either GPU has
    h = _host(sh, [30, 15])
    assert h.placement is Placement.FULL and h.gpu_layers == h.total_layers == 81
    assert h.device == "gpu0+gpu1" and h.free_bytes == 45 * GIB
    g0, g1 = h.gpus
    # layers in proportion to free memory (2:1 of 81: llama.cpp's upper_bound on cumulative shares gives 54/27)
    assert (g0.layers, g1.layers) == (54, 27)
    # the first GPU holds the first 54 blocks, the last GPU the other 26 blocks and the output layer
    assert g0.bytes == _by_hand(sh, S, range(0, 54), with_output=False)
    assert g1.bytes == _by_hand(sh, S, range(54, 80), with_output=True)
    assert h.placed_bytes == g0.bytes + g1.bytes == h.needed_bytes
    assert h.fit is min(fit_class(g0.bytes, 30 * GIB), fit_class(g1.bytes, 15 * GIB), key=RANK.__getitem__)
    # the split costs a second overhead and compute buffer over the single-device estimate
    assert h.needed_bytes == estimate(sh, S).total_bytes + compute_bytes(sh, S, with_output=False) + 512 * MIB


def test_two_gpus_too_small_together_give_more_layers_than_the_roomiest_alone(shapes: dict[str, ModelShape]) -> None:
    sh = shapes["70b"]
    h = _host(sh, [24, 12])
    alone = best_placement(sh, S, 24 * GIB)
    assert h.placement is Placement.PARTIAL and h.fit is FitClass.WONT_FIT
    assert h.gpu_layers > alone.gpu_layers
    assert all(g.bytes <= g.free_bytes for g in h.gpus)
    assert sum(g.layers for g in h.gpus) == h.gpu_layers
    assert h.needed_bytes > 36 * GIB  # the full split, which does not fit


def test_four_uneven_gpus(shapes: dict[str, ModelShape]) -> None:
    sh = shapes["70b"]
    h = _host(sh, [18, 12, 10, 8])  # 48 GiB in all, none over 18
    assert h.placement is Placement.FULL and h.device == "gpu0+gpu1+gpu2+gpu3"
    layers = [g.layers for g in h.gpus]
    assert sum(layers) == 81 and layers == sorted(layers, reverse=True)  # more free memory, more layers
    assert all(g.bytes <= g.free_bytes for g in h.gpus)
    # each GPU pays its own overhead: the host needs more than the single-device estimate
    assert h.placed_bytes > estimate(sh, S).total_bytes + 3 * 512 * MIB
    assert [g.index for g in h.gpus] == [0, 1, 2, 3]


def test_fewest_gpus_at_the_same_fit_and_a_split_when_it_fits_better(shapes: dict[str, ModelShape]) -> None:
    sh = shapes["70b"]
    roomy = _host(sh, [24, 24, 24, 24])  # two GPUs hold it with headroom: the other two stay free
    assert roomy.fit is FitClass.PERFECT and sum(1 for g in roomy.gpus if g.layers) == 2
    assert [g.bytes for g in roomy.gpus[2:]] == [0, 0]
    tight_alone = estimate(sh, S).total_bytes / 0.95 / GIB  # tight on one GPU of this size
    h = _host(sh, [tight_alone, 24])
    assert fit_class(estimate(sh, S).total_bytes, int(tight_alone * GIB)) is FitClass.TIGHT
    assert h.fit is FitClass.PERFECT and h.device == "gpu0+gpu1"  # the split has headroom: preferred


def test_gpus_too_small_for_any_layer_mean_cpu_only(shapes: dict[str, ModelShape]) -> None:
    h = _host(shapes["7b"], [0.3, 0.3, 0.3, 0.3])
    assert h.placement is Placement.CPU and h.gpu_layers == 0 and h.placed_bytes == 0
    assert h.device == "gpu0" and all(g.layers == g.bytes == 0 for g in h.gpus)


def test_nvml_indexes_name_the_gpus(shapes: dict[str, ModelShape]) -> None:
    host = HostCapacity(host_id="h", gpus_free=[20 * GIB, 20 * GIB], gpu_indexes=[2, 5])
    r = fit_report("70b", "gguf", S, [host], shape=shapes["70b"])
    [h] = r.hosts
    assert h.device == "gpu2+gpu5" and [g.index for g in h.gpus] == [2, 5]
    assert all(g.free_bytes == 20 * GIB for g in h.gpus)


def test_one_gpu_answers_as_before(shapes: dict[str, ModelShape]) -> None:
    """The single-GPU path of the earlier estimator: fit of the full estimate, the best placement on that GPU."""
    for sh in shapes.values():
        for free_gib in (0.2, 1, 2.5, 6, 12, 24, 38.7, 38.8, 40, 44, 80):
            free = int(free_gib * GIB)
            h = fit_on_host("h", sh, S, gpus_free=[free], ram_available=0)
            full, best = estimate(sh, S), best_placement(sh, S, free)
            assert (h.device, h.free_bytes, h.needed_bytes) == ("gpu0", free, full.total_bytes)
            assert (h.fit, h.placement, h.gpu_layers) == (
                fit_class(full.total_bytes, free),
                best.placement,
                best.gpu_layers,
            )
            assert h.placed_bytes == best.total_bytes and h.gpus[0].bytes == best.total_bytes


def test_simple_form_splits_over_gpus_and_best_quant_uses_the_split() -> None:
    e = simple_estimate(30 * GIB, 4096)
    one = _host(None, [24], size=30 * GIB)
    assert one.placement is Placement.CPU and one.fit is FitClass.WONT_FIT and one.needed_bytes == e.total_bytes
    two = _host(None, [24, 24], size=30 * GIB)
    assert two.placement is Placement.FULL and two.device == "gpu0+gpu1"
    payload = e.weights_bytes + e.kv_cache_bytes
    assert two.placed_bytes == payload + 2 * e.overhead_bytes
    assert two.gpus[0].bytes == payload // 2 + e.overhead_bytes
    quants = [("Q4_K_M", 18 * GIB), ("Q8_0", 32 * GIB)]
    hosts = [HostCapacity(host_id="one", gpus_free=[24 * GIB]), HostCapacity(host_id="two", gpus_free=[24 * GIB] * 2)]
    r = fit_report("m", "catalog", S, hosts, size_bytes=18 * GIB, quant="Q4_K_M", quants=quants)
    # Q4_K_M (22.1 GiB) is tight on one 24 GiB GPU; Q8_0 (38.9 GiB) only fits split over two, with headroom
    assert r.best_quant == {"one": "Q4_K_M", "two": "Q8_0"}
    assert {h.host_id: h.fit for h in r.hosts} == {"one": FitClass.TIGHT, "two": FitClass.PERFECT}


GPU = st.floats(min_value=0.0, max_value=48.0)


@settings(max_examples=80, deadline=None)
@given(
    frees=st.lists(GPU, min_size=1, max_size=4),
    extra=GPU,
    ctx=st.sampled_from([512, 4096, 16384]),
    model=st.sampled_from(["7b", "70b", "simple"]),
)
def test_placed_bytes_stay_within_free_memory_and_another_gpu_never_hurts(
    shapes: dict[str, ModelShape], frees: list[float], extra: float, ctx: int, model: str
) -> None:
    s = EstimateSettings(num_ctx=ctx)
    shape = None if model == "simple" else shapes[model]
    size = 20 * GIB
    before = _host(shape, frees, s, size)
    assert before.placed_bytes == sum(g.bytes for g in before.gpus) <= sum(g.free_bytes for g in before.gpus)
    assert all(g.bytes <= g.free_bytes for g in before.gpus)
    for where in (0, len(frees)):  # a GPU added first or last in device order
        after = _host(shape, [*frees[:where], extra, *frees[where:]], s, size)
        assert after.gpu_layers >= before.gpu_layers
        assert RANK[after.fit] >= RANK[before.fit]
        assert PLACEMENT_RANK[after.placement] >= PLACEMENT_RANK[before.placement]


def test_layer_split_follows_llama_cpp_upper_bound(shapes: dict[str, ModelShape]) -> None:
    split = LayerSplit(shapes["7b"], S)
    layers, _ = split.place([3 * GIB, 1 * GIB], 33)  # shares 0.75 / 1.0: r/33 < 0.75 for r < 24.75
    assert layers == [25, 8]
    layers, _ = split.place([1 * GIB, 0, 1 * GIB], 10)  # a GPU with no free memory takes no layer
    assert layers == [5, 0, 5]


def test_cli_fit_with_several_free_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFLEET_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("COLUMNS", "220")
    path = write_sparse_llama(tmp_path / "70b.gguf", SHAPE_70B)
    result = CliRunner().invoke(
        cli, ["fit", str(path), "--ctx", "4096", "--free-gib", "30", "--free-gib", "15", "--json"]
    )
    assert result.exit_code == 0, result.output
    [host] = json.loads(result.output)["hosts"]
    assert host["placement"] == "full" and [(g["index"], g["layers"]) for g in host["gpus"]] == [(0, 54), (1, 27)]
    table = CliRunner().invoke(cli, ["fit", str(path), "--ctx", "4096", "--free-gib", "30", "--free-gib", "15"])
    assert table.exit_code == 0, table.output
    assert "gpu0+gpu1" in table.output and "gpu0 54L" in table.output and "gpu1 27L" in table.output
