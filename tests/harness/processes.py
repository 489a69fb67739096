"""Service processes for integration and e2e tests: start by module, wait for health on the bus, stop by PID."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nats

from contracts.health import HealthRequest
from contracts.subjects import fill

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServiceProcess:
    """`python -m services.<module>` with the given environment; output goes to `log_path`."""

    service: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def module(self) -> str:
        return "services." + self.service.replace("-", "_")

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module], cwd=ROOT, env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        return self

    async def wait_healthy(self, nats_url: str, timeout_s: float = 30.0) -> dict[str, object]:
        """Ask `rpc.<service>.health.v1` until it says healthy; fail with the log tail if it never does."""
        subject = fill(HealthRequest.SUBJECT, service=self.service)
        deadline = time.monotonic() + timeout_s
        last: object = None
        nc = await nats.connect(nats_url, connect_timeout=2, max_reconnect_attempts=2)
        try:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise AssertionError(f"{self.service} exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    msg = await nc.request(subject, b"{}", timeout=0.5)
                    last = json.loads(msg.data)
                    if isinstance(last, dict) and last.get("healthy"):
                        return last
                except Exception as exc:  # not up yet
                    last = exc
                await asyncio.sleep(0.1)
        finally:
            await nc.close()
        raise AssertionError(f"{self.service} not healthy after {timeout_s}s (last: {last}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait_stopped(timeout_s)

    def wait_stopped(self, timeout_s: float = 10.0) -> int | None:
        """The exit code, once the process (told to stop) exits; killed after `timeout_s`."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def stop_all(procs: Sequence[ServiceProcess], timeout_s: float = 10.0) -> None:
    """SIGTERM to every process first, then wait for each: they stop side by side, not one after another."""
    for proc in procs:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait_stopped(timeout_s)


@dataclass
class GatewayProcess(ServiceProcess):
    """`python -m services.gateway` on a free port; ready when /healthz answers."""

    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GatewayProcess:
        from services.runtime.embedded import free_port

        self.port = self.port or free_port()
        self.env = {**self.env, "MODELFLEET_GATEWAY_PORT": str(self.port), "MODELFLEET_GATEWAY_BIND": "127.0.0.1"}
        super().start()
        return self

    async def wait_ready(self, timeout_s: float = 30.0) -> str:
        import httpx

        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if (await client.get(f"{self.url}/healthz", timeout=1)).status_code == 200:
                        return self.url
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"gateway not ready after {timeout_s}s:\n{self.log_tail()}")
