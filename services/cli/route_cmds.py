"""`modelfleet route` and `modelfleet backends`: the router's decision and its view of the backends, via the gateway."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console

from services.cli.client import call, client, err
from services.cli.render import data_table


def route(
    role: str | None = typer.Option(None, "--role", help="A role of the active profile set (`coding`)."),
    model: str | None = typer.Option(None, "--model", help="A model reference instead of a role."),
    profile: str | None = typer.Option(None, "--profile", help="A profile id instead of a role."),
    user: str | None = typer.Option(None, "--user", help="Whose overrides apply (default: the token's user)."),
    prompt_tokens: int | None = typer.Option(None, "--prompt-tokens", help="Estimated prompt size."),
    performance_profile: str | None = typer.Option(
        None, "--performance-profile", "-P", help="A performance profile to apply (balanced, code_gen, ...)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the router's reply as JSON."),
) -> None:
    """Where a request would go now (backend, model name, options, fallback chain, reason); nothing is sent."""
    body = {"role": role, "model": model, "profile_id": profile, "user": user, "prompt_tokens": prompt_tokens,
            "performance_profile": performance_profile}  # fmt: skip
    reply = call("POST", "/api/v1/route", json={k: v for k, v in body.items() if v is not None}).json()
    if as_json:
        typer.echo(json.dumps(reply, indent=2))
        return
    out = Console()
    b, reason = reply["backend"], reply.get("reason") or {}
    out.print(f"{b['host_id']} {b['kind']} {b['base_url']}  model {reply['model_name']}", markup=False)
    out.print(f"reason: {reason.get('detail', '')}", markup=False)
    out.print(f"options: {json.dumps(reply['options'], sort_keys=True)}", markup=False)
    if reply.get("fallback_source"):
        out.print(f"fallback slot loads: {reply['fallback_source']}", markup=False)
    if reuse := reply.get("reuse"):
        out.print(f"reused by a gateway for up to {reuse['ms']} ms (prompts up to {reuse['max_prompt_tokens']} tokens)",
                  markup=False)  # fmt: skip
    rows = [(c["backend"]["host_id"], c["backend"]["base_url"], c["model_name"]) for c in reply["fallback_chain"]]
    if rows:
        out.print(data_table("fallback chain", ("host", "backend", "model"), rows, keep_whole=("backend", "model")))


def _row(b: dict[str, Any]) -> tuple[object, ...]:
    state = "healthy" if b["healthy"] else ("host silent" if not b["host_alive"] else b["circuit"])
    latency = "-" if b["latency_ewma_ms"] is None else f"{b['latency_ewma_ms']:.0f} ms"
    check = b["last_check_outcome"] or "-"
    return (b["host_id"], b["kind"], b["base_url"], state, b["circuit"], b["in_flight"], latency,
            b["recent_failures"], check, ", ".join(b["loaded"]) or "-", len(b["installed"]))  # fmt: skip


def backends(as_json: bool = typer.Option(False, "--json", help="Print the backends as JSON.")) -> None:
    """Every backend the router knows: state, circuit, in-flight, latency, failures, models; the roles' health."""
    reply = call("GET", "/api/v1/backends").json()
    if as_json:
        typer.echo(json.dumps(reply, indent=2))
        return
    out = Console()
    cols = ("host", "kind", "base URL", "state", "circuit", "in flight", "latency", "failures", "last check",
            "loaded", "installed")  # fmt: skip
    title = "backends" + (" (every view stale: routing fails open)" if reply["stale"] else "")
    out.print(data_table(title, cols, [_row(b) for b in reply["backends"]], keep_whole=("base URL",)))
    if reply["roles"]:
        roles = [(r["role"], r["state"], ", ".join(r["hosts"]) or "-") for r in reply["roles"]]
        out.print(data_table("roles", ("role", "state", "hosts"), roles, keep_whole=("role",)))
    slots = [
        (f["host_id"], s["key"], s["state"], s["path"], s["dtype"], f"{s['memory_bytes'] / 2**20:.0f} MiB",
         f"{s['in_flight']}/{s['concurrency']}", s["source"])
        for f in reply.get("fallbacks", []) for s in f["slots"]
    ]  # fmt: skip
    if reply.get("fallbacks"):
        slot_cols = ("host", "slot", "state", "path", "dtype", "memory", "in flight", "source")
        out.print(data_table("fallback slots", slot_cols, slots, keep_whole=("source",)))


def chat(
    prompt: str = typer.Argument(..., help="The user message."),
    role: str | None = typer.Option(None, "--role", help="A role (`coding`); or give --model."),
    model: str | None = typer.Option(None, "--model", help="A profile id or model name instead of a role."),
    as_json: bool = typer.Option(False, "--json", help="No streaming: print the final response object."),
) -> None:
    """Send one message through the gateway's /v1/chat/completions and stream the answer's tokens."""
    if not (role or model):
        raise typer.BadParameter("give --role or --model")
    body: dict[str, Any] = {
        "model": f"role:{role}" if role else model,
        "messages": [{"role": "user", "content": prompt}],
    }
    if as_json:
        typer.echo(json.dumps(call("POST", "/v1/chat/completions", json=body, timeout_s=600).json(), indent=2))
        return
    with client(600) as c, c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as reply:
        if reply.status_code != 200:
            reply.read()
            err.print(f"[red]chat failed with {reply.status_code}[/red]: {reply.text}", markup=True)
            raise typer.Exit(1)
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            doc = json.loads(line.removeprefix("data: "))
            if "error" in doc:  # the stream ended with an OpenAI-shaped error event
                err.print(f"[red]{doc['error'].get('message', doc['error'])}[/red]")
                raise typer.Exit(1)
            for choice in doc.get("choices", []):
                typer.echo((choice.get("delta") or {}).get("content") or "", nl=False)
    typer.echo()
