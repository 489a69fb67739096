"""Composition root of the gateway: FastAPI app, bus client, tracing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from contracts.catalog import CatalogChanged, ProfileChanged
from contracts.envelope import Envelope
from contracts.provisioner import ProvisionCommand
from contracts.router import BackendBusy, BackendCallsCompleted, BackendChecked, LlmDegraded, LlmRecovered
from contracts.rpc import RpcError
from services.gateway import (
    catalog_routes,
    chat_fast_path,
    handlers,
    hosts_routes,
    local_models_routes,
    openai_routes,
    provision_routes,
    route_routes,
    server_measures,
    ui,
    updates_routes,
)
from services.gateway import metrics as gateway_metrics
from services.gateway.auth import TokenCache
from services.gateway.backends import Backend, FallbackBackend, OllamaBackend, OpenAIBackend
from services.gateway.bus_client import BusClient
from services.gateway.call_reports import CallReporter
from services.gateway.dataplane import DataPlane, LocalRouter
from services.gateway.errors import (
    contract_error_response,
    http_error_response,
    rpc_error_response,
    validation_error_response,
)
from services.gateway.route_memo import RouteMemo
from services.gateway.settings import GatewaySettings
from services.runtime.bus import BusState, build_broker
from services.runtime.metrics import install_metrics
from services.runtime.rpc import Rpc
from services.runtime.service import event_loop, freeze_heap, package_version
from services.runtime.telemetry import build_tracer_provider, shutdown_tracing


def serve(settings: GatewaySettings, local_router: LocalRouter | None = None) -> None:
    """Serve the gateway with uvicorn until SIGTERM (`python -m services.gateway`, `python -m services.gateway_router`
    with a router replica in the process)."""
    loop = event_loop()  # a bad MODELFLEET_EVENT_LOOP stops the gateway here, as it stops every service
    uvicorn.run(
        build_app(settings, local_router),
        host=settings.bind,
        port=settings.port,
        loop=loop,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=settings.keep_alive_s,
    )


def build_app(settings: GatewaySettings, local_router: LocalRouter | None = None) -> FastAPI:
    """The gateway's app; with `local_router`, a router replica in this process that it starts and stops and asks
    for routes once the replica has caught up with the streams (before that, and without one: over the bus)."""
    tracer_provider = build_tracer_provider("gateway")
    metrics = install_metrics("gateway", port=settings.metrics_port, bind=settings.metrics_bind)
    state = BusState()
    broker = build_broker(settings.nats_url, "gateway", tracer_provider, state)
    bus = BusClient(
        broker,
        state,
        Rpc(broker, "gateway", tracer_provider),
        request_timeout_s=settings.request_timeout_s,
        publishes=[ProvisionCommand, BackendCallsCompleted, BackendBusy],
        retry_initial_s=settings.retry_initial_s,
        retry_max_s=settings.retry_max_s,
    )

    token_cache = TokenCache(settings.auth_cache_s, state)

    # none when reuse is off: no request builds a key for nothing
    memo = RouteMemo(settings.route_reuse_max_s) if settings.route_reuse_max_s > 0 else None
    gateway_metrics.count_route_reuses(lambda: memo.reused if memo is not None else 0)

    @broker.subscriber(CatalogChanged.SUBJECT)
    async def on_catalog_changed(event: CatalogChanged) -> None:
        """Consumes evt.catalog.entries.changed.v1 (core NATS, every gateway): drops the user tokens the catalog
        accepted, since a revocation is such a change, and the reused routes. Idempotent."""
        token_cache.clear()
        plane.forget_routes()

    @broker.subscriber(ProfileChanged.SUBJECT)
    @broker.subscriber(LlmDegraded.SUBJECT)
    @broker.subscriber(LlmRecovered.SUBJECT)
    async def on_route_changed(event: Envelope) -> None:
        """Consumes evt.catalog.profile.changed.v1, evt.router.llm.degraded.v1 and .recovered.v1 (core NATS, every
        gateway): a decision may have changed, the reused routes are dropped. Idempotent."""
        plane.forget_routes()

    @broker.subscriber(BackendChecked.SUBJECT)
    async def on_backend_checked(event: BackendChecked) -> None:
        """Consumes evt.router.backend.checked.v1 (core NATS, every gateway; published when a check can change a
        circuit): a failed check drops the reused routes. Idempotent."""
        if event.outcome != "ok":
            plane.forget_routes()

    timeout = httpx.Timeout(settings.backend_read_timeout_s, connect=settings.backend_connect_timeout_s)
    openai_backend = OpenAIBackend(
        connect_timeout_s=settings.backend_connect_timeout_s, read_timeout_s=settings.backend_read_timeout_s,
        max_connections=settings.backend_max_connections, keep_alive_s=settings.backend_keep_alive_s,
    )  # fmt: skip
    ollama_backend = OllamaBackend(timeout)
    reporter = CallReporter(bus.report, batch_window_s=settings.report_window_s)
    callers: dict[str, Backend] = {
        "ollama": ollama_backend,
        "openai": openai_backend,
        "fallback": FallbackBackend(bus.rpc, settings.fallback_timeout_s),
    }
    plane = DataPlane(bus, callers, reporter,
                      route_timeout_s=settings.request_timeout_s,
                      busy_retry_after_s=settings.busy_retry_after_s,
                      provision_wait_s=settings.provision_wait_s, local_router=local_router,
                      memo=memo)  # fmt: skip

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await bus.start()
        if local_router is not None:
            await local_router.start()
        freeze_heap("gateway")
        try:
            yield
        finally:
            await reporter.aclose()
            if local_router is not None:
                await local_router.stop()
            await openai_backend.aclose()
            await ollama_backend.aclose()
            await bus.stop()
            metrics.flush()
            shutdown_tracing(tracer_provider)

    app = FastAPI(
        title="modelfleet gateway",
        version=package_version(),
        description="Control plane and OpenAI-compatible data plane of a modelfleet fleet.",
        lifespan=lifespan,
        # One instrumentation: OpenTelemetry's FastAPI instrumentor below (the server span, `http.server.*`, as the
        # dashboards read them). FastAPI's own (0.16x) stands aside when it sees that one, after a walk of the
        # middleware stack on every request; off, it is not in the request's path at all.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.bus = bus
    app.state.plane = plane
    app.state.token_cache = token_cache
    # A service's typed error (or the seam's 503/504) answers with its own status: no route maps errors by hand.
    app.add_exception_handler(RpcError, rpc_error_response)
    app.add_exception_handler(RequestValidationError, validation_error_response)
    app.add_exception_handler(StarletteHTTPException, http_error_response)
    app.add_exception_handler(ValidationError, contract_error_response)
    # The data plane first: FastAPI's router and the OpenTelemetry instrumentation (which finds each request's route
    # template again) both try the routes in order, so /v1/ requests match at once instead of after every
    # control-plane route (tens of regex matches per request, twice).
    app.include_router(openai_routes.router)
    chat_fast_path.install(app)  # plain chat completions without FastAPI's per-request machinery
    app.include_router(handlers.router)
    app.include_router(hosts_routes.router)
    app.include_router(local_models_routes.router)
    app.include_router(catalog_routes.router)
    app.include_router(provision_routes.router)
    app.include_router(updates_routes.router)
    app.include_router(route_routes.router)
    app.include_router(ui.router)  # the web UI (docs/web-ui.md)
    app.add_exception_handler(ui.PageAnswer, ui.page_answer)  # a page's sign-in redirect or error page
    app.mount("/ui/static", ui.static_files(), name="ui-static")
    gateway_metrics.stable_http_semconv()  # http.server.request.duration in s, by http.route
    # One server span per request; no internal `http send` / `http receive` span per ASGI message (one per SSE chunk
    # of a stream): they cost tens of microseconds each on the data plane and tell nothing the server span does not.
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=tracer_provider, excluded_urls="healthz", exclude_spans=["receive", "send"]
    )
    server_measures.install(app, tracer_provider)  # an untraced chat completion measured without the span's work
    return app
