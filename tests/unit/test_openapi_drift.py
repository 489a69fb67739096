"""The committed OpenAPI document (`docs/api/openapi.json`) must match what the gateway code generates."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from scripts import gen_openapi
from scripts.generated_docs import doc_environment

pytestmark = pytest.mark.unit


def test_committed_openapi_matches_the_code() -> None:
    path = gen_openapi.OPENAPI_PATH
    assert path.is_file(), f"{path} is missing; run `{gen_openapi.COMMAND}` and commit it"
    assert path.read_text(encoding="utf-8") == gen_openapi.openapi_text(), (
        f"docs/api/openapi.json drifted from the gateway's routes; run `{gen_openapi.COMMAND}` and commit it"
    )


def test_document_describes_the_health_routes() -> None:
    document = json.loads(gen_openapi.openapi_text())
    assert document["openapi"].startswith("3.")
    assert {"/healthz", "/api/v1/health"} <= set(document["paths"])
    assert "get" in document["paths"]["/api/v1/health"]


def test_generation_is_byte_stable() -> None:
    assert gen_openapi.openapi_text() == gen_openapi.openapi_text()


def test_check_mode_fails_on_drift_and_names_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "docs" / "api" / "openapi.json"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"openapi": "3.1.0", "paths": {}}\n')
    monkeypatch.setattr(gen_openapi, "OPENAPI_PATH", stale)
    assert gen_openapi.main(["--check"]) == 1
    assert "python -m scripts.gen_openapi" in capsys.readouterr().err
    assert gen_openapi.main([]) == 0
    assert gen_openapi.main(["--check"]) == 0
    assert stale.read_text() == gen_openapi.openapi_text()


def test_generation_ignores_and_restores_the_callers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    baseline = gen_openapi.openapi_text()
    monkeypatch.setenv("MODELFLEET_NATS_URL", "nats://unreachable.invalid:1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://unreachable.invalid:1")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    before = dict(os.environ)
    text = gen_openapi.openapi_text()
    assert dict(os.environ) == before
    assert text == baseline
    with doc_environment():
        assert os.environ["MODELFLEET_NATS_URL"] == "nats://127.0.0.1:4222"
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in os.environ
