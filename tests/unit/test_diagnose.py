"""`modelfleet diagnose`: the risk assessment (pure), the report over an NVML stand-in, and the real command here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from services.cli.diagnose import GIB, DeviceMemory, Thresholds, assess, report
from services.cli.main import app as cli
from services.runtime.nvml import NvmlReader
from tests.harness.no_gpu import no_nvml
from tests.harness.nvml_stand_in import FakeGpu, stand_in, two_gpus
from tests.harness.processes import ROOT

pytestmark = pytest.mark.unit


def test_plenty_of_room_is_ok_with_no_steps() -> None:
    d = assess(DeviceMemory(0, "H200", 141 * GIB, 100 * GIB, 2 * GIB, 1 * GIB + GIB // 2, "torch"), Thresholds())
    assert d["risk"] == "ok" and d["remediation"] == [] and d["reasons"] == []
    assert d["free_ratio"] == pytest.approx(100 / 141, abs=1e-4)
    assert d["reserved_ratio"] == pytest.approx(2 / 141, abs=1e-4)
    assert d["allocated_of_reserved"] == 0.75


@pytest.mark.parametrize(
    ("free_gib", "risk"), [(1.0, "critical"), (3.0, "warn"), (5.0, "ok")]
)  # fmt: skip
def test_free_memory_against_min_free_gib(free_gib: float, risk: str) -> None:
    d = assess(DeviceMemory(0, "gpu", 80 * GIB, int(free_gib * GIB)), Thresholds(min_free_gib=2.0, min_free_ratio=0))
    assert d["risk"] == risk
    if risk != "ok":
        steps = " ".join(d["remediation"])
        for hint in ("shorter context", "offload", "gradient accumulation", "smaller quantization"):
            assert hint in steps


def test_free_ratio_threshold() -> None:
    d = assess(DeviceMemory(0, "gpu", 100 * GIB, 8 * GIB), Thresholds(min_free_gib=1, min_free_ratio=0.1))
    assert d["risk"] == "critical" and "--min-free-ratio 0.1" in d["reasons"][0]


def test_reserved_far_above_allocated_suggests_defragmentation() -> None:
    d = assess(DeviceMemory(0, "gpu", 24 * GIB, 12 * GIB, 10 * GIB, 2 * GIB, "torch"), Thresholds())
    assert d["risk"] == "warn"
    assert any("expandable_segments" in s for s in d["remediation"])
    assert any("fragmented" in r for r in d["reasons"])


def test_report_over_nvml_stand_in_takes_the_highest_risk() -> None:
    current = report(nvml=NvmlReader(stand_in(two_gpus())), thresholds=Thresholds(min_free_gib=2))
    assert [d["name"] for d in current["devices"]] == ["NVIDIA H200"]  # the current device only
    assert current["risk"] == "ok"
    every = report(all_devices=True, nvml=NvmlReader(stand_in(two_gpus())), thresholds=Thresholds(min_free_gib=2))
    risks = [(d["name"], d["risk"]) for d in every["devices"]]
    assert risks == [("NVIDIA H200", "ok"), ("NVIDIA RTX 4090", "critical")]
    assert every["risk"] == "critical" and every["gpu_available"] is True
    assert every["devices"][1]["source"] == "nvml" and every["devices"][1]["reserved_bytes"] is None


def test_no_cuda_skips_gpu_inspection() -> None:
    fake = stand_in([FakeGpu("x", 8 * GIB, 7 * GIB)])
    body = report(no_cuda=True, nvml=NvmlReader(fake))
    assert body["devices"] == [] and body["risk"] == "ok" and "--no-cuda" in body["no_gpu_reason"]
    assert fake.state["inits"] == 0


def test_the_real_command_on_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: versions and locations, no devices, the reason, risk ok, exit 0; the script alias agrees.

    NVML is the driver-less stand-in, so that a GPU host gives the same answer."""
    monkeypatch.setitem(sys.modules, "pynvml", no_nvml())
    result = CliRunner().invoke(cli, ["diagnose", "--min-free-gib", "1", "--min-free-ratio", "0.05"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert body["torch"]["installed"] and body["torch"]["version"].startswith("2.")
    assert body["torch"]["cuda_available"] is False
    assert body["unsloth"]["installed"] is False and body["unsloth"]["version"] is None
    assert body["thresholds"] == {"min_free_gib": 1.0, "min_free_ratio": 0.05}
    assert body["gpu_available"] is False and "NVML" in body["no_gpu_reason"]
    assert body["risk"] == "ok"
    alias = subprocess.run(
        [sys.executable, "-m", "scripts.diagnose_gpu", "--no-cuda", "--all-devices"], cwd=ROOT, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert alias.returncode == 0, alias.stderr
    assert json.loads(alias.stdout)["no_gpu_reason"] == "GPU inspection skipped (--no-cuda)"


def test_bad_threshold_is_refused() -> None:
    result = CliRunner().invoke(cli, ["diagnose", "--min-free-ratio", "3"])
    assert result.exit_code == 2 and "min-free-ratio" in result.output
