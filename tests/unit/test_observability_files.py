"""observability/: the collector config is internally consistent and takes what the runtime exports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((ROOT / "observability/otel-collector.yaml").read_text())
    return config


def test_traces_pipeline_receives_otlp_over_http(collector: dict[str, Any]) -> None:
    traces = collector["service"]["pipelines"]["traces"]
    assert "otlp" in traces["receivers"]
    http = collector["receivers"]["otlp"]["protocols"]["http"]
    assert http["endpoint"].endswith(":4318")


def test_every_pipeline_component_is_defined(collector: dict[str, Any]) -> None:
    for pipeline in collector["service"]["pipelines"].values():
        for section in ("receivers", "processors", "exporters"):
            missing = set(pipeline.get(section, [])) - set(collector.get(section) or {})
            assert not missing, f"pipeline uses undefined {section}: {missing}"
    assert set(collector["service"].get("extensions", [])) <= set(collector.get("extensions") or {})


def test_overlay_mounts_this_config_and_the_exporter_target_exists(collector: dict[str, Any]) -> None:
    overlay = yaml.safe_load((ROOT / "observability/compose.yml").read_text())
    mounts = overlay["services"]["otel-collector"]["volumes"]
    assert any(m.split(":")[0] == "./observability/otel-collector.yaml" for m in mounts)
    target = collector["exporters"]["otlp/jaeger"]["endpoint"].split(":")[0]
    assert target in overlay["services"]


def test_compose_never_sets_one_service_name_for_the_whole_fleet() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, spec in compose["services"].items():
        assert "OTEL_SERVICE_NAME" not in (spec.get("environment") or {}), name
        if "OTEL_EXPORTER_OTLP_PROTOCOL" in (spec.get("environment") or {}):
            assert spec["environment"]["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    for doc in yaml.safe_load_all((ROOT / "deploy/k8s/config.yaml").read_text()):
        assert "OTEL_SERVICE_NAME" not in (doc.get("data") or {}) | (doc.get("stringData") or {})


# Metrics (issue 12 part 2): Prometheus, its alert rules, Grafana's provisioning and the generated dashboards.


def _load(path: str) -> Any:
    return yaml.safe_load((ROOT / path).read_text())


def test_metrics_pipeline_forwards_otlp_to_prometheus_which_accepts_it(collector: dict[str, Any]) -> None:
    metrics = collector["service"]["pipelines"]["metrics"]
    assert "otlp" in metrics["receivers"]
    endpoint = collector["exporters"]["otlphttp/prometheus"]["endpoint"]
    assert endpoint.startswith("http://prometheus:9090/") and endpoint.endswith("/api/v1/otlp")
    overlay = _load("observability/compose.yml")
    assert "--web.enable-otlp-receiver" in overlay["services"]["prometheus"]["command"]


def test_prometheus_scrapes_every_modelfleet_service_on_its_documented_port() -> None:
    from services.runtime.metrics import METRICS_PORTS

    config = _load("observability/prometheus.yml")
    compose = _load("docker-compose.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for service, port in METRICS_PORTS.items():
        (sd,) = jobs[service]["dns_sd_configs"]
        assert sd["port"] == port, service
        for name in sd["names"]:  # each name is a compose service that runs this module
            command = compose["services"][name]["command"]
            assert command[-1] == f"services.{service.replace('-', '_')}", name
    running = {name for name, spec in compose["services"].items() if "services." in " ".join(spec.get("command", []))}
    scraped = {name for job in jobs.values() for sd in job.get("dns_sd_configs", []) for name in sd["names"]}
    assert running <= scraped, f"not scraped: {running - scraped}"
    for rule_file in config["rule_files"]:
        assert (ROOT / "observability" / rule_file).is_file(), rule_file


def test_alert_rules_cover_degraded_roles_silent_hosts_dead_letters_and_disk() -> None:
    from tests.harness.promql import alert_exprs, metric_names

    rules = [r for g in _load("observability/alerts.yml")["groups"] for r in g["rules"]]
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for required in ("ModelfleetRoleDegraded", "ModelfleetHostSilent", "ModelfleetDeadLettersGrowing",
                     "ModelfleetModelDiskLow"):  # fmt: skip
        assert required in names
    assert next(r for r in rules if r["alert"] == "ModelfleetRoleDegraded")["for"] == "1m"
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    for where, expr in alert_exprs().items():
        assert metric_names(expr), where


def test_dashboards_are_what_the_generator_writes_and_read_the_provisioned_datasource() -> None:
    from scripts.gen_dashboards import expected_files
    from tests.harness.promql import DASHBOARDS, dashboard_exprs, metric_names

    files = expected_files()
    assert {p.name for p in files} == {p.name for p in DASHBOARDS.glob("*.json")} == {
        "fleet.json", "requests.json", "provisioning.json"
    }  # fmt: skip
    for path, text in files.items():
        assert path.read_text() == text, f"{path.name} is stale: python -m scripts.gen_dashboards"
    (datasource,) = _load("observability/grafana/datasources/prometheus.yaml")["datasources"]
    uids = set()
    for path in files:
        board = json.loads(path.read_text())
        uids.add(board["uid"])
        for panel in board["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == datasource["uid"], (path.name, panel["title"])
                assert panel["targets"], (path.name, panel["title"])
    assert len(uids) == len(files)
    for where, expr in dashboard_exprs().items():
        assert metric_names(expr), where


def test_grafana_loads_the_dashboards_from_where_compose_mounts_them() -> None:
    (provider,) = _load("observability/grafana/dashboards/modelfleet.yaml")["providers"]
    overlay = _load("observability/compose.yml")
    mount = next(m for m in overlay["services"]["grafana"]["volumes"] if m.startswith("./observability/grafana:"))
    in_container = mount.split(":")[1]
    assert provider["options"]["path"] == f"{in_container}/dashboards/modelfleet"


def test_the_metric_name_reader_skips_functions_labels_and_durations() -> None:
    from tests.harness.promql import metric_names

    expr = (
        "histogram_quantile(0.95, sum by (le, modelfleet_role) "
        '(rate(x_bucket{modelfleet_role=~"$role", a="b(c)"}[5m])))'
        " / ignoring(state) y_total offset 1h > 1e3 unless on(host_id) up"
    )
    assert metric_names(expr) == {"x_bucket", "y_total", "up"}
    with pytest.raises(ValueError, match="unbalanced"):
        metric_names("sum(rate(x[5m])")


def test_compose_and_k8s_expose_each_metrics_port_to_prometheus_and_push_no_metrics_twice() -> None:
    from services.runtime.metrics import METRICS_PORTS

    compose = _load("docker-compose.yml")
    for name, spec in compose["services"].items():
        if "services." not in " ".join(spec.get("command", [])):
            continue
        env = spec["environment"]
        assert env["MODELFLEET_METRICS_BIND"] == "0.0.0.0", name  # reachable from the prometheus container
        assert env["OTEL_METRICS_EXPORTER"] == "prometheus", name  # scraped, not also pushed
    (config,) = [
        d for d in yaml.safe_load_all((ROOT / "deploy/k8s/config.yaml").read_text()) if d["kind"] == "ConfigMap"
    ]
    assert config["data"]["MODELFLEET_METRICS_BIND"] == "0.0.0.0"
    assert config["data"]["OTEL_METRICS_EXPORTER"] == "prometheus"
    for service, port in METRICS_PORTS.items():
        docs = [d for d in yaml.safe_load_all((ROOT / f"deploy/k8s/{service}.yaml").read_text()) if d]
        (workload,) = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]
        pod = workload["spec"]["template"]
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port), service
        container = pod["spec"]["containers"][0]
        assert {"name": "metrics", "containerPort": port} in container["ports"], service
