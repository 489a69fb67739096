"""Chaos: a pinned download cut mid-way, the provisioner SIGKILLed and restarted; it resumes from its partial file."""

from __future__ import annotations

import os
import signal

import pytest

from tests.harness.provision_bus import MIB, provisioner_env, wait_for
from tests.peers.hub_server import HubPeer, generated_file
from tests.peers.ollama_server import OllamaPeer

pytestmark = pytest.mark.chaos
CHUNK = 10 * MIB  # huggingface_hub's download chunk size: the unit "bytes fetched again" is measured in


@pytest.fixture
def peers():
    with OllamaPeer() as ollama, HubPeer() as hub:
        yield ollama, hub, None


async def test_cut_download_resumes_after_provisioner_killed(
    bus, peers, service_env, database_url, tmp_path, start_service
):
    ollama, hub, _ = peers
    big = hub.repo("acme/big-GGUF")
    sha = big.commit([generated_file("big.Q4_K_M.gguf", 48 * MIB, seed=7)])
    file = big.commits[sha]["big.Q4_K_M.gguf"]
    hub.stall_after = 25 * MIB
    env = provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url})
    proc = await start_service("provisioner", env)
    cmd = await bus.provision(models=[f"hf.co/acme/big-GGUF:Q4_K_M@{sha}"])
    partial = tmp_path / "models" / "acme/big-GGUF" / sha / "big.Q4_K_M.gguf.partial"
    await wait_for(lambda: hub.stalled.is_set() and partial.exists() and partial.stat().st_size >= 20 * MIB,
                   what="the download to stall with 20 MiB on disk")  # fmt: skip
    os.kill(proc.proc.pid, signal.SIGKILL)
    proc.proc.wait(10)
    on_disk = partial.stat().st_size  # what the dead process left: the restart must resume exactly here
    hub.release()

    await start_service("provisioner", env)
    [action] = (await bus.completed(cmd.request_id, timeout_s=60)).actions
    assert action.action == "imported" and action.sha256 == file.sha256
    ranges = [r for m, p, r in hub.requests if "/blobs/" in p and m == "GET" and r]
    assert ranges == [f"bytes={on_disk}-"]
    refetched = hub.served[file.sha256] - file.size
    assert 0 <= refetched < 2 * CHUNK, refetched
    assert ollama.blobs[f"sha256:{file.sha256}"] == file.size


async def test_sigterm_mid_download_stops_promptly_and_the_restart_resumes(
    bus, peers, service_env, database_url, tmp_path, start_service
):
    ollama, hub, _ = peers
    slow = hub.repo("acme/slow-GGUF")
    sha = slow.commit([generated_file("slow.Q4_K_M.gguf", 24 * MIB, seed=9)])
    file = slow.commits[sha]["slow.Q4_K_M.gguf"]
    hub.rate_bytes_per_s = 4 * MIB
    env = provisioner_env(service_env, database_url, tmp_path, hub.url, {"gpu-1": ollama.url})
    proc = await start_service("provisioner", env)
    cmd = await bus.provision(models=[f"hf.co/acme/slow-GGUF:Q4_K_M@{sha}"])
    partial = tmp_path / "models" / "acme/slow-GGUF" / sha / "slow.Q4_K_M.gguf.partial"
    await wait_for(lambda: partial.exists() and partial.stat().st_size >= 3 * MIB, what="3 MiB on disk")
    assert proc.stop(timeout_s=8) == 0  # a graceful stop, not the kill that follows a timeout
    kept = partial.stat().st_size
    assert 0 < kept < file.size
    hub.rate_bytes_per_s = None
    await start_service("provisioner", env)
    [action] = (await bus.completed(cmd.request_id, timeout_s=60)).actions
    assert action.action == "imported" and action.sha256 == file.sha256
    assert [r for m, p, r in hub.requests if "/blobs/" in p and m == "GET"][-1] == f"bytes={kept}-"
