"""Run a service process as on a host without a GPU, whatever this host has.

`no_gpu_env()` puts this folder first on PYTHONPATH, so the process imports `pynvml` from here: the NVML
stand-in (tests/harness/nvml_stand_in.py) with no devices, whose `nvmlInit` fails as it does without a driver.
`CUDA_VISIBLE_DEVICES=""` hides CUDA devices from torch, and the fallback service gets `allow_cuda=false`.
"""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).parent


def no_gpu_env() -> dict[str, str]:
    """Environment entries that make a child process see no GPU (merge them into the service env)."""
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "CUDA_VISIBLE_DEVICES": "", "MODELFLEET_FALLBACK_ALLOW_CUDA": "false"}


def no_nvml() -> object:
    """The stand-in module a process without an NVIDIA driver would get (for in-process use via sys.modules)."""
    from tests.harness.nvml_stand_in import NVMLError_LibraryNotFound, stand_in

    return stand_in([], init_error=NVMLError_LibraryNotFound("NVML Shared Library Not Found"))
