"""The fallback replicas the router has heard advertise themselves: which are alive, what slots they hold, and which
roles they can answer (and from what source). A role's chain ends in a live fallback (docs/router.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from faststream.nats import DeliverPolicy

from contracts.fallback import FallbackAdvertised
from contracts.router import FALLBACK_URL, BackendRef, FallbackState, RouteCandidate
from contracts.subjects import EVENTS_STREAM
from services.runtime.bus import jstream
from services.runtime.dlq import StreamRouter

#: An advertisement keeps its replica alive this many intervals (the fallback advertises every `interval_s`).
MISSED_ADVERTS = 3


@dataclass(slots=True)
class Replica:
    advert: FallbackAdvertised
    deadline: float


@dataclass
class Fallbacks:
    """Folded from `evt.fallback.advertised.v1`, in stream order: every router replica holds the same view."""

    replicas: dict[str, Replica] = field(default_factory=dict)

    def observe(self, advert: FallbackAdvertised) -> None:
        held = self.replicas.get(advert.instance_id)
        at = advert.occurred_at.timestamp()
        if held is not None and held.advert.occurred_at.timestamp() > at:
            return  # an older advertisement changes nothing
        self.replicas[advert.instance_id] = Replica(advert, at + MISSED_ADVERTS * advert.interval_s)

    def alive(self, now: float) -> list[FallbackAdvertised]:
        """Live replicas, by instance id (deterministic); the dead are forgotten."""
        for key in [k for k, r in self.replicas.items() if r.deadline < now]:
            del self.replicas[key]
        return [self.replicas[k].advert for k in sorted(self.replicas)]

    def serving(self, role: str | None, now: float) -> tuple[FallbackAdvertised, str] | None:
        """The first live replica that can answer `role`, and the source its slot loads; one holding the role's
        slot ready comes first (no load to wait for)."""
        if not role:
            return None
        able = [a for a in self.alive(now) if role in a.sources]
        ready = [a for a in able if any(s.key == role and s.state == "ready" for s in a.slots)]
        chosen = ready or able
        return (chosen[0], chosen[0].sources[role]) if chosen else None

    def candidate(self, role: str, model_ref: str, now: float) -> tuple[RouteCandidate, str] | None:
        """The chain's last entry for `role`: the fallback service (the seam's queue group picks the replica)."""
        found = self.serving(role, now)
        if found is None:
            return None
        advert, source = found
        backend = BackendRef.model_construct(host_id=advert.host, kind="fallback", base_url=FALLBACK_URL)
        return RouteCandidate.model_construct(backend=backend, model_name=role, model_ref=model_ref), source

    def states(self, now: float) -> list[FallbackState]:
        return [
            FallbackState(
                host_id=a.host,
                instance_id=a.instance_id,
                device=a.device,
                memory_budget_bytes=a.memory_budget_bytes,
                memory_used_bytes=a.memory_used_bytes,
                slots=a.slots,
                sources=a.sources,
            )
            for a in self.alive(now)
        ]


def register(streams: StreamRouter, fallbacks: Fallbacks) -> None:
    # A fold: a fault is dead-lettered at once (the next advertisement comes within seconds anyway).
    @streams.fold(
        FallbackAdvertised.SUBJECT, stream=jstream(EVENTS_STREAM), deliver_policy=DeliverPolicy.NEW, ack_wait_s=10
    )
    async def on_fallback_advertised(advert: FallbackAdvertised) -> None:
        """Consumes evt.fallback.advertised.v1: which fallback replicas are alive and what they can answer (an older
        advertisement changes nothing; a new one arrives every few seconds, so no replay is needed)."""
        fallbacks.observe(advert)
