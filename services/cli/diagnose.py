"""`modelfleet diagnose` (and `python -m scripts.diagnose_gpu`): versions, per-device memory, OOM risk, remediation,
and the path each role's fallback slot would take on this host.

Collection (torch, NVML, package metadata) is kept apart from `assess`, which is pure and decides the risk. The
fallback section comes from `python -m services.inference_fallback.devices` in a child process: the CLI imports no
service, and the child reads the same MODELFLEET_FALLBACK_* settings the fallback service would.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from enum import IntEnum
from types import ModuleType
from typing import Any

import httpx
import typer

from services.cli.client import client
from services.runtime.nvml import NvmlReader

GIB = 1 << 30


class Risk(IntEnum):
    OK = 0
    WARN = 1
    CRITICAL = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class DeviceMemory:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    reserved_bytes: int | None = None
    allocated_bytes: int | None = None
    source: str = "nvml"


@dataclass(frozen=True)
class Thresholds:
    min_free_gib: float = 2.0
    min_free_ratio: float = 0.1


#: reserved ≫ allocated: torch's cache holds at least this much more than its live tensors, and over twice as much.
FRAGMENTATION_SLACK_BYTES = 1 * GIB


def _ratio(a: int | None, b: int) -> float | None:
    return round(a / b, 4) if a is not None and b > 0 else None


def assess(device: DeviceMemory, t: Thresholds) -> dict[str, Any]:
    """Risk of an out-of-memory on one device and what to do about it (pure)."""
    free_gib = device.free_bytes / GIB
    free_ratio = device.free_bytes / device.total_bytes if device.total_bytes else 0.0
    risk = Risk.OK
    reasons: list[str] = []
    if free_gib < t.min_free_gib or free_ratio < t.min_free_ratio:
        risk = Risk.CRITICAL
        reasons.append(f"free {free_gib:.2f} GiB ({free_ratio:.1%}) is under --min-free-gib {t.min_free_gib} "
                       f"or --min-free-ratio {t.min_free_ratio}")  # fmt: skip
    elif free_gib < 2 * t.min_free_gib or free_ratio < 2 * t.min_free_ratio:
        risk = Risk.WARN
        reasons.append(f"free {free_gib:.2f} GiB ({free_ratio:.1%}) is within twice the thresholds")
    fragmented = (
        device.reserved_bytes is not None
        and device.allocated_bytes is not None
        and device.reserved_bytes - device.allocated_bytes >= FRAGMENTATION_SLACK_BYTES
        and device.reserved_bytes > 2 * device.allocated_bytes
    )
    if fragmented:
        risk = max(risk, Risk.WARN)
        reasons.append("torch reserves far more than it has allocated: the caching allocator is fragmented")
    steps: list[str] = []
    if risk is not Risk.OK:
        steps += [
            "use a shorter context (lower num_ctx / max_seq_length): the KV cache grows linearly with it",
            "lower the GPU offload (fewer num_gpu layers) so the rest runs on the CPU",
            "train with gradient accumulation instead of a larger per-device batch",
            "choose a smaller quantization (Q4_K_M -> Q3_K_M, or 4-bit loading for the PyTorch fallback)",
        ]
    if fragmented:
        steps.append("defragment the allocator: torch.cuda.empty_cache(), and set "
                     "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True before the process starts")  # fmt: skip
    return {
        "index": device.index, "name": device.name, "source": device.source,
        "total_bytes": device.total_bytes, "free_bytes": device.free_bytes,
        "reserved_bytes": device.reserved_bytes, "allocated_bytes": device.allocated_bytes,
        "free_ratio": _ratio(device.free_bytes, device.total_bytes),
        "reserved_ratio": _ratio(device.reserved_bytes, device.total_bytes),
        "allocated_ratio": _ratio(device.allocated_bytes, device.total_bytes),
        "allocated_of_reserved": _ratio(device.allocated_bytes, device.reserved_bytes or 0),
        "risk": risk.label, "reasons": reasons, "remediation": steps,
    }  # fmt: skip


def package(name: str) -> dict[str, Any]:
    """Version and install location without importing (unsloth patches transformers on import)."""
    spec = importlib.util.find_spec(name)
    try:
        version: str | None = str(importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        version = None
    location = spec.origin if spec is not None else None
    return {"installed": spec is not None, "version": version, "location": location}


def _torch(no_cuda: bool) -> tuple[ModuleType | None, dict[str, Any]]:
    info = package("torch")
    if not info["installed"]:
        return None, {**info, "cuda_available": False, "cuda_version": None}
    import torch

    available = bool(torch.cuda.is_available()) and not no_cuda
    return (torch if available else None), {
        **info, "version": str(torch.__version__), "cuda_available": available,
        "cuda_version": torch.version.cuda, "cudnn_version": torch.backends.cudnn.version() if available else None,  # type: ignore[no-untyped-call]
        "device_count": torch.cuda.device_count() if available else 0,
    }  # fmt: skip


def devices(torch: ModuleType | None, nvml: NvmlReader, all_devices: bool) -> tuple[list[DeviceMemory], str | None]:
    """torch's account when it sees CUDA (free from cudaMemGetInfo, plus its own reserved/allocated), else NVML's."""
    if torch is not None:
        indexes = range(torch.cuda.device_count()) if all_devices else [torch.cuda.current_device()]
        out = []
        for i in indexes:
            free, total = torch.cuda.mem_get_info(i)
            out.append(DeviceMemory(
                i, str(torch.cuda.get_device_name(i)), int(total), int(free),
                int(torch.cuda.memory_reserved(i)), int(torch.cuda.memory_allocated(i)), "torch",
            ))  # fmt: skip
        return out, None
    reading = nvml.read()
    if not reading.has_gpu:
        return [], reading.reason
    found = [DeviceMemory(d.index, d.name, d.memory_total_bytes, d.memory_free_bytes) for d in reading.devices]
    return (found if all_devices else found[:1]), None


def report(
    *, all_devices: bool = False, no_cuda: bool = False, thresholds: Thresholds | None = None,
    nvml: NvmlReader | None = None,
) -> dict[str, Any]:  # fmt: skip
    t = thresholds or Thresholds()
    torch, torch_info = _torch(no_cuda)
    body: dict[str, Any] = {
        "python": {"version": platform.python_version(), "executable": sys.executable, "prefix": sys.prefix},
        "torch": torch_info, "unsloth": package("unsloth"),
        "thresholds": {"min_free_gib": t.min_free_gib, "min_free_ratio": t.min_free_ratio},
    }  # fmt: skip
    reader = nvml or NvmlReader()
    found: list[DeviceMemory] = []
    reason: str | None = "GPU inspection skipped (--no-cuda)"
    try:
        if not no_cuda:
            found, reason = devices(torch, reader, all_devices)
    finally:
        reader.close()
    assessed = [assess(d, t) for d in found]
    body["devices"] = assessed
    body["gpu_available"] = bool(found)
    body["no_gpu_reason"] = reason
    body["risk"] = max((Risk[d["risk"].upper()] for d in assessed), default=Risk.OK).label
    return body


def fallback_roles(timeout_s: float = 3.0) -> tuple[dict[str, Any], str | None]:
    """Each role of the active profile set with its `fallback` entry, from the gateway; ({}, why) when unreachable."""
    try:
        with client(timeout_s) as c:
            response = c.get("/api/v1/models")
        response.raise_for_status()
        models = response.json()["active"]["models"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        return {}, f"roles not listed: the gateway's GET /api/v1/models failed: {exc}"
    return {role: entry.get("fallback") for role, entry in models.items()}, None


def fallback_section(roles: dict[str, Any], timeout_s: float = 120.0) -> dict[str, Any]:
    """Which path (unsloth_cuda, torch_cuda, torch_cpu) a fallback slot takes here, per source kind and per role."""
    argv = [sys.executable, "-m", "services.inference_fallback.devices", "--roles-json", json.dumps(roles)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=dict(os.environ))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"{' '.join(argv[:3])} did not answer: {exc}"}
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"{' '.join(argv[:3])} failed ({done.returncode}): {tail}"}
    section: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return section


def diagnose(
    all_devices: bool = typer.Option(False, "--all-devices", help="Every visible GPU, not only the current one."),
    no_cuda: bool = typer.Option(False, "--no-cuda", help="Skip GPU inspection (report versions only)."),
    min_free_gib: float = typer.Option(2.0, "--min-free-gib", min=0, help="Critical below this much free memory."),
    min_free_ratio: float = typer.Option(0.1, "--min-free-ratio", min=0, max=1, help="Critical below this free share."),
    no_roles: bool = typer.Option(False, "--no-roles", help="Do not ask the gateway for the roles' fallback entries."),
) -> None:
    """Print a JSON report of Python/torch/CUDA/unsloth versions, each GPU's memory and the fallback's path per role;
    exit 1 when critical."""
    body = report(all_devices=all_devices, no_cuda=no_cuda, thresholds=Thresholds(min_free_gib, min_free_ratio))
    roles, why = ({}, "--no-roles") if no_roles else fallback_roles()
    body["fallback"] = {**fallback_section(roles), "roles_error": why}
    typer.echo(json.dumps(body, indent=2))
    raise typer.Exit(1 if body["risk"] == "critical" else 0)
