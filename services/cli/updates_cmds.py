"""`modelfleet updates check|status`: the provisioner's update check through the gateway."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console

from services.cli.client import call
from services.cli.render import data_table

updates_app = typer.Typer(no_args_is_help=True, help="Newer upstream revisions of installed models.")
#: The gateway waits up to 600 s for a check; the CLI a little longer.
CHECK_TIMEOUT_S = 620.0


@updates_app.command("check")
def check(as_json: bool = typer.Option(False, "--json", help="Print the check's summary as JSON.")) -> None:
    """Run the update check now (or join the one running) and show what it found; needs the admin token."""
    summary = call("POST", "/api/v1/updates/check", timeout_s=CHECK_TIMEOUT_S).json()
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    show(summary)


@updates_app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="Print the status as one JSON document.")) -> None:
    """The last update check's summary and when the next one is due."""
    reply = call("GET", "/api/v1/updates").json()
    if as_json:
        typer.echo(json.dumps(reply, indent=2))
        return
    out = Console()
    due = reply["next_due_at"] or "never (the interval check is disabled)"
    running = " (a check is running)" if reply["running"] else ""
    out.print(f"interval {reply['interval_s']:g} s, next check due {due}{running}", markup=False)
    if reply["last"] is None:
        out.print("no update check has run yet")
        return
    show(reply["last"])


def short(revision: str | None) -> str:
    """A commit or `sha256:` digest shortened to 12 hex digits (enough to tell two apart)."""
    if not revision:
        return "-"
    kind, _, rest = revision.rpartition(":")
    return f"{kind}:{rest[:12]}" if kind else revision[:12]


def show(summary: dict[str, Any]) -> None:
    out = Console()
    skipped = " (skipped: SKIP_MODEL_DOWNLOADS is set)" if summary["skipped"] else ""
    out.print(
        f"checked at {summary['checked_at']}: {summary['checked']} model(s) compared, "
        f"{len(summary['found'])} update(s), {len(summary['errors'])} error(s){skipped}",
        markup=False,
    )
    if summary["found"]:
        rows = [
            (u["host"], u["model"], u["source"], short(u["installed_revision"]), short(u["remote_revision"]))
            for u in summary["found"]
        ]
        cols = ("host", "model", "source", "installed", "remote")
        out.print(data_table("updates available", cols, rows, keep_whole=("model", "installed", "remote")))
    for key, title in (("errors", "check failed"), ("not_checked", "not checked")):
        if summary[key]:
            problems = [(p["host"], p["model"], p["reason"]) for p in summary[key]]
            out.print(data_table(title, ("host", "model", "reason"), problems, keep_whole=("model",)))
