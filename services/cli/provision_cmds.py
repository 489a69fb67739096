"""`modelfleet provision`, `provision audit`, `inventory list|sync|rm` and `import`: provisioning through the
gateway."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from services.cli.client import call, client, err, gateway_url

inventory_app = typer.Typer(no_args_is_help=True, help="The per-host inventory of installed models.")
_LIST_OPTIONS = {"--roles": "roles", "--hosts": "hosts", "--models": "models"}


def register(app: typer.Typer) -> None:
    app.command("provision", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(provision)
    app.command("import")(import_model)
    app.add_typer(inventory_app, name="inventory")


def parse_lists(args: list[str]) -> dict[str, list[str]]:
    """`--roles general coding --hosts a b` (several values after one flag, as the original tool takes them)."""
    out: dict[str, list[str]] = {v: [] for v in _LIST_OPTIONS.values()}
    current: str | None = None
    for arg in args:
        if arg.startswith("--"):
            name, _, value = arg.partition("=")
            if name not in _LIST_OPTIONS:
                raise typer.BadParameter(f"unknown option {name}; use --roles, --hosts, --models, --force, --json")
            current = _LIST_OPTIONS[name]
            if value:
                out[current] += [v for v in value.split(",") if v]
        elif current is None:
            raise typer.BadParameter(f"unexpected argument {arg!r}: give it after --roles, --hosts or --models")
        else:
            out[current] += [v for v in arg.split(",") if v]
    return out


def provision(
    ctx: typer.Context,
    force: bool = typer.Option(False, "--force", help="Bypass the per-role cache and re-verify."),
    as_json: bool = typer.Option(False, "--json", help="Print only the per-role actions, as one JSON document."),
    allow_unpinned: bool = typer.Option(False, "--allow-unpinned", help="Allow branch revisions in pinned imports."),
) -> None:
    """Ensure the roles' models are on the hosts: --roles general coding, --hosts h1 h2, --models qwen3:8b.

    `modelfleet provision audit [--request-id ID] [--host H] [--model M] [--since ISO] [--limit N] [--json]` lists
    the audit trail instead (newest first)."""
    if ctx.args and ctx.args[0] == "audit":
        extra = ["--json"] if as_json else []
        audit_command().main(list(ctx.args[1:]) + extra, prog_name="modelfleet provision audit")
        return
    lists = parse_lists(list(ctx.args))
    body = {**lists, "force": force, "allow_unpinned": allow_unpinned}
    raise typer.Exit(run(body, "/api/v1/models/provision", as_json, logging.getLogger("modelfleet.provision")))


def run(body: dict[str, Any], path: str, as_json: bool, log: logging.Logger) -> int:
    """Submit; with --json wait for the actions, else follow the SSE progress with bars. Exit 1 if any failed."""
    if as_json:
        result = call("POST", path, json={**body, "wait": True}, ok=(200,), timeout_s=3700).json()
    else:
        accepted = call("POST", path, json={**body, "wait": False}, ok=(202,)).json()
        result = follow(accepted)
    actions = result["actions"]
    log.info(
        "provision roles=%s actions=%s",
        body.get("roles") or "all",
        [(a["role"] or a["model"], a["target_host"], a["action"]) for a in actions],
    )
    if as_json:
        typer.echo(json.dumps({"request_id": result["request_id"], "actions": actions}, indent=2))
    else:
        render_actions(actions)
    return 1 if any(a["action"] == "failed" for a in actions) else 0


def follow(accepted: dict[str, Any], console: Console | None = None) -> dict[str, Any]:
    """Rich progress bars per host × model from the request's server-sent events, until `completed`."""
    console = console or Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())  # fmt: skip
    bars: dict[tuple[str, str], TaskID] = {}
    try:
        with (
            client(timeout_s=3700) as c,
            Progress(*columns, console=console, transient=False) as progress,
            c.stream("GET", accepted["progress_url"]) as response,
        ):
            if response.status_code != 200:
                err.print(f"[red]progress stream failed with {response.status_code}[/red]")
                raise typer.Exit(1)
            for kind, data in sse(response):
                if kind == "completed":
                    return {"request_id": data["request_id"], "actions": data["actions"]}
                key = (data.get("target_host", "*"), data.get("model", "*"))
                if kind != "progress" or key == ("*", "*"):
                    if kind in ("pulled", "failed") and key in bars:
                        progress.update(bars[key], description=f"{key[0]} × {key[1]} [{kind}]")
                    continue
                if key not in bars:
                    bars[key] = progress.add_task(f"{key[0]} × {key[1]}", total=data.get("total_bytes") or None)
                progress.update(bars[key], completed=data["completed_bytes"], total=data.get("total_bytes") or None)
    except httpx.HTTPError as exc:
        err.print(f"[red]lost the progress stream from {gateway_url()}[/red]: {exc}")
    result: dict[str, Any] = call("GET", accepted["result_url"]).json()
    return result


def sse(response: httpx.Response) -> Any:
    kind, data = "message", list[str]()
    for line in response.iter_lines():
        if not line:
            if data:
                yield kind, json.loads("\n".join(data))
            kind, data = "message", list[str]()
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def render_actions(actions: list[dict[str, Any]], console: Console | None = None) -> None:
    table = Table(title="provisioning")
    for col in ("role", "model", "host", "action", "detail"):
        table.add_column(col)
    colour = {"failed": "red", "skipped": "yellow", "present": "green", "pulled": "cyan", "imported": "cyan"}
    for a in actions:
        detail = a.get("reason") or a.get("ollama_name") or ""
        if a.get("sha256"):
            detail += f" sha256 {a['sha256'][:12]}"
        act = a["action"]
        table.add_row(a.get("role") or "-", a["model"], a["target_host"], f"[{colour[act]}]{act}[/]", detail.strip())
    (console or Console()).print(table)


