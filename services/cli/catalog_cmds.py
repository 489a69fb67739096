"""`modelfleet models|profiles|catalog`: the model library, profiles and manifest import/export, via the gateway."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from services.cli.client import call
from services.cli.local_models_cmds import print_local
from services.cli.render import data_table

models_app = typer.Typer(no_args_is_help=True, help="The model library and the default model.")
profiles_app = typer.Typer(no_args_is_help=True, help="Profiles: system defaults and your own.")
catalog_app = typer.Typer(no_args_is_help=True, help="Import and export manifests (JSON, TOML presets, models.txt).")

JSON_OPT = typer.Option(False, "--json", help="Print JSON instead of a table.")


def _print_json(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2))


def _gb(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e9:.1f} GB"


def _params(pairs: list[str]) -> dict[str, Any]:
    """`--param temperature=0.2 --param stop='["</s>"]'`: values are JSON where they parse, else text."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{pair!r}: expected NAME=VALUE", param_hint="--param")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


# --- models ----------------------------------------------------------------------------------------------------------


@models_app.command("list")
def models_list(
    capability: str | None = typer.Option(None, help="chat, code, embedding, vision, image_generation, reranking"),
    category: str | None = typer.Option(None, help="balanced, creative, technical, advanced"),
    tag: str | None = None,
    max_size_gb: float | None = typer.Option(None, help="Smallest download at most this size."),
    local: bool = typer.Option(False, "--local", help="The hosts' local .gguf/.bin files (MODELFLEET_MODEL_DIRS)."),
    host: str | None = typer.Option(None, help="With --local: only this host."),
    as_json: bool = JSON_OPT,
) -> None:
    """List the model library, filtered; with --local, the `local:` models the hosts' probes found."""
    if local:
        return print_local(host, as_json)
    if host is not None:
        raise typer.BadParameter("--host lists one host's local models: give it with --local", param_hint="--host")
    query = {"capability": capability, "category": category, "tag": tag, "max_size_gb": max_size_gb}
    body = call("GET", "/api/v1/catalog/models", params={k: v for k, v in query.items() if v is not None}).json()
    if as_json:
        return _print_json(body)
    rows = []
    for m in body["models"]:
        params = f"{m['parameter_count'] / 1e9:.1f}B" if m.get("parameter_count") else "-"
        sizes = [q["size_bytes"] for q in m["quantizations"]]
        rows.append((
            m["id"], m["display_name"], m["family"], params, m.get("context_window") or "-",
            ", ".join(m["capabilities"]), m["category"], _gb(min(sizes) if sizes else None),
        ))  # fmt: skip
    columns = ("id", "name", "family", "params", "context", "capabilities", "category", "smallest")
    Console().print(data_table(f"model library ({len(rows)})", columns, rows))


@models_app.command("info")
def models_info(
    name: str = typer.Argument(..., help="Model id, Ollama name or HF repo."), as_json: bool = JSON_OPT
) -> None:
    """Show one model: sources, quantizations, ratings."""
    m = call("GET", f"/api/v1/catalog/models/{name}").json()
    if as_json:
        return _print_json(m)
    console = Console()
    console.print(
        f"[bold]{escape(m['display_name'])}[/bold] ({escape(m['id'])}) — {m['family']}, {m['category']}, "
        f"provider {m['provider']}"
    )
    console.print(escape(m["recommended_use"]))
    sources = {k: v for k, v in m["sources"].items() if v}
    console.print(escape("sources: " + ", ".join(f"{k}={v}" for k, v in sources.items())))
    if m["ratings"]:
        console.print("ratings: " + ", ".join(f"{k} {v}/10" for k, v in m["ratings"].items()))
    rows = [(q["name"], q["file"], _gb(q["size_bytes"]), q.get("sha256") or "-") for q in m["quantizations"]]
    console.print(data_table("quantizations", ("name", "file", "size", "sha256"), rows, keep_whole=("sha256",)))


def _source(source: dict[str, Any] | None) -> str:
    if not source:
        return "-"
    layer = {"global": "settings", "performance_profile": "performance profile"}.get(source["layer"], source["layer"])
    return f"{layer} {source['name']}" if source.get("name") else layer


