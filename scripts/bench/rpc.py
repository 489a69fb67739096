"""The request/reply seam against bare nats-py, both across processes on one embedded NATS: ask vs request/reply,
stream vs publishing to an inbox.

    python -m scripts.bench.rpc [--requests 2000] [--chunks 10000]

Goals (issue 8): ask_p50_ms <= 1.3 x raw_p50_ms; stream_chunks_per_s >= 0.5 x raw_chunks_per_s.
`ask_traced_p50_ms` is an ask made inside a trace (client and server spans, `traceparent` header): the price of
tracing, reported beside the goal. The last line is one JSON object with the figures and their ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from opentelemetry.sdk.trace import TracerProvider

from contracts.envelope import Contract
from contracts.rpc import RpcRequest, StreamRequest
from scripts.bench.baseline import ECHO_SUBJECT, pct, start_echo, stop
from services.runtime.embedded import EmbeddedNats
from services.runtime.rpc import Rpc

RAW_STREAM_SUBJECT = "bench.stream"
PAYLOAD = "x" * 200
TOKEN = "token"


class BenchReply(Contract):
    text: str


class BenchRequest(RpcRequest[BenchReply]):
    SUBJECT = "rpc.bench.echo.v1"

    text: str


class BenchChunk(Contract):
    text: str


class BenchTotals(Contract):
    chunks: int


class BenchStreamRequest(StreamRequest[BenchChunk, BenchTotals]):
    SUBJECT = "rpc.bench.stream.v1"

    n: int


async def serve_seam(nats_url: str) -> None:
    """The seam's responder (run in its own process): an echo handler and a stream of `n` chunks."""
    broker = NatsBroker(servers=nats_url, logger=None)
    await broker.connect()
    rpc = Rpc(broker, "bench", TracerProvider())

    @rpc.handler(BenchRequest)
    async def echo(req: BenchRequest) -> BenchReply:
        return BenchReply(text=req.text)

    @rpc.stream_handler(BenchStreamRequest)
    async def chunks(req: BenchStreamRequest) -> AsyncIterator[BenchChunk | BenchTotals]:
        chunk = BenchChunk(text=TOKEN)
        for _ in range(req.n):
            yield chunk
        yield BenchTotals(chunks=req.n)

    await rpc.bind()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def serve_raw_stream(nats_url: str) -> None:
    """The raw baseline's publisher: on a request, publish `n` messages to its reply inbox, then an empty one."""
    nc = await nats.connect(nats_url)
    body = json.dumps({"text": TOKEN}).encode()

    async def on_request(msg: Msg) -> None:
        for _ in range(int(msg.data)):
            await nc.publish(msg.reply, body)
        await nc.publish(msg.reply, b"")

    await nc.subscribe(RAW_STREAM_SUBJECT, cb=on_request)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()


def start(role: str, nats_url: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.bench.rpc", "--serve", role, nats_url], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError(f"the {role} responder did not start")
    return proc


async def time_asks(rpc: Rpc, nc: NatsClient, requests: int) -> tuple[list[float], list[float], list[float]]:
    """Interleaved, so every path sees the same machine: ask, bare request/reply, and ask inside a trace."""
    raw_body = json.dumps({"text": PAYLOAD}).encode()
    request = BenchRequest(text=PAYLOAD)
    tracer = TracerProvider().get_tracer("bench")
    for _ in range(200):  # warm every path
        await rpc.ask(request)
        await nc.request(ECHO_SUBJECT, raw_body, timeout=5)
    ask, raw, traced = [], [], []
    for _ in range(requests):
        t0 = time.perf_counter()
        await rpc.ask(request)
        t1 = time.perf_counter()
        await nc.request(ECHO_SUBJECT, raw_body, timeout=5)
        t2 = time.perf_counter()
        with tracer.start_as_current_span("caller"):  # the span itself is outside the timing
            t3 = time.perf_counter()
            await rpc.ask(request)
            t4 = time.perf_counter()
        ask.append((t1 - t0) * 1000)
        raw.append((t2 - t1) * 1000)
        traced.append((t4 - t3) * 1000)
    return ask, raw, traced


async def raw_stream(nc: NatsClient, n: int) -> float:
    done = asyncio.Event()
    got = 0

    async def on_chunk(msg: Msg) -> None:
        nonlocal got
        if not msg.data:
            done.set()
            return
        json.loads(msg.data)
        got += 1

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_chunk, pending_msgs_limit=n + 10)
    t0 = time.perf_counter()
    await nc.publish(RAW_STREAM_SUBJECT, str(n).encode(), reply=inbox)
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - t0
    await sub.unsubscribe()
    if got != n:
        raise RuntimeError(f"raw stream lost {n - got} of {n} messages")
    return n / elapsed


async def seam_stream(rpc: Rpc, n: int) -> float:
    t0 = time.perf_counter()
    got = 0
    async for item in rpc.stream(BenchStreamRequest(n=n)):
        if isinstance(item, BenchChunk):
            got += 1
    elapsed = time.perf_counter() - t0
    if got != n:
        raise RuntimeError(f"seam stream delivered {got} of {n} chunks")
    return n / elapsed


async def bench(requests: int, chunks: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNats(Path(tmp)).start()
        procs = [start_echo(server.url), start("seam", server.url), start("raw-stream", server.url)]
        broker = NatsBroker(servers=server.url, logger=None)
        try:
            await broker.connect()
            rpc = Rpc(broker, "bench-client", TracerProvider())
            nc = await nats.connect(server.url)
            ask, raw, traced = await time_asks(rpc, nc, requests)
            await seam_stream(rpc, 1000)  # warm
            await raw_stream(nc, 1000)
            stream_rates = [await seam_stream(rpc, chunks) for _ in range(3)]
            raw_rates = [await raw_stream(nc, chunks) for _ in range(3)]
            await nc.close()
        finally:
            await broker.stop()
            stop(*procs)
            server.stop()
    figures = {
        "requests": requests,
        "ask_p50_ms": round(pct(ask, 0.5), 4),
        "raw_p50_ms": round(pct(raw, 0.5), 4),
        "ask_p99_ms": round(pct(ask, 0.99), 4),
        "ask_traced_p50_ms": round(pct(traced, 0.5), 4),
        "raw_p99_ms": round(pct(raw, 0.99), 4),
        "chunks": chunks,
        "stream_chunks_per_s": round(sorted(stream_rates)[1]),
        "raw_chunks_per_s": round(sorted(raw_rates)[1]),
    }
    figures["ask_over_raw"] = round(figures["ask_p50_ms"] / figures["raw_p50_ms"], 3)
    figures["stream_over_raw"] = round(figures["stream_chunks_per_s"] / figures["raw_chunks_per_s"], 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.rpc", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--serve", nargs=2, metavar=("ROLE", "NATS_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        role, url = args.serve
        asyncio.run(serve_seam(url) if role == "seam" else serve_raw_stream(url))
        return
    figures = asyncio.run(bench(args.requests, args.chunks))
    print(
        f"ask p50 {figures['ask_p50_ms']} ms vs raw {figures['raw_p50_ms']} ms ({figures['ask_over_raw']}x); "
        f"stream {figures['stream_chunks_per_s']}/s vs raw {figures['raw_chunks_per_s']}/s "
        f"({figures['stream_over_raw']}x)"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
