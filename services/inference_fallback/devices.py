"""Where and how a slot runs: the one place that picks the device, the dtype and the loading path.

`choose_path(...)` is the only function the slot manager calls to decide; everything device-specific (CUDA, and later
Unsloth's 4-bit loader) belongs behind it. Today it knows two paths:

- `torch_cuda`: plain transformers on `cuda:0` when torch sees a CUDA device (and `allow_cuda`); bfloat16 where the
  card supports it, else float16, unless float32 is asked for.
- `torch_cpu`: transformers on the CPU; float32 by default; bfloat16 only when asked for *and* the CPU has native
  bf16 (AVX512-BF16 or AMX), since emulated bf16 matmuls are slower than float32.

`unsloth_cuda` (Unsloth 4-bit on CUDA) is named by the contracts and planned here; it is not chosen yet.
torch is imported inside the function: importing this module costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from contracts.fallback import SlotPath

#: What a setting may ask for; "auto" lets the device decide (float32 on CPU, bf16/fp16 on CUDA).
DtypeChoice = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class DevicePlan:
    """The decision: the path, the torch device string, the dtype name, and one sentence saying why."""

    path: SlotPath
    device: str
    dtype: str
    reason: str

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")


def choose_path(*, dtype: DtypeChoice = "auto", allow_cuda: bool = True) -> DevicePlan:
    """Pick the path a new slot takes on this host (called once per load; cheap after torch's first import)."""
    import torch

    if allow_cuda and torch.cuda.is_available():
        native = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        chosen = native if dtype == "auto" else dtype
        name = torch.cuda.get_device_name(0)
        return DevicePlan("torch_cuda", "cuda:0", chosen, f"CUDA device {name}; {chosen}")
    if dtype in ("auto", "float32"):
        return DevicePlan("torch_cpu", "cpu", "float32", "no CUDA device" if allow_cuda else "CUDA not allowed")
    if dtype == "bfloat16" and _cpu_has_native_bf16(torch):
        return DevicePlan("torch_cpu", "cpu", "bfloat16", "CPU with native bfloat16 (asked for)")
    return DevicePlan("torch_cpu", "cpu", "float32", f"{dtype} asked for, but this CPU has no native {dtype}")


def _cpu_has_native_bf16(torch: object) -> bool:
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
