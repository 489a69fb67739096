"""Provisioner decisions: what a reference needs, revision pinning, safe paths, quant choice, progress, fit, cache."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.model_ref import ModelRefError, parse_model_ref
from contracts.provisioner import ProvisionActionResult
from services.provisioner import domain
from services.provisioner.flights import ResultCache, SingleFlight
from services.provisioner.settings import ProvisionerSettings

pytestmark = pytest.mark.unit
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("raw", "provision"),
    [
        ("qwen3", "ollama_pull"),
        ("acme/coder:1b", "ollama_pull"),
        ("hf.co/u/r-GGUF:Q4_K_M", "ollama_pull"),
        (f"hf.co/u/r-GGUF:Q8_0@{SHA}", "gguf_import"),
        ("org/tiny-llama@v2", "checkpoint"),
    ],
)
def test_what_the_provisioner_does_for_a_reference(raw, provision):
    assert domain.provision_of(parse_model_ref(raw)) == provision


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (
            "org/model",
            r"pin it \(org/model@<commit>\) or, for an Ollama namespaced model, give its tag \(org/model:latest\)",
        ),
        ("https://huggingface.co/u/r", r"u/r@<commit>"),
        ("local:x.gguf", "local file is read from the models directory"),
    ],
)
def test_references_with_nothing_to_fetch_are_refused_naming_the_fix(raw, needle):
    with pytest.raises(domain.BadReference, match=needle):
        domain.provision_of(parse_model_ref(raw))


def test_one_except_catches_parse_and_provisioning_refusals():
    assert issubclass(domain.BadReference, ModelRefError)
    for raw in ("qwen3 8b", "org/model"):
        with pytest.raises(ModelRefError):
            domain.provision_of(parse_model_ref(raw))


def test_names_read_from_a_host_get_ollamas_default_tag():
    assert domain.normalize_ollama("qwen3") == "qwen3:latest"
    assert domain.normalize_ollama("org/m") == "org/m:latest"
    assert domain.normalize_ollama("example.com:5000/team/m") == "example.com:5000/team/m:latest"
    assert domain.normalize_ollama("qwen3:8b") == "qwen3:8b"


def test_revisions_classified_and_branches_refused_unless_allowed():
    tags, branches = {"v1": SHA}, {"main": SHA}
    assert domain.classify_revision(SHA, tags, branches) == "commit"
    assert domain.classify_revision("v1", tags, branches) == "tag"
    assert domain.classify_revision("main", tags, branches) == "branch"
    with pytest.raises(domain.BadReference, match="no such commit, tag or branch"):
        domain.classify_revision("nope", tags, branches)
    with pytest.raises(domain.BadReference, match="is a branch"):
        domain.require_pinned("main", "branch", allow_unpinned=False)
    domain.require_pinned("main", "branch", allow_unpinned=True)
    domain.require_pinned("v1", "tag", allow_unpinned=False)


@pytest.mark.parametrize(
    "name", ["../../x.gguf", "/etc/passwd", "a/../../b.gguf", "a//b.gguf", "a\\b.gguf", "./x.gguf", ""]
)
def test_file_names_that_climb_out_are_refused(name):
    with pytest.raises(domain.BadReference):
        domain.safe_relative_path(name)


@given(st.lists(st.sampled_from(["a", "b", "..", ".", "models", "x.gguf"]), min_size=1, max_size=6))
def test_safe_paths_never_climb(parts):
    name = "/".join(parts)
    try:
        path = domain.safe_relative_path(name)
    except domain.BadReference:
        return
    assert ".." not in path.parts and not path.is_absolute()


def test_quant_file_selection():
    files = {"m.Q4_K_M.gguf": 1, "m.Q8_0.gguf": 2, "m-IQ3_XS.gguf": 3, "README.md": 4, "m-f16.gguf": 5}
    assert domain.select_quant_file(files, "q4_k_m") == "m.Q4_K_M.gguf"
    assert domain.select_quant_file(files, "IQ3_XS") == "m-IQ3_XS.gguf"
    assert domain.select_quant_file(files, "F16") == "m-f16.gguf"
    with pytest.raises(domain.BadReference, match="has: F16, IQ3_XS, Q4_K_M, Q8_0"):
        domain.select_quant_file(files, "Q2_K")
    split = {"m-Q4_K_M-00001-of-00002.gguf": 1, "m-Q4_K_M-00002-of-00002.gguf": 1}
    with pytest.raises(domain.BadReference, match="split GGUFs"):
        domain.select_quant_file(split, "Q4_K_M")


def test_meter_rate_and_eta():
    meter = domain.TransferMeter(started=0.0, total=1000)
    meter.done = 100
    snap = meter.snapshot(1.0)
    assert (snap.done, snap.rate_bytes_per_s, snap.eta_s) == (100, 100.0, 9.0)
    meter.done = 300
    snap = meter.snapshot(2.0)
    assert snap.rate_bytes_per_s == 150.0 and snap.eta_s == pytest.approx(700 / 150)


def test_layer_meter_sums_layers_and_gate_spaces_events():
    layers = domain.LayerMeter()
    assert layers.update("a", None, 100) == (0, 100)
    assert layers.update("a", 50, 100) == (50, 100)
    assert layers.update("b", 10, 20) == (60, 120)
    assert layers.update("", None, None) == (60, 120)  # status lines without a digest change nothing
    gate = domain.ProgressGate(0.5)
    assert gate.wait_s(10.0) == 0
    gate.mark(10.0)
    assert gate.wait_s(10.2) == pytest.approx(0.3) and gate.wait_s(10.6) == 0


def test_vram_estimate_and_fit_classes():
    need = domain.estimate_vram_bytes(1000 * domain.MIB, 4000)
    assert need == int(1200 * domain.MIB + 4 * domain.MIB + 500 * domain.MIB)
    fit = domain.FitClass()
    assert fit.classify(80, 100) == "perfect"
    assert fit.classify(95, 100) == "tight"
    assert fit.classify(101, 100) == "wont_fit"
    assert fit.classify(1, 0) == "no_gpu"


def test_skip_reasons():
    assert domain.skip_reason(auto_download=True, skip_downloads=False, provider="ollama") is None
    assert "SKIP_MODEL_DOWNLOADS" in domain.skip_reason(auto_download=True, skip_downloads=True, provider="ollama")
    assert "auto_download" in domain.skip_reason(auto_download=False, skip_downloads=False, provider="ollama")
    assert "openai" in domain.skip_reason(auto_download=True, skip_downloads=False, provider="openai")
    assert (
        domain.update_due(None, 5.0, 10.0)
        and not domain.update_due(1.0, 5.0, 10.0)
        and domain.update_due(1.0, 11.0, 10.0)
    )


async def test_single_flight_shares_one_run_and_survives_a_cancelled_waiter():
    flight: SingleFlight[int] = SingleFlight()
    runs = 0
    gate = asyncio.Event()

    async def work() -> int:
        nonlocal runs
        runs += 1
        await gate.wait()
        return 42

    waiters = [asyncio.create_task(flight.run("k", work)) for _ in range(5)]
    await asyncio.sleep(0.01)
    waiters[0].cancel()
    gate.set()
    results = await asyncio.gather(*waiters[1:])
    assert results == [42] * 4 and runs == 1 and flight.started == 1
    assert await flight.run("k", work) == 42 and runs == 2  # a finished flight is not reused


def test_result_cache_drops_by_host_and_model():
    cache: ResultCache[ProvisionActionResult] = ResultCache()
    a = ProvisionActionResult(model="m:1", target_host="h", action="present", ollama_name="m:1")
    cache.put(("general", "h"), a)
    cache.put(("general", "other"), a)
    cache.drop_host_model("h", lambda r: r.model == "m:1")
    assert cache.get(("general", "h")) is None and cache.get(("general", "other")) == a


def test_settings_read_the_hugging_face_names(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("SKIP_MODEL_DOWNLOADS", "1")
    monkeypatch.setenv("MODELFLEET_PROVISIONER_OLLAMA_HOSTS", '{"h": "http://x:11434"}')
    s = ProvisionerSettings()
    assert (s.hf_endpoint, s.skip_downloads, s.ollama_hosts) == ("http://127.0.0.1:1", True, {"h": "http://x:11434"})
    assert s.hf_token is not None and "hf_secret" not in repr(s)
