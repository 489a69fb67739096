"""The fallback's pure parts: where a role's source is found on disk, sampling from the catalog's options, LRU
eviction and idle expiry decisions, stop-string holding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts.fallback import FallbackSpec
from contracts.router import LlmDegraded, LlmRecovered
from contracts.rpc import RpcError
from services.inference_fallback import domain
from services.inference_fallback.domain import RoleHealth, SlotUse
from services.inference_fallback.sources import NotFetched, SourceError, SourceFinder

pytestmark = pytest.mark.unit

COMMIT = "a" * 40


def finder(tmp_path: Path) -> SourceFinder:
    return SourceFinder(tmp_path / "models", tmp_path / "ollama")


def checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def ollama_model(store: Path, manifest_parts: tuple[str, ...], blob: bytes = b"GGUF") -> Path:
    digest = "b" * 64
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    (store / "blobs" / f"sha256-{digest}").write_bytes(blob)
    manifest = store.joinpath("manifests", *manifest_parts)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    layers = [{"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "c" * 64},
              {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}"}]  # fmt: skip
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    return store / "blobs" / f"sha256-{digest}"


def test_fallback_path_file_and_directory(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    src = finder(tmp_path).find("qwen3:8b", fallback=FallbackSpec(path=str(gguf), max_seq_length=512))
    assert (src.kind, src.gguf, src.description, src.max_seq_length) == ("path", True, f"path {gguf}", 512)
    ckpt = checkpoint(tmp_path / "ckpt")
    src = finder(tmp_path).find("qwen3:8b", fallback=FallbackSpec(path=str(ckpt)))
    assert (src.kind, src.gguf, src.location) == ("path", False, ckpt)


@pytest.mark.parametrize(
    ("make", "status", "says"),
    [
        (lambda p: None, 404, "does not exist on this host"),
        (lambda p: (p / "x").mkdir(), 422, "no config.json"),
        (lambda p: ((p / "x").mkdir(), (p / "x" / "config.json").write_text("{}")), 422, "no weights"),
    ],
)
def test_bad_fallback_paths_are_refused_naming_the_field(tmp_path: Path, make, status: int, says: str) -> None:
    make(tmp_path)
    with pytest.raises(SourceError) as caught:
        finder(tmp_path).find("qwen3:8b", fallback=FallbackSpec(path=str(tmp_path / "x")))
    assert (caught.value.status, caught.value.field) == (status, "fallback.path") and says in caught.value.detail


def test_repo_fallback_reads_the_provisioners_checkpoint_folder(tmp_path: Path) -> None:
    spec = FallbackSpec(repo="org/model", revision=COMMIT)
    with pytest.raises(NotFetched) as missing:  # the service asks the provisioner for it (fetch.py)
        finder(tmp_path).find("qwen3:8b", fallback=spec)
    assert missing.value.status == 404 and f"modelfleet provision --models org/model@{COMMIT}" in missing.value.detail
    folder = checkpoint(tmp_path / "models" / "org" / "model" / COMMIT)
    assert missing.value.placeholder.location == folder and missing.value.field == "fallback.repo"
    src = finder(tmp_path).find("qwen3:8b", fallback=spec)
    assert (src.kind, src.location, src.description) == ("repo", folder, f"repo org/model@{COMMIT}")
    # a tag reads the commit the provisioner pinned it to; until this replica learnt it, the tag is not fetched
    tagged = FallbackSpec(repo="org/model", revision="v1")
    with pytest.raises(NotFetched) as tag:
        finder(tmp_path).find("qwen3:8b", fallback=tagged)
    assert (tag.value.status, tag.value.field) == (404, "fallback.repo") and "pinned" in tag.value.detail
    pinned = finder(tmp_path)
    pinned.pins["org/model@v1"] = COMMIT
    src = pinned.find("qwen3:8b", fallback=tagged)
    assert (src.location, src.description) == (folder, "repo org/model@v1")


def test_own_gguf_from_the_ollama_store_library_and_namespaced(tmp_path: Path) -> None:
    blob = ollama_model(tmp_path / "ollama", ("registry.ollama.ai", "library", "qwen3", "8b"))
    src = finder(tmp_path).find("qwen3:8b")
    assert (src.kind, src.gguf, src.location) == ("gguf", True, blob)
    assert src.description == f"gguf {blob} (ollama qwen3:8b)"
    blob = ollama_model(tmp_path / "ollama2", ("registry.ollama.ai", "alice", "tiny", "latest"))
    assert SourceFinder(tmp_path / "models", tmp_path / "ollama2").find("alice/tiny:latest").location == blob
    with pytest.raises(SourceError) as absent:
        finder(tmp_path).find("llama3.2:3b")
    assert absent.value.status == 404 and "llama3.2/3b" in absent.value.detail and absent.value.field == "model_ref"


def test_own_gguf_of_a_pinned_import_and_a_local_file(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "bartowski" / "Tiny-GGUF" / COMMIT
    folder.mkdir(parents=True)
    (folder / "Tiny-Q4_K_M.gguf").write_bytes(b"GGUF")
    (folder / "Tiny-Q8_0.gguf").write_bytes(b"GGUF")
    src = finder(tmp_path).find(f"hf.co/bartowski/Tiny-GGUF:Q4_K_M@{COMMIT}")
    assert (
        src.location == folder / "Tiny-Q4_K_M.gguf" and "(pinned hf.co/bartowski/Tiny-GGUF:Q4_K_M@" in src.description
    )
    (tmp_path / "models" / "local.gguf").write_bytes(b"GGUF")
    assert finder(tmp_path).find("local:local.gguf").location == tmp_path / "models" / "local.gguf"


def test_sampling_maps_the_catalogs_names_and_refuses_bad_values() -> None:
    s = domain.sampling({"temperature": 0.7, "top_p": 0.9, "top_k": 40, "repeat_penalty": 1.1, "seed": 3,
                         "num_predict": 64, "stop": "###", "num_ctx": 8192, "min_p": 0.05}, None)  # fmt: skip
    assert s.generate_kwargs() == {"max_new_tokens": 64, "do_sample": True, "temperature": 0.7, "top_p": 0.9,
                                   "top_k": 40, "repetition_penalty": 1.1}  # fmt: skip
    assert (s.seed, s.stop) == (3, ("###",))
    greedy = domain.sampling({"temperature": 0, "num_predict": 64}, 10)
    assert greedy.generate_kwargs() == {"max_new_tokens": 10, "do_sample": False}
    assert domain.sampling({"num_predict": -1}, None).max_new_tokens == domain.DEFAULT_MAX_TOKENS
    for options, field in [({"temperature": "hot"}, "options.temperature"), ({"top_p": 2}, "options.top_p"),
                           ({"top_k": 1.5}, "options.top_k"), ({"stop": [1]}, "options.stop"),
                           ({"num_predict": 0}, "options.num_predict"), ({"seed": True}, "options.seed")]:  # fmt: skip
        with pytest.raises(RpcError) as caught:
            domain.sampling(options, None)
        assert (caught.value.status, caught.value.field) == (422, field)


def test_lru_eviction_picks_the_oldest_idle_slots_and_never_a_busy_one() -> None:
    slots = [SlotUse("a", 40, 0, last_used=3.0), SlotUse("b", 40, 0, last_used=1.0), SlotUse("c", 40, 1, 0.0)]
    assert domain.evictions_to_fit(slots, need=10, budget=200) == []
    assert domain.evictions_to_fit(slots, need=60, budget=140) == ["b"]
    assert domain.evictions_to_fit(slots, need=100, budget=140) == ["b", "a"]
    assert domain.evictions_to_fit(slots, need=120, budget=140) is None  # c is answering: it stays


def test_idle_expiry_counts_from_the_later_of_last_use_and_recovery() -> None:
    health = RoleHealth()
    slot = SlotUse("coding", 10, 0, last_used=100.0)
    assert domain.expires_at(slot, health, 30) == 130.0
    down = LlmDegraded(producer="router", host_id="h", backend_url="u", reason="down", role="coding")
    assert health.degraded(down, now=110.0) == "coding"
    assert domain.expires_at(slot, health, 30) is None and domain.expired([slot], health, 30, now=1e9) == []
    health.recovered(LlmRecovered(producer="router", host_id="h", backend_url="u", role="coding"), now=150.0)
    assert domain.expires_at(slot, health, 30) == 180.0
    assert domain.expired([slot], health, 30, now=179.0) == [] and domain.expired([slot], health, 30, 180.0) == [
        "coding"
    ]
    assert domain.expires_at(SlotUse("coding", 10, 1, 100.0), health, 30) is None  # answering: never


def test_stop_strings_cut_and_hold_back_a_possible_start() -> None:
    assert domain.stop_at("hello ### world", ("###", "wor")) == 6
    assert domain.stop_at("hello", ("###",)) is None
    assert domain.held_back("hello #", ("###",)) == 1 and domain.held_back("hello ##", ("###",)) == 2
    assert domain.held_back("hello", ("###",)) == 0
