"""Each service of a `modelfleet up` fleet SIGKILLed in turn, mid-flow: `up` restarts it, and the work it was given
completes after the restart, once. The host's Ollama is the project's peer; requests go through the gateway as a
user's would."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from services.runtime.embedded import free_port
from tests.harness.cli import ADMIN_TOKEN, BIN
from tests.harness.waiting import wait_until
from tests.peers.ollama_server import OllamaPeer, library_model

pytestmark = pytest.mark.chaos

HOST = "chaos-host"
CODER = "qwen3-coder:30b"  # the default set's `coding` model
ASK = {"model": "coding", "messages": [{"role": "user", "content": "hello there"}]}
MIB = 1024 * 1024


class Fleet:
    def __init__(self, tmp_path: Path, peer: OllamaPeer) -> None:
        self.state, self.log = tmp_path / "state", tmp_path / "up.log"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFLEET_", "OTEL_"))}
        env.update(MODELFLEET_URL=self.url, MODELFLEET_ADMIN_TOKEN=ADMIN_TOKEN, MODELFLEET_HOST_ID=HOST,
                   MODELFLEET_OLLAMA_URL=peer.url, MODELFLEET_EGRESS_ALLOW="127.0.0.1", COLUMNS="200")  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([str(BIN), "up", "--state-dir", str(self.state), "--port", str(port)],
                                         env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)

    def running(self) -> None:
        assert self.proc.poll() is None, f"modelfleet up exited with {self.proc.returncode}:\n{self.tail()}"

    def tail(self) -> str:
        return self.log.read_text()[-6000:]

    def get(self, path: str) -> httpx.Response | None:
        self.running()
        try:
            return self.http.get(path)
        except httpx.HTTPError:
            return None

    def healthy(self) -> bool:
        r = self.get("/api/v1/health")
        return r is not None and r.status_code == 200

    def chat(self) -> httpx.Response | None:
        self.running()
        try:
            return self.http.post("/v1/chat/completions", json=ASK)
        except httpx.HTTPError:
            return None

    def service(self, name: str) -> psutil.Process:
        module = "services." + name.replace("-", "_")
        for p in psutil.Process(self.proc.pid).children():
            try:
                if module in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                    return p
            except psutil.Error:
                continue
        raise LookupError(name)

    def kill(self, name: str) -> int:
        """SIGKILL the service; wait until `up` has started another one (a different pid)."""
        old = self.service(name)
        old.send_signal(signal.SIGKILL)

        def restarted() -> bool:
            self.running()
            try:
                return self.service(name).pid != old.pid
            except LookupError:
                return False

        wait_until(restarted, 60, f"{name} restarted by `up`")
        return old.pid

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Fleet, OllamaPeer]]:
    with OllamaPeer(library=[library_model("phi4:mini", 2 * MIB)]) as peer:
        peer.install(CODER)
        fleet = Fleet(tmp_path, peer)
        try:
            wait_until(fleet.healthy, 120, "all-healthy")
            yield fleet, peer
        finally:
            if peer.pull_gate is not None:
                peer.pull_gate.set()
            fleet.stop()


def answered(fleet: Fleet) -> dict[str, Any] | None:
    r = fleet.chat()
    return r.json() if r is not None and r.status_code == 200 else None


def test_each_service_killed_mid_flow_is_restarted_and_its_work_completes_once(fleet) -> None:
    fleet, peer = fleet
    wait_until(lambda: answered(fleet), 60, "a chat answered through the fleet")
    models_before = fleet.get("/api/v1/catalog/models")
    assert models_before is not None and models_before.status_code == 200

    # provisioner: killed while it holds a pull on the host; the command is redelivered and completes once
    peer.pull_gate = threading.Event()
    accepted = fleet.http.post("/api/v1/models/provision", json={"models": ["phi4:mini"], "hosts": [HOST]})
    assert accepted.status_code == 202, accepted.text
    result_url = accepted.json()["result_url"]
    wait_until(lambda: fleet.running() or "phi4:mini" in peer.pull_requests, 60, "the pull under way on the host")
    fleet.kill("provisioner")
    peer.pull_gate.set()

    def completed() -> dict[str, Any] | None:
        r = fleet.get(result_url)
        return r.json() if r is not None and r.status_code == 200 and r.json().get("done") else None

    wait_until(completed, 120, "the provision completed after the provisioner's restart")
    actions = completed()["actions"]  # type: ignore[index]
    # the killed pull finished on the host (Ollama goes on without its client): the redelivery finds it there or
    # pulls it again, and either way the command completes once
    [action] = actions
    assert (action["model"], action["target_host"]) == ("phi4:mini", HOST) and action["action"] in ("pulled", "present")
    assert "phi4:mini" in peer.installed

    # router: its fleet view is rebuilt from the streams after the restart, and the role is routed as before
    fleet.kill("router")
    again = wait_until_value(lambda: answered(fleet), 60, "a chat answered after the router's restart")
    assert again["choices"][0]["message"]["content"] == "echo: hello there"

    # catalog: the catalog answers the same library after its restart (its state is in PostgreSQL)
    fleet.kill("catalog")
    models_after = wait_until_value(lambda: ok(fleet.get("/api/v1/catalog/models")), 60, "the catalog again")
    assert models_after.json() == models_before.json()

    # hardware-probe: its samples resume (the host's last sample moves on)
    seen = wait_until_value(lambda: host_seen(fleet), 30, "the host's sample")
    fleet.kill("hardware-probe")
    wait_until(lambda: host_seen(fleet) not in (None, seen), 60, "a new sample from the restarted probe")

    # inference-fallback and the gateway: restarted, and the fleet is all-healthy again
    fleet.kill("inference-fallback")
    fleet.kill("gateway")
    wait_until(fleet.healthy, 60, "all-healthy after every service was killed once")
    assert answered(fleet) is not None


def ok(r: httpx.Response | None) -> httpx.Response | None:
    return r if r is not None and r.status_code == 200 else None


def host_seen(fleet: Fleet) -> str | None:
    """The event id of the host's newest sample."""
    r = ok(fleet.get(f"/api/v1/hosts/{HOST}"))
    return str(r.json()["sample"]["event_id"]) if r is not None else None


def wait_until_value(check: Any, timeout_s: float, what: str) -> Any:
    got: list[Any] = []

    def found() -> bool:
        value = check()
        if value:
            got.append(value)
        return bool(value)

    wait_until(found, timeout_s, what)
    return got[0]
