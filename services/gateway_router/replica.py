"""A router replica hosted by the gateway's process, which asks it for routes directly once it has caught up."""

from __future__ import annotations

import asyncio
import logging

from contracts.router import RouteReply, RouteRequest
from services.router.app import build_replica
from services.router.operations import Router
from services.router.settings import RouterSettings
from services.runtime.consumer_lag import consumer_counts
from services.runtime.service import Service

log = logging.getLogger(__name__)


class ColocatedRouter:
    """A router replica like any other on the bus (it folds the streams, runs the active checks, publishes
    `llm.degraded`/`llm.recovered` once per transition with every other replica, answers route asks from any
    gateway), whose route operation the hosting gateway calls in-process: no bus round trip per request.

    It is `ready` once every one of its stream consumers has nothing pending and nothing unacked (what the streams
    held when it started is folded), or after `catch_up_max_s` in any case (logged); until then the gateway asks
    the bus, where another replica may answer. Its metrics go to the gateway's `/metrics`."""

    def __init__(self, settings: RouterSettings, *, catch_up_poll_s: float = 0.05, catch_up_max_s: float = 30.0):
        self.settings = settings
        self.service: Service | None = None
        self.router: Router | None = None
        self.catch_up_poll_s = catch_up_poll_s
        self.catch_up_max_s = catch_up_max_s
        self._ready = False
        self._starting: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        """Build the replica (after the gateway's app: the gateway's tracer provider is the process's global one),
        and start it in the background: the gateway serves (asking the bus) while the replica connects and catches
        up."""
        self.service, self.router = build_replica(self.settings, own_metrics=False)
        self._starting = asyncio.create_task(self._start(self.service), name="router-replica-start")

    async def _start(self, service: Service) -> None:
        await service.start()  # retries NATS with backoff for as long as it takes
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.catch_up_max_s
        while True:
            try:
                counts = await consumer_counts(service.broker, service.name)
                if counts and all(pending == 0 and unacked == 0 for pending, unacked in counts.values()):
                    break
            except Exception as exc:  # NATS went away meanwhile: ask again
                log.debug("router replica: consumer counts not read: %s", exc)
            if loop.time() >= deadline:
                log.warning("router replica: not caught up with the streams after %g s; routing in-process anyway",
                            self.catch_up_max_s)  # fmt: skip
                break
            await asyncio.sleep(self.catch_up_poll_s)
        self._ready = True
        log.info("router replica %s caught up: this gateway's routes are decided in-process", service.instance_id)

    async def route(self, request: RouteRequest) -> RouteReply:
        if self.router is None:
            raise RuntimeError("the router replica was not started")
        return await self.router.route(request)

    async def stop(self) -> None:
        self._ready = False
        if self._starting is not None:
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
        if self.service is not None:
            await self.service.stop()
