"""Write the Grafana dashboards under observability/grafana/dashboards/modelfleet/ from the panels below.

    python -m scripts.gen_dashboards           # (re)write the JSON files
    python -m scripts.gen_dashboards --check   # exit 1 when a file differs from what this script writes

Each panel is a PromQL expression over the series docs/observability.md lists; tests/e2e/test_dashboards_live.py
checks that every metric the expressions (and observability/alerts.yml) name is exposed by a running fleet.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "observability" / "grafana" / "dashboards" / "modelfleet"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
#: The schema version Grafana 12 writes; older dashboards are migrated on load, newer ones are not read.
SCHEMA_VERSION = 41


@dataclass
class Panel:
    title: str
    exprs: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat | bargauge
    description: str = ""
    width: int = 12
    height: int = 8
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    title: str
    panels: list[Panel]


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    rows: list[Row]
    variables: list[tuple[str, str]] = field(default_factory=list)  # (name, label_values query)


# Series a gateway reports for /v1/ carry `modelfleet_role`; the fallback's gen_ai series carry `modelfleet_slot`.
GW = 'modelfleet_role=~"$role"'

FLEET = Dashboard(
    uid="modelfleet-fleet",
    title="modelfleet / Fleet overview",
    description="Hosts, their GPUs and memory, the models Ollama holds, and each role's health as the router sees it.",
    variables=[("host", "label_values(modelfleet_probe_gpus, host_id)")],
    rows=[
        Row(
            "Hosts",
            [
                Panel(
                    "Hosts reporting",
                    [("count(max by (host_id) (modelfleet_probe_gpus))", "hosts")],
                    kind="stat",
                    width=4,
                    height=4,
                    description="Probes whose samples Prometheus has now (a silent host drops out).",
                ),
                Panel(
                    "GPUs", [("sum(max by (host_id) (modelfleet_probe_gpus))", "GPUs")], kind="stat", width=4, height=4
                ),
                Panel(
                    "Ollama up",
                    [('min(modelfleet_probe_ollama_up{host_id=~"$host"})', "all up")],
                    kind="stat",
                    width=4,
                    height=4,
                    description="1 when every selected host's Ollama answered its last sample.",
                ),
                Panel(
                    "Fleet GPU memory in use",
                    [("sum(hw_gpu_memory_usage_bytes) / sum(hw_gpu_memory_limit_bytes)", "in use")],
                    unit="percentunit",
                    kind="stat",
                    width=4,
                    height=4,
                ),
                Panel(
                    "Models loaded in Ollama",
                    [("sum(modelfleet_probe_ollama_models_loaded)", "loaded")],
                    kind="stat",
                    width=4,
                    height=4,
                ),
                Panel(
                    "Degraded roles",
                    [("count(max by (modelfleet_role) (modelfleet_router_role_degraded) == 1)", "degraded")],
                    kind="stat",
                    width=4,
                    height=4,
                    extra={"noValue": "0"},
                ),
            ],
        ),
        Row(
            "GPU memory",
            [
                Panel(
                    "GPU memory in use per device",
                    [
                        (
                            'hw_gpu_memory_usage_bytes{host_id=~"$host"} / hw_gpu_memory_limit_bytes{host_id=~"$host"}',
                            "{{host_id}} GPU {{modelfleet_gpu_index}} ({{hw_name}})",
                        )
                    ],
                    unit="percentunit",
                    kind="bargauge",
                    extra={"max": 1},
                ),
                Panel(
                    "GPU memory free",
                    [
                        (
                            'hw_gpu_memory_limit_bytes{host_id=~"$host"} - hw_gpu_memory_usage_bytes{host_id=~"$host"}',
                            "{{host_id}} GPU {{modelfleet_gpu_index}}",
                        )
                    ],
                    unit="bytes",
                ),
                Panel(
                    "GPU utilisation",
                    [('hw_gpu_utilization{host_id=~"$host"}', "{{host_id}} GPU {{modelfleet_gpu_index}}")],
                    unit="percentunit",
                ),
                Panel(
                    "GPU temperature",
                    [('hw_temperature_celsius{host_id=~"$host"}', "{{host_id}} GPU {{modelfleet_gpu_index}}")],
                    unit="celsius",
                ),
            ],
        ),
        Row(
            "Hosts: RAM, CPU, disk, Ollama",
            [
                Panel(
                    "RAM in use",
                    [
                        (
                            'system_memory_usage_bytes{host_id=~"$host", system_memory_state="used"}'
                            ' / ignoring(system_memory_state) system_memory_limit_bytes{host_id=~"$host"}',
                            "{{host_id}}",
                        )
                    ],
                    unit="percentunit",
                ),
                Panel("CPU busy", [('system_cpu_utilization{host_id=~"$host"}', "{{host_id}}")], unit="percentunit"),
                Panel(
                    "Free under the models directory",
                    [
                        (
                            'system_filesystem_usage_bytes{host_id=~"$host", system_filesystem_state="free"}',
                            "{{host_id}} {{modelfleet_models_dir}}",
                        )
                    ],
                    unit="bytes",
                ),
                Panel(
                    "Memory of the models Ollama holds",
                    [
                        (
                            'modelfleet_probe_ollama_model_size_bytes{host_id=~"$host"}',
                            "{{host_id}} {{modelfleet_ollama_model}}",
                        ),
                        (
                            'modelfleet_probe_ollama_model_vram_bytes{host_id=~"$host"}',
                            "{{host_id}} {{modelfleet_ollama_model}} (GPU part)",
                        ),
                    ],
                    unit="bytes",
                ),
            ],
        ),
        Row(
            "Roles and backends",
            [
                Panel(
                    "Roles by state",
                    [("max by (modelfleet_role_state) (modelfleet_router_roles)", "{{modelfleet_role_state}}")],
                    description="The active profile set's roles: healthy, degraded (its backends are down: the "
                    "fallback answers), unserved (no backend and no fallback).",
                ),
                Panel(
                    "Degraded roles",
                    [("max by (modelfleet_role) (modelfleet_router_role_degraded)", "{{modelfleet_role}}")],
                    extra={"max": 1},
                ),
                Panel(
                    "Backends by circuit state",
                    [
                        (
                            "max by (modelfleet_backend_kind, modelfleet_circuit_state) (modelfleet_router_backends)",
                            "{{modelfleet_backend_kind}} {{modelfleet_circuit_state}}",
                        )
                    ],
                ),
                Panel(
                    "Circuit transitions per minute",
                    [
                        (
                            "sum by (modelfleet_circuit_from, modelfleet_circuit_to) "
                            "(rate(modelfleet_router_circuit_transitions_total[5m])) * 60",
                            "{{modelfleet_circuit_from}} → {{modelfleet_circuit_to}}",
                        )
                    ],
                ),
            ],
        ),
    ],
)

REQUESTS = Dashboard(
    uid="modelfleet-requests",
    title="modelfleet / Request path",
    description="The OpenAI-compatible data plane: rate, latency, time to first token and tokens per second per role "
    "and backend, the gateway's own overhead, routing decisions and the fallback's slots.",
    variables=[("role", "label_values(gen_ai_server_request_duration_seconds_count, modelfleet_role)")],
    rows=[
        Row(
            "Traffic",
            [
                Panel(
                    "Requests per second by role and status",
                    [
                        (
                            f"sum by (modelfleet_role, http_response_status_code) "
                            f"(rate(gen_ai_server_request_duration_seconds_count{{{GW}}}[5m]))",
                            "{{modelfleet_role}} {{http_response_status_code}}",
                        )
                    ],
                    unit="reqps",
                ),
                Panel(
                    "Request latency p50 / p95 by role",
                    [
                        (
                            f"histogram_quantile(0.5, sum by (le, modelfleet_role) "
                            f"(rate(gen_ai_server_request_duration_seconds_bucket{{{GW}}}[5m])))",
                            "p50 {{modelfleet_role}}",
                        ),
                        (
                            f"histogram_quantile(0.95, sum by (le, modelfleet_role) "
                            f"(rate(gen_ai_server_request_duration_seconds_bucket{{{GW}}}[5m])))",
                            "p95 {{modelfleet_role}}",
                        ),
                    ],
                    unit="s",
                ),
                Panel(
                    "Time to first token p95 by role",
                    [
                        (
                            f"histogram_quantile(0.95, sum by (le, modelfleet_role) "
                            f"(rate(gen_ai_server_time_to_first_token_seconds_bucket{{{GW}}}[5m])))",
                            "{{modelfleet_role}}",
                        )
                    ],
                    unit="s",
                ),
                Panel(
                    "Output tokens per second, median, by role and backend kind",
                    [
                        (
                            f"histogram_quantile(0.5, sum by (le, modelfleet_role, gen_ai_provider_name) "
                            f"(rate(modelfleet_gateway_output_tokens_per_second_bucket{{{GW}}}[5m])))",
                            "{{modelfleet_role}} {{gen_ai_provider_name}}",
                        )
                    ],
                ),
                Panel(
                    "Tokens per second in and out",
                    [
                        (
                            f"sum by (gen_ai_token_type) (rate(gen_ai_client_token_usage_sum{{{GW}}}[5m]))",
                            "{{gen_ai_token_type}}",
                        )
                    ],
                ),
                Panel(
                    "Gateway overhead p50 / p99",
                    [
                        (
                            f"histogram_quantile(0.5, sum by (le) "
                            f"(rate(modelfleet_gateway_overhead_seconds_bucket{{{GW}}}[5m])))",
                            "p50",
                        ),
                        (
                            f"histogram_quantile(0.99, sum by (le) "
                            f"(rate(modelfleet_gateway_overhead_seconds_bucket{{{GW}}}[5m])))",
                            "p99",
                        ),
                    ],
                    unit="s",
                    description="Time up to the first byte not spent waiting on backends.",
                ),
            ],
        ),
        Row(
            "Routing",
            [
                Panel(
                    "Answered by backend and route reason",
                    [
                        (
                            f"sum by (modelfleet_backend_host, modelfleet_backend_kind, modelfleet_route_reason) "
                            f"(rate(modelfleet_gateway_backend_selections_total{{{GW}}}[5m]))",
                            "{{modelfleet_backend_host}} {{modelfleet_backend_kind}} {{modelfleet_route_reason}}",
                        )
                    ],
                    unit="reqps",
                ),
                Panel(
                    "Router decisions by outcome",
                    [
                        (
                            "sum by (modelfleet_route_outcome, modelfleet_route_tier) "
                            "(rate(modelfleet_router_decisions_total[5m]))",
                            "{{modelfleet_route_outcome}} {{modelfleet_route_tier}}",
                        )
                    ],
                    unit="reqps",
                ),
                Panel(
                    "HTTP requests by route and status",
                    [
                        (
                            "sum by (http_route, http_response_status_code) "
                            "(rate(http_server_request_duration_seconds_count[5m]))",
                            "{{http_route}} {{http_response_status_code}}",
                        )
                    ],
                    unit="reqps",
                ),
            ],
        ),
        Row(
            "Inference fallback",
            [
                Panel(
                    "Slots",
                    [("sum by (modelfleet_slot_state) (modelfleet_fallback_slots)", "{{modelfleet_slot_state}}")],
                ),
                Panel(
                    "Slot memory against the budget",
                    [
                        ("sum(modelfleet_fallback_slot_memory_bytes)", "slots"),
                        ("max(modelfleet_fallback_memory_budget_bytes)", "budget"),
                    ],
                    unit="bytes",
                ),
                Panel(
                    "Fallback output tokens per second, median, per slot",
                    [
                        (
                            "histogram_quantile(0.5, sum by (le, modelfleet_slot) "
                            "(rate(modelfleet_fallback_output_tokens_per_second_bucket[5m])))",
                            "{{modelfleet_slot}}",
                        )
                    ],
                ),
                Panel(
                    "Slot evictions per hour by reason",
                    [
                        (
                            "sum by (modelfleet_eviction_reason) (increase(modelfleet_fallback_evictions_total[1h]))",
                            "{{modelfleet_eviction_reason}}",
                        )
                    ],
                ),
            ],
        ),
    ],
)

PROVISIONING = Dashboard(
    uid="modelfleet-provisioning",
    title="modelfleet / Provisioning",
    description="Pulls and imports, bytes and time, the provisioners' queues, and the bus underneath: dead letters, "
    "the outbox and consumer backlogs.",
    rows=[
        Row(
            "Pulls and imports",
            [
                Panel(
                    "Operations per hour by kind and result",
                    [
                        (
                            "sum by (modelfleet_provision_kind, modelfleet_provision_result) "
                            "(increase(modelfleet_provisioner_operations_total[1h]))",
                            "{{modelfleet_provision_kind}} {{modelfleet_provision_result}}",
                        )
                    ],
                ),
                Panel(
                    "Download rate by source",
                    [
                        (
                            "sum by (modelfleet_transfer_source) "
                            "(rate(modelfleet_provisioner_downloaded_bytes_total[5m]))",
                            "{{modelfleet_transfer_source}}",
                        )
                    ],
                    unit="Bps",
                ),
                Panel(
                    "Operation time p90 by kind",
                    [
                        (
                            "histogram_quantile(0.9, sum by (le, modelfleet_provision_kind) "
                            "(rate(modelfleet_provisioner_operation_duration_seconds_bucket[1h])))",
                            "{{modelfleet_provision_kind}}",
                        )
                    ],
                    unit="s",
                ),
                Panel(
                    "Requests queued and running",
                    [
                        (
                            "sum by (modelfleet_request_state) (modelfleet_provisioner_queue_depth)",
                            "{{modelfleet_request_state}}",
                        )
                    ],
                ),
                Panel(
                    "Downloads in flight",
                    [
                        (
                            "sum by (modelfleet_transfer_kind) (modelfleet_provisioner_transfers_active)",
                            "{{modelfleet_transfer_kind}}",
                        )
                    ],
                ),
            ],
        ),
        Row(
            "The bus",
            [
                Panel(
                    "Dead letters in the last 10 minutes by subject",
                    [
                        (
                            "sum by (messaging_destination_name) (increase(modelfleet_dead_letters_total[10m]))",
                            "{{messaging_destination_name}}",
                        )
                    ],
                ),
                Panel(
                    "Stream deliveries failed per minute by consumer",
                    [
                        (
                            "sum by (messaging_consumer_group_name) (rate(modelfleet_messages_failed_total[5m])) * 60",
                            "{{messaging_consumer_group_name}}",
                        )
                    ],
                ),
                Panel(
                    "Consumer backlog",
                    [
                        (
                            "max by (messaging_consumer_group_name) (modelfleet_consumer_pending)",
                            "{{messaging_consumer_group_name}}",
                        )
                    ],
                ),
                Panel(
                    "Outbox lag",
                    [("max by (db_namespace) (modelfleet_outbox_lag_seconds)", "{{db_namespace}}")],
                    unit="s",
                ),
                Panel(
                    "Bus requests answered with an error, per minute",
                    [
                        (
                            "sum by (rpc_subject, rpc_response_status_code) "
                            "(rate(modelfleet_rpc_failures_total[5m])) * 60",
                            "{{rpc_subject}} {{rpc_response_status_code}}",
                        )
                    ],
                    description="Typed errors on the request/reply seam; a 404 is often a caller's mistake, "
                    "a 5xx a service's.",
                ),
            ],
        ),
    ],
)

DASHBOARDS = (FLEET, REQUESTS, PROVISIONING)


def render(board: Dashboard) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    next_id, y = 1, 0
    for row in board.rows:
        panels.append({"id": next_id, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})  # fmt: skip
        next_id, y, x, row_h = next_id + 1, y + 1, 0, 0
        for p in row.panels:
            if x + p.width > 24:
                x, y, row_h = 0, y + row_h, 0
            panels.append(_panel(p, next_id, {"h": p.height, "w": p.width, "x": x, "y": y}))
            next_id, x, row_h = next_id + 1, x + p.width, max(row_h, p.height)
        y += row_h
    return {
        "uid": board.uid,
        "title": board.title,
        "description": board.description,
        "tags": ["modelfleet"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "templating": {"list": [_variable(name, query) for name, query in board.variables]},
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": ["modelfleet"], "asDropdown": True, "title": "modelfleet"}],
        "panels": panels,
    }


def _panel(p: Panel, panel_id: int, grid: dict[str, int]) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": p.unit, **{k: v for k, v in p.extra.items() if k in ("max", "min", "noValue")}}
    options: dict[str, Any] = {}
    if p.kind == "stat":
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "colorMode": "value"}
    elif p.kind == "bargauge":
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "orientation": "horizontal", "displayMode": "gradient"}  # fmt: skip
    else:
        options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                   "tooltip": {"mode": "multi", "sort": "desc"}}  # fmt: skip
    return {
        "id": panel_id,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DATASOURCE,
        "gridPos": grid,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
                "range": p.kind == "timeseries",
                "instant": p.kind != "timeseries",
            }
            for i, (expr, legend) in enumerate(p.exprs)
        ],
    }


def _variable(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def expected_files() -> dict[Path, str]:
    return {
        OUT / f"{b.uid.removeprefix('modelfleet-')}.json": json.dumps(render(b), indent=2) + "\n" for b in DASHBOARDS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when a dashboard file is stale")
    args = parser.parse_args()
    files = expected_files()
    if args.check:
        stale = [p for p, text in files.items() if not p.is_file() or p.read_text() != text]
        extra = sorted(set(OUT.glob("*.json")) - set(files))
        for p in [*stale, *extra]:
            print(f"stale: {p.relative_to(ROOT)} (run python -m scripts.gen_dashboards)", file=sys.stderr)
        sys.exit(1 if stale or extra else 0)
    OUT.mkdir(parents=True, exist_ok=True)
    for p, text in files.items():
        p.write_text(text)
        print(f"wrote {p.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
