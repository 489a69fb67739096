"""One request to /api/v1/health yields spans from the gateway and all five services under one trace id."""

from __future__ import annotations

import asyncio
import secrets
import time

import httpx
import pytest

from contracts.health import SERVICES
from tests.peers.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.e2e


async def test_health_request_is_one_trace_across_every_service(
    database_url, service_env, start_service, start_gateway
):
    with OtlpReceiver() as otlp:
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
        await asyncio.gather(
            *(
                start_service(
                    name, service_env(database_url=database_url if name in ("catalog", "provisioner") else None, **otel)
                )
                for name in SERVICES
            )
        )
        url = await start_gateway(service_env(**otel))
        async with httpx.AsyncClient() as client:
            for _ in range(50):  # the gateway may still be connecting to NATS, services still starting
                # each try its own trace (the client's traceparent): the trace followed is the answered one's, not
                # that of an earlier try whose spans reached the receiver last
                trace_id = secrets.token_hex(16)
                traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
                r = await client.get(f"{url}/api/v1/health", headers={"traceparent": traceparent}, timeout=5)
                if r.status_code == 200:
                    break
                await asyncio.sleep(0.2)
        assert r.status_code == 200, r.text

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            services = {s.service for s in otlp.snapshot() if s.trace_id == trace_id}
            if services >= {"gateway", *SERVICES}:
                break
            await asyncio.sleep(0.2)
        in_trace = [s for s in otlp.snapshot() if s.trace_id == trace_id]
        assert {s.service for s in in_trace} >= {"gateway", *SERVICES}, {(s.service, s.name) for s in otlp.snapshot()}
        # Each service's span is a child within the trace, not a new root.
        for name in SERVICES:
            mine = [s for s in in_trace if s.service == name]
            assert all(s.parent_span_id for s in mine), mine
