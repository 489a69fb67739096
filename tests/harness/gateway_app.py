"""The gateway's app built in-process, as `scripts.gen_openapi` builds it (no NATS is reached until a request needs
the bus: a request that gets as far as its route ask is answered 503 `bus_unavailable`)."""

from __future__ import annotations

from fastapi import FastAPI

from scripts.generated_docs import doc_environment


def gateway_app(admin_token: str) -> FastAPI:
    """The app, the process's environment restored after (a build sets `OTEL_SERVICE_NAME`, which every service
    process a later test starts would inherit)."""
    with doc_environment():
        from services.gateway.app import build_app
        from services.gateway.settings import GatewaySettings

        return build_app(GatewaySettings(admin_token=admin_token, nats_url="nats://127.0.0.1:1", metrics_port=0))
