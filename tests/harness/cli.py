"""The `modelfleet` CLI as a user runs it: a separate process pointed at a gateway, with the admin token."""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ADMIN_TOKEN = "admin-secret-for-tests"
#: The `modelfleet` command the project's install puts beside the interpreter.
BIN = Path(sys.executable).parent / "modelfleet"
#: The CLI falls back to the admin token `modelfleet up` keeps in the state dir: point it at an empty one, so a
#: developer's own fleet never lends its token to a test that means to send none.
_EMPTY_STATE_DIR = tempfile.mkdtemp(prefix="modelfleet-cli-state-")
atexit.register(shutil.rmtree, _EMPTY_STATE_DIR, ignore_errors=True)


def cli(
    url: str, *args: str, module: str = "services.cli.main", token: str = ADMIN_TOKEN
) -> subprocess.CompletedProcess[str]:
    code = "from services.cli.main import app; app()" if module == "services.cli.main" else None
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", module, *args]
    env = {**os.environ, "MODELFLEET_URL": url, "MODELFLEET_ADMIN_TOKEN": token, "COLUMNS": "200",
           "MODELFLEET_STATE_DIR": _EMPTY_STATE_DIR}  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


async def run_cli(url: str, *args: str, module: str = "services.cli.main") -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, url, *args, module=module)


def wait_up_healthy(url: str, timeout_s: float, proc: subprocess.Popen[bytes], log: Path) -> dict[str, object]:
    """The gateway's all-healthy `/api/v1/health` body once a `modelfleet up` (`proc`, output in `log`) reaches it;
    fails at once, with the log, if `up` exits meanwhile."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"modelfleet up exited with {proc.returncode}:\n{log.read_text()}"
        try:
            r = httpx.get(f"{url}/api/v1/health", timeout=3)
            last = r.json()
            if r.status_code == 200:
                return last  # type: ignore[no-any-return]
        except (httpx.HTTPError, ValueError) as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"not all-healthy after {timeout_s}s: {last}\n{log.read_text()}")


def stop_up(proc: subprocess.Popen[bytes]) -> None:
    """Stop a `modelfleet up` the way a user does (SIGTERM), killing it only if it has not exited after 40 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
