"""The gateway's side of the bus: requests and scatter-gather over one NATS connection, traced."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import TypeVar

from faststream.nats import NatsBroker
from pydantic import BaseModel, ValidationError

from contracts.envelope import Contract, Envelope
from contracts.health import HealthReply, HealthRequest
from contracts.subjects import fill
from services.runtime.bus import BusState, publish_event, start_broker, stop_broker

log = logging.getLogger(__name__)

R = TypeVar("R", bound=BaseModel)


class BusUnavailable(RuntimeError):
    """NATS is not connected, or nobody answered in time."""


class RemoteError(RuntimeError):
    """The service answered with an error document instead of a reply."""

    def __init__(self, status: int, detail: object):
        super().__init__(str(detail))
        self.status = status
        self.detail = detail


class BusClient:
    def __init__(self, broker: NatsBroker, state: BusState, *, retry_initial_s: float = 0.2, retry_max_s: float = 5.0):
        self.broker = broker
        self.state = state
        self._retry = (retry_initial_s, retry_max_s)
        self._connector: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._connector = asyncio.create_task(start_broker(self.broker, self.state, "gateway", *self._retry))

    async def stop(self) -> None:
        if self._connector is not None:
            self._connector.cancel()
            await asyncio.gather(self._connector, return_exceptions=True)
        self.state.closing = True
        await stop_broker(self.broker)

    async def answers(self, service: str, timeout_s: float) -> bool:
        """Whether at least one healthy replica of `service` answers its health request within the timeout."""
        replies = await self.gather(
            fill(HealthRequest.SUBJECT, service=service), HealthRequest(), HealthReply,
            timeout_s=timeout_s, done=lambda got: any(r.healthy for r in got),
        )  # fmt: skip
        return any(r.healthy for r in replies)

    def require(self) -> None:
        """Raise BusUnavailable unless NATS is connected."""
        self._require()

    def _require(self) -> None:
        if not self.state.connected:
            raise BusUnavailable(f"NATS is not connected ({self.state.last_error or 'connecting'})")

    async def request(self, subject: str, body: Contract, reply: type[R], timeout_s: float) -> R:
        """Request/reply; a reply `{"error": {"status": N, "detail": ...}}` raises RemoteError."""
        self._require()
        try:
            msg = await self.broker.request(body.model_dump(mode="json"), subject, timeout=timeout_s)
        except TimeoutError as exc:
            raise BusUnavailable(f"no answer on {subject} within {timeout_s}s") from exc
        except Exception as exc:
            if "no responders" in str(exc).lower():
                raise BusUnavailable(f"no service answers {subject}") from exc
            raise
        data = json.loads(msg.body or b"null")
        if isinstance(data, dict) and set(data) == {"error"} and isinstance(data["error"], dict):
            raise RemoteError(int(data["error"].get("status", 500)), data["error"].get("detail"))
        return reply.model_validate(data)

    async def publish(self, event: Envelope) -> None:
        self._require()
        await publish_event(self.broker, event)

    async def gather(
        self, subject: str, body: Contract, reply: type[R], *, timeout_s: float, done: Callable[[list[R]], bool]
    ) -> list[R]:
        """Ask every responder on `subject`; return their replies once `done(replies)` or at the timeout."""
        self._require()
        nc = self.broker.connection
        inbox = nc.new_inbox()
        replies: list[R] = []
        finished = asyncio.Event()

        async def collect(msg: object) -> None:
            try:
                replies.append(reply.model_validate_json(msg.data))  # type: ignore[attr-defined]
            except ValidationError as exc:
                log.warning("ignored a malformed reply on %s: %s", subject, exc)
            if done(replies):
                finished.set()

        sub = await nc.subscribe(inbox, cb=collect)
        try:
            # Published through FastStream so the tracing middleware puts `traceparent` in the headers.
            await self.broker.publish(body.model_dump(mode="json"), subject, reply_to=inbox)
            try:
                await asyncio.wait_for(finished.wait(), timeout_s)
                await asyncio.sleep(0.02)  # a short grace for other replicas' replies
            except TimeoutError:
                pass
        finally:
            await sub.unsubscribe()
        return list(replies)
