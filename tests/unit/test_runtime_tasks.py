"""Stopping tasks within a bound: a task that lost its cancel (Python 3.11's `asyncio.wait_for` drops one that lands
as the awaited reply arrives) is cancelled again; one that ignores every cancel is named in the log and left, not
waited on. The lost cancel was seen in the outbox relay: the catalog then took 10 s to stop after SIGTERM in about
one stop in three."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from services.runtime.tasks import settle

pytestmark = pytest.mark.unit


async def test_a_task_that_ignores_its_cancel_is_logged_with_its_stack_and_left_behind(caplog) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    async def polite() -> None:
        await asyncio.Event().wait()

    async def failing() -> None:
        raise RuntimeError("already broken")

    tasks = [asyncio.create_task(f(), name=f.__name__) for f in (stubborn, polite, failing)]
    await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    with caplog.at_level(logging.ERROR, logger="services.runtime.tasks"):
        await settle(tasks, "test: background task", grace_s=0.2)
    assert tasks[1].cancelled() and tasks[2].done()
    assert not tasks[0].done()
    [record] = caplog.records
    assert "test: background task stubborn did not stop" in record.getMessage()
    assert "in stubborn" in record.getMessage()  # where it waits
    release.set()
    await tasks[0]


async def test_a_task_that_lost_its_cancel_is_cancelled_again(caplog: pytest.LogCaptureFixture) -> None:
    async def relay() -> None:
        """A loop whose first cancel is swallowed, as wait_for does when the reply is already in."""
        lost = False
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost = True  # the cancel that wait_for dropped: the loop goes on

    task = asyncio.create_task(relay(), name="outbox relay")
    await asyncio.sleep(0)  # one step: the task is in its loop, so the cancel lands inside its try
    task.cancel()
    with caplog.at_level(logging.INFO, logger="services.runtime.tasks"):
        await settle([task], "test: background task", grace_s=30, recancel_s=0.05)
    assert task.cancelled()
    assert "runs on after its cancel (a lost cancel): cancelled again" in caplog.text
    assert "did not stop" not in caplog.text


async def test_nothing_to_settle_returns_at_once() -> None:
    await settle([], "nothing")
