"""The admin token, a user token and HF_TOKEN never appear in logs, JetStream messages, error bodies or spans.

A fleet (catalog, router, provisioner, hardware probe, gateway) runs as processes with distinctive secrets,
exporting spans over OTLP to a receiver that keeps every export. The test makes calls with wrong tokens, issues
and uses a user token, imports a GGUF from the hub peer (with HF_TOKEN sent to it), then searches every output.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import nats
import pytest
from nats.js.errors import NotFoundError

from tests.harness.no_gpu import no_gpu_env
from tests.harness.provision_bus import MIB, provisioner_env
from tests.harness.waiting import eventually
from tests.peers.hub_server import HubPeer, generated_file, small_file
from tests.peers.ollama_server import OllamaPeer
from tests.peers.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.e2e

ADMIN = "mfadmin-S3CRET-7f3a9c2e-admin-token"
HF = "hf_S3CRET_4b8e1d0c_hub_token"
WRONG = "mfwrong-S3CRET-91d2-not-a-token"
REPO = "acme/secret-GGUF"


async def stream_contents(nats_url: str) -> list[bytes]:
    """Every message of every JetStream stream (EVENTS, COMMANDS, DLQ, KV buckets...), headers and body."""
    nc = await nats.connect(nats_url)
    found = []
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            for seq in range(max(info.state.first_seq, 1), info.state.last_seq + 1) if info.state.messages else ():
                try:
                    msg = await js.get_msg(info.config.name, seq)
                except NotFoundError:
                    continue
                found.append(f"{info.config.name} {msg.subject} {msg.headers}".encode() + b" " + (msg.data or b""))
    finally:
        await nc.close()
    return found


async def test_no_secret_in_logs_streams_bodies_or_spans(
    database_url, service_env, start_service, start_gateway, nats_url, tmp_path: Path
):
    bodies: list[bytes] = []
    with OtlpReceiver() as otlp, HubPeer() as hub, OllamaPeer() as ollama:
        repo = hub.repo(REPO)
        commit = repo.commit([small_file("README.md", b"hi"), generated_file("tiny.Q4_K_M.gguf", MIB, seed=3)])
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
        # Every process gets the admin token in its environment (the worst case): none may print it.
        common = {"MODELFLEET_ADMIN_TOKEN": ADMIN, "MODELFLEET_LOG_LEVEL": "DEBUG", **otel}
        env = provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url}, **common)
        env["HF_TOKEN"] = HF
        await asyncio.gather(
            start_service("catalog", service_env(database_url, **common)),
            start_service("router", service_env(**common)),
            start_service("provisioner", env),
            start_service("hardware-probe", service_env(MODELFLEET_PROBE_INTERVAL_S="0.5", **no_gpu_env(), **common)),
        )
        url = await start_gateway(service_env(**common))
        admin = {"Authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:

            async def answering() -> bool:  # each service is healthy already; the gateway may still be connecting
                return (await http.get("/api/v1/models", headers=admin)).status_code == 200

            await eventually(answering, 30, "the gateway answering with the catalog")

            async def call(method: str, path: str, **kw: object) -> httpx.Response:
                r = await http.request(method, path, **kw)  # type: ignore[arg-type]
                bodies.append(f"{r.status_code} {r.headers} ".encode() + r.content)
                return r

            for headers in ({"Authorization": f"Bearer {WRONG}"}, {"Authorization": WRONG}, {"X-Api-Key": WRONG}):
                assert (await call("GET", "/api/v1/models", headers=headers)).status_code in (401, 403)
            issued = await call("POST", "/api/v1/users/alice/tokens", json={}, headers=admin)
            assert issued.status_code in (200, 201), issued.text
            user = issued.json()["token"]
            bodies.pop()  # the one body that must carry the user token: the issue reply
            mine = await call("GET", "/api/v1/users/alice/tokens", headers={"Authorization": f"Bearer {user}"})
            assert mine.status_code == 200, mine.text
            denied = await call(
                "POST", "/api/v1/models/provision", json={}, headers={"Authorization": f"Bearer {user}"}
            )
            assert denied.status_code == 403
            assert (await call("GET", "/api/v1/hosts", headers=admin)).status_code == 200
            imported = await call(
                "POST", "/api/v1/models/import", headers=admin,
                json={"repo": REPO, "quant": "Q4_K_M", "revision": commit, "host": "gpu-1", "wait": True},
            )  # fmt: skip
            assert imported.status_code == 200, imported.text
            missing = await call(
                "POST", "/api/v1/models/import", headers=admin,
                json={"repo": "acme/no-such-GGUF", "quant": "Q4_K_M", "revision": commit, "host": "gpu-1"},
            )  # fmt: skip
            assert "no-such-GGUF" in missing.text  # an error, carried in the result
            await call("POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {WRONG}"}, json={})

        async def spans_exported() -> bool:
            missing = {"gateway", "provisioner", "catalog"} - {s.service for s in otlp.snapshot()}
            if missing:  # named in the timeout's message
                raise LookupError(f"no span yet from {sorted(missing)}")
            return True

        # A bound for a loaded 2-core machine running the whole suite; on a quiet one they are there in ~1 s.
        await eventually(spans_exported, 60, "spans from the gateway, provisioner and catalog")
        streams = await stream_contents(nats_url)
        span_bodies = list(otlp.bodies)

    logs = {p.name: p.read_bytes() for p in (tmp_path / "logs").glob("*.log")}
    assert len(logs) == 5, sorted(logs)
    assert streams and span_bodies and bodies
    secrets = {"admin token": ADMIN, "HF_TOKEN": HF, "user token": user, "rejected token": WRONG}
    leaks = []
    for what, secret in secrets.items():
        needle = secret.encode()
        leaks += [f"{what} in log {name}" for name, text in logs.items() if needle in text]
        leaks += [f"{what} in JetStream: {m[:120]!r}" for m in streams if needle in m]
        leaks += [f"{what} in an HTTP reply: {b[:200]!r}" for b in bodies if needle in b]
        leaks += [f"{what} in an OTLP export" for b in span_bodies if needle in b]
    assert leaks == []
