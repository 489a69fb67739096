"""Run a service process as on a host with one small GPU (an 8 GiB RTX 4060, 1 GiB in use), whatever this host has.

`small_gpu_env()` puts this folder first on PYTHONPATH, so the process imports `pynvml` from here: the NVML stand-in
(tests/harness/nvml_stand_in.py) with `small_gpu()`. The web UI's tests use it for fit badges that change with the
context whatever the test machine's RAM.
"""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).parent


def small_gpu_env() -> dict[str, str]:
    """Environment entries that make a child process see the one stand-in GPU (merge them into the service env)."""
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


def small_gpu() -> list[object]:
    from tests.harness.nvml_stand_in import GIB, FakeGpu

    return [FakeGpu("NVIDIA RTX 4060", 8 * GIB, 1 * GIB)]


def small_gpu_nvml() -> object:
    from tests.harness.nvml_stand_in import stand_in

    return stand_in(small_gpu())  # type: ignore[arg-type]
