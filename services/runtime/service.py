"""The process shell every service runs in: connect with backoff, answer health, run background tasks, stop cleanly."""

from __future__ import annotations

import asyncio
import faulthandler
import functools
import gc
import logging
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

import uvloop
from faststream.nats import NatsBroker
from opentelemetry.sdk.trace import TracerProvider

from contracts.envelope import Envelope
from contracts.health import DependencyState, HealthReply, HealthRequest
from contracts.subjects import fill
from services.runtime.bus import BusState, start_broker, stop_broker
from services.runtime.db import Database, DbState
from services.runtime.metrics import MetricsEndpoint
from services.runtime.rpc import Rpc
from services.runtime.tasks import settle
from services.runtime.telemetry import shutdown_tracing

log = logging.getLogger(__name__)

Task = Callable[[], Awaitable[None]]


@functools.cache
def package_version() -> str:
    """The installed package's version, read once: importlib.metadata parses the distribution's METADATA file on each
    call (a fifth of a millisecond, on every `/healthz` the gateway answers)."""
    try:
        return version("modelfleet")
    except PackageNotFoundError:
        return "0+unknown"


class Service:
    """One service process. `build_app` constructs it; `run()` drives it until SIGTERM/SIGINT."""

    def __init__(
        self,
        name: str,
        *,
        host_id: str,
        broker: NatsBroker,
        rpc: Rpc,
        bus_state: BusState,
        tracer_provider: TracerProvider,
        metrics: MetricsEndpoint | None = None,
        database: Database | None = None,
        tasks: Sequence[Task] = (),
        publishes: Sequence[type[Envelope]] = (),
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
    ) -> None:
        self.name = name
        self.host_id = host_id
        self.broker = broker
        self.rpc = rpc
        self.bus_state = bus_state
        self.tracer_provider = tracer_provider
        self.metrics = metrics
        self.database = database
        self.tasks = list(tasks)
        #: The events and commands this service publishes; its AsyncAPI document is generated from them.
        self.publishes = tuple(publishes)
        self.instance_id = uuid.uuid4().hex[:12]
        self.started_at = time.monotonic()
        self.ready = asyncio.Event()
        #: Optional fields a service adds to its health reply (the fallback: its slots); called on each request.
        self.health_extra: Callable[[], dict[str, Any]] | None = None
        self._retry = (retry_initial_s, retry_max_s)
        self._running: list[asyncio.Task[None]] = []
        self._register_health()

    def health(self) -> HealthReply:
        nats = DependencyState.UP if self.bus_state.connected else DependencyState.DOWN
        if self.database is None:
            db = DependencyState.NOT_USED
        else:
            db = DependencyState.UP if self.database.state is DbState.UP else DependencyState.DOWN
        problems = [f"nats: {self.bus_state.last_error or 'disconnected'}"] if nats is DependencyState.DOWN else []
        if db is DependencyState.DOWN and self.database is not None:
            problems.append(f"database: {self.database.last_error or self.database.state.value}")
        return HealthReply(
            service=self.name,
            version=package_version(),
            instance_id=self.instance_id,
            host=self.host_id,
            uptime_s=round(time.monotonic() - self.started_at, 3),
            healthy=not problems,
            nats=nats,
            database=db,
            detail="; ".join(problems),
            invalid_requests=sum(self.rpc.stats.invalid.values()),
            **(self.health_extra() if self.health_extra is not None else {}),
        )

    def _register_health(self) -> None:
        @self.rpc.handler(HealthRequest, subject=fill(HealthRequest.SUBJECT, service=self.name), queue=None)
        async def on_health(req: HealthRequest) -> HealthReply:
            """Consumes rpc.<service>.health.v1; every replica replies HealthReply. Read-only, so idempotent."""
            return self.health()

    async def start(self) -> None:
        """Connect to NATS (retrying with backoff for as long as it takes), declare streams, start tasks."""
        if self.database is not None:
            self._spawn(self.database.watch)
        await start_broker(self.broker, self.bus_state, self.name, *self._retry)
        await self.rpc.bind()
        for task in self.tasks:
            self._spawn(task)
        self.ready.set()
        log.info("%s started (instance %s on %s)", self.name, self.instance_id, self.host_id)

    def _spawn(self, task: Task) -> None:
        name = getattr(task, "__qualname__", None) or str(task)  # `catalog:Outbox.run`, not the bound method's repr
        self._running.append(asyncio.create_task(self._supervise(task), name=f"{self.name}:{name}"))

    async def _supervise(self, task: Task) -> None:
        """Background tasks must not die on a transient fault: restart them with backoff."""
        delay, cap = self._retry
        while True:
            try:
                await task()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: background task failed; restarting in %.1fs", self.name, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, cap)

    async def stop(self) -> None:
        for task in self._running:
            task.cancel()
        await settle(self._running, f"{self.name}: background task")
        self.bus_state.closing = True
        await self.rpc.close()
        await stop_broker(self.broker)
        if self.database is not None:
            await self.database.close()
        if self.metrics is not None:
            self.metrics.flush()
        shutdown_tracing(self.tracer_provider)

    async def run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        async def start_and_settle() -> None:
            await self.start()
            freeze_heap(self.name)

        starter = asyncio.create_task(start_and_settle())
        await stop.wait()
        starter.cancel()
        await asyncio.gather(starter, return_exceptions=True)
        await self.stop()


def freeze_heap(name: str) -> int:
    """Once a service process has started: what it built to run (modules, app, clients, settings) is
    put out of the cyclic garbage collector's reach (`gc.freeze`, after one collection of start-up garbage), so that
    a full collection walks only what requests and events have made since. In the gateway with a router replica,
    ~200,000 start-up objects made each full collection a 100-150 ms stall of every request in flight on a 2-core
    machine (docs/foundation.md "Garbage collection"). Only a service's own process calls it (`Service.run`, the
    gateway's lifespan), never a test that starts a service in its process. Returns how many objects it froze."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("%s: %d start-up objects frozen out of the garbage collector's full collections", name, frozen)
    return frozen


def run_service(build: Callable[[], Service]) -> None:
    """Entry point of `python -m services.<name>`."""
    logging.basicConfig(
        level=os.environ.get("MODELFLEET_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("faststream").setLevel(logging.WARNING)
    # `kill -USR1 <pid>` writes every thread's stack to stderr (the service's log): a wedged process explains itself.
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    async def main() -> None:
        await build().run()

    (asyncio.run if event_loop() == "asyncio" else uvloop.run)(main())


def event_loop() -> Literal["uvloop", "asyncio"]:
    """The event loop every service (the gateway's uvicorn included) runs on: libuv's (uvloop), where a service's
    every bus message costs less loop work, unless MODELFLEET_EVENT_LOOP=asyncio keeps the standard one. Any other
    value stops the service at start."""
    loop = os.environ.get("MODELFLEET_EVENT_LOOP", "uvloop")
    if loop == "uvloop":
        return "uvloop"
    if loop == "asyncio":
        return "asyncio"
    raise SystemExit(f"MODELFLEET_EVENT_LOOP={loop!r} is not an event loop; use uvloop (the default) or asyncio")
