"""Update-check decisions: where a registry keeps an Ollama name's manifest, digest forms, when an update is pending."""

from __future__ import annotations

import pytest

from contracts.provisioner import UpdateAvailable
from services.provisioner import domain

pytestmark = pytest.mark.unit

REG = "https://registry.ollama.ai"


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("qwen3:8b", f"{REG}/v2/library/qwen3/manifests/8b"),
        ("qwen3", f"{REG}/v2/library/qwen3/manifests/latest"),
        ("qwen3:latest", f"{REG}/v2/library/qwen3/manifests/latest"),
        ("acme/coder:1.5b-q4_K_M", f"{REG}/v2/acme/coder/manifests/1.5b-q4_K_M"),
        ("registry.ollama.ai/library/llama3.2:3b", f"{REG}/v2/library/llama3.2/manifests/3b"),
        ("example.com:5000/team/m:v2", "https://example.com:5000/v2/team/m/manifests/v2"),
    ],
)
def test_registry_ref_follows_ollamas_name_rule(name: str, url: str) -> None:
    assert domain.registry_ref(name, REG).manifest_url == url


def test_configured_registry_serves_names_without_a_host() -> None:
    ref = domain.registry_ref("qwen3:8b", "http://127.0.0.1:1234/")
    assert (ref.registry, ref.manifest_url) == (
        "http://127.0.0.1:1234/",
        "http://127.0.0.1:1234/v2/library/qwen3/manifests/8b",
    )


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("hf.co/bartowski/Llama-3.2-3B-Instruct-GGUF:Q4_K_M", "Hugging Face pass-through"),
        ("huggingface.co/u/r:Q8_0", "Hugging Face pass-through"),
        ("a/b/c/d:1", "not an Ollama registry name"),
        ("../etc:1", "not an Ollama registry name"),
        ("m:bad tag", "not an Ollama registry name"),
    ],
)
def test_names_no_ollama_registry_serves_are_refused_with_a_reason(name: str, why: str) -> None:
    with pytest.raises(domain.NotInRegistry, match=why):
        domain.registry_ref(name, REG)


def test_digest_forms_and_pending_updates() -> None:
    hexa, hexb = "a" * 64, "b" * 64
    assert domain.as_digest(hexa) == domain.as_digest(f"sha256:{hexa.upper()}") == f"sha256:{hexa}"
    with pytest.raises(ValueError, match="not a sha256"):
        domain.as_digest("sha256:xyz")
    assert domain.update_pending(hexa, f"sha256:{hexb}")
    assert not domain.update_pending(hexa, f"sha256:{hexa}")  # Ollama's bare hex equals the registry's prefixed form
    assert not domain.update_pending(None, f"sha256:{hexb}") and not domain.update_pending(hexa, None)
    assert not domain.update_pending("garbage", f"sha256:{hexb}")


def test_update_available_carries_both_digests_and_stays_compatible() -> None:
    old, new = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    event = UpdateAvailable(
        producer="provisioner", host="h", target_host="gpu-1", model="qwen3:8b", installed_revision=old,
        remote_revision=new, source="curated", installed_digest=old, remote_digest=new, registry=REG,
    )  # fmt: skip
    again = UpdateAvailable.model_validate_json(event.model_dump_json())
    assert (again.installed_digest, again.remote_digest, again.registry) == (old, new, REG)
    legacy = UpdateAvailable(
        producer="p", host="h", target_host="t", model="m", remote_revision="c" * 40, source="pinned_hf"
    )
    assert legacy.installed_digest is None and legacy.remote_digest is None  # older payloads still validate
    with pytest.raises(ValueError, match="remote_digest"):
        UpdateAvailable(
            producer="p", host="h", target_host="t", model="m", remote_revision="x", source="curated",
            remote_digest="deadbeef",
        )  # fmt: skip
