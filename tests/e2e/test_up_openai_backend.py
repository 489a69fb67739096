"""The data plane's acceptance, as an operator runs it: `modelfleet up` with a llama.cpp server (llama-cpp-python's,
on SmolLM2) listed in `MODELFLEET_OPENAI_BACKENDS`, so that the real hardware probe advertises it; a manifest whose
`coding` role names the model it serves; the official `openai` client answered streamed and not. The server killed:
`llm.degraded` on the bus and a 503 naming `coding`. Started again on its port: `llm.recovered`, and answers again,
with nothing restarted in the fleet."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import nats
import openai
import psutil
import pytest

from services.runtime.embedded import free_port
from tests.harness.cli import ADMIN_TOKEN, BIN, stop_up, wait_up_healthy
from tests.harness.fleet_events import role_state, transitions
from tests.harness.llama_server import llama_server
from tests.harness.waiting import eventually

pytestmark = pytest.mark.e2e

HOST = "llama-box"
ASK = [{"role": "user", "content": "Say hello."}]


def kill_server_on(port: int) -> None:
    """SIGKILL the llama.cpp server listening on `port`, as a crash would end it, and wait until it is gone."""
    for p in psutil.process_iter(["cmdline"]):
        cmdline = p.info["cmdline"] or []
        if "llama_cpp.server" in cmdline and str(port) in cmdline:
            p.send_signal(signal.SIGKILL)
            p.wait(10)
            return
    raise AssertionError(f"no llama.cpp server on port {port}")


async def answer(client: openai.AsyncOpenAI) -> Any:
    return await client.chat.completions.with_raw_response.create(model="coding", messages=ASK, max_tokens=8)


async def test_up_serves_a_role_from_a_llama_cpp_server_it_was_told_of_and_follows_it_down_and_up(
    tmp_path: Path, nats_url: str, database_url: str
) -> None:
    server_port, port = free_port(), free_port()
    url, log = f"http://127.0.0.1:{port}", tmp_path / "up.log"
    nc = await nats.connect(nats_url)
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=ADMIN_TOKEN, max_retries=0, timeout=60)
    proc: subprocess.Popen[bytes] | None = None
    try:
        with llama_server(port=server_port, log=tmp_path / "llama.log") as (base_url, model_id):
            env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFLEET_", "OTEL_"))}
            env |= {"MODELFLEET_URL": url, "MODELFLEET_ADMIN_TOKEN": ADMIN_TOKEN, "MODELFLEET_HOST_ID": HOST,
                    "MODELFLEET_OPENAI_BACKENDS": base_url, "COLUMNS": "200"}  # fmt: skip
            cmd = [str(BIN), "up", "--state-dir", str(tmp_path / "state"), "--port", str(port), "--no-metrics",
                   "--nats-url", nats_url, "--database-url", database_url]  # fmt: skip
            with log.open("wb") as out:
                proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
            wait_up_healthy(url, 90, proc, log)
            children = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
            manifest = {"profiles": {"default": {"models": {"coding": {"name": model_id, "provider": "openai"}}}}}
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                imported = await http.post("/api/v1/catalog/import", params={"filename": "roles.json"},
                                           content=json.dumps(manifest),
                                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})  # fmt: skip
                assert imported.status_code == 200, imported.text

            # the probe's sample advertises the server: `coding` is answered by it
            raw = await eventually(lambda: answer(client), 60, "coding answered")
            assert raw.headers["x-modelfleet-backend"] == f"{HOST} {base_url}"
            done = raw.parse()
            assert done.model == "coding" and done.choices[0].message.content
            stream = await client.chat.completions.create(
                model="coding", messages=ASK, max_tokens=8, stream=True, stream_options={"include_usage": True}
            )
            chunks = [c async for c in stream]
            assert chunks[0].choices[0].delta.role == "assistant"
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
            await eventually(lambda: _is(nc, "coding", "healthy"), 30, "coding healthy")

            kill_server_on(server_port)
            killed = time.monotonic()
            await eventually(lambda: _transitions_are(nc, ["degraded"]), 30, "llm.degraded on the stream")
            print(f"llm.degraded {time.monotonic() - killed:.1f} s after the kill")
            with pytest.raises(openai.InternalServerError) as refused:
                await client.chat.completions.create(model="coding", messages=ASK, max_tokens=8)
            assert refused.value.status_code == 503
            body: dict[str, Any] = refused.value.body  # type: ignore[assignment]
            assert body["code"] == "no_backend" and "'coding'" in body["message"], body

        with llama_server(port=server_port, log=tmp_path / "llama.log"):
            raw = await eventually(lambda: answer(client), 60, "coding answered again")
            assert raw.headers["x-modelfleet-backend"] == f"{HOST} {base_url}"
            assert raw.parse().choices[0].message.content
            await eventually(lambda: _transitions_are(nc, ["degraded", "recovered"]), 30, "llm.recovered")
            assert await transitions(nc.jetstream(), "coding") == ["degraded", "recovered"]
            # nothing in the fleet was restarted for it
            assert {p.pid for p in psutil.Process(proc.pid).children(recursive=True)} >= children
            assert "exited" not in log.read_text(), log.read_text()
    finally:
        await client.close()
        await nc.close()
        if proc is not None:
            stop_up(proc)


async def _is(nc: Any, role: str, state: str) -> bool:
    return await role_state(nc, role) == state


async def _transitions_are(nc: Any, expected: list[str]) -> bool:
    return await transitions(nc.jetstream(), "coding") == expected
