"""Fit of one model on the fleet's hosts: the report `/api/v1/fit` and `modelfleet fit` print (pure)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from itertools import combinations
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from contracts.architecture import shape_from_architecture
from contracts.catalog import ModelDoc
from contracts.hardware import GpuSampled
from contracts.vram import (
    EstimateSettings,
    FitClass,
    ModelShape,
    Placement,
    QuantOption,
    compute_bytes,
    cpu_estimate,
    estimate,
    fit_class,
    layer_kv_bytes,
    pick_quantization,
    simple_estimate,
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class GpuShare(_Frozen):
    """What one GPU of a host holds in the host's placement (zeros for a GPU the placement leaves out)."""

    index: int = Field(description="the GPU's NVML index")
    layers: int = Field(description="layers placed on it, the output layer counted as one (0 in the simple form)")
    bytes: int = Field(description="weights + KV cache of its layers + its compute buffer + its overhead")
    free_bytes: int


class HostFit(_Frozen):
    """How one model fits one host: on one GPU or split over several (docs/hardware.md), or in RAM without a GPU."""

    host_id: str
    has_gpu: bool
    device: str = Field(description="'gpu<index>', 'gpu<i>+gpu<j>...' for a split, or 'ram'")
    free_bytes: int = Field(description="free memory of the device(s) the placement uses")
    needed_bytes: int = Field(description="the full placement on that device (summed over the GPUs of a split)")
    fit: FitClass
    placement: Placement
    gpu_layers: int
    total_layers: int
    placed_bytes: int = Field(default=0, description="bytes the chosen placement puts on the GPUs, in total")
    gpus: list[GpuShare] = Field(default_factory=list, description="per GPU of the host: layers and bytes placed")


#: Up to this many GPUs every subset of them is tried, so adding a GPU never makes a placement worse; above it,
#: only the k roomiest GPUs for each k (2^n subsets would be too many).
EXHAUSTIVE_GPUS = 8
_FIT_RANK = {FitClass.WONT_FIT: 0, FitClass.TIGHT: 1, FitClass.PERFECT: 2}


class _Plan(NamedTuple):
    """One candidate: the GPUs used (positions), layers and bytes on each, the layers in total, the fit class."""

    subset: tuple[int, ...]
    layers: list[int]
    used: list[int]
    gpu_layers: int
    fit: FitClass

    def key(self, frees: list[int]) -> tuple[int, int, int, int]:
        """More layers, then a better fit class, then fewer GPUs (Ollama's preference), then more free memory."""
        return self.gpu_layers, _FIT_RANK[self.fit], -len(self.subset), sum(frees[i] for i in self.subset)


def _subsets(frees: list[int]) -> Iterator[tuple[int, ...]]:
    n = len(frees)
    if n <= EXHAUSTIVE_GPUS:
        for k in range(1, n + 1):
            yield from combinations(range(n), k)
        return
    roomiest = sorted(range(n), key=lambda i: (-frees[i], i))
    for k in range(1, n + 1):
        yield tuple(sorted(roomiest[:k]))


def _worst_fit(used: list[int], frees: list[int]) -> FitClass:
    return min((fit_class(u, f) for u, f in zip(used, frees, strict=True) if u), key=_FIT_RANK.__getitem__)


