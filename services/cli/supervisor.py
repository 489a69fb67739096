"""Child-process supervision for `modelfleet up`: start, watch, restart with backoff, stop by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.runtime.embedded import die_with_parent


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start_at: float = 0.0
    backoff_s: float = 0.5
    history: list[int] = field(default_factory=list)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM),
            )  # fmt: skip
        finally:
            log.close()
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()


class Supervisor:
    """Keeps every child running; a crashed child is restarted after 0.5 s, doubling to 30 s.

    The backoff resets once a child has stayed up for a minute.
    """

    MAX_BACKOFF_S = 30.0
    STABLE_AFTER_S = 60.0

    def __init__(self, children: list[Child], on_restart: object = None):
        self.children = children
        self.on_restart = on_restart

    def start_all(self) -> None:
        for c in self.children:
            c.start()

    def tick(self) -> list[tuple[Child, int]]:
        """Restart what has crashed and is due; returns (child, exit code) for each crash seen now."""
        crashed = []
        now = time.monotonic()
        for c in self.children:
            code = c.exited()
            if code is None:
                if now - c.started_at > self.STABLE_AFTER_S:
                    c.backoff_s = 0.5
                continue
            if c.next_start_at == 0.0:
                crashed.append((c, code))
                c.history.append(code)
                c.next_start_at = now + c.backoff_s
                c.backoff_s = min(c.backoff_s * 2, self.MAX_BACKOFF_S)
            elif now >= c.next_start_at:
                c.restarts += 1
                c.next_start_at = 0.0
                c.start()
        return crashed

    def stop_all(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every child, wait, then SIGKILL what is left: no process outlives `up`."""
        live = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for c in live:
            _signal_group(c.proc, signal.SIGTERM)  # type: ignore[arg-type]
        deadline = time.monotonic() + timeout_s
        for c in live:
            assert c.proc is not None
            try:
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(c.proc, signal.SIGKILL)
                c.proc.wait(5)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        proc.send_signal(sig)


def python_module(module: str) -> list[str]:
    return [sys.executable, "-m", module]
