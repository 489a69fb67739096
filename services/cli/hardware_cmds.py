"""`modelfleet hardware` and `modelfleet fit`: the fleet's hosts, and what a model needs and where it fits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from contracts.fit import HostCapacity, fit_report
from contracts.gguf_header import GgufError, model_shape
from contracts.vram import GIB, EstimateSettings, recommend_settings
from services.cli.client import call, client, err, gateway_url
from services.runtime.gguf_io import read_file_header


def _gib(n: Any) -> str:
    return "-" if n is None else f"{n / GIB:.1f}"


def hardware(
    as_json: bool = typer.Option(False, "--json", help="Print the hosts as JSON."),
    host: str | None = typer.Option(None, "--host", help="Only this host, with its recent samples."),
) -> None:
    """Every host's latest sample: GPUs, memory, CPU, disk, Ollama; with recommended settings per host."""
    if host:
        body = call("GET", f"/api/v1/hosts/{host}", ok=(200,)).json()
        advice = call("GET", f"/api/v1/hosts/{host}/recommendations", ok=(200, 503))
        if advice.status_code == 200:  # needs the catalog; the host view does not
            body["recommendations"] = advice.json()
        hosts = [body]
    else:
        hosts = call("GET", "/api/v1/hosts").json()["hosts"]
    for h in hosts:
        s = h["sample"]
        h["recommended"] = recommend_settings(s["memory_total_bytes"], s.get("cpu_physical_cores") or 1).model_dump()
    if as_json:
        typer.echo(json.dumps(hosts[0] if host else {"hosts": hosts}, indent=2))
        return
    render_hosts(hosts)
    advice_doc = hosts[0].get("recommendations") if host else None
    if advice_doc:
        pick = advice_doc["model"]
        name = pick["model"]["name"] if pick.get("model") else "none"
        warning = f" [yellow]{pick['warning']}[/yellow]" if pick.get("warning") else ""
        where = f"{advice_doc['memory_source']} {_gib(advice_doc['memory_bytes'])} GiB ({pick['tier']})"
        console = Console()
        console.print(f"recommended for {where}: [bold]{name}[/bold]{warning}")
        for label, option in [("placed", advice_doc.get("placement"))] + [
            ("partial offload", o) for o in advice_doc.get("offload") or []
        ]:
            if option:
                console.print(f"  {label}: {_option_line(option)}")


def _option_line(option: dict[str, Any]) -> str:
    """`llama3.3-70b Q4_K_M: full on gpu0+gpu1, 81/81 layers, 43.1 GiB (gpu0 41L 21.5/22.5; ...)`."""
    f = option["fit"]
    split = _per_gpu(f.get("gpus", []))
    return (
        f"{option['model']['name']} {option['quant']}: {f['placement']} on {f['device']}, "
        f"{f['gpu_layers']}/{f['total_layers']} layers, {_gib(f['placed_bytes'] or f['needed_bytes'])} GiB"
        + (f" ({split})" if split else "")
        + f" [{option['method']}]"
    )


def render_hosts(hosts: list[dict[str, Any]], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"hosts at {gateway_url()}")
    for col in (
        "host",
        "age",
        "GPUs (free/total GiB)",
        "RAM avail/total GiB",
        "CPU",
        "disk free GiB",
        "Ollama",
        "profile",
    ):
        table.add_column(col)
    for h in hosts:
        s = h["sample"]
        gpus = (
            "; ".join(f"{g['name']} {_gib(g['memory_free_bytes'])}/{_gib(g['memory_total_bytes'])}" for g in s["gpus"])
            or f"none ({s.get('no_gpu_reason') or '?'})"
        )
        loaded = ", ".join(m["name"] for m in s.get("ollama_models", []))
        ollama = ("up" + (f": {loaded}" if loaded else "")) if s.get("ollama_reachable") else "down"
        age = f"{h['age_s']:.0f}s" + (" [red]stale[/red]" if h.get("stale") else "")
        cpu = f"{s.get('cpu_physical_cores') or '?'}c/{s['cpu_logical_cores']}t {s.get('cpu_load_percent') or 0:.0f}%"
        table.add_row(
            h["host_id"], age, gpus, f"{_gib(s['memory_available_bytes'])}/{_gib(s['memory_total_bytes'])}", cpu,
            _gib(s.get("disk_free_bytes")), ollama, h["recommended"]["profile"],
        )  # fmt: skip
    console.print(table)


