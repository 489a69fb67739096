"""The Library page's table: per model and quantization, a fit badge per host at the context the user picked.

Judged by the estimator behind `GET /api/v1/fit` (contracts/fit.py, the layer split over each host's GPUs): sized
from the library's architecture figures where the model has them, else from the file size (the simple form). The
GGUF-header sizing that `/api/v1/fit?model=` adds for models without figures is one remote read per model and is
left to that route (each row links to it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts.catalog import ModelDoc
from contracts.fit import HostCapacity, fit_on_host, library_shapes
from contracts.vram import EstimateSettings, FitClass, Placement, estimate, simple_estimate

#: Badge of each outcome: (css class, words shown).
BADGES = {
    "fits": ("fit-ok", "fits"),
    "tight": ("fit-tight", "tight"),
    "offload": ("fit-offload", "CPU offload"),
    "wont": ("fit-no", "won't fit"),
}
#: What "fits on host X" keeps: a quantization that runs on its GPUs (fully, even tightly) or, on a host without a
#: GPU, in its RAM.
RUNS = frozenset({"fits", "tight"})


@dataclass
class Badge:
    host_id: str
    kind: str
    device: str
    needed_bytes: int
    free_bytes: int

    @property
    def css(self) -> str:
        return BADGES[self.kind][0]

    @property
    def words(self) -> str:
        return BADGES[self.kind][1]


@dataclass
class QuantRow:
    name: str
    size_bytes: int
    needed_bytes: int
    method: str
    badges: list[Badge] = field(default_factory=list)


@dataclass
class ModelRow:
    doc: ModelDoc
    quants: list[QuantRow]

    def runs_on(self, host_id: str) -> bool:
        return any(b.host_id == host_id and b.kind in RUNS for q in self.quants for b in q.badges)


def badge_kind(fit: FitClass, placement: Placement, has_gpu: bool) -> str:
    """On a GPU host: all layers on the GPUs (fits or tight by the headroom left), only some (CPU offload), or not
    one (won't fit). On a host without a GPU: the CPU-only estimate against its available RAM."""
    if has_gpu and placement == Placement.PARTIAL:
        return "offload"
    if fit == FitClass.WONT_FIT or (has_gpu and placement == Placement.CPU):
        return "wont"
    return "tight" if fit == FitClass.TIGHT else "fits"


def rows(models: list[ModelDoc], hosts: list[HostCapacity], s: EstimateSettings) -> list[ModelRow]:
    out = []
    for doc in models:
        shapes = library_shapes(doc)
        quants = []
        for q in doc.quantizations:
            if not q.size_bytes:
                continue
            shape = shapes.get(q.name)
            needed = (
                estimate(shape, s).total_bytes
                if shape
                else simple_estimate(q.size_bytes, s.num_ctx, s.parallel).total_bytes
            )
            row = QuantRow(q.name, q.size_bytes, needed, "shape" if shape else "file-size")
            for h in hosts:
                hf = fit_on_host(
                    h.host_id, shape, s, gpus_free=h.gpus_free, ram_available=h.ram_available,
                    file_size_bytes=q.size_bytes, gpu_indexes=h.gpu_indexes,
                )  # fmt: skip
                kind = badge_kind(hf.fit, hf.placement, bool(h.gpus_free))
                row.badges.append(Badge(h.host_id, kind, hf.device, hf.needed_bytes, hf.free_bytes))
            quants.append(row)
        out.append(ModelRow(doc, quants))
    return out


def human_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_count(n: int | None) -> str:
    if not n:
        return "–"
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)
