"""Benchmark the router's ingest: `gpu.sampled` events per second a router process folds into its fleet view, next to
raw nats-py JetStream consumption of the same events.

    python -m scripts.bench.ingest [--events 20000] [--hosts 200]

`--events` GpuSampled events (`--hosts` hosts in turn, each sample newer than that host's last, so every one is
folded in full: an 80 GiB GPU, an Ollama backend listing 12 installed and 2 loaded models, an OpenAI-compatible one)
are published to the EVENTS stream before anything reads them; then
- `raw_events_per_s`: a nats-py push subscription on the same subject, every message acked (as the router's are),
  from the first message to the last;
- `router_events_per_s`: `python -m services.router` (its real subscriber: FastStream's consumer with the lean fold
  path of services/runtime/dlq.py, contract validation, `Fleet.observe_sample`, ack; a consume span only when a
  span processor records), started after the publishing, so it replays the events from the stream;
  timed from its consumer's first ack to the ack of the last event (JetStream consumer info, polled every 5 ms).
  The router's active checks are pushed out of the measurement (`CHECK_INTERVAL_S=3600`); goal >= 5,000/s;
- `fold_events_per_s`: the same payloads through `GpuSampled.model_validate_json` and `Fleet.observe_sample` in
  this process, no bus: what the fold itself costs.
The router is one asyncio process: its ingest runs on one core. The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo, DeliverPolicy, StreamConfig

from contracts.hardware import BackendLoadedModel, BackendModel, BackendStatus, GpuDevice, GpuSampled
from contracts.router import BackendsRequest
from contracts.subjects import EVENTS_STREAM, STREAMS
from contracts.vram import GIB
from scripts.bench.baseline import stop, wait_healthy
from services.router.fleet import Fleet
from services.runtime.bus import DUPLICATE_WINDOW_S
from services.runtime.embedded import EmbeddedNats

ROOT = Path(__file__).resolve().parents[2]
MODELS = [f"bench-model-{i:02d}:q4" for i in range(12)]


def sample(i: int, hosts: int, at: datetime) -> GpuSampled:
    """The i-th event: host i % hosts, as a probe with an Ollama and a llama.cpp server reports it."""
    host = f"host-{i % hosts:04d}"
    loaded = [MODELS[i % len(MODELS)], MODELS[(i + 5) % len(MODELS)]]
    ollama = BackendStatus(
        kind="ollama", base_url=f"http://{host}:11434", reachable=True, version="0.12.3",
        installed=[BackendModel(name=m, size_bytes=8 * GIB, digest=f"sha256:{n:064x}") for n, m in enumerate(MODELS)],
        loaded=[BackendLoadedModel(name=m, size_bytes=9 * GIB, size_vram_bytes=9 * GIB, context_length=8192)
                for m in loaded],
    )  # fmt: skip
    llama = BackendStatus(kind="openai", base_url=f"http://{host}:8000/v1", reachable=True,
                          loaded=[BackendLoadedModel(name="smollm2")])  # fmt: skip
    free = (20 + i % 40) * GIB
    return GpuSampled(
        producer="hardware-probe", host=host, occurred_at=at, host_id=host, has_gpu=True,
        gpus=[GpuDevice(index=0, name="bench", uuid=f"GPU-{host}", memory_total_bytes=80 * GIB,
                        memory_free_bytes=free, memory_used_bytes=80 * GIB - free)],
        cpu_logical_cores=32, memory_total_bytes=256 * GIB, memory_available_bytes=200 * GIB,
        ollama_url=f"http://{host}:11434", ollama_reachable=True, interval_s=3600, backends=[ollama, llama],
    )  # fmt: skip


def payloads(n: int, hosts: int) -> list[tuple[str, bytes]]:
    """(event id, JSON) of every event: strictly newer per host, all within the router's replay window."""
    start = datetime.now(UTC) - timedelta(seconds=30)
    out = []
    for i in range(n):
        e = sample(i, hosts, start + timedelta(microseconds=i * 500))
        out.append((str(e.event_id), e.model_dump_json().encode()))
    return out


async def publish_all(js: JetStreamContext, events: list[tuple[str, bytes]]) -> None:
    for lo in range(0, len(events), 500):  # acked in batches: the stream holds every one before anything reads
        await asyncio.gather(*(
            js.publish(GpuSampled.SUBJECT, body, headers={"Nats-Msg-Id": event_id})
            for event_id, body in events[lo : lo + 500]
        ))  # fmt: skip


