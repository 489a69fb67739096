"""Benchmark: `rpc.catalog.resolve.v1` round trips with 1,000 profiles and 200 models, next to raw NATS request/reply.

Starts its own NATS and PostgreSQL, runs the catalog as a process, seeds it, then measures sequential round trips from
this process. The baseline is a bare nats-py echo responder in another process, answering a same-sized payload.
Prints one JSON object as its last line: p50_ms, p99_ms, baseline_p50_ms (and the ratio, per-kind figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from contracts.catalog import PROFILE_TYPES, Caller, CatalogChanged, ImportRequest, ResolveRequest
from contracts.rpc import RPC_HEADER, Frame
from scripts.bench.baseline import ECHO_SUBJECT, pct, start_echo, stop, wait_healthy
from services.runtime.embedded import EmbeddedNats, EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[2]
#: A seeded profile: its id, owner and type number.
Profile = dict[str, Any]


def failed(msg: Msg) -> bool:
    """Whether the catalog answered with its typed error (the seam marks it with the `Mf-Rpc: error` header)."""
    return (msg.headers or {}).get(RPC_HEADER) == Frame.ERROR


async def seed(nc: NatsClient, db_url: str, n_profiles: int, n_models: int) -> tuple[list[Profile], list[str]]:
    """Models through a models.txt import (one transaction); profiles and users straight into the tables."""
    have = len(json.loads((await nc.request("rpc.catalog.models.list.v1", b"{}", timeout=10)).data)["models"])
    if n_models > have:  # the curated library may already hold that many
        lines = "\n".join(f"bench-org/model-{i:04d}" for i in range(n_models - have))
        req = ImportRequest(caller=Caller(user_id="admin", admin=True), filename="bench-models.txt", content=lines)
        imported = await nc.request(req.SUBJECT, req.model_dump_json().encode(), timeout=60)
        assert not failed(imported), imported.data
    models = [
        m["id"] for m in json.loads((await nc.request("rpc.catalog.models.list.v1", b"{}", timeout=10)).data)["models"]
    ]
    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    profiles: list[Profile] = []
    try:
        rows = []
        for i in range(n_profiles):
            owner = f"user-{i % 100:03d}"
            pid = uuid.uuid4()
            ptype = 1 + i % len(PROFILE_TYPES)
            params = {"temperature": round(random.uniform(0, 2), 2), "num_ctx": random.choice([4096, 8192, 32768])}
            rows.append((pid, owner, f"p{i}", ptype, "", random.choice(models), json.dumps(params), "prompt"))
            profiles.append({"id": str(pid), "owner": owner, "type": ptype})
        await conn.executemany(
            "INSERT INTO catalog.profiles (id, owner_id, name, type, description, model_name, parameters,"
            " system_prompt) VALUES ($1, $2, $3, $4, $5, $6, $7::json, $8)",
            rows,
        )
        users = []
        for u in range(100):
            chosen = next((p for p in profiles if p["owner"] == f"user-{u:03d}" and p["type"] == 1), None)
            config = {"primary": chosen["id"]} if chosen and u % 2 == 0 else {}
            users.append((f"user-{u:03d}", "", json.dumps(config), json.dumps({"top_k": 20})))
        await conn.executemany(
            "INSERT INTO catalog.users (id, display_name, profiles, overrides) VALUES ($1, $2, $3::json, $4::json)",
            users,
        )
    finally:
        await conn.close()
    # Tell the catalog, the way another replica would, and wait until it serves the new rows.
    js = nc.jetstream()
    await js.publish(
        CatalogChanged.SUBJECT, CatalogChanged(producer="bench", what="bench seed").model_dump_json().encode()
    )
    last = ResolveRequest(profile_id=uuid.UUID(profiles[-1]["id"]), user_id=profiles[-1]["owner"])
    for _ in range(200):
        if not failed(await nc.request(last.SUBJECT, last.model_dump_json().encode(), timeout=5)):
            return profiles, models
        await asyncio.sleep(0.05)
    raise RuntimeError("the catalog never served the seeded profiles")


def requests(profiles: list[Profile], models: list[str], n: int) -> list[tuple[str, bytes]]:
    rng = random.Random(7)
    out = []
    for i in range(n):
        kind = ("role", "profile", "model")[i % 3]
        user = f"user-{rng.randrange(100):03d}"
        if kind == "role":
            req = ResolveRequest(role=rng.choice(["general", "coding", "embedding"]), user_id=user, options={"seed": i})
        elif kind == "profile":
            p = rng.choice(profiles)
            req = ResolveRequest(profile_id=uuid.UUID(p["id"]), user_id=p["owner"])
        else:
            req = ResolveRequest(model=rng.choice(models), user_id=user)
        out.append((kind, req.model_dump_json().encode()))
    return out


async def measure(nc: NatsClient, subject: str, payloads: list[bytes], check: bool) -> list[float]:
    samples = []
    for payload in payloads:
        t0 = time.perf_counter()
        msg = await nc.request(subject, payload, timeout=5)
        samples.append((time.perf_counter() - t0) * 1000)
        if check and failed(msg):
            raise RuntimeError(f"resolve failed: {msg.data[:300]!r}")
    return samples


async def run(args: argparse.Namespace) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-resolve-"))
    nats_srv = EmbeddedNats(tmp / "nats").start()
    pg = EmbeddedPostgres(tmp / "pg" / "data", fsync=False).start()
    env = {**os.environ, "MODELFLEET_NATS_URL": nats_srv.url, "MODELFLEET_DATABASE_URL": pg.url,
           "MODELFLEET_STATE_DIR": str(tmp / "state"), "MODELFLEET_HOST_ID": "bench", "MODELFLEET_LOG_LEVEL": "WARNING",
           }  # fmt: skip
    log = (tmp / "catalog.log").open("wb")
    catalog = subprocess.Popen([sys.executable, "-m", "services.catalog"], cwd=ROOT, env=env, stdout=log, stderr=log)  # noqa: ASYNC220
    echo = start_echo(nats_srv.url)
    nc = await nats.connect(nats_srv.url)
    try:
        await wait_healthy(nc, "catalog")
        profiles, models = await seed(nc, pg.url, args.profiles, args.models)
        work = requests(profiles, models, args.requests)
        payloads = [p for _, p in work]
        await measure(nc, ResolveRequest.SUBJECT, payloads[: args.warmup], True)
        await measure(nc, ECHO_SUBJECT, payloads[: args.warmup], False)
        resolve = await measure(nc, ResolveRequest.SUBJECT, payloads, True)
        baseline = await measure(nc, ECHO_SUBJECT, payloads, False)
        by_kind = {
            kind: round(statistics.median([s for (k, _), s in zip(work, resolve, strict=True) if k == kind]), 3)
            for kind in ("role", "profile", "model")
        }
        p50, base = statistics.median(resolve), statistics.median(baseline)
        return {
            "bench": "resolve", "profiles": len(profiles), "models": len(models), "requests": len(resolve),
            "p50_ms": round(p50, 3), "p99_ms": round(pct(resolve, 0.99), 3), "baseline_p50_ms": round(base, 3),
            "baseline_p99_ms": round(pct(baseline, 0.99), 3), "ratio_p50": round(p50 / base, 2),
            "p50_ms_by_kind": by_kind, "goal": "p50_ms <= 2 and ratio_p50 <= 4",
            "goal_met": p50 <= 2 and p50 / base <= 4,
        }  # fmt: skip
    finally:
        await nc.close()
        stop(catalog, echo)
        log.close()
        pg.stop()
        nats_srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profiles", type=int, default=1000)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
