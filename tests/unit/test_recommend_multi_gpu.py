"""Recommendations across GPUs: the same layer split as `fit` decides what a host with several GPUs can run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from contracts.advice import CandidateFit, HostAdvice, advise_host, library_candidate
from contracts.fit import (
    HostCapacity,
    capacity,
    fit_on_host,
)
from contracts.hardware import GpuSampled
from contracts.vram import EstimateSettings, FitClass, ModelChoice, Placement, recommend_model
from services.catalog.library import load_library
from services.hardware_probe.host_stats import HostStats
from services.hardware_probe.sampler import Sampler
from services.hardware_probe.torch_stats import TorchStats
from services.runtime.nvml import NvmlReader
from tests.harness.nvml_stand_in import GIB, FakeGpu, stand_in

pytestmark = pytest.mark.unit

CANDIDATES = [c for c in map(library_candidate, load_library().models) if c is not None]
CTX = EstimateSettings(num_ctx=8192)


def _sample(tmp_path: Path, gpus: list[FakeGpu]) -> GpuSampled:
    """A host sample as the probe takes it, NVML answered by the stand-in."""
    sampler = Sampler("rig", HostStats(tmp_path), NvmlReader(stand_in(gpus)), None, TorchStats(False), 5.0)
    return asyncio.run(sampler.sample())


def _rtx(used_gib: float) -> FakeGpu:
    return FakeGpu("NVIDIA GeForce RTX 3090", 24 * GIB, int(used_gib * GIB), procs=[])


def _option(advice: HostAdvice, name: str) -> CandidateFit | None:
    return next((o for o in [advice.placement, *advice.offload] if o and o.model.name == name), None)


def _check_split(option: CandidateFit, frees: list[int]) -> None:
    """Layers on every GPU, placed bytes within each GPU's free memory, the parts adding up."""
    f = option.fit
    assert [g.index for g in f.gpus] == list(range(len(frees)))
    assert all(g.layers > 0 for g in f.gpus), f.gpus
    assert sum(g.layers for g in f.gpus) == f.gpu_layers
    assert all(g.bytes <= g.free_bytes == free for g, free in zip(f.gpus, frees, strict=True))
    assert f.placed_bytes == sum(g.bytes for g in f.gpus)
    assert f.device == "gpu0+gpu1"


def test_two_24gb_gpus_are_offered_the_70b_q4_with_partial_offload_figures(tmp_path: Path) -> None:
    """2 x 24 GB with 2 GiB in use on each: the 70B Q4_K_M does not fit whole at 8k context, but runs with 78 of
    its 81 layers split over both cards; the roomiest single card alone would hold only about half of them."""
    sample = _sample(tmp_path, [_rtx(2), _rtx(2)])
    cap = capacity(sample)
    assert cap.gpus_free == [22 * GIB, 22 * GIB]
    advice = advise_host(cap, CANDIDATES, CTX)
    assert advice.memory_bytes == 44 * GIB and advice.memory_source == "gpu"
    seventy = _option(advice, "llama3.3-70b")
    assert seventy is not None and seventy in advice.offload and seventy.quant == "Q4_K_M"
    assert seventy.method == "shape" and seventy.fit.placement == Placement.PARTIAL
    assert seventy.fit.fit == FitClass.WONT_FIT and seventy.fit.total_layers == 81
    assert 70 <= seventy.fit.gpu_layers < 81
    _check_split(seventy, cap.gpus_free)
    # the figures are fit's own: the same placement GET /api/v1/fit reports for this host
    [(_, _, shape, size, _)] = [c for c in CANDIDATES if c[0].name == "llama3.3-70b"]
    assert seventy.fit == fit_on_host("rig", shape, CTX, gpus_free=cap.gpus_free, ram_available=cap.ram_available,
                                      gpu_indexes=cap.gpu_indexes, file_size_bytes=size)  # fmt: skip
    # what fits whole is judged over both cards too: the pick fits fully, and is at least a 30B-class model
    assert advice.placement is not None and advice.model.model is not None
    assert advice.placement.fit.placement == Placement.FULL and advice.placement.fit.fit != FitClass.WONT_FIT
    assert advice.model.model.parameters_b >= 30

    one_card = advise_host(capacity(_sample(tmp_path, [_rtx(2)])), CANDIDATES, CTX)
    alone = _option(one_card, "llama3.3-70b")
    assert alone is not None and alone.fit.placement == Placement.PARTIAL
    assert alone.fit.gpu_layers < seventy.fit.gpu_layers * 0.7  # a second card places far more of it


def test_two_24gb_gpus_with_room_run_the_70b_q4_whole_split_over_both(tmp_path: Path) -> None:
    cap = capacity(_sample(tmp_path, [_rtx(0.5), _rtx(0.5)]))
    advice = advise_host(cap, CANDIDATES, CTX)
    assert advice.model.model is not None and advice.model.model.name == "llama3.3-70b"
    assert advice.placement is not None and advice.placement.fit.placement == Placement.FULL
    assert advice.placement.fit.gpu_layers == 81 and advice.placement.fit.fit in (FitClass.PERFECT, FitClass.TIGHT)
    _check_split(advice.placement, cap.gpus_free)
    assert _option(advice, "llama3.3-70b") is advice.placement and all(
        o.model.name != "llama3.3-70b" for o in advice.offload
    )
    # the old rule (the roomiest single card's free memory) could not have picked it: 42.5 GB > 23.5 GiB
    single = recommend_model(max(cap.gpus_free), [c[0] for c in CANDIDATES])
    assert single.model is not None and single.model.name != "llama3.3-70b"


def test_offload_options_are_better_than_the_pick_and_ranked() -> None:
    cap = HostCapacity(host_id="h", gpus_free=[10 * GIB, 6 * GIB], gpu_indexes=[0, 1], ram_available=64 * GIB)
    advice = advise_host(cap, CANDIDATES, CTX)
    assert advice.model.model is not None and advice.placement is not None
    pick = (advice.model.model.quality, advice.model.model.parameters_b)
    ranks = [(o.model.quality, o.model.parameters_b) for o in advice.offload]
    assert ranks and all(r > pick for r in ranks) and ranks == sorted(ranks, reverse=True)
    assert all(o.fit.placement == Placement.PARTIAL for o in advice.offload)
    assert len(advice.offload) <= 5


def test_a_host_without_a_gpu_is_judged_in_ram() -> None:
    cap = HostCapacity(host_id="cpu", ram_available=12 * GIB)
    advice = advise_host(cap, CANDIDATES, EstimateSettings(num_ctx=4096))
    assert advice.memory_source == "ram" and advice.memory_bytes == 12 * GIB and advice.offload == []
    assert advice.placement is not None and advice.placement.fit.device == "ram"
    assert advice.placement.fit.needed_bytes <= 12 * GIB


def test_recommend_model_takes_the_callers_fits() -> None:
    a = ModelChoice(name="a", parameters_b=70, size_bytes=40 * GIB, quality=9)
    b = ModelChoice(name="b", parameters_b=8, size_bytes=5 * GIB, quality=7)
    assert recommend_model(24 * GIB, [a, b]).model == b  # by file size against one number
    assert recommend_model(44 * GIB, [a, b], fits={"a", "b"}).model == a  # judged by the split
    assert recommend_model(44 * GIB, [a, b], fits={"b"}).model == b
