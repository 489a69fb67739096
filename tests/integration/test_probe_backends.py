"""The probe's backend advertisement against real peers: the project's Ollama peer and llama.cpp's OpenAI server."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest

from contracts.hardware import HOSTS_BUCKET, BackendStatus, GpuSampled
from services.hardware_probe.host_stats import HostStats
from services.hardware_probe.ollama_status import OllamaStatus
from services.hardware_probe.openai_backends import OpenAIBackends
from services.hardware_probe.sampler import Sampler
from services.hardware_probe.torch_stats import TorchStats
from services.router.domain import decide, target
from services.router.fleet import Fleet
from services.router.strategies import LeastBusy
from services.runtime.embedded import free_port
from services.runtime.nvml import NvmlReader
from tests.harness.llama_server import llama_server
from tests.harness.waiting import eventually
from tests.peers.ollama_server import OllamaPeer, library_model

pytestmark = pytest.mark.integration

T = TypeVar("T")


@pytest.fixture(scope="module")
def llama() -> Iterator[tuple[str, str]]:
    """One llama.cpp server for the module: (base URL ending in /v1, the model id it lists)."""
    with llama_server() as served:
        yield served


@pytest.fixture
def ollama_peer() -> Iterator[OllamaPeer]:
    with OllamaPeer(library=[library_model("llama3.2:1b")]) as peer:
        peer.install("llama3.2:1b", size=1_300_000_000)
        peer.install("qwen3:8b", size=5_200_000_000)
        peer.loaded.add("llama3.2:1b")
        yield peer


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers: a hung server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


def by_kind(sample: GpuSampled, kind: str) -> list[BackendStatus]:
    return [b for b in sample.backends if b.kind == kind]


async def test_a_sample_lists_the_ollama_peers_models_and_the_llama_cpp_servers_model(
    ollama_peer: OllamaPeer, llama: tuple[str, str], tmp_path: Path
) -> None:
    base_url, model_id = llama
    sampler = Sampler(
        "gpu-01", HostStats(tmp_path), NvmlReader(), OllamaStatus(ollama_peer.url), TorchStats(False), 5.0,
        OpenAIBackends([base_url]),
    )  # fmt: skip
    try:
        sample = await sampler.sample()
    finally:
        await sampler.close()
    [ollama] = by_kind(sample, "ollama")
    assert (ollama.base_url, ollama.reachable, ollama.error, ollama.version) == (ollama_peer.url, True, None, "0.12.3")
    installed = {m.name: (m.size_bytes, m.digest) for m in ollama.installed}
    assert installed == {n: (m.size, m.digest) for n, m in ollama_peer.installed.items()}  # /api/tags
    assert [(m.name, m.size_vram_bytes) for m in ollama.loaded] == [("llama3.2:1b", 1_300_000_000)]  # /api/ps
    assert ollama.loaded[0].expires_at is not None
    # the fields older readers use are still filled
    assert sample.ollama_reachable and [m.name for m in sample.ollama_models] == ["llama3.2:1b"]

    [openai] = by_kind(sample, "openai")
    assert (openai.base_url, openai.reachable, openai.error) == (base_url, True, None)
    assert [m.name for m in openai.loaded] == [m.name for m in openai.installed] == [model_id]

    # what the router makes of it: the model id the server lists is routable as a catalog `openai` model
    fleet = Fleet()
    fleet.observe_sample(sample)
    now = sample.occurred_at.timestamp() + 1
    picked = decide(fleet, target(model_id, "openai"), (), LeastBusy(), now, num_ctx=2048).picks
    assert [(p.backend.kind, p.backend.base_url, p.model_name, p.tier) for p in picked] == [
        ("openai", base_url, model_id, "loaded")
    ]
    installed_only = decide(fleet, target("qwen3:8b", "ollama"), (), LeastBusy(), now, num_ctx=2048).picks
    # installed from /api/tags alone (no model.pulled); `fits` or not depends on this machine's free memory
    assert [(p.backend.base_url, p.tier in ("fits", "installed")) for p in installed_only] == [(ollama_peer.url, True)]


async def test_dead_and_silent_servers_are_listed_unreachable_and_the_sample_still_comes(
    llama: tuple[str, str], silent_port: int, tmp_path: Path
) -> None:
    base_url, model_id = llama
    refused = f"http://127.0.0.1:{free_port()}/v1"
    silent = f"http://127.0.0.1:{silent_port}/v1"
    timeout_s = 0.5
    sampler = Sampler(
        "gpu-01", HostStats(tmp_path), NvmlReader(), OllamaStatus(f"http://127.0.0.1:{free_port()}", timeout_s),
        TorchStats(False), 5.0, OpenAIBackends([refused, silent, base_url], timeout_s),
    )  # fmt: skip
    try:
        sample = await sampler.sample()
    finally:
        await sampler.close()
    status = {b.base_url: b for b in sample.backends}
    assert status[refused].reachable is False and status[refused].error
    assert "Connect" in str(status[refused].error)
    assert status[silent].reachable is False and status[silent].error
    assert "Timeout" in str(status[silent].error)
    assert status[base_url].reachable and [m.name for m in status[base_url].loaded] == [model_id]
    [ollama] = by_kind(sample, "ollama")
    assert ollama.reachable is False and ollama.error and sample.ollama_error == ollama.error
    # the servers were asked at once and each within its timeout: the hung one bounds the sample, no more
    assert sample.sample_ms is not None and sample.sample_ms < 4 * timeout_s * 1000


async def test_the_daemon_advertises_the_servers_named_in_its_setting(
    ollama_peer: OllamaPeer, llama: tuple[str, str], silent_port: int,
    service_env: Callable[..., dict[str, str]], start_service: Callable[..., Any], nats_url: str,
) -> None:  # fmt: skip
    base_url, model_id = llama
    silent = f"http://127.0.0.1:{silent_port}/v1"
    env = service_env(
        MODELFLEET_PROBE_INTERVAL_S="0.3", MODELFLEET_OLLAMA_URL=ollama_peer.url,
        MODELFLEET_OPENAI_BACKENDS=f"{base_url}/, {silent}", MODELFLEET_PROBE_OPENAI_TIMEOUT_S="0.5",
    )  # fmt: skip
    await start_service("hardware-probe", env)
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(HOSTS_BUCKET)
        seen: list[str] = []

        async def two_samples() -> GpuSampled | None:
            entry = await kv.get("test-host")
            sample = GpuSampled.model_validate_json(entry.value or b"")
            if str(sample.event_id) not in seen:
                seen.append(str(sample.event_id))
            return sample if len(seen) >= 2 else None

        sample = await eventually(two_samples, timeout_s=20.0, what="two samples from the daemon")
    finally:
        await nc.close()
    assert [(b.kind, b.base_url, b.reachable) for b in sample.backends] == [
        ("ollama", ollama_peer.url, True), ("openai", base_url, True), ("openai", silent, False),
    ]  # fmt: skip
    assert [m.name for m in sample.backends[1].loaded] == [model_id]
    assert {m.name for m in sample.backends[0].installed} == {"llama3.2:1b", "qwen3:8b"}


class _Listing(http.server.BaseHTTPRequestHandler):
    """`GET /v1/models` as an OpenAI-compatible server lists; while `hold` is set it accepts and answers nothing
    (llama-cpp-python's server while it generates), and once `hold` is cleared it answers again."""

    hold = threading.Event()
    released = threading.Event()

    def do_GET(self) -> None:
        if self.hold.is_set():
            self.released.wait(10)
        body = json.dumps({"object": "list", "data": [{"id": "smollm2", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


async def test_a_server_that_listed_once_and_then_does_not_answer_in_time_is_busy_with_its_last_listing(
    tmp_path: Path,
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Listing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    backends = OpenAIBackends([base_url], timeout_s=0.3)
    try:
        [first] = await backends.read()
        assert (first.reachable, first.error, [m.name for m in first.loaded]) == (True, None, ["smollm2"])
        _Listing.hold.set()
        [busy] = await backends.read()
        assert busy.reachable and [m.name for m in busy.loaded] == ["smollm2"]
        assert busy.error and busy.error.startswith("busy:") and "last listing kept" in busy.error
        _Listing.released.set()
        _Listing.hold.clear()
        [again] = await backends.read()
        assert (again.reachable, again.error) == (True, None)
        server.shutdown()
        server.server_close()
        [down] = await backends.read()  # refused now: down, and the listing is forgotten
        assert not down.reachable and down.loaded == []
        assert "Connect" in str(down.error)
    finally:
        _Listing.released.set()
        server.shutdown()
        await backends.close()
