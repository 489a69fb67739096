"""`modelfleet models list --local`: the `local:` models the hosts' probes found, via the gateway."""

from __future__ import annotations

import json

import typer
from rich.console import Console

from services.cli.client import call
from services.cli.render import data_table


def _size(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 10**7 else f"{size / 1e6:.2f} MB"


def print_local(host: str | None, as_json: bool) -> None:
    """One row per file: host, reference, path, size, sha256 (its first 16 hex digits; `hashing…` until known; the
    whole digest with --json), architecture, quant, context, and a note (an error, or the file shadowing it)."""
    body = call("GET", "/api/v1/catalog/local-models", params={"host": host} if host else None).json()
    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    rows = []
    for m in body["models"]:
        f = m["file"]
        sha = f["sha256"][:16] if f["sha256"] else ("-" if f.get("error") else "hashing…")
        note = f["error"] or (f"shadowed by {f['shadowed_by']}" if f.get("shadowed_by") else "")
        rows.append((
            m["host_id"], f["ref"], f["path"], _size(f["size_bytes"]), sha, f.get("architecture") or "-",
            f.get("quant") or "-", f.get("context_length") or "-", note,
        ))  # fmt: skip
    columns = ("host", "ref", "path", "size", "sha256", "architecture", "quant", "context", "note")
    title = f"local models ({len(rows)} on {len(body['hosts'])} host(s) reporting)"
    Console().print(data_table(title, columns, rows, keep_whole=("host", "ref", "sha256")))
