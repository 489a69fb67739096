"""Two probe daemons and the gateway as processes, driven over HTTP and through the `modelfleet` CLI."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from contracts.architecture import rescale_shape
from contracts.fit import HostCapacity, fit_on_host, fit_report
from contracts.gguf_header import model_shape
from contracts.vram import (
    GIB,
    MEMORY_TIERS,
    EstimateSettings,
    ModelShape,
    QuantOption,
    estimate,
    pick_quantization,
    simple_estimate,
)
from services.cli.main import app as cli
from services.runtime.gguf_io import read_file_header
from tests.harness.gguf_builder import write_tiny_llama
from tests.harness.no_gpu import no_gpu_env
from tests.harness.waiting import eventually

pytestmark = pytest.mark.e2e

ADMIN = "hosts-admin-token"


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_tiny_llama(tmp_path / "tiny.gguf")


@pytest.fixture
def file_server(tiny: Path) -> Iterator[str]:
    """Serves the tiny GGUF with Range support, like a model host's resolve URL."""
    data = tiny.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            a, b = (int(x) for x in self.headers["Range"].removeprefix("bytes=").split("-"))
            body = data[a : b + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {a}-{a + len(body) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/tiny.gguf"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
async def fleet(
    service_env: Callable[..., dict[str, str]], start_service: Callable[..., Any], start_gateway: Callable[..., Any]
) -> AsyncIterator[httpx.AsyncClient]:
    probe = dict(MODELFLEET_PROBE_INTERVAL_S="0.25", MODELFLEET_OLLAMA_URL="http://127.0.0.1:1", **no_gpu_env())
    await start_service("hardware-probe", service_env(**probe))
    await start_service("hardware-probe", service_env(MODELFLEET_HOST_ID="second-host", **probe))
    url = await start_gateway(service_env(MODELFLEET_ADMIN_TOKEN=ADMIN))
    async with httpx.AsyncClient(base_url=url, timeout=10, headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            hosts = (await client.get("/api/v1/hosts")).json().get("hosts", [])
            if {h["host_id"] for h in hosts} == {"test-host", "second-host"}:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"both probes never reported: {hosts}")
        yield client


async def test_hosts_and_fit_need_a_token(fleet: httpx.AsyncClient) -> None:
    for path in ("/api/v1/hosts", "/api/v1/hosts/test-host", "/api/v1/fit?size_bytes=1000"):
        r = await fleet.get(path, headers={"Authorization": ""})
        assert r.status_code == 401, (path, r.text)
        # Not the admin token, and no catalog in this fleet to check a user token: refused, saying why.
        r = await fleet.get(path, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 503, (path, r.text)
        assert "cannot check the token" in r.json()["detail"]


async def test_hosts_list_and_detail_with_history(fleet: httpx.AsyncClient) -> None:
    async def my_host() -> dict[str, Any] | None:
        # One listing can miss a host that the previous one showed (the KV key listing is a fresh watcher per
        # request): wait until this host is listed rather than read it once.
        hosts = {h["host_id"]: h for h in (await fleet.get("/api/v1/hosts")).json()["hosts"]}
        got: dict[str, Any] | None = hosts.get("test-host")
        return got

    me = await eventually(my_host, 10, "test-host in GET /api/v1/hosts")
    assert me["stale"] is False and me["age_s"] < 5
    assert me["sample"]["has_gpu"] is False and "NVML" in me["sample"]["no_gpu_reason"]
    assert me["sample"]["ollama_reachable"] is False

    deadline = time.monotonic() + 10
    while True:  # wait until at least 4 samples of this host are in the stream
        detail = (await fleet.get("/api/v1/hosts/test-host", params={"last": 4})).json()
        if len(detail["history"]) == 4 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    history = detail["history"]
    assert len(history) == 4
    assert {s["host_id"] for s in history} == {"test-host"}  # the other host's samples are filtered out
    stamps = [s["occurred_at"] for s in history]
    assert stamps == sorted(stamps) and len(set(stamps)) == 4
    assert detail["sample"]["host_id"] == "test-host"

    missing = await fleet.get("/api/v1/hosts/no-such-host")
    assert missing.status_code == 404 and "no-such-host" in missing.json()["detail"]


async def test_fit_over_http(fleet: httpx.AsyncClient, file_server: str, tiny: Path) -> None:
    none = await fleet.get("/api/v1/fit")
    assert none.status_code == 422 and "exactly one of" in none.json()["detail"]
    bad = await fleet.get("/api/v1/fit", params={"size_bytes": 1, "cache_type": "q5"})
    assert bad.status_code == 422 and "cache_type" in bad.text

    sized = (await fleet.get("/api/v1/fit", params={"size_bytes": 2 * GIB, "num_ctx": 4096})).json()
    assert sized["simple"] and sized["total_bytes"] == simple_estimate(2 * GIB, 4096).total_bytes
    by_host = {h["host_id"]: h for h in sized["hosts"]}
    assert set(by_host) == {"test-host", "second-host"}
    assert by_host["test-host"]["device"] == "ram" and by_host["test-host"]["placement"] == "cpu"

    remote = await fleet.get("/api/v1/fit", params={"gguf_url": file_server, "num_ctx": 1024, "host": "test-host"})
    assert remote.status_code == 200, remote.text
    doc = remote.json()
    shape = model_shape(read_file_header(tiny))
    assert doc["source"] == "gguf" and doc["shape"]["block_count"] == shape.block_count
    assert [h["host_id"] for h in doc["hosts"]] == ["test-host"]
    for key in ("weights_bytes", "kv_cache_bytes", "compute_bytes", "overhead_bytes", "total_bytes", "gpu_layers"):
        assert key in doc
    # layers x cells x 2 KV heads x 32 dims x (K + V) x 2 bytes (f16)
    assert doc["kv_cache_bytes"] == shape.block_count * 1024 * 2 * 32 * 2 * 2

    unknown = await fleet.get("/api/v1/fit", params={"size_bytes": 1, "host": "nowhere"})
    assert unknown.status_code == 404


async def test_cli_hardware_and_fit(fleet: httpx.AsyncClient, tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFLEET_URL", str(fleet.base_url).rstrip("/"))
    monkeypatch.setenv("MODELFLEET_TOKEN", ADMIN)
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps table cells to the terminal's width
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, list(args))
        assert result.exit_code == 0, (args, result.output)
        return result.output

    listed = json.loads(run("hardware", "--json"))["hosts"]
    assert {h["host_id"] for h in listed} == {"test-host", "second-host"}
    assert all(h["recommended"]["profile"] in ("quality", "balanced", "fast") for h in listed)
    assert "test-host" in run("hardware")
    one = json.loads(run("hardware", "--host", "second-host", "--json"))
    assert one["host_id"] == "second-host" and one["history"]
    assert "recommendations" not in one  # no catalog in this fleet: the host view still works

    doc = json.loads(run("fit", str(tiny), "--ctx", "2048", "--parallel", "2", "--host", "test-host", "--json"))
    [host] = doc["hosts"]
    sample = next(h for h in listed if h["host_id"] == "test-host")["sample"]
    shape = model_shape(read_file_header(tiny))
    capacity = [HostCapacity(host_id="test-host", ram_available=host["free_bytes"])]
    expected = fit_report(str(tiny), "gguf", EstimateSettings(num_ctx=2048, parallel=2), capacity, shape=shape)
    assert doc["total_bytes"] == expected.total_bytes and doc["kv_cache_bytes"] == expected.kv_cache_bytes
    assert host["fit"] == "perfect" and host["device"] == "ram"
    assert abs(host["free_bytes"] - sample["memory_available_bytes"]) < 2 * GIB  # a fresh sample, same host

    sized = json.loads(run("fit", "some-model", "--size-bytes", str(64 * GIB), "--json"))
    assert sized["hosts"] and all(h["needed_bytes"] == sized["total_bytes"] for h in sized["hosts"])
    assert all((h["fit"] == "wont_fit") == (h["needed_bytes"] > h["free_bytes"]) for h in sized["hosts"])
    assert "perfect" in run("fit", str(tiny), "--free-gib", "8")


async def test_fit_of_a_catalog_model_picks_the_best_quant_per_host(
    database_url: str,
    service_env: Callable[..., dict[str, str]],
    start_service: Callable[..., Any],
    start_gateway: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await start_service("catalog", service_env(database_url=database_url))
    await start_service("hardware-probe", service_env(MODELFLEET_PROBE_INTERVAL_S="0.25", **no_gpu_env()))
    url = await start_gateway(service_env(MODELFLEET_ADMIN_TOKEN=ADMIN))
    async with httpx.AsyncClient(base_url=url, timeout=10, headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        deadline = time.monotonic() + 20
        while not (await client.get("/api/v1/hosts")).json()["hosts"] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        got = await client.get("/api/v1/fit", params={"model": "qwen3-30b-a3b", "num_ctx": 8192})
        assert got.status_code == 200, got.text
        doc = got.json()
        assert doc["source"] == "catalog" and doc["quant"] == "Q4_K_M"  # the default quantization
        sizes = {q["quant"]: q["size_bytes"] for q in doc["quants"]}
        assert sizes == {"Q4_K_M": 18_600_000_000, "Q8_0": 32_500_000_000}  # from the catalog's library
        # sized from the library's architecture figures (docs/hardware.md), not the simple form
        assert doc["method"] == "shape" and not doc["simple"]
        shape = ModelShape.model_validate(doc["shape"])
        assert doc["total_bytes"] == estimate(shape, EstimateSettings(num_ctx=8192)).total_bytes
        assert doc["kv_cache_bytes"] == 48 * 4 * 128 * 2 * 2 * 8192
        [host] = doc["hosts"]
        ram = EstimateSettings(num_ctx=8192)
        classed = [
            (
                QuantOption(quant=q["quant"], needed_bytes=q["needed_bytes"]),
                fit_on_host(
                    "test-host", rescale_shape(shape, q["size_bytes"], q["quant"]), ram, gpus_free=[],
                    ram_available=host["free_bytes"],
                ).fit,
            )
            for q in doc["quants"]
        ]  # fmt: skip
        expected = pick_quantization(classed)
        assert doc["best_quant"] == {"test-host": expected[0].quant if expected else None}

        q8 = (await client.get("/api/v1/fit", params={"model": "qwen3-30b-a3b", "quant": "q8_0"})).json()
        assert q8["quant"] == "Q8_0" and q8["shape"]["weights_bytes"] == 32_500_000_000
        missing_quant = await client.get("/api/v1/fit", params={"model": "qwen3-30b-a3b", "quant": "Q2_K"})
        assert missing_quant.status_code == 422 and "Q4_K_M" in missing_quant.json()["detail"]
        unknown = await client.get("/api/v1/fit", params={"model": "no-such-model"})
        assert unknown.status_code == 404 and "no-such-model" in unknown.text

        advice = (await client.get("/api/v1/hosts/test-host/recommendations")).json()
        assert advice["memory_source"] == "ram"  # no GPU here: the tier is chosen by free RAM
        tier = next(t for t in MEMORY_TIERS if advice["memory_bytes"] < t.below_bytes)
        assert advice["model"]["tier"] == tier.name and advice["model"]["model"] is not None
        picked = advice["model"]["model"]
        assert picked["size_bytes"] <= advice["memory_bytes"] or advice["model"]["warning"]
        if tier.max_parameters_b:
            assert picked["parameters_b"] <= tier.max_parameters_b
        assert advice["settings"]["profile"] in ("quality", "balanced", "fast")

    monkeypatch.setenv("MODELFLEET_URL", url)
    monkeypatch.setenv("MODELFLEET_TOKEN", ADMIN)
    result = CliRunner().invoke(cli, ["fit", "qwen3-30b-a3b", "--quant", "Q8_0", "--ctx", "4096", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["quant"] == "Q8_0"
    shown = CliRunner().invoke(cli, ["hardware", "--host", "test-host", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["recommendations"]["model"] == advice["model"]
