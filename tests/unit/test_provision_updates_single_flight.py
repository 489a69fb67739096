"""The update checker never runs two checks at once: a "now" request joins the interval check that is running
(and vice versa), and the summary it answers is the one recorded in the state row."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any

import pytest

from contracts.provisioner import UpdateAvailable
from services.provisioner.updates import CheckReport, UpdateChecker

pytestmark = pytest.mark.unit


class FakeDatabase:
    def __init__(self) -> None:
        self.migrated = asyncio.Event()
        self.migrated.set()

    @asynccontextmanager
    async def transaction(self) -> Any:
        yield object()


class FakeStore:
    def __init__(self) -> None:
        self.database = FakeDatabase()
        self.state: dict[str, Any] = {}
        self.puts = 0

    async def get_state(self, key: str) -> Any:
        return self.state.get(key)

    async def put_state(self, key: str, value: Any) -> None:
        self.puts += 1
        self.state[key] = value

    async def inventory(self, host: str | None = None) -> list[Any]:
        return [object()]


class FakeOutbox:
    def __init__(self) -> None:
        self.events: list[Any] = []

    async def add(self, session: Any, event: Any) -> None:
        self.events.append(event)

    def wake(self) -> None:
        pass


class GatedCheck:
    """Counts its runs; each waits for `gate` so a test can hold a check open."""

    def __init__(self) -> None:
        self.runs = 0
        self.started = asyncio.Event()
        self.gate = asyncio.Event()

    def wants(self, row: Any) -> bool:
        return True

    async def check(self, rows: list[Any], report: CheckReport) -> None:
        self.runs += 1
        self.started.set()
        await self.gate.wait()
        report.checked += 1
        report.found.append(
            UpdateAvailable(
                producer="tests", host="h", target_host="gpu-1", model="qwen3:8b", source="curated",
                installed_revision="sha256:" + "a" * 64, remote_revision="sha256:" + "b" * 64,
                installed_digest="sha256:" + "a" * 64, remote_digest="sha256:" + "b" * 64, registry="r",
            )
        )  # fmt: skip


def checker(check: GatedCheck, store: FakeStore, outbox: FakeOutbox, interval_s: float = 3600.0) -> UpdateChecker:
    return UpdateChecker(store=store, outbox=outbox, checks=[check], interval_s=interval_s, skip=False)  # type: ignore[arg-type, list-item]


async def test_a_now_request_joins_the_running_interval_check() -> None:
    check, store, outbox = GatedCheck(), FakeStore(), FakeOutbox()
    updates = checker(check, store, outbox)
    loop = asyncio.create_task(updates.run())  # never checked: the interval check is due at once
    try:
        await asyncio.wait_for(check.started.wait(), 5)
        assert updates.running
        now = [asyncio.create_task(updates.check_now()) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert check.runs == 1 and not any(t.done() for t in now)
        check.gate.set()
        summaries = await asyncio.wait_for(asyncio.gather(*now), 5)
        assert check.runs == 1 and store.puts == 1 and len(outbox.events) == 1
        assert len({s.checked_at for s in summaries}) == 1
        [found] = summaries[0].found
        assert (found.host, found.model, found.remote_digest) == ("gpu-1", "qwen3:8b", "sha256:" + "b" * 64)
        status = await updates.status()
        assert status.last == summaries[0] and not status.running
        assert status.next_due_at is not None
        assert status.next_due_at.timestamp() == pytest.approx(summaries[0].checked_at.timestamp() + 3600)
    finally:
        loop.cancel()


async def test_a_check_after_the_running_one_ended_runs_again_and_a_caller_giving_up_does_not_cancel_it() -> None:
    check, store, outbox = GatedCheck(), FakeStore(), FakeOutbox()
    updates = checker(check, store, outbox)
    impatient = asyncio.create_task(updates.check_now())
    await asyncio.wait_for(check.started.wait(), 5)
    impatient.cancel()
    patient = asyncio.create_task(updates.check_now())
    await asyncio.sleep(0.05)
    assert check.runs == 1 and updates.running
    check.gate.set()
    first = await asyncio.wait_for(patient, 5)
    assert first.checked == 1 and check.runs == 1
    second = await asyncio.wait_for(updates.check_now(), 5)
    assert check.runs == 2 and store.puts == 2 and second.checked_at >= first.checked_at


async def test_status_before_any_check_is_due_now_and_none_when_the_interval_is_off() -> None:
    store = FakeStore()
    on = await checker(GatedCheck(), store, FakeOutbox()).status()
    assert on.last is None and on.interval_enabled and on.next_due_at is not None
    off = UpdateChecker(store=store, outbox=FakeOutbox(), checks=[], interval_s=60, skip=False, interval_enabled=False)  # type: ignore[arg-type]
    reply = await off.status()
    assert not reply.interval_enabled and reply.next_due_at is None and reply.last is None
