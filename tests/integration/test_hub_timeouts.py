"""The provisioner's hub client against addresses that do not answer, on real sockets: no connection within the
connect bound is a 503 naming the endpoint, a connection that stays silent past the read bound a 504; a call that
huggingface_hub makes with `timeout=None` (its pagination) keeps the client's bounds. Nothing here measures time."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx2
import pytest

from services.provisioner.hub import HubClient, HubUnreachable
from services.provisioner.operations.provision import hub_error
from tests.harness.blackhole import blackhole

pytestmark = pytest.mark.integration


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that takes connections (the kernel completes them) and never sends a byte."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def client(tmp_path, endpoint: str) -> HubClient:
    return HubClient(
        endpoint, None, tmp_path / "models", tmp_path / "quarantine", connect_timeout_s=0.3, read_timeout_s=0.3
    )


def test_no_connection_is_503_naming_the_hub(tmp_path):
    with blackhole() as port:
        endpoint = f"http://127.0.0.1:{port}"
        with pytest.raises(HubUnreachable) as caught:
            client(tmp_path, endpoint).pin("acme/tiny-GGUF", "main", allow_unpinned=True)
    assert caught.value.status == 503
    assert str(caught.value).startswith(f"the Hugging Face hub at {endpoint} is unreachable: no connection within 0.3s")
    error = hub_error(caught.value, "acme/tiny-GGUF", "main")
    assert error is not None and (error.status, error.code) == (503, "unavailable")


def test_silence_is_504_naming_the_hub(tmp_path, silent_port):
    endpoint = f"http://127.0.0.1:{silent_port}"
    with pytest.raises(HubUnreachable) as caught:
        client(tmp_path, endpoint).pin("acme/tiny-GGUF", "main", allow_unpinned=True)
    assert caught.value.status == 504
    assert str(caught.value).startswith(f"the Hugging Face hub at {endpoint} did not answer within 0.3s")
    error = hub_error(caught.value, "acme/tiny-GGUF", "main")
    assert error is not None and (error.status, error.code) == (504, "timeout")


def test_a_call_without_a_timeout_keeps_the_bounds(tmp_path):
    from huggingface_hub.utils import get_session

    client(tmp_path, "http://127.0.0.1:9")
    session = get_session()  # the client huggingface_hub uses for every call, built by the hub client's factory
    request = session.build_request("GET", "http://127.0.0.1:9/api/models/a/b/tree/main", timeout=None)
    assert request.extensions["timeout"] == httpx2.Timeout(0.3, connect=0.3).as_dict()