@models_app.command("resolve")
def models_resolve(
    role: str | None = typer.Option(None, "--role", help="A role of the active profile set (coding, general, ...)."),
    model: str | None = typer.Option(None, "--model", help="A model id or reference instead of a role."),
    profile_id: str | None = typer.Option(None, "--profile-id", help="A profile id instead of a role."),
    performance_profile: str | None = typer.Option(
        None, "--performance-profile", "-P", help="A performance profile to apply (balanced, code_gen, ...)."
    ),
    user: str | None = typer.Option(None, "--user", help="Resolve as this user (admin token)."),
    as_json: bool = JSON_OPT,
) -> None:
    """What a request would get: model, provider, merged parameters and where each came from."""
    query = {
        "role": role, "model": model, "profile_id": profile_id, "performance_profile": performance_profile,
        "user_id": user,
    }  # fmt: skip
    given = [k for k in ("role", "model", "profile_id") if query[k] is not None]
    if len(given) != 1:
        raise typer.BadParameter("give exactly one of --role, --model, --profile-id", param_hint="--role")
    body = call("GET", "/api/v1/catalog/resolve", params={k: v for k, v in query.items() if v is not None}).json()
    if as_json:
        return _print_json(body)
    console = Console()
    extra = f", performance profile {body['performance_profile']}" if body.get("performance_profile") else ""
    profile = f", profile {body['profile_id']}" if body.get("profile_id") else ""
    console.print(escape(f"{body['model_ref']} (provider {body['provider']}{profile}{extra})"))
    sources = body.get("parameter_sources", {})
    rows = [(k, json.dumps(v), _source(sources.get(k))) for k, v in sorted(body["parameters"].items())]
    console.print(data_table("parameters", ("parameter", "value", "from"), rows))
    if body.get("fallback_chain"):
        console.print(escape("fallbacks: " + ", ".join(body["fallback_chain"])))
    if body.get("system_prompt"):
        console.print(escape(f"system prompt: {body['system_prompt']}"))