def _fleet_report(path: Path, settings: EstimateSettings, host: str | None, free_gib: list[float]) -> dict[str, Any]:
    """A local GGUF: the header is read here; the gateway (when one answers) adds every host's fit."""
    try:
        header = read_file_header(path)
        shape = model_shape(header, path.stat().st_size)
    except GgufError as exc:
        err.print(f"[red]{path}: {exc}[/red]")
        raise typer.Exit(2) from exc
    if free_gib:
        given = [HostCapacity(host_id=host or "given", gpus_free=[int(f * GIB) for f in free_gib])]
        return fit_report(str(path), "gguf", settings, given, shape=shape, quant=shape.file_type).model_dump(
            mode="json"
        )
    body = {"model": str(path), "shape": shape.model_dump(), "settings": settings.model_dump(), "host": host}
    try:
        with client() as c:
            response = c.post("/api/v1/fit", json=body)
    except httpx.HTTPError:
        offline = fit_report(str(path), "gguf", settings, [], shape=shape, quant=shape.file_type)
        doc: dict[str, Any] = offline.model_dump(mode="json")
        doc["warnings"].append(f"no gateway at {gateway_url()}: no host fits computed (give --free-gib)")
        return doc
    if response.status_code != 200:
        err.print(f"[red]POST /api/v1/fit failed with {response.status_code}[/red]: {response.text}")
        raise typer.Exit(1)
    fleet: dict[str, Any] = response.json()
    return fleet


def fit(
    model: str = typer.Argument(..., help="A GGUF file path, a GGUF URL, or a catalog model name."),
    quant: str | None = typer.Option(None, "--quant", help="Quantization of a catalog model (default: every one)."),
    ctx: int = typer.Option(2048, "--ctx", min=1, help="Context length (num_ctx) of each slot."),
    parallel: int = typer.Option(1, "--parallel", min=1, help="Parallel slots (OLLAMA_NUM_PARALLEL)."),
    cache_type: str = typer.Option("f16", "--cache-type", help="KV cache type: f16, q8_0 or q4_0."),
    flash_attention: bool = typer.Option(False, "--flash-attention", help="Size the graph for flash attention."),
    host: str | None = typer.Option(None, "--host", help="Only this host."),
    size_bytes: int | None = typer.Option(None, "--size-bytes", min=0, help="Size the model from this file size."),
    free_gib: list[float] | None = typer.Option(
        None, "--free-gib", min=0, help="Fit against a GPU with this much free memory (repeat for several GPUs)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Weights, KV cache, compute and overhead of a model, and per host whether it fits."""
    try:
        settings = EstimateSettings(
            num_ctx=ctx, parallel=parallel, cache_type=cache_type, flash_attention=flash_attention
        )
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    path = Path(model).expanduser()
    if size_bytes is not None:
        params: dict[str, Any] = {"size_bytes": size_bytes}
    elif model.startswith(("http://", "https://")):
        params = {"gguf_url": model}
    elif path.exists() or model.endswith(".gguf"):
        doc = _fleet_report(path, settings, host, free_gib or [])
        return _print_fit(doc, as_json)
    else:
        params = {"model": model, **({"quant": quant} if quant else {})}
    params.update(num_ctx=ctx, parallel=parallel, cache_type=cache_type, **({"host": host} if host else {}))
    _print_fit(call("GET", "/api/v1/fit", params=params).json(), as_json)


#: What each sizing method means, as `modelfleet fit` prints it under the totals.
_METHODS = {
    "shape": "the catalog's architecture figures and the file size",
    "header": "the model's GGUF header",
    "file-size": "the file size alone: the simple form, which ignores most of the context",
}


def _print_fit(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    console = Console()
    console.print(
        f"[bold]{doc['model']}[/bold] {doc.get('quant') or ''} num_ctx={doc['num_ctx']} x{doc['parallel']} "
        f"({doc['cache_type']} cache): weights {_gib(doc['weights_bytes'])} GiB + KV {_gib(doc['kv_cache_bytes'])}"
        f" + compute {_gib(doc['compute_bytes'])} + overhead {_gib(doc['overhead_bytes'])} = "
        f"[bold]{_gib(doc['total_bytes'])} GiB[/bold] on GPU ({doc['gpu_layers']}/{doc['total_layers']} layers); "
        f"CPU only {_gib(doc['cpu_total_bytes'])} GiB"
    )
    method = doc.get("method") or ("file-size" if doc.get("simple") else "header")
    console.print(f"method: {method} ({_METHODS.get(method, '?')})")
    for w in doc.get("warnings", []):
        console.print(f"[yellow]{w}[/yellow]")
    if doc.get("hosts"):
        table = Table()
        for col in ("host", "device", "free GiB", "needs GiB", "fit", "placement", "layers", "per GPU", "best quant"):
            table.add_column(col)
        colour = {"perfect": "green", "tight": "yellow", "wont_fit": "red"}
        best = doc.get("best_quant", {})
        for h in doc["hosts"]:
            c = colour.get(h["fit"], "white")
            table.add_row(
                h["host_id"], h["device"], _gib(h["free_bytes"]), _gib(h["needed_bytes"]), f"[{c}]{h['fit']}[/{c}]",
                h["placement"], f"{h['gpu_layers']}/{h['total_layers']}", _per_gpu(h.get("gpus", [])),
                best.get(h["host_id"]) or "",
            )  # fmt: skip
        console.print(table)


def _per_gpu(gpus: list[dict[str, Any]]) -> str:
    """`gpu0 54L 23.1/30.0` for each GPU of a split: layers placed, GiB placed / free (blank for a single GPU)."""
    if len(gpus) < 2:
        return ""
    return "; ".join(f"gpu{g['index']} {g['layers']}L {_gib(g['bytes'])}/{_gib(g['free_bytes'])}" for g in gpus)