class LayerSplit:
    """llama.cpp's `--split-mode layer` with `tensor_split` by free memory, for one model and its settings.

    The last `g` layers are offloaded (the output layer is the (n+1)-th); layer r of them goes to the first
    device whose cumulative share of free memory exceeds r/g, so each GPU takes a contiguous run and the output
    layer lands on the last one. Each GPU holding layers pays its KV cache, a compute buffer (with the logits on
    the output's GPU) and the platform overhead.
    """

    def __init__(self, shape: ModelShape, s: EstimateSettings) -> None:
        kv = layer_kv_bytes(shape, s)
        n = shape.block_count
        self.n = n
        self.cost = [shape.layer_bytes[i] + (kv[i] if i < len(kv) else 0) for i in range(n)] + [shape.output_bytes]
        self.compute_mid = compute_bytes(shape, s, with_output=False)
        self.compute_out = compute_bytes(shape, s, with_output=True)
        self.overhead = s.gpu_overhead_bytes
        # offloaded[g]: weights + KV of the g offloaded layers (monotone in g)
        self.offloaded = [sum(self.cost[n - g : n]) for g in range(n + 1)] + [sum(self.cost)]

    def place(self, frees: list[int], g: int) -> tuple[list[int], list[int]]:
        """Layers and bytes on each device of `frees` (in device order) for `g` offloaded layers."""
        total = sum(frees)
        layers, used = [0] * len(frees), [0] * len(frees)
        if g == 0 or total <= 0:
            return layers, used
        splits, acc = [], 0
        for f in frees:
            acc += f
            splits.append(acc / total)
        first = self.n - min(g, self.n)
        holds_output = -1
        for r in range(g):
            dev = min(bisect_right(splits, r / g), len(frees) - 1)
            layers[dev] += 1
            used[dev] += self.cost[first + r]
            if first + r == self.n:
                holds_output = dev
        for dev, count in enumerate(layers):
            if count:
                used[dev] += self.overhead + (self.compute_out if dev == holds_output else self.compute_mid)
        return layers, used

    def plan(self, frees: list[int]) -> _Plan:
        """The best placement over the GPUs (or a subset of them): most layers, best fit, fewest GPUs."""
        best: _Plan | None = None
        for subset in _subsets(frees):
            sub = [max(0, frees[i]) for i in subset]
            # each GPU holding layers pays at least its overhead and a compute buffer: a bound on what fits
            room = sum(max(0, f - self.overhead - self.compute_mid) for f in sub)
            top = bisect_right(self.offloaded, room) - 1
            for g in range(top, (best.gpu_layers if best else 0) - 1, -1):
                layers, used = self.place(sub, g)
                if all(u <= f for u, f in zip(used, sub, strict=True)):
                    fit = _worst_fit(used, sub) if g == self.n + 1 else FitClass.WONT_FIT
                    cand = _Plan(subset, layers, used, g, fit)
                    if best is None or cand.key(frees) > best.key(frees):
                        best = cand
                    break
        assert best is not None  # g = 0 always fits
        return best


