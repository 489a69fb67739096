"""Each service's spans carry its own `service.name`, also where one process hosts two services (the gateway with its
router replica); an operator's `OTEL_SERVICE_NAME` wins. Run in a fresh interpreter each: the names and the global
provider are process state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import json
from opentelemetry import trace
from services.runtime.telemetry import build_tracer_provider
gateway = build_tracer_provider("gateway")
router = build_tracer_provider("router")
print(json.dumps({
    "gateway": gateway.resource.attributes["service.name"],
    "router": router.resource.attributes["service.name"],
    "global_is_first": trace.get_tracer_provider() is gateway,
}))
"""


def names(**env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env={**clean, **env}, capture_output=True,
                          text=True, timeout=60, check=True)  # fmt: skip
    assert "Overriding of current TracerProvider" not in done.stderr, done.stderr
    got: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return got


def test_two_services_in_one_process_each_name_their_own_spans() -> None:
    assert names() == {"gateway": "gateway", "router": "router", "global_is_first": True}


def test_an_operators_service_name_wins_for_both() -> None:
    got = names(OTEL_SERVICE_NAME="edge-1")
    assert (got["gateway"], got["router"]) == ("edge-1", "edge-1")
