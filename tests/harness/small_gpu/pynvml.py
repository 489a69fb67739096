"""Shadows nvidia-ml-py in a process started with `small_gpu_env()`: NVML reports the stand-in's one small GPU."""

from __future__ import annotations

import sys

from tests.harness.small_gpu import small_gpu_nvml

sys.modules[__name__] = small_gpu_nvml()  # type: ignore[assignment]
