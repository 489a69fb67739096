"""Fallback decisions, free of IO: which backends are degraded right now."""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts.router import LlmDegraded, LlmRecovered


@dataclass
class DegradedBackends:
    backends: dict[str, str] = field(default_factory=dict)

    def degraded(self, event: LlmDegraded) -> None:
        self.backends[event.backend_url] = event.reason

    def recovered(self, event: LlmRecovered) -> None:
        self.backends.pop(event.backend_url, None)
