"""The probe's settings: MODELFLEET_OPENAI_BACKENDS parsed and refused by entry; the /models answers it reads."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.hardware_probe.openai_backends import listed_models
from services.hardware_probe.settings import HardwareProbeSettings, openai_base_urls

pytestmark = pytest.mark.unit


def test_openai_backends_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "MODELFLEET_OPENAI_BACKENDS", " http://127.0.0.1:8080/v1/ ,https://vllm.lan/v1,, http://127.0.0.1:8080/v1"
    )
    monkeypatch.setenv("MODELFLEET_PROBE_OPENAI_TIMEOUT_S", "0.5")
    s = HardwareProbeSettings()
    assert s.openai_backends == ["http://127.0.0.1:8080/v1", "https://vllm.lan/v1"]  # trimmed, a repeat dropped
    assert s.openai_timeout_s == 0.5


def test_none_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELFLEET_OPENAI_BACKENDS", raising=False)
    assert HardwareProbeSettings().openai_backends == []
    monkeypatch.setenv("MODELFLEET_OPENAI_BACKENDS", "")
    assert HardwareProbeSettings().openai_backends == []


def test_a_list_is_accepted_in_code() -> None:
    assert HardwareProbeSettings(openai_backends=["http://h:1234/v1"]).openai_backends == ["http://h:1234/v1"]


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("127.0.0.1:8080/v1", "must start with http:// or https://"),
        ("ftp://h/v1", "must start with http:// or https://"),
        ("http://h:8080", "must end in /v1"),
        ("http://h:8080/v1/models", "must end in /v1"),
        ("http:///v1", "names no host"),
        ("http://h:99999/v1", "is not a URL"),
        ("http://h:8080/v1?key=x", "no query"),
        ("http://user:pw@h/v1", "credentials"),
    ],
)
def test_a_bad_entry_is_named_with_its_position(monkeypatch: pytest.MonkeyPatch, entry: str, why: str) -> None:
    monkeypatch.setenv("MODELFLEET_OPENAI_BACKENDS", f"http://ok:8080/v1,{entry}")
    with pytest.raises(ValidationError) as caught:
        HardwareProbeSettings()
    message = str(caught.value)
    assert f"MODELFLEET_OPENAI_BACKENDS: entry 2 {entry!r}" in message and why in message
    assert "e.g. http://127.0.0.1:8080/v1" in message


def test_base_urls_keep_a_path_before_v1() -> None:
    assert openai_base_urls("https://gw.lan/lmstudio/v1") == ["https://gw.lan/lmstudio/v1"]


def test_model_lists_as_each_server_writes_them() -> None:
    llama_cpp_python = {"object": "list", "data": [{"id": "smollm2", "object": "model", "owned_by": "me"}]}
    assert listed_models(llama_cpp_python) == [("smollm2", None, None)]
    vllm = {"data": [{"id": "Qwen/Qwen3-8B", "object": "model", "max_model_len": 32768, "root": "Qwen/Qwen3-8B"}]}
    assert listed_models(vllm) == [("Qwen/Qwen3-8B", None, 32768)]
    llama_server = {"data": [{"id": "m.gguf", "meta": {"size": 98_000_000, "n_ctx_train": 8192}}]}
    assert listed_models(llama_server) == [("m.gguf", 98_000_000, None)]
    assert listed_models({"data": []}) == []
    for bad in ({"models": []}, [], {"data": [{"object": "model"}]}, {"data": ["x"]}):
        with pytest.raises(ValueError, match="not an OpenAI model list"):
            listed_models(bad)
