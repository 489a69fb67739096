"""Shadows nvidia-ml-py in a process started with `two_gpus_env()`: NVML reports the stand-in's two GPUs."""

from __future__ import annotations

import sys

from tests.harness.two_gpus import two_gpus_nvml

sys.modules[__name__] = two_gpus_nvml()  # type: ignore[assignment]
