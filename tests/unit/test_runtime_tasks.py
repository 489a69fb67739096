"""Stopping tasks within a bound: a task that ignores its cancel is named in the log and left, not waited on."""

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


async def test_nothing_to_settle_returns_at_once() -> None:
    await settle([], "nothing")
