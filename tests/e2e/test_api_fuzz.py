"""Property-based fuzzing of the gateway's live OpenAPI schema with schemathesis: every operation, every check.

A real fleet (catalog, router, provisioner, gateway as processes on real NATS and PostgreSQL, the project's hub and
Ollama peers behind the provisioner) answers schemathesis' generated requests, valid and invalid, with the admin
token. Any 5xx, undocumented status, body outside its documented schema, content type not documented, valid request
rejected or invalid request accepted fails the test, with schemathesis' own report of each failure.

Budget: `EXAMPLES` (10) cases per operation in the fuzzing phase plus the examples and coverage phases, seed fixed
(`--seed`, `--generation-deterministic`): about 2 minutes on the 2-core development machine.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from tests.harness.cli import ADMIN_TOKEN
from tests.harness.provision_bus import MIB, provisioner_env
from tests.peers.hub_server import HubPeer, generated_file
from tests.peers.ollama_server import OllamaPeer, library_model

pytestmark = pytest.mark.e2e

#: Generated cases per operation (fuzzing phase); the coverage phase adds the boundary cases of every parameter.
EXAMPLES = 10
SEED = 11
#: The whole schemathesis run is bounded (the test's own pytest timeout is above it).
RUN_TIMEOUT_S = 600.0
#: Per-operation expectations, each a documented answer that depends on the fleet's state or on data no JSON Schema
#: can state, not on the request's shape:
#: - 503 from /api/v1/health (a service of the fleet is not running here: probe, fallback) and from the routes that
#:   need a backend (`no_backend`: no model of the default roles is installed in this fleet); 502 from the hub
#:   listing when the hub has no such repo file (`upstream_failed`).
#: - 422 for a schema-valid request the catalog refuses by its content: profile types it knows, a manifest's
#:   content, an expiry that is in the past, a model name's syntax, `exactly one of` in /api/v1/fit and
#:   /api/v1/route.
CONFIG = """
[[operations]]
include-path = ["/api/v1/health", "/api/v1/route", "/v1/chat/completions", "/v1/embeddings"]
checks.not_a_server_error.expected-statuses = ["2XX", "3XX", "4XX", "503"]

[[operations]]
include-path = "/api/v1/hf/quantizations"
checks.not_a_server_error.expected-statuses = ["2XX", "3XX", "4XX", "502"]

[[operations]]
include-path = ["/api/v1/profiles", "/api/v1/profiles/{profile_id}", "/api/v1/users/{user_id}/profile-config",
                "/api/v1/users/{user_id}/tokens", "/api/v1/catalog/import", "/api/v1/models/default", "/api/v1/fit",
                "/api/v1/route", "/v1/chat/completions", "/v1/embeddings"]
checks.positive_data_acceptance.expected-statuses = ["2XX", "3XX", "401", "403", "404", "409", "422"]
"""


async def _schemathesis(url: str, report_dir: Path) -> tuple[int, str]:
    exe = Path(sys.executable).parent / "schemathesis"
    config = report_dir / "schemathesis.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(CONFIG)
    args = [
        str(exe), "--config-file", str(config), "run", f"{url}/openapi.json",
        "--checks", "all", "--mode", "all",
        "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--generation-deterministic",
        "--header", f"Authorization: Bearer {ADMIN_TOKEN}",
        "--request-timeout", "60", "--workers", "2", "--no-color",
        "--report", "junit", "--report-dir", str(report_dir),
        "--phases", "examples,coverage,fuzzing",
    ]  # fmt: skip
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"}
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"schemathesis did not finish in {RUN_TIMEOUT_S}s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.timeout(RUN_TIMEOUT_S + 120)
async def test_every_operation_of_the_live_schema_passes_every_check(
    service_env, database_url, tmp_path, start_service, start_gateway
):
    with OllamaPeer(library=[library_model("qwen3:8b", MIB)]) as ollama, HubPeer() as hub:
        hub.repo("acme/tiny-GGUF").commit([generated_file("tiny.Q4_K_M.gguf", MIB, seed=3)])
        await start_service("catalog", service_env(database_url=database_url))
        await start_service("router", service_env())
        await start_service(
            "provisioner", provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url})
        )
        url = await start_gateway(
            service_env(MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN, MODELFLEET_GATEWAY_PROVISION_WAIT_S="2")
        )
        code, output = await _schemathesis(url, tmp_path / "schemathesis")

    print(output)  # the figures (operations, cases, failures) in the test's captured output
    summary = re.search(r"API Operations:.*", output)
    assert summary is not None, output[-4000:]
    assert code == 0, output[-20000:]
    assert re.search(r"No issues found", output), output[-20000:]
