"""A real browser for the web UI's tests: Debian's Chromium (installed by `scripts/setup test`) driven headless by
Playwright for Python, and a whole fleet started once for a test module (processes, the Ollama and hub peers).

Playwright cannot download its own browsers here (FIELD-NOTES): it is pointed at /usr/bin/chromium."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from playwright.sync_api import Browser, Page, ViewportSize, sync_playwright

from tests.harness.no_gpu import no_gpu_env
from tests.harness.processes import ROOT, GatewayProcess, ServiceProcess
from tests.harness.servers import create_database, nats_server
from tests.harness.small_gpu import small_gpu_env
from tests.harness.two_gpus import two_gpus_env
from tests.peers.hub_server import HubPeer
from tests.peers.ollama_server import OllamaPeer

T = TypeVar("T")
CHROMIUM = Path(os.environ.get("MODELFLEET_CHROMIUM", "/usr/bin/chromium"))
#: Where the tests write a screenshot of each page (docs/web-ui.md links it); ignored by git (build/).
SCREENSHOTS = Path(os.environ.get("MODELFLEET_UI_SCREENSHOTS", ROOT / "build" / "web-ui"))
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Chromium; a missing browser fails loudly, saying how to get it."""
    if not CHROMIUM.exists():
        raise AssertionError(f"{CHROMIUM} is missing: run `./scripts/setup test` (it apt-get installs chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            browser.close()


def sign_in(page: Page, base_url: str, token: str) -> None:
    page.goto(f"{base_url}/ui/login")
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base_url}/ui/library*")


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion on a fresh loop in its own thread: Playwright's sync API keeps a loop running on
    this one, where `asyncio.run` is refused."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@dataclass
class Fleet:
    """NATS, a fresh database, catalog, router, provisioner, three hardware probes (`gpu-1` with the two stand-in
    GPUs and the Ollama peer, `small-gpu` with one 8 GiB GPU, `cpu-box` without a GPU) and the gateway, as
    processes."""

    url: str
    nats_url: str
    ollama: OllamaPeer
    hub: HubPeer
    processes: list[ServiceProcess] = field(default_factory=list)


@contextlib.contextmanager
def fleet(tmp: Path, postgres_url: str, admin_token: str, ollama: OllamaPeer, hub: HubPeer) -> Iterator[Fleet]:
    with nats_server(tmp / "nats") as nats_url:
        database_url = run_async(create_database(postgres_url))
        base = {
            "MODELFLEET_NATS_URL": nats_url, "MODELFLEET_STATE_DIR": str(tmp / "state"),
            "MODELFLEET_HOST_ID": "gpu-1", "MODELFLEET_LOG_LEVEL": "INFO", "OTEL_SDK_DISABLED": "false",
            "MODELFLEET_EGRESS_ALLOW": "127.0.0.0/8,::1", "MODELFLEET_METRICS_PORT": "0",
        }  # fmt: skip
        with_db = {**base, "MODELFLEET_DATABASE_URL": database_url, "MODELFLEET_ADMIN_TOKEN": admin_token}
        probe = {"MODELFLEET_PROBE_INTERVAL_S": "0.5", "MODELFLEET_OLLAMA_URL": ollama.url}
        no_ollama = {"MODELFLEET_OLLAMA_URL": "http://127.0.0.1:1"}
        provisioner = {
            **with_db, "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test_secret_token", "HF_HUB_DISABLE_TELEMETRY": "1",
            "MODELFLEET_PROVISIONER_OLLAMA_HOSTS": json.dumps({"gpu-1": ollama.url}),
            "MODELFLEET_PROVISIONER_CATALOG_TIMEOUT_S": "2",
            "MODELFLEET_PROVISIONER_MODELS_DIR": str(tmp / "models"),
            "MODELFLEET_PROVISIONER_QUARANTINE_DIR": str(tmp / "quarantine"),
        }  # fmt: skip
        services = [
            ("catalog", with_db),
            ("router", base),
            ("provisioner", provisioner),
            ("hardware-probe", {**base, **probe, **two_gpus_env()}),
            ("hardware-probe", {**base, **probe, "MODELFLEET_HOST_ID": "small-gpu", **small_gpu_env(), **no_ollama}),
            ("hardware-probe", {**base, **probe, "MODELFLEET_HOST_ID": "cpu-box", **no_gpu_env(), **no_ollama}),
        ]  # fmt: skip
        started: list[ServiceProcess] = []
        try:
            for i, (name, env) in enumerate(services):
                proc = ServiceProcess(name, env, tmp / "logs" / f"{name}-{i}.log").start()
                started.append(proc)
            for proc in started:
                run_async(proc.wait_healthy(nats_url, 60))
            gateway = GatewayProcess("gateway", with_db, tmp / "logs" / "gateway.log").start()
            started.append(gateway)
            url = run_async(gateway.wait_ready(60))
            yield Fleet(url, nats_url, ollama, hub, started)
        finally:
            for proc in reversed(started):
                proc.stop()


def log_tails(f: Fleet) -> str:
    return "\n".join(f"--- {p.service}\n{p.log_tail(15)}" for p in f.processes)


def json_of(page: Page, url: str) -> Any:
    """GET `url` with the page's cookies (the browser's own session)."""
    r = page.request.get(url)
    return r.json()
