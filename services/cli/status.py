"""`modelfleet status`: the health of every service of a running fleet, asked through its gateway."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from services.cli.client import call, gateway_url


def status(as_json: bool = typer.Option(False, "--json", help="Print the gateway's JSON document.")) -> None:
    """Print the health of every service; exit 1 if any is down or silent."""
    body = call("GET", "/api/v1/health", ok=(200, 503)).json()
    if as_json:
        typer.echo(json.dumps(body, indent=2))
    else:
        render(body)
    raise typer.Exit(0 if body["status"] == "ok" else 1)


def render(body: dict[str, object], console: Console | None = None, url: str | None = None) -> None:
    console = console or Console()
    table = Table(title=f"modelfleet at {url or gateway_url()} — {body['status']}")
    for col in ("service", "status", "replicas", "nats", "database", "uptime", "detail"):
        table.add_column(col)
    services: dict[str, dict[str, object]] = body["services"]  # type: ignore[assignment]
    for name, svc in services.items():
        replicas: list[dict[str, object]] = svc["replicas"]  # type: ignore[assignment]
        first = replicas[0] if replicas else {}
        colour = "green" if svc["status"] == "up" else "red"
        uptime = f"{first.get('uptime_s', '-')}s" if first else "-"
        table.add_row(
            name, f"[{colour}]{svc['status']}[/{colour}]", str(len(replicas)), str(first.get("nats", "-")),
            str(first.get("database", "-")), uptime, str(first.get("detail", "")),
        )  # fmt: skip
    console.print(table)
