"""`modelfleet up` itself SIGKILLed: every process it started goes with it (no orphan), and the same state dir starts
again to all-healthy (no stale lock, no lost inventory)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import psutil
import pytest

from services.runtime.embedded import EmbeddedPostgres, free_port
from tests.harness.cli import BIN
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.chaos


def start_up(state: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFLEET_", "OTEL_"))}
    env["MODELFLEET_URL"] = f"http://127.0.0.1:{port}"
    env["COLUMNS"] = "200"
    with log.open("ab") as out:
        return subprocess.Popen([str(BIN), "up", "--state-dir", str(state), "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> bool:
    assert proc.poll() is None, f"modelfleet up exited with {proc.returncode}:\n{log.read_text()}"
    try:
        return httpx.get(f"{url}/api/v1/health", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_sigkill_of_up_leaves_no_process_behind_and_the_state_dir_starts_again(tmp_path: Path) -> None:
    state, port, log = tmp_path / "state", free_port(), tmp_path / "up.log"
    url = f"http://127.0.0.1:{port}"
    proc = start_up(state, port, log)
    try:
        wait_until(lambda: healthy(url, proc, log), 90, "all-healthy")
        started = {p.pid: " ".join(p.cmdline()) for p in psutil.Process(proc.pid).children(recursive=True)}
        postmaster = int((EmbeddedPostgres(state / "postgres" / "data").data_dir / "postmaster.pid").read_text()
                         .split()[0])  # fmt: skip
        started[postmaster] = "postgres (postmaster)"
        assert len(started) >= 7, started  # nats, postgres, five services, the gateway

        proc.kill()  # SIGKILL: `up` runs no handler, its children learn it from the kernel (PDEATHSIG)
        proc.wait(10)
        wait_until(lambda: not any(alive(pid) for pid in started), 60, "every child of `up` gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    again = start_up(state, port, log)  # the same state dir: no stale postmaster.pid or NATS lock blocks it
    try:
        wait_until(lambda: healthy(url, again, log), 90, "all-healthy again on the same state dir")
    finally:
        stop(again)
    assert again.returncode == 0, log.read_text()[-4000:]
