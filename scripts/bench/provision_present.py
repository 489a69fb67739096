"""Benchmark: a provision request for a model already present on the host, from the command to its per-role result.

Starts its own NATS and PostgreSQL, the Ollama peer (with the model installed) and the provisioner as a process, then
publishes `cmd.provisioner.provision.v1` sequentially and waits for each `evt.provisioner.request.completed.v1`.
The baseline is raw NATS request/reply to an echo responder in another process, in the same run.
Prints one JSON object as its last line: p50_ms, p99_ms, baseline_p50_ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
from nats.aio.client import Client as NatsClient

from contracts.provisioner import ProvisionCommand, ProvisionCompleted
from scripts.bench.baseline import ECHO_SUBJECT, pct, start_echo, stop, wait_healthy
from services.runtime.embedded import EmbeddedNats, EmbeddedPostgres
from tests.peers.ollama_server import OllamaPeer

ROOT = Path(__file__).resolve().parents[2]


async def measure(nc: NatsClient, n: int, roles_model: str) -> list[float]:
    js = nc.jetstream()
    waiting: dict[str, asyncio.Future[ProvisionCompleted]] = {}

    async def on_done(msg: object) -> None:
        event = ProvisionCompleted.model_validate_json(msg.data)  # type: ignore[attr-defined]
        future = waiting.pop(str(event.request_id), None)
        if future is not None and not future.done():
            future.set_result(event)

    sub = await nc.subscribe(ProvisionCompleted.SUBJECT, cb=on_done)
    samples = []
    try:
        for _ in range(n):
            cmd = ProvisionCommand(producer="bench", models=[roles_model])
            future = asyncio.get_running_loop().create_future()
            waiting[str(cmd.request_id)] = future
            t0 = time.perf_counter()
            await js.publish(cmd.SUBJECT, cmd.model_dump_json().encode(), headers={"Nats-Msg-Id": str(cmd.event_id)})
            done = await asyncio.wait_for(future, 10)
            samples.append((time.perf_counter() - t0) * 1000)
            if [a.action for a in done.actions] != ["present"]:
                raise RuntimeError(f"expected present, got {done.actions}")
    finally:
        await sub.unsubscribe()
    return samples


async def run(args: argparse.Namespace) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-provision-"))
    nats_srv = EmbeddedNats(tmp / "nats").start()
    pg = EmbeddedPostgres(tmp / "pg" / "data", fsync=False).start()
    ollama = OllamaPeer().start()
    ollama.install("qwen3:8b")
    env = {**os.environ, "MODELFLEET_NATS_URL": nats_srv.url, "MODELFLEET_DATABASE_URL": pg.url,
           "MODELFLEET_STATE_DIR": str(tmp / "state"), "MODELFLEET_HOST_ID": "bench", "MODELFLEET_LOG_LEVEL": "WARNING",
           "MODELFLEET_PROVISIONER_OLLAMA_HOSTS": json.dumps({"gpu-1": ollama.url}), "HF_HUB_DISABLE_TELEMETRY": "1",
           "MODELFLEET_PROVISIONER_UPDATE_CHECK": "false"}  # fmt: skip
    log = (tmp / "provisioner.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "services.provisioner"], cwd=ROOT, env=env, stdout=log, stderr=log)  # noqa: ASYNC220
    echo = start_echo(nats_srv.url)
    nc = await nats.connect(nats_srv.url)
    try:
        await wait_healthy(nc, "provisioner")
        await measure(nc, args.warmup, "qwen3:8b")
        samples = await measure(nc, args.requests, "qwen3:8b")
        baseline = []
        for _ in range(args.requests):
            t0 = time.perf_counter()
            await nc.request(ECHO_SUBJECT, b"x" * 200, timeout=5)
            baseline.append((time.perf_counter() - t0) * 1000)
        p50 = statistics.median(samples)
        return {
            "bench": "provision_present", "requests": len(samples), "p50_ms": round(p50, 3),
            "p99_ms": round(pct(samples, 0.99), 3), "baseline_p50_ms": round(statistics.median(baseline), 3),
            "baseline_p99_ms": round(pct(baseline, 0.99), 3),
            "baseline": "raw NATS request/reply to an echo responder",
            "path": "JetStream command -> durable pull consumer -> request row -> cached per-role result, checked "
                    "against the host's /api/tags -> result row + outbox -> evt.provisioner.request.completed.v1",
            "goal": "p50_ms <= 10", "goal_met": p50 <= 10,
        }  # fmt: skip
    finally:
        await nc.close()
        stop(proc, echo)
        log.close()
        ollama.stop()
        pg.stop()
        nats_srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