async def raw_rate(js: JetStreamContext, n: int) -> float:
    """A push subscription from the stream's start, each message acked; events per second, first to last."""
    got = 0
    first = last = 0.0
    done = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        nonlocal got, first, last
        if got == 0:
            first = time.perf_counter()
        await msg.ack()
        got += 1
        if got == n:
            last = time.perf_counter()
            done.set()

    sub = await js.subscribe(GpuSampled.SUBJECT, stream=EVENTS_STREAM, cb=on_msg, manual_ack=True,
                             deliver_policy=DeliverPolicy.ALL, pending_msgs_limit=n + 10)  # fmt: skip
    try:
        await asyncio.wait_for(done.wait(), 120)
    finally:
        await sub.unsubscribe()
        for info in await js.consumers_info(EVENTS_STREAM):  # gone, so the router's is the only one left
            await js.delete_consumer(EVENTS_STREAM, info.name)
    return (n - 1) / (last - first)


async def router_consumer(js: JetStreamContext) -> ConsumerInfo | None:
    for info in await js.consumers_info(EVENTS_STREAM):
        subjects = [info.config.filter_subject, *(info.config.filter_subjects or [])]
        if GpuSampled.SUBJECT in subjects:
            return info
    return None


async def router_rate(nc: NatsClient, nats_url: str, n: int, last_seq: int, hosts: int, log: Path) -> float:
    env = {**os.environ, "MODELFLEET_NATS_URL": nats_url, "MODELFLEET_STATE_DIR": str(log.parent / "state"),
           "MODELFLEET_HOST_ID": "bench", "MODELFLEET_LOG_LEVEL": "WARNING",
           "MODELFLEET_ROUTER_CHECK_INTERVAL_S": "3600"}  # fmt: skip
    js = nc.jetstream()
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before the timing
            [sys.executable, "-m", "services.router"], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    try:
        first_t, first_acked = 0.0, 0
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            info = await router_consumer(js)
            acked = info.ack_floor.stream_seq if info is not None and info.ack_floor else 0
            now = time.perf_counter()
            if acked and not first_t:
                first_t, first_acked = now, acked
            if acked >= last_seq:
                if acked == first_acked:
                    raise RuntimeError("the router acked everything before the first poll: raise --events")
                rate = (acked - first_acked) / (now - first_t)
                break
            if proc.poll() is not None:
                raise RuntimeError(f"the router exited with {proc.returncode}; see {log}")
            await asyncio.sleep(0.005)
        else:
            raise RuntimeError(f"the router did not ack all {n} events in time; see {log}")
        await wait_healthy(nc, "router")
        reply = json.loads((await nc.request(BackendsRequest.SUBJECT, b"{}", timeout=10)).data)
        seen = {b.get("host_id") for b in reply.get("backends", [])}
        if len(seen) < hosts:
            raise RuntimeError(f"the router's view holds {len(seen)} of {hosts} hosts: {str(reply)[:300]}")
        return rate
    finally:
        stop(proc)


def fold_rate(events: list[tuple[str, bytes]]) -> float:
    fleet = Fleet()
    t0 = time.perf_counter()
    for _, body in events:
        fleet.observe_sample(GpuSampled.model_validate_json(body))
    return len(events) / (time.perf_counter() - t0)


async def bench(n: int, hosts: int) -> dict[str, object]:
    events = payloads(n, hosts)
    fold = sorted(fold_rate(events) for _ in range(3))[1]
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        server = EmbeddedNats(Path(tmp) / "nats").start()
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            for name, subjects in STREAMS.items():
                await js.add_stream(StreamConfig(name=name, subjects=list(subjects),
                                                 duplicate_window=DUPLICATE_WINDOW_S))  # fmt: skip
            await publish_all(js, events)
            last_seq = (await js.stream_info(EVENTS_STREAM)).state.last_seq
            raw = await raw_rate(js, n)
            routed = await router_rate(nc, server.url, n, last_seq, hosts, Path(tmp) / "router.log")
        finally:
            await nc.close()
            server.stop()
    return {
        "events": n, "hosts": hosts, "bytes_per_event": round(sum(len(b) for _, b in events) / n),
        "router_events_per_s": round(routed), "raw_events_per_s": round(raw), "fold_events_per_s": round(fold),
        "router_over_raw": round(routed / raw, 3),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--hosts", type=int, default=200)
    args = parser.parse_args()
    figures = asyncio.run(bench(args.events, args.hosts))
    figures["goal"] = "router_events_per_s >= 5000"
    figures["goal_met"] = float(figures["router_events_per_s"]) >= 5000  # type: ignore[arg-type]
    print(
        f"router folds {figures['router_events_per_s']} gpu.sampled/s vs raw nats-py {figures['raw_events_per_s']}/s "
        f"({figures['router_over_raw']}x); validation + fold alone {figures['fold_events_per_s']}/s"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
