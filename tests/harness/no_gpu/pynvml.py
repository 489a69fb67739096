"""Shadows nvidia-ml-py in a process started with `no_gpu_env()`: NVML behaves as on a host without a driver."""

from __future__ import annotations

import sys

from tests.harness.no_gpu import no_nvml

sys.modules[__name__] = no_nvml()  # type: ignore[assignment]