def simple_plan(payload_bytes: int, overhead_bytes: int, frees: list[int]) -> _Plan:
    """The simple form over GPUs: the model (no layers known) split in proportion to free memory, each GPU paying
    the overhead; full on the best subset that fits, else CPU only."""
    best: _Plan | None = None
    for subset in _subsets(frees):
        sub = [max(0, frees[i]) for i in subset]
        total = sum(sub)
        used = [0] * len(sub)
        if total > 0:
            used = [payload_bytes * f // total + overhead_bytes for f in sub]
            used[-1] += payload_bytes - sum(u - overhead_bytes for u in used)  # rounding remainder
        fits = total > 0 and all(u <= f for u, f in zip(used, sub, strict=True))
        cand = (
            _Plan(subset, [0] * len(sub), used, 1, _worst_fit(used, sub))
            if fits
            else _Plan(subset, [0] * len(sub), [0] * len(sub), 0, FitClass.WONT_FIT)
        )
        if best is None or cand.key(frees) > best.key(frees):
            best = cand
    assert best is not None
    return best


def _shares(plan: _Plan, frees: list[int], indexes: list[int]) -> list[GpuShare]:
    where = {pos: k for k, pos in enumerate(plan.subset)}
    return [
        GpuShare(
            index=indexes[pos],
            layers=plan.layers[where[pos]] if pos in where else 0,
            bytes=plan.used[where[pos]] if pos in where else 0,
            free_bytes=free,
        )
        for pos, free in enumerate(frees)
    ]


def _gpu_host_fit(
    host_id: str, plan: _Plan, full_used: list[int], frees: list[int], indexes: list[int], total_layers: int
) -> HostFit:
    """A GPU host's fit from the chosen plan; `full_used` is the full placement's bytes on the plan's GPUs."""
    holding = [pos for k, pos in enumerate(plan.subset) if plan.used[k]] or list(plan.subset)
    n = plan.gpu_layers
    return HostFit(
        host_id=host_id, has_gpu=True, device="+".join(f"gpu{indexes[p]}" for p in holding),
        free_bytes=sum(frees[p] for p in plan.subset), needed_bytes=sum(full_used), fit=plan.fit,
        placement=Placement.FULL if n == total_layers else Placement.PARTIAL if n else Placement.CPU,
        gpu_layers=n, total_layers=total_layers, placed_bytes=sum(plan.used), gpus=_shares(plan, frees, indexes),
    )  # fmt: skip


def fit_on_host(
    host_id: str, shape: ModelShape | None, s: EstimateSettings, *, gpus_free: list[int], ram_available: int,
    file_size_bytes: int = 0, gpu_indexes: list[int] | None = None,
) -> HostFit:  # fmt: skip
    """`shape` None means the simple form from `file_size_bytes` (no GGUF metadata).

    One GPU: the best placement on it. Several: the best of llama.cpp's layer split over them (or a subset).
    """
    if gpus_free:
        indexes = gpu_indexes if gpu_indexes and len(gpu_indexes) == len(gpus_free) else list(range(len(gpus_free)))
        if shape is None:
            e = simple_estimate(file_size_bytes, s.num_ctx, s.parallel)
            plan = simple_plan(e.weights_bytes + e.kv_cache_bytes, e.overhead_bytes, gpus_free)
            full = e.weights_bytes + e.kv_cache_bytes + e.overhead_bytes * len(plan.subset)
            return _gpu_host_fit(host_id, plan, [full], gpus_free, indexes, 1)
        split = LayerSplit(shape, s)
        plan = split.plan(gpus_free)
        _, full_used = split.place([max(0, gpus_free[p]) for p in plan.subset], shape.block_count + 1)
        return _gpu_host_fit(host_id, plan, full_used, gpus_free, indexes, shape.block_count + 1)
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
    gpu_indexes: list[int] = Field(default_factory=list, description="NVML index of each entry of gpus_free")
    ram_available: int = 0


class QuantFit(_Frozen):
    quant: str
    size_bytes: int
    needed_bytes: int


#: How an estimate was made: from published architecture figures + the file size (`shape`), from the model's GGUF
#: header (`header`), or from the file size alone (`file-size`: the simple form, which ignores most of the context).
SizingMethod = Literal["shape", "header", "file-size"]


class FitReport(_Frozen):
    model: Annotated[str, StringConstraints(max_length=1024)]
    quant: str | None = None
    source: Annotated[str, StringConstraints(pattern=r"^(gguf|size|catalog)$")]
    # Added with library shapes (optional, so older replies stay valid):
    method: SizingMethod | None = Field(
        default=None, description="shape (library figures), header (GGUF header) or file-size (the simple form)"
    )
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


def _quant_fit(h: HostCapacity, q: QuantFit, s: EstimateSettings, shape: ModelShape | None = None) -> FitClass:
    """A catalog quantization on a host: with its shape, the layer split like any GGUF; else split over the GPUs
    in the simple form; without a GPU, in RAM."""
    if shape is not None:
        return fit_on_host(
            h.host_id, shape, s, gpus_free=h.gpus_free, ram_available=h.ram_available, gpu_indexes=h.gpu_indexes
        ).fit
    if not h.gpus_free:
        return fit_class(q.needed_bytes, h.ram_available)
    return fit_on_host(h.host_id, None, s, gpus_free=h.gpus_free, ram_available=0, file_size_bytes=q.size_bytes).fit


def fit_report(
    model: str, source: str, s: EstimateSettings, hosts: list[HostCapacity], *, shape: ModelShape | None = None,
    size_bytes: int = 0, quant: str | None = None, quants: list[tuple[str, int]] | None = None,
    quant_shapes: dict[str, ModelShape] | None = None, method: SizingMethod | None = None,
    warnings: list[str] | None = None,
) -> FitReport:  # fmt: skip
    """The full-GPU estimate's parts, the CPU-only total, and per host its fit (and best quant of `quants`).

    `quant_shapes` gives a shape per quantization name (library figures or a rescaled header): those are judged by
    the layer split; the others by the simple form. `method` defaults to header with a shape, else file-size."""
    shapes = quant_shapes or {}
    if shape is not None:
        e = estimate(shape, s)
        cpu_total = cpu_estimate(shape, s).total_bytes
        cpu_out = cpu_estimate(shape, s).output_bytes
    else:
        e = simple_estimate(size_bytes, s.num_ctx, s.parallel)
        cpu_total, cpu_out = e.total_bytes - e.overhead_bytes, 0
    fits = [
        fit_on_host(
            h.host_id,
            shape,
            s,
            gpus_free=h.gpus_free,
            ram_available=h.ram_available,
            file_size_bytes=size_bytes,
            gpu_indexes=h.gpu_indexes,
        )
        for h in hosts
    ]
    qfits = [
        QuantFit(
            quant=q, size_bytes=b,
            needed_bytes=estimate(shapes[q], s).total_bytes if q in shapes
            else simple_estimate(b, s.num_ctx, s.parallel).total_bytes,
        )
        for q, b in quants or []
    ]  # fmt: skip
    best: dict[str, str | None] = {}
    for h in hosts if qfits else []:
        classed = [
            (QuantOption(quant=q.quant, needed_bytes=q.needed_bytes), _quant_fit(h, q, s, shapes.get(q.quant)))
            for q in qfits
        ]
        pick = pick_quantization(classed)
        best[h.host_id] = pick[0].quant if pick else None
    method = method or ("file-size" if shape is None else "header")
    return FitReport(
        model=model, quant=quant, source=source, method=method, num_ctx=s.num_ctx, parallel=s.parallel,
        cache_type=s.cache_type,
        weights_bytes=e.weights_bytes, kv_cache_bytes=e.kv_cache_bytes, compute_bytes=e.compute_bytes,
        output_bytes=cpu_out, overhead_bytes=e.overhead_bytes, total_bytes=e.total_bytes, gpu_layers=e.gpu_layers,
        total_layers=e.total_layers, cpu_total_bytes=cpu_total, simple=e.simple, shape=shape, hosts=fits,
        quants=qfits, best_quant=best, warnings=[*e.warnings, *(warnings or [])],
    )  # fmt: skip


def capacity(sample: GpuSampled) -> HostCapacity:
    return HostCapacity(
        host_id=sample.host_id,
        gpus_free=[g.memory_free_bytes for g in sample.gpus] if sample.has_gpu else [],
        gpu_indexes=[g.index for g in sample.gpus] if sample.has_gpu else [],
        ram_available=sample.memory_available_bytes,
    )


# --- Catalog models: shapes from the library's figures, GGUF sources ------------------------------------------------

#: What a catalog model is sized as when no quantization is asked for (the one Ollama pulls by default).
DEFAULT_QUANT = "Q4_K_M"


def library_shapes(doc: ModelDoc) -> dict[str, ModelShape]:
    """A shape per quantization of `doc` from its architecture figures and each file size (empty without figures,
    for a diffusion model, or for a quantization without a size)."""
    arch = doc.architecture
    if arch is None or arch.kind == "diffusion":
        return {}
    return {q.name: shape_from_architecture(arch, q.size_bytes, q.name) for q in doc.quantizations if q.size_bytes}


def gguf_source_url(doc: ModelDoc, quant: str | None, hf_endpoint: str = "https://huggingface.co") -> str | None:
    """Where the GGUF of `doc` (its `quant` file, else its `hf_file`) can be read by HTTP Range: a quantization's
    file given as a URL, or `<endpoint>/<hf_repo>/resolve/<revision>/<file>`; None when it names no GGUF."""
    q = next((q for q in doc.quantizations if quant and q.name.upper() == quant.upper()), None)
    for file in (q.file if q else "", doc.sources.hf_file or ""):
        if not file.lower().endswith(".gguf"):
            continue
        if file.startswith(("http://", "https://")):
            return file
        if doc.sources.hf_repo:
            rev = doc.sources.hf_revision or "main"
            return f"{hf_endpoint.rstrip('/')}/{doc.sources.hf_repo}/resolve/{rev}/{file}"
    return None
