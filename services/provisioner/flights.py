"""Single flight (one download per key, shared by every concurrent caller, in one process and, through a lease in
the `flights` KV bucket, across replicas) and the per-role result cache."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, Protocol, TypeVar

from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.runtime.tasks import LoopStop

log = logging.getLogger(__name__)
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


class Codec(Protocol[T]):
    """How a flight's outcome travels in the lease: a result as JSON, and a failure the waiters re-raise."""

    def dump(self, result: T) -> dict[str, Any]: ...

    def load(self, doc: dict[str, Any]) -> T: ...

    def dump_failure(self, exc: BaseException) -> dict[str, Any] | None:
        """The failure as JSON, or None for one the waiters must not share (they take over instead)."""
        ...

    def load_failure(self, doc: dict[str, Any]) -> BaseException: ...


def lease_key(*parts: str) -> str:
    """A KV key for any host x model (names hold `:` and `/`, which keys cannot)."""
    return "pull." + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]


class FleetLease(Generic[T]):
    """Single flight across replicas: one lease per key in the `flights` KV bucket, whose max age is `ttl_s`.

    The first replica creates the key (create-if-absent); it renews it every `ttl_s / 3` with a compare-and-set on
    the revision while it works, and ends by writing the outcome (`done` with the result, or `failed` with the
    failure) into the key. Another replica that finds the key `running` polls it every `poll_s` and returns the same
    outcome; if the key disappears (the holder died and stopped renewing, so the server dropped it after `ttl_s`, or
    the holder let go because it was stopped) it tries to take the lease itself and does the work. A key already
    `done` or `failed` when a caller arrives is taken over (compare-and-set on its revision): that caller checked the
    host after the flight ended, so its outcome is no answer to it (the model may have been deleted since).
    """

    def __init__(
        self,
        kv: Callable[[], Awaitable[KeyValue]],
        owner: str,
        codec: Codec[T],
        *,
        ttl_s: float,
        poll_s: float,
    ):
        self._kv = kv
        self.owner = owner
        self.codec = codec
        self.ttl_s = ttl_s
        self.poll_s = poll_s
        #: Counters (for health and tests): leases taken, of them after a lapse; waits on another holder; joins.
        self.held = 0
        self.taken_over = 0
        self.waiting = 0
        self.joined = 0

    async def run(self, key: str, work: Callable[[], Awaitable[T]]) -> T:
        try:
            kv = await self._kv()
        except Exception as exc:  # no bucket / NATS away: a download must not wait on the lease
            log.warning("flight lease unavailable (%s); %s runs without it", exc, key)
            return await work()
        lapsed = False
        while True:
            revision, _seen = await self._acquire(kv, key)
            if revision is not None:
                self.held += 1
                self.taken_over += lapsed
                return await self._hold(kv, key, revision, work)
            self.waiting += 1
            try:
                outcome = await self._wait(kv, key)
            finally:
                self.waiting -= 1
            if outcome is None:
                lapsed = True
                log.info("flight %s: the holder's lease lapsed; taking over", key)
                continue
            self.joined += 1
            if outcome.get("state") == "failed":
                raise self.codec.load_failure(outcome["failure"])
            return self.codec.load(outcome["result"])

    def _doc(self, state: str, **more: Any) -> bytes:
        return json.dumps({"state": state, "owner": self.owner, **more}).encode()

    async def _acquire(self, kv: KeyValue, key: str) -> tuple[int | None, dict[str, Any] | None]:
        """(our revision, None) when we hold the lease now; else (None, what the key holds)."""
        while True:
            try:
                return await kv.create(key, self._doc("running")), None
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await kv.get(key)
            except (KeyNotFoundError, KeyDeletedError):
                continue  # gone between the two calls: try to create it again
            seen = json.loads(entry.value or b"{}")
            if seen.get("state") == "running":
                return None, seen
            try:  # a finished flight is no answer for a caller that came after it: it checked the host, try again
                assert entry.revision is not None
                return await kv.update(key, self._doc("running"), last=entry.revision), None
            except KeyWrongLastSequenceError:
                continue

    async def _wait(self, kv: KeyValue, key: str) -> dict[str, Any] | None:
        """The holder's outcome, or None once its lease is gone."""
        while True:
            try:
                entry = await kv.get(key)
            except (KeyNotFoundError, KeyDeletedError):
                return None
            seen: dict[str, Any] = json.loads(entry.value or b"{}")
            if seen.get("state") in ("done", "failed"):
                return seen
            await asyncio.sleep(self.poll_s)

    async def _hold(self, kv: KeyValue, key: str, revision: int, work: Callable[[], Awaitable[T]]) -> T:
        current = revision
        stop = LoopStop()  # awaited before the outcome is written, so that it is written over the last renewal

        async def renew() -> None:
            nonlocal current
            while not stop.requested:
                await asyncio.sleep(self.ttl_s / 3)
                try:
                    current = await kv.update(key, self._doc("running"), last=current)
                except KeyWrongLastSequenceError:
                    log.warning("flight %s: lost the lease (it lapsed and another replica took it)", key)
                    return
                except Exception as exc:  # NATS away for a moment: try again at the next tick
                    log.warning("flight %s: lease renewal failed: %s", key, exc)

        renewing = asyncio.create_task(renew())
        try:
            result = await work()
        except BaseException as exc:
            await stop(renewing)
            failure = self.codec.dump_failure(exc) if isinstance(exc, Exception) else None
            if failure is not None:
                await self._finish(kv, key, current, self._doc("failed", failure=failure))
            else:  # stopped or an unexpected error: let go at once, so a waiter takes over
                await self._release(kv, key, current)
            raise
        await stop(renewing)
        await self._finish(kv, key, current, self._doc("done", result=self.codec.dump(result)))
        return result

    async def _finish(self, kv: KeyValue, key: str, revision: int, doc: bytes) -> None:
        try:
            await kv.update(key, doc, last=revision)
        except Exception as exc:  # lapsed and taken over, or NATS away: waiters take over or time out the lease
            log.warning("flight %s: could not write the outcome: %s", key, exc)

    async def _release(self, kv: KeyValue, key: str, revision: int) -> None:
        try:
            await asyncio.shield(kv.delete(key, last=revision))
        except BaseException as exc:
            log.warning("flight %s: could not release the lease: %s", key, exc)
