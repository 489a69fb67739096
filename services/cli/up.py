"""`modelfleet up`: embedded NATS + PostgreSQL (unless given), every service and the gateway as children."""

from __future__ import annotations

import io
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import httpx
import typer
from rich.console import Console

from contracts.health import SERVICES
from services.cli.admin_token import ensure_admin_token, token_file
from services.cli.status import render
from services.cli.supervisor import Child, Supervisor, python_module
from services.runtime.embedded import EmbeddedNats, EmbeddedPostgres, free_port, port_open
from services.runtime.metrics import METRICS_PORTS
from services.runtime.settings import default_state_dir

console = Console()


def _module(service: str) -> str:
    return "services." + service.replace("-", "_")


def up(
    port: int = typer.Option(8080, "--port", envvar="MODELFLEET_GATEWAY_PORT", help="Gateway port."),
    bind: str = typer.Option("127.0.0.1", "--bind", envvar="MODELFLEET_GATEWAY_BIND", help="Gateway address."),
    nats_url: str | None = typer.Option(
        None, "--nats-url", envvar="MODELFLEET_NATS_URL", help="Use this NATS instead of an embedded one."
    ),
    database_url: str | None = typer.Option(
        None, "--database-url", envvar="MODELFLEET_DATABASE_URL", help="Use this PostgreSQL instead of an embedded one."
    ),
    state_dir: Path = typer.Option(
        default_state_dir(),
        "--state-dir",
        envvar="MODELFLEET_STATE_DIR",
        help="Where embedded servers keep their data.",
    ),
    ready_timeout_s: float = typer.Option(
        60.0, "--ready-timeout", help="Seconds to wait for all-healthy before reporting."
    ),
    metrics: bool = typer.Option(
        True,
        "--metrics/--no-metrics",
        help="Serve each process's Prometheus /metrics on its documented port (a free one when that is taken); "
        "MODELFLEET_METRICS_PORT=0 in the environment turns them off too.",
    ),
    router_in_gateway: bool = typer.Option(
        False,
        "--router-in-gateway",
        help="Run the router replica inside the gateway's process (python -m services.gateway_router) instead of as "
        "a process of its own: no bus round trip per request (docs/gateway.md).",
    ),
) -> None:
    """Run a whole fleet on this machine until Ctrl-C or SIGTERM; then stop every process it started."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # status lines reach a pipe or log file as they happen
    stopping = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    state_dir = state_dir.expanduser()
    state_dir.mkdir(parents=True, exist_ok=True)
    nats = pg = None
    supervisor: Supervisor | None = None
    try:
        if not nats_url:
            nats = EmbeddedNats(state_dir / "nats", port=4222 if not port_open(4222) else 0).start()
            nats_url = nats.url
            console.print(f"[dim]embedded NATS (JetStream) at {nats_url}, data in {nats.data_dir}[/dim]")
        if not database_url:
            pg = EmbeddedPostgres(state_dir / "postgres" / "data").start()
            database_url = pg.url
            console.print(f"[dim]embedded PostgreSQL at {pg.url}, data in {pg.data_dir}[/dim]")
            if pg.moved_from is not None:
                console.print(f"[dim]moved the PostgreSQL data kept by an older release from {pg.moved_from}[/dim]")
            for folder in pg.made_traversable:
                console.print(f"[dim]made {folder} traversable (o+x) for the PostgreSQL server's user[/dim]")
        env = dict(
            os.environ, MODELFLEET_NATS_URL=nats_url, MODELFLEET_DATABASE_URL=database_url,
            MODELFLEET_STATE_DIR=str(state_dir), MODELFLEET_GATEWAY_PORT=str(port), MODELFLEET_GATEWAY_BIND=bind,
        )  # fmt: skip
        # Only the gateway checks the admin token, so only the gateway is given it (as in compose and k8s).
        admin_token = env.pop("MODELFLEET_ADMIN_TOKEN", None)
        if not admin_token:
            admin_token = ensure_admin_token(state_dir)
            console.print(
                f"admin token: in {token_file(state_dir)} (the CLI on this machine reads it; sign in to /ui/)"
            )
        logs = state_dir / "logs"
        names = [*(s for s in SERVICES if not (router_in_gateway and s == "router")), "gateway"]
        modules = {n: _module(n) for n in names} | ({"gateway": "services.gateway_router"} if router_in_gateway else {})
        ports = metrics_ports(names) if metrics and env.get("MODELFLEET_METRICS_PORT") != "0" else {}
        supervisor = Supervisor([
            Child(n, python_module(modules[n]), {
                **env, "MODELFLEET_METRICS_PORT": str(ports.get(n, 0)),
                **({"MODELFLEET_ADMIN_TOKEN": admin_token} if n == "gateway" else {}),
            }, logs / f"{n}.log")
            for n in names
        ])  # fmt: skip
        supervisor.start_all()
        url = f"http://{'127.0.0.1' if bind in ('0.0.0.0', '::') else bind}:{port}"
        console.print(f"modelfleet gateway: [bold]{url}[/bold]  web UI: [bold]{url}/ui/[/bold]  (logs in {logs})")
        for line in _metrics_lines(ports, env.get("MODELFLEET_METRICS_BIND") or "127.0.0.1"):
            console.print(line, soft_wrap=True)
        _wait_healthy(url, supervisor, ready_timeout_s, lambda: stopping)
        while not stopping:
            _tick(supervisor)
            time.sleep(0.2)
        console.print("stopping…")
    finally:
        if supervisor is not None:
            supervisor.stop_all()
        if pg is not None:
            pg.stop()
        if nats is not None:
            nats.stop()
    console.print("stopped cleanly")


def metrics_ports(names: list[str]) -> dict[str, int]:
    """Each child's /metrics port: its documented one (`METRICS_PORTS`), or a free one when another process has it
    (a second fleet on the machine, an exporter), so that every child still serves its series."""
    ports: dict[str, int] = {}
    for name in names:
        wanted = METRICS_PORTS.get(name, 0)
        ports[name] = wanted if wanted and not port_open(wanted) and wanted not in ports.values() else free_port()
    return ports


def _metrics_lines(ports: dict[str, int], bind: str) -> list[str]:
    """One line per process: `metrics <name> <url>` (docs/observability.md lists the series)."""
    if not ports:
        return ["[dim]metrics: off (--no-metrics or MODELFLEET_METRICS_PORT=0)[/dim]"]
    host = "127.0.0.1" if bind in ("0.0.0.0", "::") else bind
    return [f"metrics {name} http://{host}:{p}/metrics" for name, p in sorted(ports.items(), key=lambda kv: kv[1])]


def _tick(supervisor: Supervisor) -> None:
    for child, code in supervisor.tick():
        console.print(f"[yellow]{child.name} exited with {code}; restarting in {child.backoff_s / 2:.1f}s[/yellow]")


def _wait_healthy(url: str, supervisor: Supervisor, timeout_s: float, stopping: object) -> None:
    started = time.monotonic()
    body = None
    while time.monotonic() - started < timeout_s and not stopping():  # type: ignore[operator]
        _tick(supervisor)
        try:
            r = httpx.get(f"{url}/api/v1/health", timeout=3)
            body = r.json()
            if r.status_code == 200:
                render(body, console, url)
                console.print(f"[green]all services healthy in {time.monotonic() - started:.1f}s[/green]")
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    if body is not None:
        render(body, console, url)
    console.print("[yellow]not all services are healthy yet; still supervising (see the logs)[/yellow]")
