"""The CLI's HTTP client for a running fleet's gateway: MODELFLEET_URL and MODELFLEET_TOKEN (else the admin token
in the environment, else the one `modelfleet up` keeps in the state dir: services/cli/admin_token.py)."""

from __future__ import annotations

import os
from typing import Any

import httpx
import typer
from rich.console import Console

from services.cli.admin_token import kept_admin_token

err = Console(stderr=True)


def gateway_url() -> str:
    return os.environ.get("MODELFLEET_URL", "http://127.0.0.1:8080").rstrip("/")


def token() -> str | None:
    return os.environ.get("MODELFLEET_TOKEN") or os.environ.get("MODELFLEET_ADMIN_TOKEN") or kept_admin_token()


def client(timeout_s: float = 30.0) -> httpx.Client:
    headers = {"Authorization": f"Bearer {t}"} if (t := token()) else {}
    return httpx.Client(base_url=gateway_url(), headers=headers, timeout=timeout_s)


def call(
    method: str, path: str, *, ok: tuple[int, ...] = (200,), timeout_s: float = 30.0, **kwargs: Any
) -> httpx.Response:
    """One request to the gateway; a connection failure or an unexpected status ends the command with its reason."""
    try:
        with client(timeout_s) as c:
            response = c.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        err.print(
            f"[red]cannot reach the gateway at {gateway_url()}[/red]: {exc} "
            "(is `modelfleet up` running? set MODELFLEET_URL)"
        )
        raise typer.Exit(2) from exc
    if response.status_code not in ok:
        try:
            detail: Any = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        err.print(f"[red]{method} {path} failed with {response.status_code}[/red]: {detail}")
        raise typer.Exit(1)
    return response
