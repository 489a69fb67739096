"""Fit of one model on the fleet's hosts: the report `/api/v1/fit` and `modelfleet fit` print (pure)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from contracts.hardware import GpuSampled
from contracts.vram import (
    EstimateSettings,
    FitClass,
    ModelShape,
    Placement,
    QuantOption,
    best_placement,
    best_quantization,
    cpu_estimate,
    estimate,
    fit_class,
    simple_estimate,
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class HostFit(_Frozen):
    """How one model fits one host: against its roomiest GPU, or its available RAM when it has none."""

    host_id: str
    has_gpu: bool
    device: str = Field(description="'gpu<index>' or 'ram'")
    free_bytes: int
    needed_bytes: int = Field(description="the full placement on that device")
    fit: FitClass
    placement: Placement
    gpu_layers: int
    total_layers: int


def fit_on_host(
    host_id: str, shape: ModelShape | None, s: EstimateSettings, *, gpus_free: list[int], ram_available: int,
    file_size_bytes: int = 0,
) -> HostFit:  # fmt: skip
    """`shape` None means the simple form from `file_size_bytes` (no GGUF metadata)."""
    if gpus_free:
        index = max(range(len(gpus_free)), key=lambda i: gpus_free[i])
        free = gpus_free[index]
        if shape is None:
            e = simple_estimate(file_size_bytes, s.num_ctx, s.parallel)
            fit = fit_class(e.total_bytes, free)
            placement = Placement.FULL if fit is not FitClass.WONT_FIT else Placement.CPU
            layers = 1 if placement is Placement.FULL else 0
            return HostFit(
                host_id=host_id, has_gpu=True, device=f"gpu{index}", free_bytes=free, needed_bytes=e.total_bytes,
                fit=fit, placement=placement, gpu_layers=layers, total_layers=1,
            )  # fmt: skip
        full = estimate(shape, s)
        best = best_placement(shape, s, free)
        return HostFit(
            host_id=host_id, has_gpu=True, device=f"gpu{index}", free_bytes=free, needed_bytes=full.total_bytes,
            fit=fit_class(full.total_bytes, free), placement=best.placement, gpu_layers=best.gpu_layers,
            total_layers=full.total_layers,
        )  # fmt: skip
    needed = (
        cpu_estimate(shape, s).total_bytes
        if shape is not None
        else simple_estimate(file_size_bytes, s.num_ctx, s.parallel).total_bytes
    )
    return HostFit(
        host_id=host_id, has_gpu=False, device="ram", free_bytes=ram_available, needed_bytes=needed,
        fit=fit_class(needed, ram_available), placement=Placement.CPU, gpu_layers=0,
        total_layers=shape.block_count + 1 if shape is not None else 1,
    )  # fmt: skip


class HostCapacity(_Frozen):
    """What a host offers, from its latest GpuSampled."""

    host_id: str
    gpus_free: list[int] = Field(default_factory=list)
    ram_available: int = 0


class QuantFit(_Frozen):
    quant: str
    size_bytes: int
    needed_bytes: int


class FitReport(_Frozen):
    model: Annotated[str, StringConstraints(max_length=1024)]
    quant: str | None = None
    source: Annotated[str, StringConstraints(pattern=r"^(gguf|size|catalog)$")]
    num_ctx: int
    parallel: int
    cache_type: str
    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    output_bytes: int
    overhead_bytes: int
    total_bytes: int
    gpu_layers: int
    total_layers: int
    cpu_total_bytes: int = Field(description="everything in host RAM (CPU-only placement)")
    simple: bool = False
    shape: ModelShape | None = None
    hosts: list[HostFit] = Field(default_factory=list)
    quants: list[QuantFit] = Field(default_factory=list, description="every quantization considered (catalog)")
    best_quant: dict[str, str | None] = Field(default_factory=dict, description="host id -> best fitting quant")
    warnings: list[str] = Field(default_factory=list)


def fit_report(
    model: str, source: str, s: EstimateSettings, hosts: list[HostCapacity], *, shape: ModelShape | None = None,
    size_bytes: int = 0, quant: str | None = None, quants: list[tuple[str, int]] | None = None,
) -> FitReport:  # fmt: skip
    """The full-GPU estimate's parts, the CPU-only total, and per host its fit (and best quant of `quants`)."""
    if shape is not None:
        e = estimate(shape, s)
        cpu_total = cpu_estimate(shape, s).total_bytes
        cpu_out = cpu_estimate(shape, s).output_bytes
    else:
        e = simple_estimate(size_bytes, s.num_ctx, s.parallel)
        cpu_total, cpu_out = e.total_bytes - e.overhead_bytes, 0
    fits = [
        fit_on_host(
            h.host_id, shape, s, gpus_free=h.gpus_free, ram_available=h.ram_available, file_size_bytes=size_bytes
        )
        for h in hosts
    ]
    qfits = [
        QuantFit(quant=q, size_bytes=b, needed_bytes=simple_estimate(b, s.num_ctx, s.parallel).total_bytes)
        for q, b in quants or []
    ]
    best: dict[str, str | None] = {}
    for h in hosts if qfits else []:
        free = max(h.gpus_free) if h.gpus_free else h.ram_available
        pick = best_quantization([QuantOption(quant=q.quant, needed_bytes=q.needed_bytes) for q in qfits], free)
        best[h.host_id] = pick[0].quant if pick else None
    return FitReport(
        model=model, quant=quant, source=source, num_ctx=s.num_ctx, parallel=s.parallel, cache_type=s.cache_type,
        weights_bytes=e.weights_bytes, kv_cache_bytes=e.kv_cache_bytes, compute_bytes=e.compute_bytes,
        output_bytes=cpu_out, overhead_bytes=e.overhead_bytes, total_bytes=e.total_bytes, gpu_layers=e.gpu_layers,
        total_layers=e.total_layers, cpu_total_bytes=cpu_total, simple=e.simple, shape=shape, hosts=fits,
        quants=qfits, best_quant=best, warnings=e.warnings,
    )  # fmt: skip


def capacity(sample: GpuSampled) -> HostCapacity:
    return HostCapacity(
        host_id=sample.host_id,
        gpus_free=[g.memory_free_bytes for g in sample.gpus] if sample.has_gpu else [],
        ram_available=sample.memory_available_bytes,
    )
