"""Local discovery's cost on a probe host: hashing a large file off the event loop, and a walk with everything cached.

    python -m scripts.bench.local_models [--size-mib 1024]

`hash_mib_s`: sha256 throughput of the probe's hasher on a file of `--size-mib` (written with random bytes, so the
page cache holds it: disk speed is not measured); `baseline_mib_s`: hashlib over the same file in one call's loop
with the same 8 MiB reads, in this thread. `loop_max_lag_ms` / `loop_p99_lag_ms`: how late a 10 ms timer on the event
loop fired while the hash ran (what a probe sample waiting for its turn would see); `idle_max_lag_ms`: the same timer
with nothing else running. `walk_ms`: one scan of 200 small cached files (the work every probe interval does;
header-less stubs, so each carries an error, which changes nothing for a cached walk).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from services.hardware_probe.local_models import HASH_CHUNK, LocalModels


async def _ticker(stop: asyncio.Event, lags: list[float], period_s: float = 0.01) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(period_s)
        lags.append((time.perf_counter() - started - period_s) * 1000)


async def _lag_while(work: asyncio.Task[None] | None, seconds: float = 1.0) -> list[float]:
    stop, lags = asyncio.Event(), list[float]()
    tick = asyncio.create_task(_ticker(stop, lags))
    if work is None:
        await asyncio.sleep(seconds)
    else:
        await work
    stop.set()
    await tick
    return lags


async def main(size_mib: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = root / "models"
        (models / "many").mkdir(parents=True)
        big = models / "big.bin"
        with big.open("wb") as f:
            for _ in range(size_mib):
                f.write(os.urandom(1 << 20))
        started = time.perf_counter()
        digest = hashlib.sha256()
        with big.open("rb") as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
        baseline_s = time.perf_counter() - started

        idle = await _lag_while(None)
        local = LocalModels("bench", [models], root / "state", 5.0, 60.0)
        await local.scan("bench")
        assert local._hasher is not None
        started = time.perf_counter()
        busy = await _lag_while(local._hasher)
        hash_s = time.perf_counter() - started
        assert local.hashed == 1

        big.unlink()
        for i in range(200):
            (models / "many" / f"m{i:03d}.gguf").write_bytes(b"GGUF" + bytes(60))
        await local.scan("bench")
        while local._hasher is not None and not local._hasher.done():
            await local._hasher
        runs = 20
        started = time.perf_counter()
        for _ in range(runs):
            await local.scan("bench")
        walk_ms = (time.perf_counter() - started) * 1000 / runs
        await local.close()
    busy.sort()
    return {
        "size_mib": size_mib,
        "hash_mib_s": round(size_mib / hash_s, 1),
        "baseline_mib_s": round(size_mib / baseline_s, 1),
        "loop_max_lag_ms": round(max(busy), 2),
        "loop_p99_lag_ms": round(busy[int(len(busy) * 0.99) - 1], 2),
        "idle_max_lag_ms": round(max(idle), 2),
        "walk_ms": round(walk_ms, 2),
    }


if __name__ == "__main__":
    logging.getLogger("services.hardware_probe.local_models").setLevel(logging.ERROR)  # 200 "not a GGUF" warnings
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    print(json.dumps(asyncio.run(main(parser.parse_args().size_mib)), indent=2))
