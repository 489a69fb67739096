"""`modelfleet fit` on a local GGUF without a fleet: the estimate alone, an explicit free size, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from contracts.gguf_header import model_shape
from contracts.vram import GIB, EstimateSettings, estimate
from services.cli.main import app as cli
from services.runtime.embedded import free_port
from services.runtime.gguf_io import read_file_header
from tests.harness.gguf_builder import SHAPE_7B, write_sparse_llama, write_tiny_llama

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def no_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFLEET_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("COLUMNS", "200")


def test_offline_fit_prints_the_estimate_and_says_no_host_was_asked(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "tiny.gguf")
    result = CliRunner().invoke(cli, ["fit", str(path), "--ctx", "4096", "--cache-type", "q8_0", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    expected = estimate(model_shape(read_file_header(path)), EstimateSettings(num_ctx=4096, cache_type="q8_0"))
    assert doc["total_bytes"] == expected.total_bytes and doc["kv_cache_bytes"] == expected.kv_cache_bytes
    assert doc["hosts"] == [] and any("no gateway" in w for w in doc["warnings"])


def test_fit_against_a_given_free_size(tmp_path: Path) -> None:
    path = write_sparse_llama(tmp_path / "7b.gguf", SHAPE_7B)
    roomy = json.loads(CliRunner().invoke(cli, ["fit", str(path), "--free-gib", "24", "--json"]).output)
    assert roomy["hosts"][0]["fit"] == "perfect" and roomy["hosts"][0]["placement"] == "full"
    small = json.loads(CliRunner().invoke(cli, ["fit", str(path), "--free-gib", "2", "--json"]).output)
    [host] = small["hosts"]
    assert host["fit"] == "wont_fit" and host["placement"] == "partial" and 0 < host["gpu_layers"] < 33
    assert host["free_bytes"] == 2 * GIB
    table = CliRunner().invoke(cli, ["fit", str(path), "--free-gib", "2"]).output
    assert "wont_fit" in table and "partial" in table


def test_bad_input_is_named(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all" * 10)
    result = CliRunner().invoke(cli, ["fit", str(junk)])
    assert result.exit_code == 2 and "not a GGUF file" in result.output
    bad_cache = CliRunner().invoke(cli, ["fit", str(junk), "--cache-type", "q5"])
    assert bad_cache.exit_code == 2 and "cache_type" in bad_cache.output
    missing = CliRunner().invoke(cli, ["fit", str(tmp_path / "absent.gguf")])
    assert missing.exit_code == 2 and "not a file" in missing.output
