"""Single flight (one download per key, shared by every concurrent caller) and the per-role result cache."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Future[T]] = {}
        self.started = 0

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        """Join the flight for `key`, or start it; a caller that gives up does not cancel it for the others."""
        future = self._running.get(key)
        if future is None:
            self.started += 1
            future = asyncio.ensure_future(work())
            self._running[key] = future
            future.add_done_callback(lambda _f: self._running.pop(key, None))
        return await asyncio.shield(future)


class ResultCache(Generic[T]):
    """Results per (role or model, host) for the life of the process; `force` bypasses and refreshes it."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], T] = {}

    def get(self, key: tuple[str, str]) -> T | None:
        return self._items.get(key)

    def put(self, key: tuple[str, str], value: T) -> None:
        self._items[key] = value

    def drop_host_model(self, host: str, match: Callable[[T], bool]) -> None:
        for key in [k for k, v in self._items.items() if k[1] == host and match(v)]:
            del self._items[key]
