"""Container health check: is THIS replica of a service answering its health request on the bus, and healthy?

    python deploy/healthcheck.py <service>         # exit 0 healthy, 1 unhealthy or silent, 2 misconfigured
    python deploy/healthcheck.py gateway           # GET /healthz on the gateway's own port
    python deploy/healthcheck.py --live <service>  # liveness: exit 1 only when the bus answers and this replica won't

Readiness (the default) wants a healthy answer. Liveness (`--live`, Kubernetes' livenessProbe) asks only whether the
process is wedged: any answer from this replica, healthy or not, means it runs (a service that lost PostgreSQL says
so and reconnects by itself), and a bus that cannot be reached is not this process's fault (restarting every
replica during a NATS outage would not help). What remains, NATS up and this replica silent, restarts it.

Every replica answers `rpc.<service>.health.v1` (no queue group), so the check gathers replies and keeps the
one whose `host` is this container's host id: MODELFLEET_HOST_ID, else the id the service minted in its state
dir. It only reads that file; a service that has not written it yet is reported as not started.
"""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.request
from pathlib import Path

TIMEOUT_S = float(os.environ.get("MODELFLEET_HEALTHCHECK_TIMEOUT_S", "3"))


def _own_host_id() -> str | None:
    configured = os.environ.get("MODELFLEET_HOST_ID")
    if configured:
        return configured
    state_dir = Path(os.environ.get("MODELFLEET_STATE_DIR", Path.home() / ".local" / "share" / "modelfleet"))
    try:
        return (state_dir / "host-id").read_text().strip() or None
    except FileNotFoundError:
        return None


class BusUnreachable(Exception):
    """NATS did not accept the connection."""


async def _bus_check(service: str, live: bool = False) -> tuple[bool, str]:
    import nats
    from nats.aio.msg import Msg

    from contracts.health import HealthReply, HealthRequest
    from contracts.subjects import fill

    host_id = _own_host_id()
    if host_id is None:
        return False, "no host id yet (service not started)"

    async def quiet(exc: Exception) -> None:  # the verdict line carries the reason; no traceback spam
        return None

    url = os.environ.get("MODELFLEET_NATS_URL", "nats://127.0.0.1:4222")
    try:
        nc = await asyncio.wait_for(
            nats.connect(
                url, connect_timeout=TIMEOUT_S, allow_reconnect=False, max_reconnect_attempts=0, error_cb=quiet
            ),
            TIMEOUT_S,  # a refused port makes the client try again until its own deadline; this one is the check's
        )
    except Exception as exc:
        raise BusUnreachable(f"{type(exc).__name__}: {exc}") from exc
    try:
        inbox = nc.new_inbox()
        mine: asyncio.Future[HealthReply] = asyncio.get_running_loop().create_future()

        async def collect(msg: Msg) -> None:
            reply = HealthReply.model_validate_json(msg.data)
            if reply.host == host_id and not mine.done():
                mine.set_result(reply)

        await nc.subscribe(inbox, cb=collect)
        await nc.publish(fill(HealthRequest.SUBJECT, service=service), b"{}", reply=inbox)
        try:
            reply = await asyncio.wait_for(mine, TIMEOUT_S)
        except TimeoutError:
            return False, f"no health reply from host {host_id} within {TIMEOUT_S}s"
        if live:
            return True, f"answered ({'healthy' if reply.healthy else 'unhealthy: ' + (reply.detail or '')})"
        return reply.healthy, reply.detail or "healthy"
    finally:
        await nc.close()


def _http_check() -> tuple[bool, str]:
    port = os.environ.get("MODELFLEET_GATEWAY_PORT", "8080")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=TIMEOUT_S) as response:
        return response.status == 200, f"HTTP {response.status}"


def main(argv: list[str]) -> int:
    live = argv[:1] == ["--live"]
    args = argv[1:] if live else argv
    if len(args) != 1:
        print("usage: healthcheck.py [--live] <service>", file=sys.stderr)
        return 2
    service = args[0]
    try:
        if service == "gateway":
            ok, detail = _http_check()
        else:  # one overall deadline, whatever the client library does inside
            ok, detail = asyncio.run(asyncio.wait_for(_bus_check(service, live), 2 * TIMEOUT_S + 1))
    except BusUnreachable as exc:
        ok, detail = live, f"bus unreachable: {exc}"
    except Exception as exc:  # any failure to reach it is "unhealthy", with the reason
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    if live:
        print(f"{service}: {'alive' if ok else 'NOT ANSWERING'} ({detail})")
    else:
        print(f"{service}: {'healthy' if ok else 'UNHEALTHY'} ({detail})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
