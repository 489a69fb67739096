"""The provisioner process's `/metrics`: a pull from the Ollama peer, a failed pull, a pinned import whose body the
hub peer corrupts and then one that verifies, and the queue while a pull holds, scraped over HTTP."""

from __future__ import annotations

import threading

import pytest

from tests.harness.metrics import Samples, free_port, scrape_async
from tests.harness.provision_bus import MIB, provisioner_env
from tests.harness.waiting import eventually
from tests.peers.hub_server import HubPeer, generated_file
from tests.peers.ollama_server import OllamaPeer, library_model

pytestmark = pytest.mark.integration

REPO = "acme/tiny-GGUF"
OPS = "modelfleet_provisioner_operations_total"


def op(kind: str, result: str, **more: str) -> dict[str, str]:
    return {"modelfleet_provision_kind": kind, "modelfleet_provision_result": result, **more}


async def test_provisioner_counts_pulls_imports_bytes_failures_and_its_queue(
    bus, service_env, database_url, tmp_path, start_service
):
    library = [library_model("qwen3:8b", 8 << 20), library_model("broken:1b")]
    with OllamaPeer(library=library) as ollama, HubPeer() as hub:
        commit = hub.repo(REPO).commit([generated_file("tiny.Q4_K_M.gguf", 6 * MIB, seed=1)])
        port = free_port()
        env = provisioner_env(
            service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url}, MODELFLEET_METRICS_PORT=str(port)
        )
        await start_service("provisioner", env)
        url = f"http://127.0.0.1:{port}/metrics"

        # a pull that holds before `success`: the request is running and its transfer in flight
        gate = threading.Event()
        ollama.pull_gate = gate
        pulling = await bus.provision(models=["qwen3:8b"])

        async def holding() -> Samples | None:
            m = await scrape_async(url)
            pulling = m.value("modelfleet_provisioner_transfers_active", modelfleet_transfer_kind="ollama_pull")
            running = m.value("modelfleet_provisioner_queue_depth", modelfleet_request_state="running")
            return m if (pulling, running) == (1, 1) else None

        await eventually(holding, what="a running request and a pull in flight on /metrics")
        gate.set()
        ollama.pull_gate = None
        [pulled] = (await bus.completed(pulling.request_id)).actions
        assert pulled.action == "pulled"

        ollama.fail_pull_after = 0.5
        [failed] = (await bus.completed((await bus.provision(models=["broken:1b"])).request_id)).actions
        assert failed.action == "failed"

        hub.corrupt = True
        ref = f"hf.co/{REPO}:Q4_K_M@{commit}"
        [bad] = (await bus.completed((await bus.provision(models=[ref])).request_id)).actions
        assert bad.action == "failed" and "sha256 mismatch" in (bad.reason or "")
        hub.corrupt = False
        [good] = (await bus.completed((await bus.provision(models=[ref])).request_id)).actions
        assert good.action == "imported"

        m = await scrape_async(url)

    assert m.value(OPS, **op("ollama_pull", "pulled")) == 1
    assert m.value(OPS, **op("ollama_pull", "failed", error_type="stream")) == 1
    assert m.value(OPS, **op("gguf_import", "failed", error_type="verify")) == 1
    assert m.value(OPS, **op("gguf_import", "imported")) == 1
    duration = "modelfleet_provisioner_operation_duration_seconds_count"
    assert m.value(duration, **op("ollama_pull", "pulled")) == 1
    assert m.value("modelfleet_provisioner_operation_duration_seconds_sum", modelfleet_provision_kind="gguf_import") > 0
    assert m.value("modelfleet_provisioner_verification_failures_total", modelfleet_verification_stage="download") == 1
    # the hub's body twice (corrupt, then good); Ollama's pull of qwen3:8b whole, and part of the broken one
    assert m.value("modelfleet_provisioner_downloaded_bytes_total", modelfleet_transfer_source="hub") == 2 * 6 * MIB
    assert m.value("modelfleet_provisioner_downloaded_bytes_total", modelfleet_transfer_source="ollama") > (8 << 20)
    assert m.value("modelfleet_provisioner_queue_depth", modelfleet_request_state="running") == 0
    assert m.value("modelfleet_provisioner_queue_depth", modelfleet_request_state="queued") == 0
    assert m.value("modelfleet_provisioner_transfers_active") == 0
