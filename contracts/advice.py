"""Recommendations for a host: the library model for its memory tier, judged by the same placement as `fit` over
all its GPUs, and the better models that run there only partially offloaded (pure; docs/hardware.md)."""

from __future__ import annotations

from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from contracts.architecture import rescale_shape
from contracts.catalog import ModelDoc
from contracts.fit import DEFAULT_QUANT, HostCapacity, HostFit, SizingMethod, fit_on_host, library_shapes
from contracts.vram import (
    EstimateSettings,
    FitClass,
    ModelChoice,
    ModelShape,
    Placement,
    Recommendation,
    recommend_model,
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class CandidateFit(_Frozen):
    """One library model judged on one host: its default quantization, how it was sized, and where it goes."""

    model: ModelChoice
    quant: str
    method: SizingMethod
    fit: HostFit


class HostAdvice(_Frozen):
    memory_bytes: int = Field(description="free memory of all the host's GPUs together, else available RAM")
    memory_source: str = Field(description="'gpu' or 'ram'")
    num_ctx: int = Field(description="the context each candidate is sized at")
    model: Recommendation
    placement: CandidateFit | None = Field(default=None, description="where the recommended model goes")
    offload: list[CandidateFit] = Field(
        default_factory=list,
        description="larger or better models that run only partially offloaded here, with their layer split",
    )


#: At most this many partial-offload options are offered, best first.
MAX_OFFLOAD_OPTIONS = 5


class Candidate(NamedTuple):
    """A library model as advice weighs it: its choice, quantization, shape (None: sized by file size), file size."""

    choice: ModelChoice
    quant: str
    shape: ModelShape | None
    size: int
    method: SizingMethod = "file-size"


def library_candidate(doc: ModelDoc, header: ModelShape | None = None) -> Candidate | None:
    """A library model as a candidate: its default (or smallest) quantization, its shape if known, its mean rating.

    The shape is the library's (architecture figures and the file size) where the entry has figures; else `header`,
    a GGUF header's shape the fleet knows for the entry (its local file, as the host's probe read it), scaled to
    the chosen quantization's size when the header's file is another one; else none (the file-size form)."""
    sizes = {q.name: q.size_bytes for q in doc.quantizations if q.size_bytes}
    if not sizes and header is not None and (header.file_size_bytes or header.weights_bytes):
        sizes = {header.file_type or "GGUF": header.file_size_bytes or header.weights_bytes}
    if not sizes or not doc.parameter_count:
        return None
    quant = DEFAULT_QUANT if DEFAULT_QUANT in sizes else min(sizes, key=sizes.__getitem__)
    quality = round(sum(doc.ratings.values()) / len(doc.ratings)) if doc.ratings else 0
    choice = ModelChoice(name=doc.id, parameters_b=doc.parameter_count / 1e9, size_bytes=sizes[quant], quality=quality)
    shape = library_shapes(doc).get(quant)
    if shape is not None:
        return Candidate(choice, quant, shape, sizes[quant], "shape")
    if header is not None and (doc.architecture is None or doc.architecture.kind != "diffusion"):
        same = (header.file_type or "").upper() == quant.upper() or len(sizes) == 1
        scaled = header if same else rescale_shape(header, sizes[quant], quant)
        return Candidate(choice, quant, scaled, sizes[quant], "header")
    return Candidate(choice, quant, None, sizes[quant], "file-size")


def advise_host(cap: HostCapacity, candidates: list[Candidate], s: EstimateSettings) -> HostAdvice:
    """The memory tier's model among those that fit the host *fully* by the same placement as `fit` (the layer
    split over every GPU, or a subset), and the better ones that only fit partially offloaded, with their split."""
    judged = []
    for c in candidates:
        hf = fit_on_host(
            cap.host_id, c.shape, s, gpus_free=cap.gpus_free, ram_available=cap.ram_available, file_size_bytes=c.size,
            gpu_indexes=cap.gpu_indexes,
        )  # fmt: skip
        method = c.method if c.shape is not None else "file-size"
        judged.append(CandidateFit(model=c.choice, quant=c.quant, method=method, fit=hf))
    memory = sum(max(0, f) for f in cap.gpus_free) if cap.gpus_free else cap.ram_available
    fits = {c.model.name for c in judged if c.fit.placement == Placement.FULL and c.fit.fit != FitClass.WONT_FIT}
    if not cap.gpus_free:
        fits = {c.model.name for c in judged if c.fit.fit != FitClass.WONT_FIT}
    rec = recommend_model(memory, [c.model for c in judged], fits=fits)
    placed = next((c for c in judged if rec.model and c.model.name == rec.model.name), None)
    bar = (rec.model.quality, rec.model.parameters_b) if rec.model and rec.model.name in fits else (-1, 0.0)
    offload = sorted(
        (
            c for c in judged
            if c.fit.placement == Placement.PARTIAL and (c.model.quality, c.model.parameters_b) > bar
        ),
        key=lambda c: (-c.model.quality, -c.model.parameters_b),
    )[:MAX_OFFLOAD_OPTIONS]  # fmt: skip
    return HostAdvice(
        memory_bytes=memory, memory_source="gpu" if cap.gpus_free else "ram", num_ctx=s.num_ctx, model=rec,
        placement=placed, offload=offload,
    )  # fmt: skip
