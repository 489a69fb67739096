"""The gateway's raw NATS subscriptions (a provision wait, the provisioning SSE, a host's history) never stop on a
malformed message: it is skipped, logged, and published to `dlq.<subject>` as a `DeadLetter` (contracts/dlq.py),
the contract and publish path of the services' stream consumers (services/runtime/dlq.py)."""

from __future__ import annotations

import base64
import logging
import uuid
from typing import Any

from contracts.dlq import DeadLetter
from contracts.subjects import dlq_subject
from services.gateway.bus_client import BusClient
from services.runtime.bus import publish_event
from services.runtime.dlq import record_dead_letter

log = logging.getLogger(__name__)
_NAMESPACE = uuid.UUID("0b5f4c1e-6a2d-4f7e-9c3b-2d8e1a7f4b60")


def _stream_seq(msg: Any) -> str | None:
    try:
        return str(msg.metadata.sequence.stream)
    except Exception:  # a core NATS message has no JetStream metadata
        return None


async def dead_letter(bus: BusClient, msg: Any, exc: BaseException, consumer: str) -> None:
    """Log the message that failed validation and publish it to `dlq.<subject>`; never raises (a dead letter that
    cannot be published is logged, and the subscription goes on)."""
    subject = str(getattr(msg, "subject", "") or "unknown")
    reason = f"{type(exc).__name__}: {exc}"
    log.warning("skipped a malformed message on %s (%s): %s", subject, consumer, reason[:300])
    seq = _stream_seq(msg)
    try:
        letter = DeadLetter(
            event_id=uuid.uuid5(_NAMESPACE, f"{seq}:{consumer}:{subject}") if seq else uuid.uuid4(),
            producer="gateway",
            original_subject=subject[:512],
            consumer=consumer[:128],
            reason=reason[:8000],
            raw=base64.b64encode(bytes(getattr(msg, "data", b"") or b"")),
            headers={str(k): str(v) for k, v in (getattr(msg, "headers", None) or {}).items()},
        )
        await publish_event(bus.broker, letter, dlq_subject(subject))
        record_dead_letter(subject, consumer)
    except Exception as publish_exc:  # the stream goes on whatever the DLQ trouble
        log.error("cannot dead-letter the message on %s: %s", subject, publish_exc)
