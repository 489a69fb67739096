"""Where and how a slot runs: the one place that picks the device, the dtype and the loading path.

`choose_path(...)` is the only function the slot manager calls to decide; everything device-specific lives here:

- `unsloth_cuda`: Unsloth's `FastLanguageModel` loading the checkpoint 4-bit on `cuda:0`, when torch sees CUDA,
  `unsloth` is installed and `use_unsloth` holds. A GGUF never takes it (transformers de-quantizes GGUFs; Unsloth
  loads checkpoint directories).
- `torch_cuda`: plain transformers on `cuda:0` when torch sees a CUDA device (and `allow_cuda`); bfloat16 where the
  card supports it, else float16, unless float32 is asked for.
- `torch_cpu`: transformers on the CPU; float32 by default; bfloat16 only when asked for and a tiny bfloat16 matmul
  gives the right answer on this CPU (checked once per process).

Unsloth is imported only by `prepare_unsloth` (once, at service start, on a CUDA host) and `load_unsloth`; torch only
inside functions: importing this module costs nothing. `python -m services.inference_fallback.devices` prints what
a slot would take on this host (`modelfleet diagnose` runs it: the CLI does not import services).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.metadata
import importlib.util
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from pydantic import BaseModel, Field

from contracts.fallback import SlotPath

log = logging.getLogger(__name__)

#: What a setting may ask for; "auto" lets the device decide (float32 on CPU, bf16/fp16 on CUDA).
DtypeChoice = Literal["auto", "float32", "bfloat16", "float16"]
INSTALL_HINT = "pip install 'modelfleet[unsloth]' on a CUDA host (docs/fallback.md, CUDA and Unsloth)"


class DeviceSettings(BaseModel):
    """Device settings; `InferenceFallbackSettings` includes these fields (env `MODELFLEET_FALLBACK_*`)."""

    dtype: DtypeChoice = Field(default="auto", description="float32 on CPU unless bfloat16 is asked for and works.")
    allow_cuda: bool = Field(default=True, description="False keeps every slot on the CPU.")
    use_unsloth: bool = Field(default=True, description="Load 4-bit with Unsloth on CUDA when it is installed.")
    require_unsloth: bool = Field(default=False, description="Fail at start unless Unsloth can be applied.")


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


@dataclass(frozen=True)
class HostFacts:
    """What the decision depends on, read without importing unsloth."""

    cuda: bool
    cuda_device: str | None
    cuda_bf16: bool
    unsloth_installed: bool
    versions: dict[str, str | None]


def _version(name: str) -> str | None:
    try:
        return str(importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        return None


def host_facts() -> HostFacts:
    """This host, as torch sees it (imports torch; never unsloth: it patches transformers when imported)."""
    import torch

    cuda = bool(torch.cuda.is_available())
    return HostFacts(
        cuda=cuda,
        cuda_device=str(torch.cuda.get_device_name(0)) if cuda else None,
        cuda_bf16=bool(torch.cuda.is_bf16_supported()) if cuda else False,
        unsloth_installed=importlib.util.find_spec("unsloth") is not None,
        versions={
            "torch": str(torch.__version__),
            "transformers": _version("transformers"),
            "peft": _version("peft"),
            "unsloth": _version("unsloth"),
            "cuda": torch.version.cuda,
        },
    )


@dataclass(frozen=True)
class Bf16Support:
    works: bool
    native: bool


@functools.cache
def cpu_bf16() -> Bf16Support:
    """Whether a bfloat16 matmul gives the right answer on this CPU (cached: asked once per process), and whether
    the CPU does bfloat16 natively (AVX512-BF16 or AMX; emulated bfloat16 is slower than float32)."""
    import torch

    try:
        a = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.bfloat16)
        works = bool(torch.equal((a @ a).float(), torch.tensor([[7.0, 10.0], [15.0, 22.0]])))
    except (RuntimeError, TypeError):
        works = False
    cpu = getattr(torch, "cpu", None)
    flags = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    native = any(bool(getattr(cpu, name, lambda: False)()) for name in flags)
    return Bf16Support(works, native)


def choose_path(
    *,
    dtype: DtypeChoice = "auto",
    allow_cuda: bool = True,
    use_unsloth: bool = False,
    gguf: bool = False,
    facts: HostFacts | None = None,
    bf16: Callable[[], Bf16Support] = cpu_bf16,
) -> DevicePlan:
    """Pick the path a new slot takes on this host (called once per load; cheap after torch's first import).
    `gguf`: the source is a GGUF file, which Unsloth cannot load."""
    facts = facts or host_facts()
    if allow_cuda and facts.cuda:
        native = "bfloat16" if facts.cuda_bf16 else "float16"
        chosen = native if dtype == "auto" else dtype
        where = f"CUDA device {facts.cuda_device}"
        if use_unsloth and facts.unsloth_installed and not gguf:
            return DevicePlan("unsloth_cuda", "cuda:0", chosen, f"{where}; Unsloth 4-bit, {chosen} compute")
        why_not = (
            "" if not use_unsloth
            else "; a GGUF is de-quantized by transformers, not Unsloth" if gguf
            else "; Unsloth is not installed"
        )  # fmt: skip
        return DevicePlan("torch_cuda", "cuda:0", chosen, f"{where}; {chosen}{why_not}")
    cpu_reason = "no CUDA device" if allow_cuda else "CUDA not allowed"
    if dtype in ("auto", "float32"):
        return DevicePlan("torch_cpu", "cpu", "float32", cpu_reason)
    if dtype == "bfloat16":
        support = bf16()
        if support.works:
            kind = "native" if support.native else "emulated: slower than float32 on this CPU"
            return DevicePlan("torch_cpu", "cpu", "bfloat16", f"{cpu_reason}; bfloat16 asked for ({kind})")
        return DevicePlan("torch_cpu", "cpu", "float32", f"{cpu_reason}; bfloat16 asked for, but this CPU fails it")
    return DevicePlan("torch_cpu", "cpu", "float32", f"{cpu_reason}; {dtype} asked for, but not on the CPU")


# --- Unsloth -------------------------------------------------------------------------------------------------------


class UnslothRequired(RuntimeError):
    """`require_unsloth` is set and Unsloth cannot be applied on this host: the service does not start."""


@dataclass(frozen=True)
class UnslothStatus:
    applied: bool
    reason: str
    versions: dict[str, str | None]


def prepare_unsloth(
    settings: DeviceSettings,
    *,
    facts: HostFacts | None = None,
    importer: Callable[[str], ModuleType] = importlib.import_module,
) -> UnslothStatus:
    """Call once at service start: imports Unsloth (which patches transformers) where it will be used, logs one
    structured line `fallback.unsloth {applied, reason, versions}`, and raises `UnslothRequired` when
    `require_unsloth` is set and it was not applied."""
    facts = facts or host_facts()
    versions = dict(facts.versions)
    if not settings.use_unsloth:
        applied, reason = False, "use_unsloth is off (MODELFLEET_FALLBACK_USE_UNSLOTH=false)"
    elif not settings.allow_cuda:
        applied, reason = False, "CUDA not allowed (MODELFLEET_FALLBACK_ALLOW_CUDA=false)"
    elif not facts.cuda:
        applied, reason = False, f"no CUDA device (torch {versions['torch']}, built for CUDA {versions['cuda']})"
    elif not facts.unsloth_installed:
        applied, reason = False, "unsloth is not installed"
    else:
        try:
            module = importer("unsloth")
        except Exception as exc:  # an install for another CUDA or torch fails at import, in many ways
            applied, reason = False, f"importing unsloth failed: {type(exc).__name__}: {exc}"
        else:
            versions["unsloth"] = str(getattr(module, "__version__", versions["unsloth"]))
            applied, reason = True, f"Unsloth 4-bit loading on {facts.cuda_device}"
    status = UnslothStatus(applied, reason, versions)
    log.info("fallback.unsloth %s", json.dumps(asdict(status), sort_keys=True))
    if settings.require_unsloth and not applied:
        message = (f"MODELFLEET_FALLBACK_REQUIRE_UNSLOTH=true but Unsloth cannot be applied: {reason}. "
                   f"Install it with: {INSTALL_HINT}")  # fmt: skip
        log.error("%s", message)
        raise UnslothRequired(message)
    return status


def load_unsloth(directory: Path, *, max_seq_length: int, dtype: str) -> tuple[Any, Any]:
    """Load a checkpoint directory 4-bit with Unsloth, ready for inference (blocking: call it in a thread).
    Only for a plan whose path is `unsloth_cuda`; returns (model, tokenizer)."""
    import torch
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(directory), max_seq_length=max_seq_length, load_in_4bit=True, dtype=getattr(torch, dtype)
    )
    FastLanguageModel.for_inference(model)
    return model, tokenizer


# --- What `modelfleet diagnose` shows ------------------------------------------------------------------------------


def is_gguf_source(spec: dict[str, Any] | None) -> bool:
    """A role's `fallback` entry as the catalog returns it: none (the role's own GGUF) or a `.gguf` path."""
    if not spec:
        return True
    path = spec.get("path")
    return isinstance(path, str) and (path.endswith(".gguf") or Path(path).is_file())


def report(settings: DeviceSettings, roles: dict[str, dict[str, Any] | None], facts: HostFacts) -> dict[str, Any]:
    """Which path a slot takes on this host, for each kind of source and each role given (role -> fallback spec)."""

    def plan(gguf: bool) -> dict[str, Any]:
        return asdict(choose_path(dtype=settings.dtype, allow_cuda=settings.allow_cuda,
                                  use_unsloth=settings.use_unsloth, gguf=gguf, facts=facts))  # fmt: skip

    return {
        "settings": settings.model_dump(),
        "cuda": {"available": facts.cuda, "device": facts.cuda_device, "bf16": facts.cuda_bf16},
        "unsloth": {"installed": facts.unsloth_installed, "version": facts.versions.get("unsloth")},
        "versions": facts.versions,
        "paths": {"checkpoint": plan(False), "gguf": plan(True)},
        "roles": {
            role: {"source": "gguf" if is_gguf_source(s) else "checkpoint", **plan(is_gguf_source(s))}
            for role, s in sorted(roles.items())
        },
    }


def main(argv: list[str] | None = None) -> None:
    """Print `report` as JSON, with the settings from the environment (MODELFLEET_FALLBACK_*)."""
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class EnvDeviceSettings(BaseSettings, DeviceSettings):
        model_config = SettingsConfigDict(env_prefix="MODELFLEET_FALLBACK_", extra="ignore", frozen=True)

    parser = argparse.ArgumentParser(prog="python -m services.inference_fallback.devices")
    parser.add_argument("--roles-json", default="{}", help='{"role": <its fallback entry or null>, ...}')
    args = parser.parse_args(argv)
    settings = DeviceSettings.model_validate(EnvDeviceSettings().model_dump())
    print(json.dumps(report(settings, json.loads(args.roles_json), host_facts())))


if __name__ == "__main__":
    main()
