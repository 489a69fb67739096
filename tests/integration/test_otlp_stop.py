"""A service stops promptly when its OTLP collector is unreachable, and still hands a reachable collector its spans
(services/runtime/otlp.py). Before: SIGTERM took 15 s with the default OTLP timeout, as each of two last pushes
retried for it, and a compose stop SIGKILLs after 10 s."""

from __future__ import annotations

import secrets
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import nats
import pytest

from contracts.health import HealthRequest
from contracts.subjects import fill
from services.runtime.embedded import free_port
from tests.harness.processes import ServiceProcess
from tests.harness.waiting import eventually
from tests.peers.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.integration

#: Long enough that the SDK's own retries (backoffs of 1, 2, 4, 8 and 16 s within this deadline, per push) would
#: hold the stop for about a minute; the stop gives the collector 2 s.
PATIENT_EXPORTER = {"OTEL_EXPORTER_OTLP_TIMEOUT": "600", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
#: What the process may take after SIGTERM: the two bounded pushes (2 s each) and the rest of its stop, with room for
#: a loaded machine; far below what the unbounded retries take.
STOP_WITHIN_S = 25


async def traced_asks(nats_url: str, service: str, count: int = 3) -> None:
    """Health asks to `service`, each in a sampled trace of its own: each is a server span in its process (the seam
    continues a caller's trace and starts none)."""
    nc = await nats.connect(nats_url)
    try:
        for _ in range(count):
            traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
            await nc.request(fill(HealthRequest.SUBJECT, service=service), b"{}", timeout=5,
                             headers={"traceparent": traceparent})  # fmt: skip
    finally:
        await nc.close()


async def retrying_spans(proc: ServiceProcess) -> bool:
    return "exporting spans batch, retrying" in proc.log_path.read_text(errors="replace")


def stopped(proc: ServiceProcess) -> str:
    """SIGTERM, then the exit (a failure names what the process was doing), then its log."""
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGTERM)
    try:
        code = proc.proc.wait(STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        proc.stop(timeout_s=1)
        raise AssertionError(f"still running {STOP_WITHIN_S} s after SIGTERM:\n{proc.log_tail()}") from None
    assert code == 0, proc.log_tail()
    return proc.log_path.read_text(errors="replace")


async def test_an_unreachable_collector_does_not_hold_the_stop(
    nats_url: str, service_env: Callable[..., dict[str, str]], start_service: Callable[..., object], tmp_path: Path
) -> None:
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens: every push is refused, then retried
    env = service_env(OTEL_EXPORTER_OTLP_ENDPOINT=refused, **PATIENT_EXPORTER)
    proc: ServiceProcess = await start_service("router", env)  # type: ignore[operator]
    await traced_asks(nats_url, "router")
    # The stop comes while the spans' batch is in the exporter's retries (the SDK logs each retry).
    await eventually(lambda: retrying_spans(proc), 15, "the span exporter retrying")
    log = stopped(proc)
    assert "traces: the OTLP collector took no spans within 2 s of the stop" in log, log[-3000:]
    assert "metrics: the OTLP collector took no push within 2 s of the stop" in log, log[-3000:]
    assert "already shutdown" not in log  # the aborted exporters stay quiet at the exit's own shutdown


async def test_a_reachable_collector_gets_the_spans_of_a_stopping_service(
    nats_url: str, service_env: Callable[..., dict[str, str]], start_service: Callable[..., object]
) -> None:
    with OtlpReceiver() as otlp:
        env = service_env(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{otlp.endpoint}/v1/traces", **PATIENT_EXPORTER)
        proc: ServiceProcess = await start_service("router", env)  # type: ignore[operator]
        await traced_asks(nats_url, "router")
        log = stopped(proc)
        assert "took no spans" not in log
        # by name: the service name is the process's OTEL_SERVICE_NAME, which a test run's environment may set
        health = [s for s in otlp.snapshot() if s.name == "rpc.router.health.v1 process"]
        assert len(health) >= 3, otlp.snapshot()
