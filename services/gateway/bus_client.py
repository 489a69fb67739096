"""The gateway's side of the bus: typed requests and scatter-gather through the seam, and events, on one connection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from faststream.nats import NatsBroker
from starlette.requests import Request

from contracts.envelope import Envelope
from contracts.health import HealthRequest
from contracts.rpc import RpcError, RpcRequest
from contracts.subjects import fill
from services.runtime.bus import BusState, publish_event, publish_lean, start_broker, stop_broker
from services.runtime.rpc import Rep, Rpc


class BusClient:
    """Every route reaches the services through this: `ask` a typed request, `gather` from every replica, `publish`.

    A failed hop raises `RpcError` with the responder's status, code and field intact (or the seam's own 503/504),
    which the app's exception handler turns into the HTTP answer.
    """

    def __init__(
        self,
        broker: NatsBroker,
        state: BusState,
        rpc: Rpc,
        *,
        request_timeout_s: float,
        publishes: Sequence[type[Envelope]] = (),
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
    ):
        self.broker = broker
        self.state = state
        self.rpc = rpc
        self.request_timeout_s = request_timeout_s
        #: The commands the gateway publishes; its AsyncAPI document is generated from them.
        self.publishes = tuple(publishes)
        self._retry = (retry_initial_s, retry_max_s)
        self._connector: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._connector = asyncio.create_task(start_broker(self.broker, self.state, "gateway", *self._retry))

    async def stop(self) -> None:
        if self._connector is not None:
            self._connector.cancel()
            await asyncio.gather(self._connector, return_exceptions=True)
        self.state.closing = True
        await self.rpc.close()
        await stop_broker(self.broker)

    def require(self) -> None:
        """Raise the seam's 503 `bus_unavailable` unless NATS is connected (for routes that use JetStream directly)."""
        if not self.state.connected:
            raise RpcError(503, f"NATS is not connected ({self.state.last_error or 'connecting'})",
                           code="bus_unavailable")  # fmt: skip

    async def ask(self, request: RpcRequest[Rep], timeout_s: float | None = None) -> Rep:
        """The typed reply of `request`, or its `RpcError`; `timeout_s` defaults to the gateway's request timeout."""
        return await self.rpc.ask(request, timeout_s=timeout_s or self.request_timeout_s)

    async def gather(
        self,
        request: RpcRequest[Rep],
        *,
        subject: str | None = None,
        timeout_s: float,
        done: Callable[[list[Rep]], bool] = lambda _: False,
    ) -> list[Rep]:
        """Ask every responder of `subject`; their replies once `done(replies)` holds, or what came by the timeout."""
        return await self.rpc.gather(request, subject=subject, timeout_s=timeout_s, done=done)

    async def answers(self, service: str, timeout_s: float) -> bool:
        """Whether at least one healthy replica of `service` answers its health request within the timeout."""
        replies = await self.gather(
            HealthRequest(), subject=fill(HealthRequest.SUBJECT, service=service),
            timeout_s=timeout_s, done=lambda got: any(r.healthy for r in got),
        )  # fmt: skip
        return any(r.healthy for r in replies)

    async def publish(self, event: Envelope) -> None:
        self.require()
        await publish_event(self.broker, event)

    async def report(self, event: Envelope) -> None:
        """A call or busy report: published lean (services/runtime/bus.py `publish_lean`), acked all the same."""
        self.require()
        await publish_lean(self.broker, event)


def bus_of(request: Request) -> BusClient:
    """The app's bus client (built in app.py, kept on `app.state`), typed for the routes."""
    bus: BusClient = request.app.state.bus
    return bus
