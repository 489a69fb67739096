"""The fallback's device path on this CPU host, for real: float32 by default, bfloat16 when asked and the CPU does it
(a real bf16 load and generation), the Unsloth status line, the real service failing at start when Unsloth is
required but missing, the plan the service gives each kind of source, and `modelfleet diagnose` showing the path
each kind of source and each role would take."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from services.inference_fallback.devices import (
    DeviceSettings,
    HostFacts,
    UnslothRequired,
    choose_path,
    cpu_bf16,
    host_facts,
    prepare_unsloth,
)
from services.inference_fallback.operations import HostMemory
from services.inference_fallback.settings import InferenceFallbackSettings
from services.inference_fallback.sources import Source
from services.runtime.embedded import free_port
from tests.harness.cli import cli
from tests.harness.processes import ROOT
from tests.harness.tiny_llama import build_tiny_llama

pytestmark = pytest.mark.unit


def _cuda_host(unsloth: bool) -> HostFacts:
    """The facts of a CUDA host (there is none here): the decision is pure given them."""
    versions = {"torch": "2.13.0+cu130", "transformers": "5.17.0", "peft": "0.21.2", "unsloth": None, "cuda": "13.0"}
    return HostFacts(True, "NVIDIA H100", True, unsloth, versions)


def test_this_host_takes_the_cpu_path_in_float32() -> None:
    facts = host_facts()
    assert facts.cuda is False and facts.unsloth_installed is False and facts.versions["cuda"] is None
    plan = choose_path()
    assert (plan.path, plan.device, plan.dtype, plan.cuda) == ("torch_cpu", "cpu", "float32", False)
    assert plan.reason == "no CUDA device"
    assert choose_path(dtype="float16").dtype == "float32"  # no float16 on the CPU
    assert choose_path(use_unsloth=True).path == "torch_cpu"


def test_bfloat16_when_asked_and_this_cpu_does_it_with_a_real_load(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    support = cpu_bf16()
    assert cpu_bf16() is support  # asked once, cached
    plan = choose_path(dtype="bfloat16")
    assert plan.dtype == ("bfloat16" if support.works else "float32")
    if not support.works:
        return
    assert ("native" if support.native else "emulated") in plan.reason
    base = build_tiny_llama(tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, plan.dtype)).to(plan.device).eval()
    tok = AutoTokenizer.from_pretrained(base)
    assert next(model.parameters()).dtype == torch.bfloat16
    ids = tok("hello", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.eos_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4


def test_a_cpu_that_fails_bfloat16_stays_in_float32() -> None:
    from services.inference_fallback.devices import Bf16Support

    plan = choose_path(dtype="bfloat16", bf16=lambda: Bf16Support(works=False, native=False))
    assert plan.dtype == "float32" and "fails it" in plan.reason


@pytest.mark.parametrize(
    ("unsloth", "use", "gguf", "path", "words"),
    [
        (True, True, False, "unsloth_cuda", "Unsloth 4-bit"),
        (True, True, True, "torch_cuda", "a GGUF is de-quantized by transformers"),
        (False, True, False, "torch_cuda", "Unsloth is not installed"),
        (True, False, False, "torch_cuda", "bfloat16"),
    ],
)
def test_the_cuda_decision(unsloth: bool, use: bool, gguf: bool, path: str, words: str) -> None:
    plan = choose_path(use_unsloth=use, gguf=gguf, facts=_cuda_host(unsloth))
    assert plan.path == path and plan.device == "cuda:0" and plan.dtype == "bfloat16" and words in plan.reason
    assert choose_path(allow_cuda=False, facts=_cuda_host(True)).path == "torch_cpu"


def _status_line(caplog: pytest.LogCaptureFixture) -> dict[str, object]:
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fallback.unsloth ")]
    parsed: dict[str, object] = json.loads(line.removeprefix("fallback.unsloth "))
    return parsed


def test_the_unsloth_line_on_this_host_says_why_not(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.inference_fallback.devices")
    status = prepare_unsloth(DeviceSettings())
    assert status.applied is False and status.reason.startswith("no CUDA device")
    line = _status_line(caplog)
    assert line["applied"] is False and line["reason"] == status.reason
    versions = line["versions"]
    assert isinstance(versions, dict)
    assert versions["torch"].startswith("2.13") and versions["transformers"] and versions["unsloth"] is None
    assert set(versions) == {"torch", "transformers", "peft", "unsloth", "cuda"}


def test_a_broken_unsloth_install_on_a_cuda_host_is_not_applied(caplog: pytest.LogCaptureFixture) -> None:
    """The real import of the (absent) package fails the way a broken install does; the line says so."""
    caplog.set_level(logging.INFO, logger="services.inference_fallback.devices")
    status = prepare_unsloth(DeviceSettings(), facts=_cuda_host(unsloth=True))
    assert status.applied is False and "importing unsloth failed: ModuleNotFoundError" in status.reason
    assert _status_line(caplog)["reason"] == status.reason
    with pytest.raises(UnslothRequired, match=r"pip install 'modelfleet\[unsloth\]' on a CUDA host"):
        prepare_unsloth(DeviceSettings(require_unsloth=True), facts=_cuda_host(unsloth=True))


def test_requiring_unsloth_where_it_is_missing_fails_the_service_at_start(tmp_path: Path) -> None:
    """The real service as its process runs (`python -m services.inference_fallback`), the setting read from the
    environment: it stops in build_app, before connecting to anything (no NATS answers on the URL given)."""
    env = {
        "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
        "MODELFLEET_FALLBACK_REQUIRE_UNSLOTH": "true", "MODELFLEET_NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "MODELFLEET_STATE_DIR": str(tmp_path / "state"),
    }  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "services.inference_fallback"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1, done.stderr
    required = "UnslothRequired: MODELFLEET_FALLBACK_REQUIRE_UNSLOTH=true but Unsloth cannot be applied: no CUDA device"
    assert required in done.stderr
    assert "pip install 'modelfleet[unsloth]' on a CUDA host" in done.stderr
    assert 'fallback.unsloth {"applied": false' in done.stderr  # the status line came first
    assert "in build_app" in done.stderr  # it stopped while building, before the service started


def _sources(tmp_path: Path) -> tuple[Source, Source]:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    return (Source("path", tmp_path, False, f"path {tmp_path}"), Source("path", gguf, True, f"path {gguf}"))


async def test_the_service_plans_each_source_on_this_cpu_as_before(tmp_path: Path) -> None:
    """Unsloth not applied (this host): a checkpoint and a GGUF both take torch_cpu in float32."""
    settings = InferenceFallbackSettings(state_dir=tmp_path, memory_budget_bytes=10**9)
    memory = HostMemory(settings, use_unsloth=prepare_unsloth(settings).applied)
    checkpoint, gguf = _sources(tmp_path)
    for source in (checkpoint, gguf, None):
        plan, budget = await memory.get(source)
        assert (plan.path, plan.device, plan.dtype, budget) == ("torch_cpu", "cpu", "float32", 10**9)


async def test_on_a_cuda_host_with_unsloth_applied_a_checkpoint_takes_it_and_a_gguf_does_not(tmp_path: Path) -> None:
    settings = InferenceFallbackSettings(state_dir=tmp_path, memory_budget_bytes=10**9)
    memory = HostMemory(settings, use_unsloth=True, facts=_cuda_host(unsloth=True))
    checkpoint, gguf = _sources(tmp_path)
    assert (await memory.get(checkpoint))[0].path == "unsloth_cuda"
    plan = (await memory.get(gguf))[0]
    assert plan.path == "torch_cuda" and "GGUF" in plan.reason
    not_applied = HostMemory(settings, use_unsloth=False, facts=_cuda_host(unsloth=True))  # e.g. its import failed
    assert (await not_applied.get(checkpoint))[0].path == "torch_cuda"


def test_diagnose_shows_the_fallback_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI as a user runs it; no gateway answers, so the roles are not listed and the reason says why."""
    monkeypatch.setenv("MODELFLEET_FALLBACK_DTYPE", "bfloat16")
    done = cli(f"http://127.0.0.1:{free_port()}", "diagnose")
    assert done.returncode == 0, done.stderr
    section = json.loads(done.stdout)["fallback"]
    assert section["settings"]["dtype"] == "bfloat16"
    assert section["cuda"]["available"] is False and section["unsloth"] == {"installed": False, "version": None}
    want = "bfloat16" if cpu_bf16().works else "float32"
    for kind in ("checkpoint", "gguf"):
        assert section["paths"][kind]["path"] == "torch_cpu" and section["paths"][kind]["dtype"] == want
    assert section["roles"] == {} and "GET /api/v1/models failed" in section["roles_error"]
    skipped = json.loads(cli("http://127.0.0.1:1", "diagnose", "--no-roles").stdout)["fallback"]
    assert skipped["roles_error"] == "--no-roles" and skipped["paths"]["gguf"]["path"] == "torch_cpu"


def test_the_report_maps_each_role_to_its_source_kind() -> None:
    from services.inference_fallback.devices import report

    roles = {"coding": None, "chat": {"path": "/srv/checkpoint"}, "doc": {"path": "/m/x.gguf"}, "r": {"repo": "o/n"}}
    body = report(DeviceSettings(), roles, _cuda_host(unsloth=True))
    kinds = {role: (r["source"], r["path"]) for role, r in body["roles"].items()}
    assert kinds == {
        "chat": ("checkpoint", "unsloth_cuda"),
        "coding": ("gguf", "torch_cuda"),
        "doc": ("gguf", "torch_cuda"),
        "r": ("checkpoint", "unsloth_cuda"),
    }
