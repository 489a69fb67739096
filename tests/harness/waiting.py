"""Bounded waits on a condition, shared by tests that wait for something a process publishes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T | None]], timeout_s: float = 15.0, what: str = "") -> T:
    """The first truthy result of `check()`, polled every 50 ms; an exception counts as not there yet."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            got = await check()
            if got:
                return got
        except Exception as exc:  # not there yet
            last = exc
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


async def until(probe: Callable[[], Awaitable[object]], timeout_s: float) -> float:
    """Seconds until `probe()` is true, polled every 100 ms (bounded): for tests that report how long it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if await probe():
            return time.monotonic() - start
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout_s}s")


def wait_until(check: Callable[[], object], timeout_s: float, what: str) -> None:
    """Block until `check()` is truthy, polled every 200 ms (bounded); its exceptions propagate (a check asserts
    what must hold meanwhile, e.g. that a process is still running)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
