"""Local discovery end to end: a probe with MODELFLEET_MODEL_DIRS, the catalog, the gateway and the `modelfleet` CLI
as processes; and the provisioner registering a found GGUF into the host's Ollama (the Ollama peer): blobs + create."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness.cli import ADMIN_TOKEN, run_cli
from tests.harness.gguf_builder import write_tiny_llama
from tests.harness.no_gpu import no_gpu_env
from tests.harness.provision_bus import Bus, provisioner_env
from tests.harness.waiting import eventually
from tests.peers.ollama_server import OllamaPeer

pytestmark = pytest.mark.e2e

INTERVAL_S = "0.5"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def drop(path: Path, staging: Path) -> Path:
    """Write a GGUF elsewhere and move it in, as a finished download or a copy lands (no half-written file seen)."""
    staging.mkdir(parents=True, exist_ok=True)
    made = write_tiny_llama(staging / path.name)
    os.replace(made, path)
    return path


async def listed(url: str, *args: str) -> list[dict[str, Any]]:
    done = await run_cli(url, "models", "list", "--local", "--json", *args)
    assert done.returncode == 0, done.stderr
    models: list[dict[str, Any]] = json.loads(done.stdout)["models"]
    return models


async def test_a_gguf_dropped_into_a_model_dir_is_listed_by_the_cli_then_drops_out(
    tmp_path: Path, database_url: str, service_env: Callable[..., dict[str, str]],
    start_service: Callable[..., Any], start_gateway: Callable[..., Any],
) -> None:  # fmt: skip
    first, second = tmp_path / "models-a", tmp_path / "models-b"
    first.mkdir()
    second.mkdir()
    (second / "pytorch_model.bin").write_bytes(b"\x80\x02not a gguf" * 100)
    dirs = os.pathsep.join([str(first), str(second)])
    await start_service("catalog", service_env(database_url=database_url))
    probe = dict(
        MODELFLEET_PROBE_INTERVAL_S=INTERVAL_S, MODELFLEET_OLLAMA_URL="http://127.0.0.1:1", MODELFLEET_MODEL_DIRS=dirs,
        **no_gpu_env(),
    )  # fmt: skip
    await start_service("hardware-probe", service_env(**probe))
    url = await start_gateway(service_env(MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN))

    async def only_the_bin() -> list[dict[str, Any]] | None:
        models = await listed(url)
        return models if [m["file"]["ref"] for m in models] == ["local:pytorch_model.bin"] else None

    before = await eventually(only_the_bin, 20, "the .bin file listed")
    assert before[0]["host_id"] == "test-host" and before[0]["file"]["format"] == "bin"

    (first / "nested").mkdir()
    gguf = drop(first / "nested" / "tiny.gguf", tmp_path / "staging")

    async def with_sha() -> dict[str, Any] | None:
        found = {m["file"]["ref"]: m for m in await listed(url)}
        got = found.get("local:nested/tiny.gguf")
        return got if got is not None and got["file"]["sha256"] else None

    doc = await eventually(with_sha, 30, "local:nested/tiny.gguf listed with its sha256")
    f = doc["file"]
    assert (doc["host_id"], f["path"], f["model_dir"]) == ("test-host", str(gguf), str(first))
    assert (f["size_bytes"], f["sha256"]) == (gguf.stat().st_size, sha(gguf))
    assert (f["architecture"], f["quant"], f["context_length"], f["format"]) == ("llama", "F16", 8192, "gguf")
    assert f["shape"]["block_count"] == 4 and f["error"] is None

    table = await run_cli(url, "models", "list", "--local", "--host", "test-host")
    assert table.returncode == 0, table.stderr
    for text in ("test-host", "local:nested/tiny.gguf", sha(gguf)[:16], "llama", "F16", "1.39 MB"):
        assert text in table.stdout, (text, table.stdout)
    assert await listed(url, "--host", "another-host") == []
    wrong = await run_cli(url, "models", "list", "--host", "test-host")
    assert wrong.returncode != 0 and "--local" in wrong.stderr

    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        assert (await http.get("/api/v1/catalog/local-models")).status_code == 401
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        r = await http.get("/api/v1/catalog/local-models", params={"sha256": sha(gguf)}, headers=auth)
        assert r.status_code == 200 and [m["file"]["ref"] for m in r.json()["models"]] == ["local:nested/tiny.gguf"]
        r = await http.get("/api/v1/catalog/local-models", params={"ref": "tiny.gguf"}, headers=auth)
        assert r.status_code == 422 and "ref" in r.text

    gguf.unlink()
    await eventually(only_the_bin, 20, "the removed GGUF gone from the listing")


async def test_the_provisioner_registers_a_local_gguf_into_the_hosts_ollama_without_a_download(
    tmp_path: Path, nats_url: str, database_url: str, service_env: Callable[..., dict[str, str]],
    start_service: Callable[..., Any], start_gateway: Callable[..., Any],
) -> None:  # fmt: skip
    models = tmp_path / "models-local"
    models.mkdir()
    gguf = drop(models / "Tiny Chat.F16.gguf", tmp_path / "staging")
    digest = sha(gguf)
    name = f"local/tiny-chat.f16:{digest[:12]}"
    bus = await Bus().start(nats_url)
    with OllamaPeer() as ollama:
        try:
            await start_service("catalog", service_env(database_url=database_url))
            probe = dict(
                MODELFLEET_PROBE_INTERVAL_S=INTERVAL_S, MODELFLEET_OLLAMA_URL=ollama.url,
                MODELFLEET_MODEL_DIRS=str(models), **no_gpu_env(),
            )  # fmt: skip
            await start_service("hardware-probe", service_env(**probe))
            url = await start_gateway(service_env(MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN))
            await eventually(lambda: _hashed(url, "local:Tiny Chat.F16.gguf"), 30, "the GGUF listed with its sha256")
            env = provisioner_env(service_env, database_url, tmp_path, "http://127.0.0.1:1", {})
            await start_service("provisioner", env)

            done = await bus.completed((await bus.provision(models=["local:Tiny Chat.F16.gguf"])).request_id, 60)
            [act] = done.actions
            assert (act.action, act.target_host, act.ollama_name, act.sha256) == ("imported", "test-host", name, digest)
            assert act.size_bytes == gguf.stat().st_size
            assert ollama.blobs == {f"sha256:{digest}": gguf.stat().st_size}  # the bytes, pushed and checked
            assert ollama.installed[name].files == {gguf.name: f"sha256:{digest}"}
            assert ollama.calls[f"POST /api/blobs/sha256:{digest}"] == 1 and ollama.calls["POST /api/pull"] == 0
            pulled = bus.of(done.request_id, ".model.pulled.v1")
            assert [(e["model"], e["sha256"]) for e in pulled] == [(name, digest)]

            again = await bus.completed((await bus.provision(models=["local:Tiny Chat.F16.gguf"])).request_id, 60)
            assert [(a.action, a.ollama_name) for a in again.actions] == [("present", name)]

            # Forced while Ollama holds the blob: created again from its digest, no second upload.
            forced = await bus.provision(models=["local:Tiny Chat.F16.gguf"], force=True, hosts=["test-host"])
            assert [a.action for a in (await bus.completed(forced.request_id, 60)).actions] == ["imported"]
            assert ollama.calls[f"POST /api/blobs/sha256:{digest}"] == 1 and ollama.calls["POST /api/create"] == 2

            missing = await bus.provision(models=["local:not-there.gguf"], hosts=["test-host"])
            [failed] = (await bus.completed(missing.request_id, 60)).actions
            assert failed.action == "failed" and "reports no file local:not-there.gguf" in (failed.reason or "")
            unnamed = await bus.provision(models=["local:not-there.gguf"])
            assert [a.action for a in (await bus.completed(unnamed.request_id, 60)).actions] == ["skipped"]
        finally:
            await bus.close()


async def _hashed(url: str, ref: str) -> bool:
    return any(m["file"]["ref"] == ref and m["file"]["sha256"] for m in await listed(url))
