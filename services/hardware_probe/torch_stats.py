"""torch's view of each CUDA device, when torch is installed and sees one; imported lazily (it is slow)."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TorchDevice:
    allocated_bytes: int
    reserved_bytes: int


class TorchStats:
    """`enabled=False` (or no torch, or no CUDA) reads nothing and never imports torch."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and importlib.util.find_spec("torch") is not None
        self._torch: Any = None
        self.version: str | None = None

    def _load(self) -> Any:
        if self._torch is None and self.enabled:
            try:
                import torch

                self.version = str(torch.__version__)
                if not torch.cuda.is_available():
                    self.enabled = False
                    return None
                self._torch = torch
            except Exception as exc:  # a broken torch install must not stop the probe
                log.warning("torch unusable (%s); torch figures disabled", exc)
                self.enabled = False
        return self._torch

    def read(self) -> dict[int, TorchDevice]:
        torch = self._load()
        if torch is None:
            return {}
        out = {}
        try:
            for i in range(torch.cuda.device_count()):
                out[i] = TorchDevice(int(torch.cuda.memory_allocated(i)), int(torch.cuda.memory_reserved(i)))
        except Exception as exc:
            log.warning("torch CUDA figures unreadable: %s", exc)
        return out
