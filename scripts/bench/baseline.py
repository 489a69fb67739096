"""What the bus benchmarks share: the raw NATS echo baseline, percentiles, and waiting for a service's health."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from nats.aio.client import Client as NatsClient

ECHO_SUBJECT = "bench.echo"
_ECHO = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    async def echo(msg):
        await msg.respond(msg.data)
    await nc.subscribe(sys.argv[2], queue="echo", cb=echo)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def start_echo(nats_url: str) -> subprocess.Popen[bytes]:
    """A bare nats-py responder in another process: the raw request/reply baseline."""
    proc = subprocess.Popen([sys.executable, "-c", _ECHO, nats_url, ECHO_SUBJECT], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError("the echo responder did not start")
    return proc


def stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def no_gc() -> Iterator[None]:
    """A timed loop without this process's garbage collector stepping in (collected once before)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def wait_healthy(nc: NatsClient, service: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if json.loads((await nc.request(f"rpc.{service}.health.v1", b"{}", timeout=0.5)).data).get("healthy"):
                return
        except Exception:  # not up yet
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{service} did not become healthy")
