"""The router's fleet view, free of IO: which hosts are alive, built from their heartbeats."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from contracts.hardware import HostHeartbeat


@dataclass
class HostView:
    host_id: str
    last_seen: datetime
    interval_s: float
    ollama_url: str | None


@dataclass
class FleetView:
    hosts: dict[str, HostView] = field(default_factory=dict)
    #: A host is considered gone after this many missed heartbeats.
    missed_beats: int = 3

    def observe(self, beat: HostHeartbeat) -> None:
        """Apply a heartbeat; an older one than what we hold (a replay) changes nothing."""
        known = self.hosts.get(beat.host_id)
        if known is not None and known.last_seen >= beat.occurred_at:
            return
        self.hosts[beat.host_id] = HostView(beat.host_id, beat.occurred_at, beat.interval_s, beat.ollama_url)

    def alive(self, now: datetime) -> list[HostView]:
        return [
            h for h in self.hosts.values() if now - h.last_seen <= timedelta(seconds=h.interval_s * self.missed_beats)
        ]
