"""observability/: the collector config is internally consistent and takes what the runtime exports."""

from __future__ import annotations

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
