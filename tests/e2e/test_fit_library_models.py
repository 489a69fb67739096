"""Catalog, gateway and the `modelfleet` CLI: library models sized from their architecture figures, and the
recommendations of a host with two 24 GB GPUs (its sample taken through the NVML stand-in, put in the hosts KV)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError
from typer.testing import CliRunner

from contracts.hardware import HOSTS_BUCKET, GpuSampled
from services.cli.main import app as cli
from services.hardware_probe.host_stats import HostStats
from services.hardware_probe.sampler import Sampler
from services.hardware_probe.torch_stats import TorchStats
from services.runtime.nvml import NvmlReader
from tests.harness.nvml_stand_in import GIB, FakeGpu, stand_in
from tests.harness.waiting import eventually

pytestmark = pytest.mark.e2e

ADMIN = "library-fit-admin"


async def _publish_two_gpu_host(nats_url: str, tmp_path: Path) -> GpuSampled:
    """A sample of host `rig` (2 x RTX 3090, 2 GiB in use on each) as the probe takes it, in the hosts KV."""
    gpus = [FakeGpu("NVIDIA GeForce RTX 3090", 24 * GIB, 2 * GIB, procs=[]) for _ in range(2)]
    sampler = Sampler("rig", HostStats(tmp_path), NvmlReader(stand_in(gpus)), None, TorchStats(False), 5.0)
    sample = await sampler.sample()
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        try:
            kv = await js.key_value(HOSTS_BUCKET)
        except BucketNotFoundError:
            kv = await js.create_key_value(KeyValueConfig(bucket=HOSTS_BUCKET, history=5))
        await kv.put("rig", sample.model_dump_json().encode())
    finally:
        await nc.close()
    return sample


async def _forget_host(nats_url: str, host_id: str) -> None:
    """Take the host out of the hosts KV again: later tests on a shared NATS list the hosts they started."""
    nc = await nats.connect(nats_url)
    try:
        await (await nc.jetstream().key_value(HOSTS_BUCKET)).purge(host_id)
    finally:
        await nc.close()


async def test_library_fit_and_two_gpu_recommendations(
    database_url: str, nats_url: str, tmp_path: Path, service_env: Callable[..., dict[str, str]],
    start_service: Callable[..., Any], start_gateway: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    await start_service("catalog", service_env(database_url=database_url))
    url = await start_gateway(service_env(MODELFLEET_ADMIN_TOKEN=ADMIN))
    sample = await _publish_two_gpu_host(nats_url, tmp_path)
    try:
        await _check_fit_and_advice(url, sample, monkeypatch)
    finally:
        await _forget_host(nats_url, "rig")


async def _check_fit_and_advice(url: str, sample: GpuSampled, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFLEET_URL", url)
    monkeypatch.setenv("MODELFLEET_TOKEN", ADMIN)
    monkeypatch.setenv("COLUMNS", "220")
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, list(args))
        assert result.exit_code == 0, (args, result.output)
        return result.output

    # The Done-when: the KV cache at 40,960 tokens within 2 % of 48 x 4 x 128 x 2 x 2 bytes x 40960.
    doc = json.loads(run("fit", "qwen3-30b-a3b", "--ctx", "40960", "--host", "rig", "--json"))
    exact = 48 * 4 * 128 * 2 * 2 * 40960
    assert doc["method"] == "shape" and abs(doc["kv_cache_bytes"] / exact - 1) < 0.02
    assert doc["compute_bytes"] > 0 and doc["shape"]["architecture"] == "qwen3moe"
    short = json.loads(run("fit", "qwen3-30b-a3b", "--ctx", "2048", "--host", "rig", "--json"))
    assert short["total_bytes"] < doc["total_bytes"] - 3 * GIB  # the context counts now
    [host] = doc["hosts"]
    assert host["host_id"] == "rig" and host["device"] in ("gpu0", "gpu1", "gpu0+gpu1")
    assert "method: shape" in run("fit", "qwen3-30b-a3b", "--ctx", "40960")
    flux = json.loads(run("fit", "flux.1-dev", "--json"))
    assert flux["method"] == "file-size" and any("diffusion" in w for w in flux["warnings"])
    assert "method: file-size" in run("fit", "flux.1-dev")

    async with httpx.AsyncClient(base_url=url, timeout=10, headers={"Authorization": f"Bearer {ADMIN}"}) as client:

        async def advice() -> dict[str, Any] | None:
            r = await client.get("/api/v1/hosts/rig/recommendations")
            got: dict[str, Any] | None = r.json() if r.status_code == 200 else None
            return got

        body = await eventually(advice, 20, "GET /api/v1/hosts/rig/recommendations")
    assert body["memory_source"] == "gpu" and body["memory_bytes"] == 2 * sample.gpus[0].memory_free_bytes
    assert body["num_ctx"] == body["settings"]["context_length"]
    seventy = next(o for o in [body["placement"], *body["offload"]] if o["model"]["name"] == "llama3.3-70b")
    assert seventy["quant"] == "Q4_K_M" and seventy["method"] == "shape"
    fit = seventy["fit"]
    assert fit["device"] == "gpu0+gpu1" and all(g["layers"] > 0 for g in fit["gpus"])
    assert sum(g["layers"] for g in fit["gpus"]) == fit["gpu_layers"] and fit["total_layers"] == 81
    # the same placement GET /api/v1/fit gives for that model and context on this host
    async with httpx.AsyncClient(base_url=url, timeout=10, headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        params = {"model": "llama3.3-70b", "num_ctx": body["num_ctx"], "host": "rig"}
        fitted = (await client.get("/api/v1/fit", params=params)).json()
    assert fitted["hosts"][0]["gpus"] == fit["gpus"] and fitted["hosts"][0]["placement"] == fit["placement"]

    shown = run("hardware", "--host", "rig")
    assert "llama3.3-70b Q4_K_M" in shown and "gpu0+gpu1" in shown