def import_model(
    repo: str = typer.Argument(..., help="user/repo on the hub (HF_ENDPOINT on the provisioner)."),
    quant: str = typer.Option(..., "--quant", help="The quantization, e.g. Q4_K_M."),
    revision: str = typer.Option(..., "--revision", help="A commit sha or a tag (a branch needs --allow-unpinned)."),
    host: str | None = typer.Option(None, "--host", help="Only this host (default: every reachable host)."),
    allow_unpinned: bool = typer.Option(False, "--allow-unpinned"),
    force: bool = typer.Option(False, "--force", help="Re-verify and re-register even if present."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Import one GGUF from Hugging Face at a pinned revision, verified by sha256, into Ollama."""
    body = {
        "repo": repo,
        "quant": quant,
        "revision": revision,
        "host": host,
        "allow_unpinned": allow_unpinned,
        "force": force,
    }
    raise typer.Exit(run(body, "/api/v1/models/import", as_json, logging.getLogger("modelfleet.import")))


def audit_command() -> Any:
    """`provision audit` as a click command of its own (`provision` takes free-form --roles/--hosts lists)."""
    one = typer.Typer(add_completion=False)
    one.command()(provision_audit)
    return typer.main.get_command(one)


def provision_audit(
    request_id: str | None = typer.Option(None, "--request-id", help="One provision request's rows."),
    host: str | None = typer.Option(None, "--host"),
    model: str | None = typer.Option(None, "--model"),
    since: str | None = typer.Option(None, "--since", help="ISO 8601 instant with offset, e.g. 2026-01-01T00:00:00Z."),
    limit: int = typer.Option(100, "--limit", min=1, max=1000, help="At most this many rows (1-1000)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The provisioner's audit trail, newest first: who pulled, imported, adopted or deleted what, where, when."""
    params = {"request_id": request_id, "host": host, "model": model, "since": since, "limit": limit}
    entries = call("GET", "/api/v1/provision/audit", params={k: v for k, v in params.items() if v is not None})
    rows = entries.json()["entries"]
    if as_json:
        typer.echo(json.dumps({"entries": rows}, indent=2))
        return
    table = Table(title="provisioning audit (newest first)")
    for col in ("at", "actor", "action", "host", "model", "result", "revision", "sha256", "request", "detail"):
        table.add_column(col)
    for e in rows:
        table.add_row(e["at"][:19], e["actor"], e["action"], e["host"], e["model"], e["result"],
                      (e.get("revision") or "-")[:12], (e.get("sha256") or "-")[:12],
                      (e.get("request_id") or "-")[:8], e.get("detail") or "")  # fmt: skip
    Console().print(table)


@inventory_app.command("list")
def inventory_list(
    host: str | None = typer.Option(None, "--host"), as_json: bool = typer.Option(False, "--json")
) -> None:
    """Installed models per host."""
    entries = call("GET", "/api/v1/inventory", params={"host": host} if host else None).json()["entries"]
    if as_json:
        typer.echo(json.dumps({"entries": entries}, indent=2))
        return
    table = Table(title="inventory")
    for col in ("host", "model", "source", "quant", "size GiB", "sha256", "revision", "installed", "last used"):
        table.add_column(col)
    for e in entries:
        size = f"{e['size_bytes'] / 2**30:.2f}" if e.get("size_bytes") is not None else "-"
        sha, rev = (e.get("sha256") or "-")[:12], (e.get("revision") or "-")[:12]
        used = (e.get("last_used") or "-")[:19]
        table.add_row(e["host"], e["model_id"], e["source"], e.get("quantization") or "-", size, sha, rev,
                      e["installed_at"][:19], used)  # fmt: skip
    Console().print(table)


@inventory_app.command("sync")
def inventory_sync(
    host: str | None = typer.Option(None, "--host"), as_json: bool = typer.Option(False, "--json")
) -> None:
    """Adopt what hosts already have (Ollama's list, .gguf/.bin files in the models directory)."""
    reply = call("POST", "/api/v1/inventory/sync", params={"host": host} if host else None, timeout_s=150).json()
    if as_json:
        typer.echo(json.dumps(reply, indent=2))
        return
    Console().print(f"adopted {len(reply['adopted'])} model(s) on {', '.join(reply['hosts']) or 'no host'}")
    for e in reply["adopted"]:
        Console().print(f"  {e['host']}  {e['model_id']}  ({e['source']})")
    for problem in reply["errors"]:
        err.print(f"[yellow]{problem}[/yellow]")


@inventory_app.command("rm")
def inventory_rm(
    host: str = typer.Argument(...), model: str = typer.Argument(...),
    inventory_only: bool = typer.Option(False, "--inventory-only", help="Forget it; leave it on the host."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:  # fmt: skip
    """Delete a model from a host and the inventory (or from the inventory only)."""
    reply = call(
        "DELETE",
        f"/api/v1/inventory/{host}/{model}",
        params={"inventory_only": str(inventory_only).lower()},
        timeout_s=70,
    ).json()
    if as_json:
        typer.echo(json.dumps(reply, indent=2))
        return
    where = [
        w for w, ok in (("host", reply["removed_from_host"]), ("inventory", reply["removed_from_inventory"])) if ok
    ]
    Console().print(f"removed {model} from {' and '.join(where)} of {host}")
