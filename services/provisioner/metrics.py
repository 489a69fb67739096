"""The provisioner's metrics (docs/observability.md, "Provisioner"): instruments made once, recorded where the work
happens; the queue and the transfers in flight are observed from the objects that hold them (registered weakly by
`build_app`, so an app that is gone stops being read)."""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Protocol

from opentelemetry.metrics import CallbackOptions, Observation

from services.runtime.metrics import meter

_meter = meter("modelfleet.provisioner")

OPERATIONS = _meter.create_counter(
    "modelfleet.provisioner.operations",
    unit="{operation}",
    description="Each (model, host) a provision request ensured, by `modelfleet.provision.kind` (ollama_pull, "
    "gguf_import, checkpoint, unknown) and `modelfleet.provision.result` (present, pulled, imported, skipped, "
    "failed); a failure also names its `error.type`.",
)
DURATION = _meter.create_histogram(
    "modelfleet.provisioner.operation.duration",
    unit="s",
    description="Time to ensure one (model, host), download and registration included, by kind and result.",
)
DOWNLOADED = _meter.create_counter(
    "modelfleet.provisioner.downloaded",
    unit="By",
    description="Bytes transferred, by `modelfleet.transfer.source`: hub (fetched by the provisioner; a resume counts "
    "only the new bytes) or ollama (what the host's Ollama reported pulling from its registry).",
)
VERIFICATION_FAILURES = _meter.create_counter(
    "modelfleet.provisioner.verification.failures",
    unit="{failure}",
    description="Files whose sha256 differed from the expected one, by `modelfleet.verification.stage`: download (the "
    "hub's LFS sha256; the file is quarantined) or register (the digest Ollama computed for the uploaded blob).",
)


class Queue(Protocol):
    """Provision requests accepted and not finished: waiting for the concurrency limit, or running."""

    queued: int
    active: int


class Flights(Protocol):
    def transfers_in_flight(self) -> dict[str, int]:
        """Transfers running now by kind (ollama_pull, hub_file, checkpoint), each once however many callers joined."""
        ...


_queues: weakref.WeakSet[Queue] = weakref.WeakSet()
_flights: weakref.WeakSet[Flights] = weakref.WeakSet()


def watch(queue: Queue, flights: Flights) -> None:
    """Let the gauges read this app's request queue and its transfers in flight."""
    _queues.add(queue)
    _flights.add(flights)


def _queue_depth(_options: CallbackOptions) -> Iterable[Observation]:
    queues = list(_queues)
    yield Observation(sum(q.queued for q in queues), {"modelfleet.request.state": "queued"})
    yield Observation(sum(q.active for q in queues), {"modelfleet.request.state": "running"})


def _transfers(_options: CallbackOptions) -> Iterable[Observation]:
    totals = {"ollama_pull": 0, "hub_file": 0, "checkpoint": 0}
    for flights in list(_flights):
        for kind, n in flights.transfers_in_flight().items():
            totals[kind] = totals.get(kind, 0) + n
    for kind, n in totals.items():
        yield Observation(n, {"modelfleet.transfer.kind": kind})


_meter.create_observable_gauge(
    "modelfleet.provisioner.queue.depth",
    callbacks=[_queue_depth],
    unit="{request}",
    description="Provision requests accepted and not finished, by `modelfleet.request.state`: queued (waiting for "
    "MODELFLEET_PROVISIONER_MAX_CONCURRENT) or running.",
)
_meter.create_observable_gauge(
    "modelfleet.provisioner.transfers.active",
    callbacks=[_transfers],
    unit="{transfer}",
    description="Downloads in flight now, by `modelfleet.transfer.kind`: ollama_pull (a pull on a host's Ollama), "
    "hub_file (a GGUF from the hub) or checkpoint (a safetensors checkpoint for the fallback); joined callers "
    "share one.",
)


def operation_done(kind: str, result: str, seconds: float, error_type: str | None = None) -> None:
    attributes = {"modelfleet.provision.kind": kind, "modelfleet.provision.result": result}
    if error_type is not None:
        attributes["error.type"] = error_type
    OPERATIONS.add(1, attributes)
    DURATION.record(seconds, {"modelfleet.provision.kind": kind, "modelfleet.provision.result": result})
