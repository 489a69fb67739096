"""The web UI's pure parts: fit badges from the estimator's placement, safe redirects, the vendored files' hashes."""

from __future__ import annotations

import hashlib
import re

import pytest

from contracts.catalog import ModelDoc, QuantizationDoc
from contracts.fit import HostCapacity
from contracts.vram import GIB, EstimateSettings, FitClass, Placement
from services.gateway.ui import STATIC_DIR, library
from services.gateway.ui.routes import _safe_next

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("fit", "placement", "has_gpu", "kind"),
    [
        (FitClass.PERFECT, Placement.FULL, True, "fits"),
        (FitClass.TIGHT, Placement.FULL, True, "tight"),
        (FitClass.WONT_FIT, Placement.PARTIAL, True, "offload"),  # the estimator's fit is about the full placement
        (FitClass.WONT_FIT, Placement.CPU, True, "wont"),
        (FitClass.PERFECT, Placement.CPU, False, "fits"),  # no GPU: judged against RAM
        (FitClass.TIGHT, Placement.CPU, False, "tight"),
        (FitClass.WONT_FIT, Placement.CPU, False, "wont"),
    ],
)
def test_badge_kind(fit: FitClass, placement: Placement, has_gpu: bool, kind: str) -> None:
    assert library.badge_kind(fit, placement, has_gpu) == kind


def test_rows_judge_every_quantization_on_every_host_and_follow_the_context() -> None:
    doc = ModelDoc(
        id="m", display_name="M", quantizations=[QuantizationDoc(name="Q4_K_M", size_bytes=4 * GIB),
                                                 QuantizationDoc(name="none", size_bytes=0)],
    )  # fmt: skip
    hosts = [
        HostCapacity(host_id="big", gpus_free=[80 * GIB], gpu_indexes=[0], ram_available=64 * GIB),
        HostCapacity(host_id="small", gpus_free=[3 * GIB], gpu_indexes=[0], ram_available=64 * GIB),
        HostCapacity(host_id="ram", ram_available=2 * GIB),
    ]
    [row] = library.rows([doc], hosts, EstimateSettings(num_ctx=2048))
    [q] = row.quants  # a quantization without a size cannot be judged: left out
    assert q.method == "file-size" and q.needed_bytes > 4 * GIB
    assert {b.host_id: b.kind for b in q.badges} == {"big": "fits", "small": "wont", "ram": "wont"}
    assert row.runs_on("big") and not row.runs_on("small")
    [longer] = library.rows([doc], hosts, EstimateSettings(num_ctx=1_000_000))
    assert longer.quants[0].needed_bytes > q.needed_bytes


def test_only_paths_of_the_ui_are_redirect_targets() -> None:
    assert _safe_next("/ui/hosts?x=1") == "/ui/hosts?x=1"
    for bad in (None, "", "https://evil.example/ui/", "//evil.example/ui/", "/ui\\..\\x", "/api/v1/hosts"):
        assert _safe_next(bad) == "/ui/library"


def test_vendored_files_match_their_recorded_sha256() -> None:
    vendor = STATIC_DIR / "vendor"
    text = (vendor / "VENDORED.md").read_text()
    # the table: | library | version | licence | `file` (`origin`) | `sha256` |; then each licence file's sha256
    recorded = {
        re.findall(r"`([^`]+)`", cells[4])[0]: cells[5].strip().strip("`")
        for cells in (line.split("|") for line in text.splitlines() if re.search(r"\| `[0-9a-f]{64}` \|$", line))
    }
    recorded |= dict(re.findall(r"`([\w.-]+-LICENSE)` sha256 `([0-9a-f]{64})`", text))
    files = {p.name for p in vendor.iterdir() if p.name != "VENDORED.md"}
    assert set(recorded) == files
    for name, digest in recorded.items():
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
