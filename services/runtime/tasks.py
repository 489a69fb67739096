"""Stopping background tasks within a bound, so that a task that ignores its cancel cannot hold a process up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

#: Seconds a stopping process waits for its cancelled tasks; one that ignores the cancel is logged, with its stack,
#: and left behind, so that SIGTERM always ends the process.
STOP_GRACE_S = 10.0
#: While it waits, a task still running this long after its cancel is cancelled again: on Python 3.11
#: `asyncio.wait_for` (under nats-py's request, so under every JetStream publish) drops a cancel that lands as the
#: reply arrives, and the task loops on as if never told. The outbox relay did so in about one stop in three.
RECANCEL_S = 1.0


async def settle(
    tasks: Sequence[asyncio.Task[Any]], what: str, grace_s: float = STOP_GRACE_S, recancel_s: float = RECANCEL_S
) -> None:
    """Wait up to `grace_s` for cancelled `tasks` to finish, cancelling again every `recancel_s` any still running (a
    lost cancel); log any that did not finish, with where it waits."""
    if not tasks:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    done: set[asyncio.Task[Any]] = set()
    pending = set(tasks)
    while pending and (left_s := deadline - loop.time()) > 0:
        # asyncio.wait, not asyncio.timeout or wait_for: those can swallow a cancel of the caller on 3.11.
        finished, pending = await asyncio.wait(pending, timeout=min(recancel_s, left_s))
        done |= finished
        for task in pending:
            if loop.time() < deadline:
                log.info("%s %s runs on after its cancel (a lost cancel): cancelled again", what, task.get_name())
                task.cancel()
    for task in done:  # retrieved, as gather(return_exceptions=True) would: a failure at stop is not news
        if not task.cancelled():
            task.exception()
    for task in pending:
        frames = "".join(f"\n  {f.f_code.co_filename}:{f.f_lineno} in {f.f_code.co_name}" for f in task.get_stack())
        log.error("%s %s did not stop %.0f s after it was cancelled; left behind at:%s", what, task.get_name(),
                  grace_s, frames)  # fmt: skip


class LoopStop:
    """The stop of a background loop whose owner waits for its end in the middle of a flow (not only at shutdown): the
    loop runs `while not stop.requested`, and `await stop(task)` ends it and waits for it.

    The flag ends the loop as well as the cancel: on Python 3.11 `asyncio.wait_for` (under nats-py's request, so under
    every JetStream publish and KV update) drops a cancel that lands as the reply arrives, and a loop stopped by its
    cancel alone would then run for ever, holding up its owner (docs/reliability.md, the lost-cancel fault)."""

    def __init__(self) -> None:
        self.requested = False

    async def __call__(self, task: asyncio.Task[Any] | None) -> None:
        self.requested = True
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
