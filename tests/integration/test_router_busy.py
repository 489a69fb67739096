"""A hung backend (accepts connections, never answers) is still caught by the router's checks when no gateway has a
call open on it; the same silence while a gateway reports calls open is a busy backend, and its circuit stays closed.
A router process, real NATS, two real listening sockets that never answer."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import nats
import pytest

from contracts.hardware import BackendLoadedModel, BackendStatus
from contracts.router import BackendBusy, BackendsRequest
from tests.harness.fleet_events import gpu_sample, publish
from tests.harness.waiting import eventually

pytestmark = pytest.mark.integration

CHECKS = {"MODELFLEET_ROUTER_CHECK_TIMEOUT_S": "0.2", "MODELFLEET_ROUTER_CHECK_INTERVAL_S": "0.3"}


@contextmanager
def hung_server() -> Iterator[str]:
    """Accepts every connection and reads nothing, answers nothing; yields its base URL (ending in `/v1`)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


async def backends(nc: Any) -> dict[str, dict[str, Any]]:
    reply = json.loads((await nc.request(BackendsRequest.SUBJECT, b"{}", timeout=5)).data)
    return {b["base_url"]: b for b in reply["backends"]}


async def test_a_hung_idle_backend_trips_and_a_busy_one_does_not(nats_url, service_env, start_service):
    with hung_server() as idle, hung_server() as busy:
        await start_service("router", service_env(**CHECKS))
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            served = [BackendStatus(kind="openai", base_url=url, reachable=True,
                                    loaded=[BackendLoadedModel(name="m")]) for url in (idle, busy)]  # fmt: skip
            update = {"ollama_url": None, "ollama_reachable": False, "backends": served}
            await publish(js, gpu_sample("h-hung", "").model_copy(update=update))
            # a gateway's report that it has a call open on `busy` (as it sends on the first, and every few s)
            await publish(js, BackendBusy(producer="gateway", host_id="h-hung", backend_url=busy, kind="openai",
                                          gateway_instance="gw-test", in_flight=1))  # fmt: skip

            async def idle_tripped() -> dict[str, dict[str, Any]] | None:
                got = await backends(nc)
                return got if got[idle]["circuit"] == "open" else None

            seen = await eventually(idle_tripped, 20, "the idle hung backend's circuit open")
            assert seen[idle]["last_check_outcome"] == "timeout" and not seen[idle]["healthy"]
            assert seen[busy]["last_check_outcome"] == "timeout"  # checked and timed out just the same...
            assert seen[busy]["circuit"] == "closed" and seen[busy]["healthy"]  # ...but busy, so not a failure
            assert seen[busy]["recent_failures"] == 0 and seen[busy]["in_flight"] == 1
        finally:
            await nc.close()
