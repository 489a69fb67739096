"""Dead-letter path: a stream message that can never succeed goes to `dlq.<subject>`, is acked; the consumer goes on."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

from faststream import BaseMiddleware, ContextRepo
from faststream.nats import NatsBroker
from pydantic import ValidationError

from contracts.dlq import DeadLetter
from contracts.subjects import dlq_subject
from services.runtime.bus import publish_event

log = logging.getLogger(__name__)

#: Errors that no redelivery can fix: the bytes or their shape are wrong.
POISON = (ValidationError, json.JSONDecodeError, UnicodeDecodeError)


def dead_letter_middleware(
    broker: NatsBroker, service: str, host_id: str, max_deliver: int
) -> Callable[..., BaseMiddleware]:
    """A subscriber middleware; put it on the router that holds a service's stream subscribers.

    Poison messages are dead-lettered at once. Other errors propagate (so NACK_ON_ERROR redelivers)
    until the last allowed delivery, which is dead-lettered instead of being dropped silently.
    """

    class DeadLetterMiddleware(BaseMiddleware):
        async def after_processed(
            self,
            exc_type: type[BaseException] | None = None,
            exc_val: BaseException | None = None,
            exc_tb: TracebackType | None = None,
        ) -> bool | None:
            if exc_val is None or not isinstance(exc_val, Exception):
                return False
            raw: Any = self.msg
            attempts = _num_delivered(raw)
            if not isinstance(exc_val, POISON) and attempts < max_deliver:
                return False
            reason = f"{type(exc_val).__name__}: {exc_val}"
            headers = {k: str(v) for k, v in (getattr(raw, "headers", None) or {}).items()}
            letter = DeadLetter(
                producer=service,
                host=host_id,
                original_subject=raw.subject,
                consumer=service,
                reason=reason[:8000],
                raw=_b64(raw.data),
                headers=headers,
                delivery_attempts=max(attempts, 1),
            )
            await publish_event(broker, letter, dlq_subject(raw.subject))
            log.warning("dead-lettered a message on %s: %s", raw.subject, reason[:300])
            # Ack here, not only through the ack policy: a MANUAL-ack subscriber would otherwise get it redelivered.
            if str(getattr(raw, "reply", "") or "").startswith("$JS.ACK") and not getattr(raw, "_ackd", True):
                await raw.ack()
            return True  # handled: the exception is not re-raised

    def factory(msg: Any, /, *, context: ContextRepo) -> BaseMiddleware:
        return DeadLetterMiddleware(msg, context=context)

    return factory


def _num_delivered(raw: Any) -> int:
    try:
        return int(raw.metadata.num_delivered)
    except Exception:  # a core (non-JetStream) message has no metadata
        return 1


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)