@models_app.command("edit")
def models_edit(
    name: str = typer.Argument(..., help="Model id, Ollama name or HF repo."),
    set_: list[str] = typer.Option(
        [], "--set", "-s", help="FIELD=VALUE (repeatable); VALUE is JSON where it parses, objects merge, null resets."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Edit fields of a library model (admin token); validated as an import is, and kept over library updates."""
    changes: dict[str, Any] = {}
    for pair in set_:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{pair!r}: expected FIELD=VALUE", param_hint="--set")
        try:
            changes[key.strip()] = json.loads(raw)
        except ValueError:
            changes[key.strip()] = raw
    if not changes:
        raise typer.BadParameter("give at least one --set FIELD=VALUE", param_hint="--set")
    m = call("PATCH", f"/api/v1/catalog/models/{name}", json=changes).json()
    if as_json:
        return _print_json(m)
    typer.echo(f"edited {m['id']}: {', '.join(sorted(changes))} (locally edited: {', '.join(m['edited_fields'])})")


@models_app.command("set-default")
def models_set_default(name: str, as_json: bool = JSON_OPT) -> None:
    """Set the default model (admin token)."""
    body = call("POST", "/api/v1/models/default", json={"model": name}).json()
    if as_json:
        return _print_json(body)
    typer.echo(f"default model: {body['default_model']} ({body['model_ref']})")


# --- profiles --------------------------------------------------------------------------------------------------------


def _profile_table(profiles: list[dict[str, Any]], title: str) -> Table:
    rows = [
        (
            p["id"],
            p["name"],
            p["type_name"],
            p["owner_id"] or "system",
            p["model_name"],
            p["parameters"].get("temperature", "-"),
            p["parameters"].get("num_ctx", "-"),
        )
        for p in profiles
    ]
    return data_table(title, ("id", "name", "type", "owner", "model", "temperature", "num_ctx"), rows)


@profiles_app.command("list")
def profiles_list(
    type_: str | None = typer.Option(None, "--type", help="Profile type, by name or number."),
    owner: str | None = typer.Option(None, help="An owner's id, or 'system'."),
    as_json: bool = JSON_OPT,
) -> None:
    """List the profiles you can read."""
    query = {k: v for k, v in {"type": type_, "owner_id": owner}.items() if v is not None}
    body = call("GET", "/api/v1/profiles", params=query).json()
    if as_json:
        return _print_json(body)
    Console().print(_profile_table(body["profiles"], f"profiles ({len(body['profiles'])})"))


@profiles_app.command("show")
def profiles_show(profile_id: str, as_json: bool = JSON_OPT) -> None:
    """Show one profile: parameters and system prompt."""
    p = call("GET", f"/api/v1/profiles/{profile_id}").json()
    if as_json:
        return _print_json(p)
    console = Console()
    console.print(_profile_table([p], p["name"]))
    console.print(escape("parameters: " + json.dumps(p["parameters"])))
    console.print(escape(f"system prompt: {p['system_prompt'] or '(none)'}"))


def _profile_body(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


PARAM_OPT = typer.Option([], "--param", "-p", help="NAME=VALUE generation parameter (repeatable).")


@profiles_app.command("create")
def profiles_create(
    name: str = typer.Option(...),
    type_: str = typer.Option(..., "--type", help="Profile type, by name or number (primary, engineering, 18)."),
    model: str = typer.Option(..., help="Model id or reference."),
    param: list[str] = PARAM_OPT,
    system_prompt: str | None = None,
    description: str | None = None,
    as_json: bool = JSON_OPT,
) -> None:
    """Create a profile (yours; a system one with the admin token)."""
    body = _profile_body(
        name=name, type=type_, model_name=model, parameters=_params(param), system_prompt=system_prompt,
        description=description,
    )  # fmt: skip
    p = call("POST", "/api/v1/profiles", json=body, ok=(201,)).json()
    if as_json:
        return _print_json(p)
    typer.echo(f"created profile {p['id']} ({p['name']})")


@profiles_app.command("update")
def profiles_update(
    profile_id: str,
    name: str | None = None,
    type_: str | None = typer.Option(None, "--type", help="Profile type, by name or number (not a system default's)."),
    model: str | None = None,
    param: list[str] = PARAM_OPT,
    system_prompt: str | None = None,
    description: str | None = None,
    as_json: bool = JSON_OPT,
) -> None:
    """Update a profile (the checks of a create apply); `--param` values merge over its current parameters."""
    params = None
    if param:
        current = call("GET", f"/api/v1/profiles/{profile_id}").json()["parameters"]
        params = {**current, **_params(param)}
    body = _profile_body(
        name=name, type=type_, model_name=model, parameters=params, system_prompt=system_prompt,
        description=description,
    )  # fmt: skip
    p = call("PUT", f"/api/v1/profiles/{profile_id}", json=body).json()
    if as_json:
        return _print_json(p)
    typer.echo(f"updated profile {p['id']} ({p['name']})")


@profiles_app.command("delete")
def profiles_delete(profile_id: str, as_json: bool = JSON_OPT) -> None:
    """Delete one of your profiles (system defaults cannot be deleted)."""
    body = call("DELETE", f"/api/v1/profiles/{profile_id}").json()
    if as_json:
        return _print_json(body)
    typer.echo(f"deleted profile {body['profile_id']}")


# --- catalog import / export -----------------------------------------------------------------------------------------


@catalog_app.command("import")
def catalog_import(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True),
    format_: str | None = typer.Option(None, "--format", help="json, toml or models.txt (default: from the name)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Import a manifest in one transaction (admin token); a bad file changes nothing."""
    params = {"filename": file.name, **({"format": format_} if format_ else {})}
    body = call("POST", "/api/v1/catalog/import", params=params, content=file.read_bytes(), timeout_s=120).json()
    if as_json:
        return _print_json(body)
    console = Console()
    console.print(
        f"imported {file.name} ({body['format']}): {len(body['profile_sets'])} profile sets, "
        f"{len(body['models'])} models, {len(body['performance_profiles'])} performance profiles"
    )
    for warning in body["warnings"]:
        console.print(f"[yellow]warning[/yellow]: {escape(warning)}")


@catalog_app.command("export")
def catalog_export(
    format_: str = typer.Option("json", "--format", help="json, toml or models.txt"),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
) -> None:
    """Export the catalog in one of the manifest formats (admin token)."""
    text = call("GET", "/api/v1/catalog/export", params={"format": format_}).text
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        typer.echo(f"wrote {output}")
