"""VRAM estimate, fit classes and hardware recommendations: pure functions every service computes the same way.

The estimate follows llama.cpp's own accounting (the runtime under Ollama): weights of the layers placed
on the GPU, the KV cache, the compute graph of the largest layer at the micro-batch, the logits buffer,
and a platform overhead. docs/hardware.md gives the formulas and where they were checked.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from contracts.quantization import BITS_PER_WEIGHT, QuantizationError, normalize_quant

MIB = 1 << 20
GIB = 1 << 30
#: llama.cpp rounds the KV cache size up to a multiple of this many cells.
KV_PAD = 256
#: llama.cpp's default n_ubatch; the graph is reserved for min(n_ctx, this) tokens.
DEFAULT_UBATCH = 512
#: CUDA context, cuBLAS workspace and allocator slack seen on a device before any model memory.
DEFAULT_GPU_OVERHEAD = 512 * MIB
#: Live n_embd-sized f32 activations beside the attention scores at the graph's peak (fitted on llama.cpp).
_ATTN_EXTRA_ROWS = 6
_OUTPUT_EXTRA_ROWS = 3

#: KV cache element types: bytes per element.
CACHE_TYPES: dict[str, float] = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}

#: Architectures whose sliding-window layers follow a fixed period: layer i is SWA unless (i+1) % period == 0.
SWA_PERIOD: dict[str, int] = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "cohere2": 4, "gpt-oss": 2, "llama4": 4}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ModelShape(_Frozen):
    """What sizing needs to know of a model, from its GGUF header (contracts.gguf_header.model_shape)."""

    architecture: Annotated[str, StringConstraints(max_length=64)]
    block_count: int = Field(ge=1)
    context_length: int = Field(default=0, ge=0)
    embedding_length: int = Field(ge=1)
    feed_forward_length: int = Field(default=0, ge=0)
    head_count: int = Field(ge=1)
    head_count_kv: list[int] = Field(description="KV heads of each layer (0 for a layer without attention).")
    key_length: int = Field(ge=1)
    value_length: int = Field(ge=1)
    sliding_window: int = Field(default=0, ge=0)
    swa_layers: list[bool] = Field(default_factory=list, description="True where a layer uses the sliding window.")
    expert_count: int = Field(default=0, ge=0)
    expert_used_count: int = Field(default=0, ge=0)
    expert_feed_forward_length: int = Field(default=0, ge=0)
    vocab_size: int = Field(ge=1)
    file_type: str | None = None
    tensor_types: dict[str, int] = Field(default_factory=dict, description="ggml type name -> number of tensors")
    layer_bytes: list[int] = Field(description="Weight bytes of each block.")
    input_bytes: int = Field(default=0, ge=0, description="token embedding: llama.cpp keeps it on the CPU")
    output_bytes: int = Field(default=0, ge=0, description="output norm + output matrix (the embedding if tied)")
    weights_bytes: int = Field(ge=0, description="every tensor of the file")
    file_size_bytes: int = Field(default=0, ge=0)


#: Architectures llama.cpp runs without a KV cache (non-causal encoders: embeddings and rerankers).
NO_KV_ARCHITECTURES = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "neo-bert", "t5encoder"})


def swa_layers(architecture: str, n: int, window: int, pattern: int | list[bool] | list[int] | None) -> list[bool]:
    """Which of `n` layers use the sliding window: an explicit per-layer list, else a period (`pattern`, else the
    architecture's own in SWA_PERIOD): layer i is SWA unless (i+1) % period == 0. No window, or a window on an
    architecture llama.cpp applies none to, is no SWA layer."""
    if not window:
        return [False] * n
    if isinstance(pattern, list) and len(pattern) == n:
        return [bool(p) for p in pattern]
    period = pattern if isinstance(pattern, int) and pattern > 0 else SWA_PERIOD.get(architecture)
    if not period:
        return [False] * n
    return [(i + 1) % period != 0 for i in range(n)]


class EstimateSettings(_Frozen):
    num_ctx: int = Field(default=2048, ge=1, le=10_000_000)
    parallel: int = Field(default=1, ge=1, le=256)
    cache_type: Annotated[str, StringConstraints(pattern=r"^(f32|f16|bf16|q8_0|q4_0)$")] = "f16"
    ubatch: int = Field(default=DEFAULT_UBATCH, ge=1, le=65536)
    flash_attention: bool = False
    gpu_overhead_bytes: int = Field(default=DEFAULT_GPU_OVERHEAD, ge=0)


class Placement(StrEnum):
    FULL = "full"
    PARTIAL = "partial"
    CPU = "cpu"


class Estimate(_Frozen):
    """Bytes one placement needs on the GPU (`total_bytes`) and in host RAM (`cpu_bytes`)."""

    placement: Placement
    gpu_layers: int = Field(ge=0, description="offloaded layers, the output layer counted as one (like Ollama)")
    total_layers: int = Field(ge=1)
    num_ctx: int
    parallel: int
    kv_cells: int
    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    output_bytes: int
    overhead_bytes: int
    total_bytes: int
    cpu_bytes: int = Field(description="weights, KV and buffers that stay in host RAM")
    simple: bool = Field(default=False, description="no GGUF metadata: file_size x 1.2 + ctx/1000 MiB + 500 MiB")
    warnings: list[str] = Field(default_factory=list)


def _pad(n: int, to: int) -> int:
    return -(-n // to) * to


def kv_cells(num_ctx: int, parallel: int) -> int:
    """Ollama gives each parallel slot its own num_ctx; llama.cpp pads the total to KV_PAD cells."""
    return _pad(num_ctx * parallel, KV_PAD)


def layer_kv_bytes(shape: ModelShape, s: EstimateSettings) -> list[int]:
    """KV cache bytes of each layer: per-layer KV heads, sliding-window layers holding only their window."""
    cells = kv_cells(s.num_ctx, s.parallel)
    ubatch = min(s.ubatch, s.num_ctx * s.parallel)
    swa_cells = min(cells, _pad(shape.sliding_window * s.parallel + ubatch, KV_PAD)) if shape.sliding_window else cells
    per = CACHE_TYPES[s.cache_type]
    if shape.architecture in NO_KV_ARCHITECTURES:
        return [0] * len(shape.head_count_kv)  # llama.cpp creates no KV cache for a non-causal encoder
    out = []
    for i, heads in enumerate(shape.head_count_kv):
        n = swa_cells if i < len(shape.swa_layers) and shape.swa_layers[i] else cells
        out.append(int(n * heads * (shape.key_length + shape.value_length) * per))
    return out


def compute_bytes(shape: ModelShape, s: EstimateSettings, *, with_output: bool = True) -> int:
    """The graph allocator's peak for one micro-batch: attention scores of the largest layer, or the logits."""
    ubatch = min(s.ubatch, s.num_ctx * s.parallel)
    n_kv = kv_cells(s.num_ctx, s.parallel)
    row = ubatch * shape.embedding_length * 4
    if s.flash_attention:
        attn = ubatch * n_kv * 2 + _ATTN_EXTRA_ROWS * row
    else:
        attn = ubatch * n_kv * shape.head_count * 4 + ubatch * n_kv * 4 + _ATTN_EXTRA_ROWS * row
    ff = shape.expert_feed_forward_length * max(1, shape.expert_used_count) if shape.expert_count else 0
    ffn = ubatch * max(shape.feed_forward_length, ff) * 4 * 3 + 2 * row
    vocab = shape.embedding_length if shape.architecture in NO_KV_ARCHITECTURES else shape.vocab_size  # embeddings
    logits = ubatch * vocab * 4 + _OUTPUT_EXTRA_ROWS * row if with_output else 0
    return int(max(attn, ffn, logits))


def output_buffer_bytes(shape: ModelShape, s: EstimateSettings) -> int:
    """Logits of the last token of each sequence, f32 (kept in host-visible memory)."""
    if shape.architecture in NO_KV_ARCHITECTURES:
        return shape.embedding_length * 4 * s.parallel  # an encoder returns embeddings, not logits
    return shape.vocab_size * 4 * s.parallel


def estimate(shape: ModelShape, s: EstimateSettings, gpu_layers: int | None = None) -> Estimate:
    """Memory for `gpu_layers` offloaded layers (None: all of them, output included; 0: CPU only).

    llama.cpp offloads the last blocks first; the output layer counts as one more layer and goes last.
    """
    n = shape.block_count
    total_layers = n + 1
    g = total_layers if gpu_layers is None else max(0, min(gpu_layers, total_layers))
    on_gpu_blocks = min(g, n)
    first_gpu = n - on_gpu_blocks
    kv = layer_kv_bytes(shape, s)
    output_on_gpu = g == total_layers
    gpu_weights = sum(shape.layer_bytes[first_gpu:]) + (shape.output_bytes if output_on_gpu else 0)
    gpu_kv = sum(kv[first_gpu:])
    all_weights = shape.weights_bytes
    warnings = []
    if shape.context_length and s.num_ctx > shape.context_length:
        warnings.append(f"num_ctx {s.num_ctx} exceeds the model's trained context {shape.context_length}")
    out_buf = output_buffer_bytes(shape, s)
    if g == 0:
        compute = compute_bytes(shape, s)
        return Estimate(
            placement=Placement.CPU, gpu_layers=0, total_layers=total_layers, num_ctx=s.num_ctx, parallel=s.parallel,
            kv_cells=kv_cells(s.num_ctx, s.parallel), weights_bytes=0, kv_cache_bytes=0, compute_bytes=0,
            output_bytes=0, overhead_bytes=0, total_bytes=0,
            cpu_bytes=all_weights + sum(kv) + compute + out_buf, warnings=warnings,
        )  # fmt: skip
    compute = compute_bytes(shape, s, with_output=output_on_gpu)
    total = gpu_weights + gpu_kv + compute + s.gpu_overhead_bytes
    cpu_side = (all_weights - gpu_weights) + (sum(kv) - gpu_kv) + out_buf
    if not output_on_gpu:
        cpu_side += compute_bytes(shape, s)  # the CPU runs the remaining layers and the logits
    return Estimate(
        placement=Placement.FULL if output_on_gpu else Placement.PARTIAL, gpu_layers=g, total_layers=total_layers,
        num_ctx=s.num_ctx, parallel=s.parallel, kv_cells=kv_cells(s.num_ctx, s.parallel), weights_bytes=gpu_weights,
        kv_cache_bytes=gpu_kv, compute_bytes=compute, output_bytes=0, overhead_bytes=s.gpu_overhead_bytes,
        total_bytes=total, cpu_bytes=cpu_side, warnings=warnings,
    )  # fmt: skip


def cpu_estimate(shape: ModelShape, s: EstimateSettings) -> Estimate:
    """Everything in host RAM, with the buffers named as llama.cpp names them (the CPU backend's account)."""
    kv = sum(layer_kv_bytes(shape, s))
    compute = compute_bytes(shape, s)
    out = output_buffer_bytes(shape, s)
    return Estimate(
        placement=Placement.CPU, gpu_layers=0, total_layers=shape.block_count + 1, num_ctx=s.num_ctx,
        parallel=s.parallel, kv_cells=kv_cells(s.num_ctx, s.parallel), weights_bytes=shape.weights_bytes,
        kv_cache_bytes=kv, compute_bytes=compute, output_bytes=out, overhead_bytes=0,
        total_bytes=shape.weights_bytes + kv + compute + out, cpu_bytes=shape.weights_bytes + kv + compute + out,
    )  # fmt: skip


def best_placement(shape: ModelShape, s: EstimateSettings, free_bytes: int) -> Estimate:
    """All layers if they fit in `free_bytes`, else the most that do (partial), else CPU only."""
    full = estimate(shape, s)
    if full.total_bytes <= free_bytes:
        return full
    lo, hi = 0, shape.block_count  # the most blocks (output left on the CPU) that fit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(shape, s, mid).total_bytes <= free_bytes:
            lo = mid
        else:
            hi = mid - 1
    return estimate(shape, s, lo)


def simple_estimate(file_size_bytes: int, num_ctx: int, parallel: int = 1) -> Estimate:
    """A model without GGUF metadata: file_size x 1.2 + context_tokens / 1000 MiB + 500 MiB."""
    if file_size_bytes < 0:
        raise ValueError(f"file_size_bytes must be >= 0, got {file_size_bytes}")
    weights = int(file_size_bytes * 1.2)
    kv = int(num_ctx * parallel / 1000 * MIB)
    overhead = 500 * MIB
    return Estimate(
        placement=Placement.FULL, gpu_layers=1, total_layers=1, num_ctx=num_ctx, parallel=parallel,
        kv_cells=num_ctx * parallel, weights_bytes=weights, kv_cache_bytes=kv, compute_bytes=0, output_bytes=0,
        overhead_bytes=overhead, total_bytes=weights + kv + overhead, cpu_bytes=0, simple=True,
    )  # fmt: skip


# --- fit classes ---------------------------------------------------------------------------------


class FitClass(StrEnum):
    PERFECT = "perfect"
    TIGHT = "tight"
    WONT_FIT = "wont_fit"


class FitRule(_Frozen):
    """One fit class: applies while needed/free stays at or under `max_ratio`."""

    fit: FitClass
    max_ratio: float
    inclusive: bool = False

    def admits(self, ratio: float) -> bool:
        return ratio <= self.max_ratio if self.inclusive else ratio < self.max_ratio


#: Checked in order: perfect under 90 % of free memory, tight up to 100 % inclusive, won't fit above.
FIT_RULES: tuple[FitRule, ...] = (
    FitRule(fit=FitClass.PERFECT, max_ratio=0.9),
    FitRule(fit=FitClass.TIGHT, max_ratio=1.0, inclusive=True),
)


def fit_class(needed_bytes: int, free_bytes: int) -> FitClass:
    """perfect below 90 % of free memory, tight from 90 % to 100 % inclusive, won't fit above."""
    if free_bytes <= 0:
        return FitClass.WONT_FIT
    ratio = needed_bytes / free_bytes
    for rule in FIT_RULES:
        if rule.admits(ratio):
            return rule.fit
    return FitClass.WONT_FIT


# --- recommendations -----------------------------------------------------------------------------


class ModelChoice(_Frozen):
    name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    parameters_b: float = Field(gt=0, description="billions of parameters")
    size_bytes: int = Field(ge=0)
    quality: int = Field(default=0, description="higher is better")


class Recommendation(_Frozen):
    model: ModelChoice | None
    tier: str
    warning: str | None = None


class MemoryTier(_Frozen):
    """A memory band and the model class it prefers (largest parameters up to `max_parameters_b`)."""

    name: str
    below_bytes: int
    max_parameters_b: float | None
    min_parameters_b: float = 0.0
    warning: str | None = None


_LOW_MEMORY = "under 4 GB: only the smallest model will run; expect slow, low-quality answers"

MEMORY_TIERS: tuple[MemoryTier, ...] = (
    MemoryTier(name="<4GB", below_bytes=4 * GIB, max_parameters_b=0.0, warning=_LOW_MEMORY),
    MemoryTier(name="4-8GB", below_bytes=8 * GIB, max_parameters_b=3.0),
    MemoryTier(name="8-16GB", below_bytes=16 * GIB, max_parameters_b=5.0),
    MemoryTier(name=">16GB", below_bytes=1 << 62, max_parameters_b=None, min_parameters_b=9.0),
)  # fmt: skip


def recommend_model(
    memory_bytes: int, candidates: list[ModelChoice], *, fits: set[str] | None = None
) -> Recommendation:
    """The model class for a memory tier: < 4 GB the smallest (warned), 4-8 GB 2B class, 8-16 GB 4B, > 16 GB 9B+.

    `fits` names the candidates that fit (judged by the caller, e.g. by the layer split over a host's GPUs);
    without it a candidate fits when its `size_bytes` is at most `memory_bytes`."""
    tier = next(t for t in MEMORY_TIERS if memory_bytes < t.below_bytes)
    fitting = [c for c in candidates if (c.name in fits if fits is not None else c.size_bytes <= memory_bytes)]
    if not candidates:
        return Recommendation(model=None, tier=tier.name, warning="no candidate models")
    if tier.max_parameters_b == 0.0 or not fitting:
        smallest = min(candidates, key=lambda c: (c.parameters_b, c.size_bytes))
        return Recommendation(model=smallest, tier=tier.name, warning=tier.warning or "no candidate fits in memory")
    if tier.max_parameters_b is not None:
        in_class = [c for c in fitting if c.parameters_b <= tier.max_parameters_b] or fitting
        pick = max(in_class, key=lambda c: (c.parameters_b, c.quality))
    else:  # 9B and up, quality first, then size
        large = [c for c in fitting if c.parameters_b >= tier.min_parameters_b] or fitting
        pick = max(large, key=lambda c: (c.quality, c.parameters_b))
    return Recommendation(model=pick, tier=tier.name, warning=tier.warning)


def recommend_profile(ram_total_bytes: int, physical_cores: int) -> str:
    if ram_total_bytes >= 32 * GIB and physical_cores >= 8:
        return "quality"
    if ram_total_bytes >= 16 * GIB:
        return "balanced"
    return "fast"


class SettingsRecommendation(_Frozen):
    profile: str
    max_tokens: int
    context_length: int
    num_thread: int
    batch_size: int


def recommend_settings(ram_total_bytes: int, physical_cores: int) -> SettingsRecommendation:
    """max_tokens 512 -> 2048, context 2048 -> 8192 by RAM; threads cores-1 (<= 4 cores) or cores-2; batch 2 at 8+."""
    gb = ram_total_bytes / GIB
    max_tokens, ctx = (512, 2048) if gb < 8 else (1024, 4096) if gb < 16 else (2048, 8192)
    cores = max(1, physical_cores)
    threads = max(1, cores - 1 if cores <= 4 else cores - 2)
    return SettingsRecommendation(
        profile=recommend_profile(ram_total_bytes, cores), max_tokens=max_tokens, context_length=ctx,
        num_thread=threads, batch_size=2 if cores >= 8 else 1,
    )  # fmt: skip


class QuantOption(_Frozen):
    quant: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    needed_bytes: int = Field(ge=0)


def best_quantization(options: list[QuantOption], free_bytes: int) -> tuple[QuantOption, FitClass] | None:
    """The best-quality quantization that fits perfectly, else the best that fits tightly, else None."""
    return pick_quantization([(o, fit_class(o.needed_bytes, free_bytes)) for o in options])


def _quant_quality(o: QuantOption) -> float:
    try:
        return BITS_PER_WEIGHT[normalize_quant(o.quant)]
    except QuantizationError:
        return 0.0  # a name the table does not know ranks last


def pick_quantization(fits: list[tuple[QuantOption, FitClass]]) -> tuple[QuantOption, FitClass] | None:
    """Of options already classed (on one GPU or split over several), the best perfect one, else the best tight."""
    for wanted in (FitClass.PERFECT, FitClass.TIGHT):
        ok = [o for o, fit in fits if fit is wanted]
        if ok:
            return max(ok, key=_quant_quality), wanted
    return None
