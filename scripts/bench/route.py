"""Benchmark the router: the in-process decision on a 1,000-host fleet, and `rpc.router.route.v1` round trips.

    python -m scripts.bench.route [--hosts 1000] [--models 50] [--decisions 20000] [--requests 2000]

- `decide_p99_us`: `domain.decide` on a fleet of `--hosts` hosts with `--models` models installed on each, three of
  them loaded per host, four gateways' in-flight reports and a latency on every backend, a few circuits open and a
  few hosts dead; models drawn at random, the three strategies in turn (goal <= 100 us). `decide_cold_p99_us` is
  the worst case beside it: a model installed everywhere and loaded nowhere, so every installed copy is weighed.
- `route_p50_ms`: a router process answering `rpc.router.route.v1` (its catalog resolution cached) to sequential
  requests from this process, next to `raw_p50_ms`, a bare nats-py echo in another process, in the same run
  (goal route <= 1.5 x raw), the two interleaved in alternating order.
Both timed loops run with this process's garbage collector off (collected just before).
The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import nats

from contracts.hardware import GpuDevice, GpuSampled, OllamaLoadedModel
from contracts.provisioner import ModelPulled
from contracts.router import BackendCallCompleted, RouteRequest
from contracts.vram import GIB
from scripts.bench.baseline import ECHO_SUBJECT, no_gc, pct, start_echo, stop, wait_healthy
from services.router.domain import Target, decide, target
from services.router.fleet import Fleet
from services.router.strategies import Latency, LeastBusy, Strategy, Weighted
from services.runtime.embedded import EmbeddedNats, EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[2]
GATEWAYS = ("gw-a", "gw-b", "gw-c", "gw-d")


def sample(host: str, loaded: list[str], at: datetime, free_gib: float = 40.0) -> GpuSampled:
    return GpuSampled(
        producer="hardware-probe", host=host, occurred_at=at, host_id=host, has_gpu=True,
        gpus=[GpuDevice(index=0, name="bench", uuid=f"GPU-{host}", memory_total_bytes=80 * GIB,
                        memory_free_bytes=int(free_gib * GIB), memory_used_bytes=0)],
        cpu_logical_cores=32, memory_total_bytes=256 * GIB, memory_available_bytes=200 * GIB,
        ollama_url=f"http://{host}:11434", ollama_reachable=True, interval_s=3600,
        ollama_models=[OllamaLoadedModel(name=n, size_bytes=8 * GIB, context_length=8192) for n in loaded],
    )  # fmt: skip


def build_fleet(n_hosts: int, n_models: int, now: float, rng: random.Random) -> tuple[Fleet, list[str]]:
    """Every host has every model installed and three loaded; every backend has reports from four gateways."""
    fleet = Fleet()
    models = [f"bench-model-{i:03d}:q4" for i in range(n_models)]
    at = datetime.fromtimestamp(now, UTC)
    for h in range(n_hosts):
        host = f"host-{h:04d}"
        for m in models:
            fleet.observe_pulled(ModelPulled(
                producer="provisioner", occurred_at=at, request_id=uuid.uuid4(), target_host=host, model=m,
                size_bytes=rng.choice([4, 8, 20, 60]) * GIB,
            ))  # fmt: skip
        fleet.observe_sample(sample(host, rng.sample(models, 3), at, free_gib=rng.choice([10, 30, 70])))
        for gw in GATEWAYS:
            outcome = "connect_refused" if rng.random() < 0.02 and gw == "gw-a" else "ok"
            fleet.observe_call(BackendCallCompleted(
                producer="gateway", occurred_at=at, host_id=host, backend_url=f"http://{host}:11434",
                model=models[0], outcome=outcome, latency_ms=rng.uniform(50, 500), gateway_instance=gw,
                in_flight=rng.randrange(0, 8),
            ))  # fmt: skip
    for dead in rng.sample(sorted(fleet.hosts), n_hosts // 50):  # 2 % dead: last heard of long ago
        fleet.hosts[dead].deadline = now - 1
    return fleet, models


def time_decisions(
    fleet: Fleet, targets: list[Target], strategies: list[Strategy], now: float, n: int, rng: random.Random
) -> list[float]:
    samples = []
    for i in range(n):
        t, strategy = rng.choice(targets), strategies[i % len(strategies)]
        t0 = time.perf_counter()
        d = decide(fleet, t, (), strategy, now, num_ctx=8192)
        samples.append((time.perf_counter() - t0) * 1e6)
        if not d.picks:
            raise RuntimeError(f"no pick for {t.model_ref}")
    return samples


def bench_decide(n_hosts: int, n_models: int, n: int) -> dict[str, float]:
    rng = random.Random(7)
    now = time.time()
    fleet, models = build_fleet(n_hosts, n_models, now, rng)
    strategies: list[Strategy] = [LeastBusy(), Latency(), Weighted({"host-0001": 4.0})]
    warm = [target(m, "ollama") for m in models]
    time_decisions(fleet, warm, strategies, now, 2000, rng)
    with no_gc():
        samples = time_decisions(fleet, warm, strategies, now, n, rng)
    cold_name = "bench-cold:q4"
    at = datetime.fromtimestamp(now, UTC)
    for h in fleet.hosts:
        fleet.observe_pulled(ModelPulled(
            producer="provisioner", occurred_at=at, request_id=uuid.uuid4(), target_host=h, model=cold_name,
            size_bytes=8 * GIB,
        ))  # fmt: skip
    cold = [target(cold_name, "ollama")]
    time_decisions(fleet, cold, strategies, now, 100, rng)  # the per-host fit cache fills here
    with no_gc():
        cold_samples = time_decisions(fleet, cold, strategies, now, max(200, n // 20), rng)
    return {
        "hosts": n_hosts, "models_per_host": n_models, "decisions": n,
        "decide_p50_us": round(pct(samples, 0.5), 2), "decide_p99_us": round(pct(samples, 0.99), 2),
        "decide_cold_p50_us": round(pct(cold_samples, 0.5), 2),
        "decide_cold_p99_us": round(pct(cold_samples, 0.99), 2),
    }  # fmt: skip


async def publish_fleet(js: nats.js.JetStreamContext, hosts: int) -> None:
    """`general` resolves to qwen3:30b-a3b: loaded on every tenth host, installed nowhere else."""
    now = datetime.now(UTC)
    for h in range(hosts):
        loaded = ["qwen3:30b-a3b"] if h % 10 == 0 else ["llama3.2:3b"]
        e = sample(f"host-{h:04d}", loaded, now)
        await js.publish(e.SUBJECT, e.model_dump_json().encode(), headers={"Nats-Msg-Id": str(e.event_id)})


async def bench_round_trips(hosts: int, n: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-route-"))
    nats_srv = EmbeddedNats(tmp / "nats").start()
    pg = EmbeddedPostgres(tmp / "pg" / "data", fsync=False).start()
    env = {**os.environ, "MODELFLEET_NATS_URL": nats_srv.url, "MODELFLEET_DATABASE_URL": pg.url,
           "MODELFLEET_STATE_DIR": str(tmp / "state"), "MODELFLEET_HOST_ID": "bench", "MODELFLEET_LOG_LEVEL": "WARNING",
           "MODELFLEET_ROUTER_RESOLVE_CACHE_TTL_S": "3600"}  # fmt: skip
    log = (tmp / "services.log").open("wb")
    procs = [
        subprocess.Popen([sys.executable, "-m", f"services.{name}"], cwd=ROOT, env=env, stdout=log, stderr=log)  # noqa: ASYNC220
        for name in ("catalog", "router")
    ]
    echo = start_echo(nats_srv.url)
    nc = await nats.connect(nats_srv.url)
    try:
        await wait_healthy(nc, "catalog")
        await wait_healthy(nc, "router")
        await publish_fleet(nc.jetstream(), hosts)
        body = RouteRequest(role="general", user_id="bench-user").model_dump_json().encode()
        deadline = time.monotonic() + 60
        while True:  # until the router has folded the fleet and routes `general`
            reply = json.loads((await nc.request(RouteRequest.SUBJECT, body, timeout=5)).data)
            if "error" not in reply:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the router never routed `general`: {reply}")
            await asyncio.sleep(0.1)
        for _ in range(300):  # warm both paths
            await nc.request(RouteRequest.SUBJECT, body, timeout=5)
            await nc.request(ECHO_SUBJECT, body, timeout=5)
        routed, raw = [], []
        with no_gc():
            for i in range(n):  # interleaved, in alternating order, so both see the same machine
                t0 = time.perf_counter()
                if i % 2:
                    await nc.request(ECHO_SUBJECT, body, timeout=5)
                    t1 = time.perf_counter()
                    msg = await nc.request(RouteRequest.SUBJECT, body, timeout=5)
                    t2 = time.perf_counter()
                    routed.append((t2 - t1) * 1000)
                    raw.append((t1 - t0) * 1000)
                else:
                    msg = await nc.request(RouteRequest.SUBJECT, body, timeout=5)
                    t1 = time.perf_counter()
                    await nc.request(ECHO_SUBJECT, body, timeout=5)
                    t2 = time.perf_counter()
                    routed.append((t1 - t0) * 1000)
                    raw.append((t2 - t1) * 1000)
                if msg.headers:
                    raise RuntimeError(f"route failed: {msg.data[:300]!r}")
        return {
            "route_hosts": hosts, "requests": n, "route_p50_ms": round(pct(routed, 0.5), 4),
            "route_p99_ms": round(pct(routed, 0.99), 4), "raw_p50_ms": round(pct(raw, 0.5), 4),
            "raw_p99_ms": round(pct(raw, 0.99), 4),
        }  # fmt: skip
    finally:
        await nc.close()
        stop(*procs, echo)
        log.close()
        pg.stop()
        nats_srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.route", description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    figures: dict[str, object] = dict(bench_decide(args.hosts, args.models, args.decisions))
    figures.update(asyncio.run(bench_round_trips(args.hosts, args.requests)))
    route_over_raw = float(figures["route_p50_ms"]) / float(figures["raw_p50_ms"])  # type: ignore[arg-type]
    figures["route_over_raw"] = round(route_over_raw, 3)
    figures["goal"] = "decide_p99_us <= 100 and route_over_raw <= 1.5"
    figures["goal_met"] = float(figures["decide_p99_us"]) <= 100 and route_over_raw <= 1.5  # type: ignore[arg-type]
    print(
        f"decide p99 {figures['decide_p99_us']} us (cold model {figures['decide_cold_p99_us']} us); "
        f"route p50 {figures['route_p50_ms']} ms vs raw {figures['raw_p50_ms']} ms ({figures['route_over_raw']}x)"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
