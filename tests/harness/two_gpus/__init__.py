"""Run a service process as on a host with two NVIDIA GPUs (an H200 and an RTX 4090), whatever this host has.

`two_gpus_env()` puts this folder first on PYTHONPATH, so the process imports `pynvml` from here: the NVML stand-in
(tests/harness/nvml_stand_in.py) with `two_gpus()`, the same figures the in-process GPU tests read.
"""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).parent


def two_gpus_env() -> dict[str, str]:
    """Environment entries that make a child process see the two stand-in GPUs (merge them into the service env)."""
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


def two_gpus_nvml() -> object:
    from tests.harness.nvml_stand_in import stand_in, two_gpus

    return stand_in(two_gpus())
