"""Fixtures shared by every tier: real NATS and PostgreSQL servers, fresh databases, service processes."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.processes import GatewayProcess, ServiceProcess, stop_all
from tests.harness.provision_bus import Bus
from tests.harness.servers import choose, create_database, nats_server, postgres_server

TIERS = ("unit", "integration", "e2e", "chaos")
#: Tests never import each other (a test module's fixtures and tests would run twice, or its tier would leak).
_IMPORTS_A_TEST_MODULE = re.compile(r"^\s*(from|import)\s+tests\.(unit|integration|e2e|chaos)\b", re.M)

#: The test peers (hub, CDN, Ollama, registry, file servers) all listen on loopback, which the egress policy
#: (services/runtime/egress.py) refuses unless allowlisted: allow it for in-process clients and service processes.
#: A test of the policy itself passes its own `MODELFLEET_EGRESS_ALLOW` (`""` for none) to `service_env`.
TEST_EGRESS_ALLOW = "127.0.0.0/8,::1"
os.environ.setdefault("MODELFLEET_EGRESS_ALLOW", TEST_EGRESS_ALLOW)
#: Service processes serve no `/metrics` unless a test asks for one on a free port: the documented default ports
#: (services/runtime/metrics.py) would be shared by the many fleets a session starts, one after another.
os.environ.setdefault("MODELFLEET_METRICS_PORT", "0")


#: What a service process started by a test inherits from this process: a service built in-process (the fallback's
#: and the probe's integration tests, the gateway's app) sets these for itself (services/runtime/telemetry.py), and
#: every service process a later test started would then name its spans and metrics after that one service.
_INHERITED = ("OTEL_SERVICE_NAME", "OTEL_SEMCONV_STABILITY_OPT_IN")


@pytest.fixture(autouse=True)
def _inherited_environment_restored() -> Iterator[None]:
    """Each test leaves those variables as it found them, for the service processes of the tests after it."""
    before = {name: os.environ.get(name) for name in _INHERITED}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One PostgreSQL server for the session; tests take a fresh database from `database_url`."""
    with postgres_server(tmp_path_factory.mktemp("pg")) as url:
        yield url


@pytest.fixture
async def database_url(postgres_server_url: str) -> str:
    """A new, empty database for this test."""
    return await create_database(postgres_server_url)


@pytest.fixture(scope="session")
def _shared_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    if choose("MODELFLEET_TEST_NATS_URL") == "embedded":
        yield None  # embedded servers are cheap (~30 ms): each test gets its own, with empty streams
        return
    with nats_server(tmp_path_factory.mktemp("nats")) as url:
        yield url


@pytest.fixture
def nats_url(_shared_nats: str | None, tmp_path: Path) -> Iterator[str]:
    if _shared_nats is not None:
        yield _shared_nats
        return
    with nats_server(tmp_path) as url:
        yield url


@pytest.fixture
def service_env(nats_url: str, tmp_path: Path) -> Callable[..., dict[str, str]]:
    """The environment a service process needs; pass `database_url=` for services with tables."""

    def make(database_url: str | None = None, **extra: str) -> dict[str, str]:
        env = {
            "MODELFLEET_NATS_URL": nats_url,
            "MODELFLEET_STATE_DIR": str(tmp_path / "state"),
            "MODELFLEET_HOST_ID": "test-host",
            "MODELFLEET_LOG_LEVEL": "INFO",
            "OTEL_SDK_DISABLED": "false",
            "MODELFLEET_EGRESS_ALLOW": TEST_EGRESS_ALLOW,
            "MODELFLEET_METRICS_PORT": "0",
        }
        if database_url:
            env["MODELFLEET_DATABASE_URL"] = database_url
        env.update(extra)
        return env

    return make


@pytest.fixture
async def start_service(nats_url: str, tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    """`await start_service("provisioner", env)` starts it, waits for healthy; all are stopped at the end."""
    started: list[ServiceProcess] = []

    async def start(service: str, env: dict[str, str], timeout_s: float = 30.0) -> ServiceProcess:
        proc = ServiceProcess(service, env, tmp_path / "logs" / f"{service}-{len(started)}.log").start()
        started.append(proc)
        await proc.wait_healthy(env.get("MODELFLEET_NATS_URL", nats_url), timeout_s)
        return proc

    try:
        yield start
    finally:
        stop_all(started)


@pytest.fixture
async def start_gateway(tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    """`url = await start_gateway(env)` runs the gateway as a process on a free port; stopped at the end.
    `service="gateway-router"`: the gateway with a router replica in its process."""
    started: list[GatewayProcess] = []

    async def start(env: dict[str, str], timeout_s: float = 30.0, service: str = "gateway") -> str:
        proc = GatewayProcess(service, env, tmp_path / "logs" / f"{service}-{len(started)}.log").start()
        started.append(proc)
        return await proc.wait_ready(timeout_s)

    try:
        yield start
    finally:
        stop_all(started)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test belongs to exactly one tier; an untiered test is a collection error, not a silent default."""
    checked: set[str] = set()
    for item in items:
        tiers = [m.name for m in item.iter_markers() if m.name in TIERS]
        if len(tiers) != 1:
            raise pytest.UsageError(f"{item.nodeid} must carry exactly one tier marker of {TIERS}, has {tiers}")
        path = str(item.path)
        if path not in checked:
            checked.add(path)
            if _IMPORTS_A_TEST_MODULE.search(item.path.read_text()):
                raise pytest.UsageError(f"{item.path.name} imports a test module: shared helpers go in tests/harness/")


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    """A test-side NATS client that publishes provision commands, records evt.provisioner.*, answers as a catalog."""
    b = await Bus().start(nats_url)
    try:
        yield b
    finally:
        await b.close()
