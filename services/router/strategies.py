"""Routing strategies: each orders one tier of healthy candidates and keeps the best `k` (pure, deterministic)."""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.router.fleet import Backend


class Strategy(Protocol):
    """`rank` returns at most `k` of `backends`, best first; equal ones are ordered by backend id, so every replica
    that holds the same view answers the same."""

    @property
    def name(self) -> str: ...

    def rank(self, backends: Sequence[Backend], now: float, k: int) -> list[Backend]: ...


@dataclass(frozen=True, slots=True)
class LeastBusy:
    """Fewest calls in flight (summed over the gateways that reported lately), then the lower latency."""

    in_flight_ttl_s: float = 30.0
    name: str = "least_busy"

    def rank(self, backends: Sequence[Backend], now: float, k: int) -> list[Backend]:
        ttl = self.in_flight_ttl_s
        horizon = now - ttl

        def key(b: Backend) -> tuple[int, float, str]:
            busy = b.busy_sum if b.busy_oldest >= horizon else b.busy(now, ttl)  # the method only when a report aged
            return busy, b.ewma_ms or 0.0, b.id

        if k == 1 and backends:
            return [min(backends, key=key)]
        return heapq.nsmallest(k, backends, key=key)


@dataclass(frozen=True, slots=True)
class Latency:
    """Lowest latency EWMA, within a tolerance band: every backend within `tolerance` (a fraction, at least
    `tolerance_ms`) of the fastest counts as equally fast and those are taken least-busy first; the rest follow by
    latency. A backend with no latency yet is in the band, so a new one gets traffic and a figure."""

    tolerance: float = 0.25
    tolerance_ms: float = 10.0
    in_flight_ttl_s: float = 30.0
    name: str = "latency"

    def rank(self, backends: Sequence[Backend], now: float, k: int) -> list[Backend]:
        best = min((b.ewma_ms for b in backends if b.ewma_ms is not None), default=None)
        band = math.inf if best is None else best + max(best * self.tolerance, self.tolerance_ms)
        inside = [b for b in backends if b.ewma_ms is None or b.ewma_ms <= band]
        ranked = LeastBusy(self.in_flight_ttl_s).rank(inside, now, k)
        if len(ranked) < k:
            outside = [b for b in backends if b.ewma_ms is not None and b.ewma_ms > band]
            ranked += heapq.nsmallest(k - len(ranked), outside, key=lambda b: (b.ewma_ms or 0.0, b.id))
        return ranked


@dataclass(frozen=True, slots=True)
class Weighted:
    """Static weights per backend (by base URL, else by host id; 1 when unnamed): the lowest in-flight per unit of
    weight, so under load each backend carries calls in proportion to its weight. Weight 0 takes calls last."""

    weights: Mapping[str, float] = field(default_factory=dict)
    in_flight_ttl_s: float = 30.0
    name: str = "weighted"

    def weight(self, b: Backend) -> float:
        return self.weights.get(b.base_url, self.weights.get(b.host.host_id, 1.0))

    def rank(self, backends: Sequence[Backend], now: float, k: int) -> list[Backend]:
        ttl = self.in_flight_ttl_s
        horizon = now - ttl
        weights = self.weights

        def key(b: Backend) -> tuple[float, float, str]:
            # The hot path, as in LeastBusy: the summed count unless a report aged; the host's weight only when the
            # URL has none (a URL's weight 0 stands).
            w = weights.get(b.base_url) if weights else 1.0
            if w is None:
                w = weights.get(b.host.host_id, 1.0)
            busy = b.busy_sum if b.busy_oldest >= horizon else b.busy(now, ttl)
            return ((busy + 1) / w if w > 0 else math.inf), -w, b.id

        return heapq.nsmallest(k, backends, key=key)
