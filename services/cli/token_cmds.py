"""`modelfleet tokens issue|list|revoke`: user bearer tokens, via the gateway."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import typer
from rich.console import Console

from services.cli.client import call
from services.cli.render import data_table

tokens_app = typer.Typer(no_args_is_help=True, help="User tokens: issue (admin), list and revoke (admin or the user).")

JSON_OPT = typer.Option(False, "--json", help="Print JSON instead of a table.")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")


def parse_duration(text: str) -> int:
    """`30d`, `12h`, `90m`, `45s`, `2w`, or plain seconds; the result is whole seconds, above zero."""
    match = _DURATION.match(text.lower())
    if match is None:
        raise typer.BadParameter(
            f"{text!r}: expected a number with s, m, h, d or w (e.g. 30d)", param_hint="--expires-in"
        )
    seconds = int(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise typer.BadParameter(f"{text!r}: must be above zero", param_hint="--expires-in")
    return seconds


def parse_time(text: str) -> str:
    """An ISO 8601 time that says its offset (`Z` or `+02:00`): a bare local time would be ambiguous across hosts."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r}: expected an ISO 8601 time such as 2027-01-31T00:00:00Z") from exc
    if when.tzinfo is None:
        raise typer.BadParameter(f"{text!r}: give a UTC offset (Z or +HH:MM)", param_hint="--expires-at")
    return when.isoformat()


def _print_json(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2))


def _when(value: str | None) -> str:
    return value.replace("T", " ")[:16] + " UTC" if value else "-"


@tokens_app.command("issue")
def tokens_issue(
    user: str = typer.Argument(..., help="The user id (created on first issue)."),
    expires_in: str | None = typer.Option(
        None, "--expires-in", help="Lifetime: 30d, 12h, 90m, 3600 (s); default never."
    ),
    expires_at: str | None = typer.Option(
        None, "--expires-at", help="Expiry as an ISO 8601 time with a UTC offset, e.g. 2027-01-31T00:00:00Z."
    ),
    display_name: str = typer.Option("", "--display-name"),
    as_json: bool = JSON_OPT,
) -> None:
    """Mint a token for USER (admin token). The secret is printed once: keep it."""
    body: dict[str, Any] = {"display_name": display_name}
    if expires_in is not None and expires_at is not None:
        raise typer.BadParameter("give --expires-in or --expires-at, not both", param_hint="--expires-at")
    if expires_in is not None:
        body["expires_in_s"] = parse_duration(expires_in)
    if expires_at is not None:
        body["expires_at"] = parse_time(expires_at)
    reply = call("POST", f"/api/v1/users/{user}/tokens", json=body, ok=(201,)).json()
    if as_json:
        return _print_json(reply)
    typer.echo(reply["token"])
    Console(stderr=True).print(
        f"token {reply['token_id']} for {reply['user_id']}, expires {_when(reply.get('expires_at'))} "
        "(shown once: it cannot be listed again)",
        markup=False,
    )


@tokens_app.command("list")
def tokens_list(user: str = typer.Argument(..., help="The user id."), as_json: bool = JSON_OPT) -> None:
    """List USER's tokens: id, status, created, expiry, last use (admin token, or the user's own)."""
    reply = call("GET", f"/api/v1/users/{user}/tokens").json()
    if as_json:
        return _print_json(reply)
    rows = [
        (t["token_id"], t["status"], _when(t["created_at"]), _when(t.get("revoked_at") or t.get("expires_at")),
         _when(t.get("last_used_at")))
        for t in reply["tokens"]
    ]  # fmt: skip
    columns = ("id", "status", "created", "expires / revoked", "last used")
    title = f"tokens of {reply['user_id']} ({len(rows)})"
    Console().print(data_table(title, columns, rows, keep_whole=("id", "status")))


@tokens_app.command("revoke")
def tokens_revoke(
    user: str = typer.Argument(..., help="The user id."), token_id: str = typer.Argument(..., help="The token's id.")
) -> None:
    """Revoke one of USER's tokens at once (admin token, or the user's own)."""
    reply = call("DELETE", f"/api/v1/users/{user}/tokens/{token_id}").json()
    token = reply["token"]
    typer.echo(f"token {token['token_id']} of {token['user_id']} revoked at {_when(token['revoked_at'])}")
