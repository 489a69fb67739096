"""LoRA adapter registry with the real peft: scanning the folder (added, changed, removed, bad manifests, sha256
mismatches), the watcher's publishing, the book replicas fold, and adapters applied to a tiny random Llama."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.fallback import AdapterManifest, AdapterUpdated
from services.inference_fallback.adapters import (
    WEIGHTS_FILE,
    AdapterBook,
    AdapterNotFound,
    AdapterSet,
    AdapterSettings,
    AdapterWatcher,
    AdapterWrongBase,
    ManifestInvalid,
    ShaMismatch,
    apply_adapter,
    scan,
    sha256_file,
)
from tests.harness.tiny_llama import build_tiny_llama

pytestmark = pytest.mark.unit


def _lora(base: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter made with peft at test time; `init_lora_weights=False` so it changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    base = build_tiny_llama(root / "base")
    return {"base": base, "a": _lora(base, root / "lora-a", 1), "b": _lora(base, root / "lora-b", 2)}


def _manifest(name: str, path: Path, base_model: str = "coding") -> AdapterManifest:
    return AdapterManifest(name=name, base_model=base_model, path=str(path), sha256=sha256_file(path / WEIGHTS_FILE))


def _write(folder: Path, manifest: AdapterManifest | dict[str, Any], name: str | None = None) -> Path:
    body = manifest.model_dump() if isinstance(manifest, AdapterManifest) else manifest
    file = folder / f"{name or body['name']}.json"
    file.write_text(json.dumps(body))
    return file


def test_scan_finds_changes_and_removes(made: dict[str, Path], tmp_path: Path) -> None:
    a = _manifest("support", made["a"])
    _write(tmp_path, a)
    first = scan(tmp_path, {})
    assert [(c.name, c.change) for c in first.changes] == [("support", "added")] and first.errors == []
    assert first.current["support"].manifest == a
    assert scan(tmp_path, first.current).changes == []  # nothing new: nothing to publish

    b = _manifest("support", made["b"])
    _write(tmp_path, b)
    second = scan(tmp_path, first.current)
    assert [(c.name, c.change, c.known.manifest.sha256) for c in second.changes] == [("support", "changed", b.sha256)]
    assert b.sha256 != a.sha256

    (tmp_path / "support.json").unlink()
    third = scan(tmp_path, second.current)
    assert [(c.name, c.change) for c in third.changes] == [("support", "removed")] and third.current == {}
    assert third.changes[0].event("inference-fallback").manifest is None


def test_a_relative_path_is_resolved_against_the_registry_folder(made: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    shutil.copytree(made["a"], tmp_path / "lora")
    (tmp_path / "registry").mkdir()
    _write(tmp_path / "registry", _manifest("rel", made["a"]).model_dump() | {"path": "../lora"})
    (found,) = scan(tmp_path / "registry", {}).changes
    assert found.known.manifest.path == str((tmp_path / "lora").resolve())


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ("{not json", None, "not valid JSON (line 1"),
        ({"name": "bad", "base_model": "coding", "path": "/x"}, "sha256", "Field required"),
        ({"name": "bad", "base_model": "coding", "path": "/x", "sha256": "XYZ"}, "sha256", "should match pattern"),
        ({"name": "other", "base_model": "coding", "path": "/x", "sha256": "0" * 64}, "name", "not the file's name"),
        ({"name": "bad", "base_model": "coding", "path": "/nowhere", "sha256": "0" * 64}, "path", WEIGHTS_FILE),
    ],
)
def test_a_bad_manifest_is_named_and_skipped(
    made: dict[str, Path], tmp_path: Path, body: Any, field: str | None, words: str
) -> None:
    _write(tmp_path, _manifest("good", made["a"]))
    bad = tmp_path / "bad.json"
    bad.write_text(body if isinstance(body, str) else json.dumps(body))
    result = scan(tmp_path, {})
    assert [c.name for c in result.changes] == ["good"]  # the good one is still found
    (err,) = result.errors
    assert isinstance(err, ManifestInvalid) and err.file == bad and err.field == field
    assert str(bad) in str(err) and words in str(err)
    if field:
        assert f"field '{field}'" in str(err)


def test_a_sha256_mismatch_is_refused_by_name(made: dict[str, Path], tmp_path: Path) -> None:
    lying = _manifest("liar", made["a"]).model_copy(update={"sha256": sha256_file(made["b"] / WEIGHTS_FILE)})
    file = _write(tmp_path, lying)
    result = scan(tmp_path, {})
    assert result.changes == []
    (err,) = result.errors
    assert isinstance(err, ShaMismatch) and err.field == "sha256" and err.code == "adapter_sha256_mismatch"
    assert str(file) in str(err) and "refused adapter 'liar'" in str(err) and lying.sha256 in str(err)


def test_a_manifest_that_turns_bad_keeps_its_last_good_version(made: dict[str, Path], tmp_path: Path) -> None:
    file = _write(tmp_path, _manifest("support", made["a"]))
    known = scan(tmp_path, {}).current
    file.write_text('{"name": "support", "base_m')  # a half-written file is not a removal
    result = scan(tmp_path, known)
    assert result.changes == [] and result.current == known and len(result.errors) == 1


def test_a_missing_folder_is_an_error_not_a_removal(made: dict[str, Path], tmp_path: Path) -> None:
    _write(tmp_path, _manifest("support", made["a"]))
    known = scan(tmp_path, {}).current
    result = scan(tmp_path / "gone", known)
    assert result.changes == [] and result.current == known and "does not exist" in str(result.errors[0])


async def test_watcher_publishes_each_change_once_and_retries_a_failed_publish(
    made: dict[str, Path], tmp_path: Path
) -> None:
    sent: list[AdapterUpdated] = []
    failures = [RuntimeError("nats down")]

    async def publish(event: AdapterUpdated) -> None:
        if failures:
            raise failures.pop()
        sent.append(event)

    watcher = AdapterWatcher(tmp_path, publish, producer="inference-fallback", interval_s=0.1)
    _write(tmp_path, _manifest("support", made["a"]))
    assert await watcher.scan_once() == [] and watcher.known == {}  # the publish failed: not known yet
    (event,) = await watcher.scan_once()
    assert await watcher.scan_once() == []
    assert sent == [event] and event.change == "added" and event.manifest is not None
    # Another replica's watcher over the same folder derives the same event id (JetStream drops the duplicate).
    other = AdapterWatcher(tmp_path, publish, producer="inference-fallback")
    (again,) = await other.scan_once()
    assert again.event_id == event.event_id


def test_the_book_folds_events_idempotently_and_resolves_by_base(made: dict[str, Path]) -> None:
    a, b = _manifest("support", made["a"]), _manifest("support", made["b"])
    book = AdapterBook()
    added = AdapterUpdated(producer="t", name="support", change="added", manifest=a)
    assert book.fold(added) is True and book.fold(added) is False  # the same version twice: nothing to do
    assert book.fold(AdapterUpdated(producer="t", name="support", change="changed", manifest=b)) is True
    assert book.resolve("support", role="coding", model_ref="org/m") == b
    assert book.resolve("support", role=None, model_ref="coding") == b
    with pytest.raises(AdapterWrongBase, match="is for 'coding', not role 'general'"):
        book.resolve("support", role="general", model_ref="org/m")
    assert book.fold(AdapterUpdated(producer="t", name="support", change="removed")) is True
    with pytest.raises(AdapterNotFound) as missing:
        book.resolve("support", role="coding", model_ref="org/m")
    assert missing.value.status == 404 and missing.value.field == "adapter"


def test_the_settings_fit_into_the_service_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Combined(BaseSettings, AdapterSettings):
        model_config = SettingsConfigDict(env_prefix="MODELFLEET_FALLBACK_", extra="ignore", frozen=True)

    monkeypatch.setenv("MODELFLEET_FALLBACK_ADAPTERS_DIR", str(tmp_path))
    monkeypatch.setenv("MODELFLEET_FALLBACK_ADAPTERS_SCAN_S", "2.5")
    s = Combined()
    assert s.adapters_dir == tmp_path and s.adapters_scan_s == 2.5
    assert AdapterSettings().adapters_dir is None


# --- applying adapters to a real model -------------------------------------------------------------------------


def _load(base: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base)
    model.eval()
    return model, AutoTokenizer.from_pretrained(base)


def _greedy(model: Any, tok: Any) -> list[int]:
    import torch

    ids = tok("The fleet keeps answering", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id)
    return list(out[0, ids["input_ids"].shape[1] :].tolist())


def test_an_adapter_changes_greedy_output_and_disabling_it_restores_the_base(made: dict[str, Path]) -> None:
    model, tok = _load(made["base"])
    base = _greedy(model, tok)
    a = _manifest("support", made["a"])
    peft_model = apply_adapter(model, a)
    with_a = _greedy(peft_model, tok)
    assert with_a != base
    with peft_model.disable_adapter():
        assert _greedy(peft_model, tok) == base
    b = _manifest("legal", made["b"])
    peft_model = apply_adapter(peft_model, b)  # a second adapter loads into the same PeftModel
    with_b = _greedy(peft_model, tok)
    assert with_b not in (base, with_a)
    assert apply_adapter(peft_model, a) is peft_model and _greedy(peft_model, tok) == with_a  # set_adapter back


def test_apply_verifies_the_sha256_again_before_loading(made: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(made["a"], tmp_path / "lora"))
    manifest = _manifest("support", copy)
    (copy / WEIGHTS_FILE).write_bytes((made["b"] / WEIGHTS_FILE).read_bytes())  # swapped after the scan
    model, _ = _load(made["base"])
    with pytest.raises(ShaMismatch, match="refused adapter 'support'"):
        apply_adapter(model, manifest)
    assert not hasattr(model, "peft_config")  # nothing was loaded


def test_the_adapter_set_switches_versions_and_the_base(made: dict[str, Path]) -> None:
    reference, tok = _load(made["base"])
    base = _greedy(reference, tok)
    expected_a = _greedy(apply_adapter(reference, _manifest("support", made["a"])), tok)

    model, _ = _load(made["base"])
    slot = AdapterSet(model)
    with slot.using(None) as m:
        assert _greedy(m, tok) == base  # no adapter loaded yet: the plain model
    a = _manifest("support", made["a"])
    with slot.using(a) as m:
        assert _greedy(m, tok) == expected_a
    with slot.using(None) as m:
        assert _greedy(m, tok) == base
    # A changed version (same name, new sha256) loads as a new version and the old one is dropped.
    b = _manifest("support", made["b"])
    with slot.using(b) as m:
        with_b = _greedy(m, tok)
    assert with_b not in (base, expected_a)
    assert slot.loaded == [f"support-{b.sha256[:12]}"]


def test_a_refused_switch_leaves_the_next_request_the_state_it_asks_for(made: dict[str, Path], tmp_path: Path) -> None:
    """Switching closes the base state (adapters on again) before loading the next adapter; if loading is refused,
    the next request must not inherit an adapter it did not ask for."""
    import shutil

    model, tok = _load(made["base"])
    base = _greedy(model, tok)
    slot = AdapterSet(model)
    a = _manifest("support", made["a"])
    with slot.using(a) as m:
        with_a = _greedy(m, tok)
    with slot.using(None) as m:
        assert _greedy(m, tok) == base
    copy = Path(shutil.copytree(made["b"], tmp_path / "lora"))
    bad = _manifest("legal", copy)
    (copy / WEIGHTS_FILE).write_bytes((made["a"] / WEIGHTS_FILE).read_bytes())
    with pytest.raises(ShaMismatch), slot.using(bad):
        pass
    with slot.using(None) as m:
        assert _greedy(m, tok) == base
    with slot.using(a) as m:
        assert _greedy(m, tok) == with_a


def test_a_switch_waits_for_in_flight_generations(made: dict[str, Path]) -> None:
    model, _ = _load(made["base"])
    slot = AdapterSet(model, wait_s=10)
    a = _manifest("support", made["a"])
    order: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def long_base() -> None:
        with slot.using(None):
            order.append("base in")
            inside.set()
            release.wait(10)
            order.append("base out")

    def with_adapter() -> None:
        with slot.using(a):
            order.append("adapter in")

    t1 = threading.Thread(target=long_base)
    t1.start()
    inside.wait(10)
    with slot.using(None):  # the same state as the one in flight: it runs alongside
        order.append("second base")
    t2 = threading.Thread(target=with_adapter)
    t2.start()
    t2.join(0.3)
    assert t2.is_alive()  # waiting for the base generation to end
    release.set()
    t1.join(10)
    t2.join(10)
    assert order == ["base in", "second base", "base out", "adapter in"]
