"""Benchmark the gateway's client for OpenAI-compatible backends against httpx, the client it replaced, on the same
server: what one small chat completion costs the calling process.

    python -m scripts.bench.http_client [--requests 3000]

A minimal ASGI server (uvicorn, in another process) answers every POST /v1/chat/completions with a fixed small
chat completion, so the server's time is the same for both clients. In this process, on uvloop as the gateway runs:
- `cpu_us`: CPU time of this process per completion through the gateway's own `OpenAIBackend.complete` (aiohttp,
  JSON body, answer parsed, `model` rewritten), and `wall_p50_us` per request;
- `httpx_cpu_us` / `httpx_wall_p50_us`: the same request with one keep-alive `httpx.AsyncClient` (`post(json=...)`,
  `.json()`), as the gateway made it before (docs/gateway.md "Backend HTTP client").
Sequential requests, the two clients in alternating blocks of 100 after a warm-up; the garbage collector off while
timing. Goal (the reason to leave httpx on this path): `cpu_us` <= 0.5 x `httpx_cpu_us`. The last line is one JSON
object with the figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

import httpx
import uvloop

from scripts.bench.baseline import no_gc, pct
from services.gateway.backends import ChatCall, OpenAIBackend
from services.runtime.embedded import free_port

_SERVER = r"""
import json, sys
import uvicorn
BODY = json.dumps({"id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 24, "completion_tokens": 1, "total_tokens": 25}}).encode()
HEADERS = [(b"content-type", b"application/json")]
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""

MESSAGES = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Say hi."}]
BLOCK = 100


def start_server(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(port)])
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={}, timeout=1).raise_for_status()
            return proc
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("the bench server did not start") from None
            time.sleep(0.1)


async def bench(port: int, n: int) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}/v1"
    backend = OpenAIBackend(connect_timeout_s=2, read_timeout_s=60, max_connections=512)
    call = ChatCall(client_model="coding", messages=MESSAGES, options={"temperature": 0, "num_predict": 1, "seed": 1})
    body = {"model": "m", "messages": MESSAGES, "temperature": 0, "max_tokens": 1, "seed": 1, "stream": False}
    http = httpx.AsyncClient(timeout=httpx.Timeout(60, connect=2), limits=httpx.Limits(max_connections=512))

    async def ours() -> None:
        doc = await backend.complete(base, "m", call)
        if doc["model"] != "coding":
            raise RuntimeError(f"unexpected answer: {doc}")

    async def theirs() -> None:
        doc = (await http.post(f"{base}/chat/completions", json=body)).json()
        doc["model"] = "coding"

    try:
        for _ in range(200):  # warm both: connections, code paths
            await ours()
            await theirs()
        walls: dict[str, list[float]] = {"ours": [], "theirs": []}
        cpu = {"ours": 0.0, "theirs": 0.0}
        with no_gc():
            for block in range(0, n, BLOCK):
                order = (("ours", ours), ("theirs", theirs))
                for name, fn in order if (block // BLOCK) % 2 == 0 else order[::-1]:
                    c0 = time.process_time()
                    for _ in range(min(BLOCK, n - block)):
                        t0 = time.perf_counter()
                        await fn()
                        walls[name].append((time.perf_counter() - t0) * 1e6)
                    cpu[name] += time.process_time() - c0
    finally:
        await backend.aclose()
        await http.aclose()
    return {
        "requests": n,
        "cpu_us": round(cpu["ours"] / n * 1e6, 1),
        "wall_p50_us": round(pct(walls["ours"], 0.5), 1),
        "httpx_cpu_us": round(cpu["theirs"] / n * 1e6, 1),
        "httpx_wall_p50_us": round(pct(walls["theirs"], 0.5), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.http_client", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    port = free_port()
    server = start_server(port)
    try:
        figures = uvloop.run(bench(port, args.requests))
    finally:
        server.terminate()
        server.wait(10)
    figures["cpu_over_httpx"] = round(figures["cpu_us"] / figures["httpx_cpu_us"], 3)
    print(
        f"client CPU per completion: {figures['cpu_us']} us (gateway's OpenAIBackend, aiohttp) vs "
        f"{figures['httpx_cpu_us']} us (httpx), {figures['cpu_over_httpx']}x; wall p50 {figures['wall_p50_us']} vs "
        f"{figures['httpx_wall_p50_us']} us"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
