"""The flight lease's renewer ends before the outcome is written, even when the stop's cancel is lost."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from nats.js.errors import KeyWrongLastSequenceError

from services.provisioner.flights import FleetLease

pytestmark = pytest.mark.unit


class LosesOneCancel:
    """A KV bucket of one key whose first renewal is in flight when the work ends and whose ack arrives with the
    cancel, as asyncio.wait_for (under nats-py's request) on Python 3.11 lets happen: the update is applied and the
    cancel is gone. Updates check the revision as the server does."""

    def __init__(self) -> None:
        self.revision = 0
        self.doc: dict[str, Any] = {}
        self.renewal_in_flight = asyncio.Event()

    async def create(self, key: str, value: bytes) -> int:
        return self._write(value)

    async def update(self, key: str, value: bytes, last: int) -> int:
        if last != self.revision:
            raise KeyWrongLastSequenceError
        if json.loads(value)["state"] == "running" and not self.renewal_in_flight.is_set():
            self.renewal_in_flight.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                pass  # the ack came as the cancel landed
        return self._write(value)

    def _write(self, value: bytes) -> int:
        self.revision += 1
        self.doc = json.loads(value)
        return self.revision


class Plain:
    def dump(self, result: str) -> dict[str, Any]:
        return {"value": result}

    def load(self, doc: dict[str, Any]) -> str:
        return str(doc["value"])

    def dump_failure(self, exc: BaseException) -> dict[str, Any] | None:
        return {"message": str(exc)}

    def load_failure(self, doc: dict[str, Any]) -> BaseException:
        return RuntimeError(doc["message"])


async def test_the_outcome_is_written_over_a_renewal_whose_cancel_was_lost() -> None:
    kv = LosesOneCancel()

    async def bucket() -> Any:
        return kv

    lease: FleetLease[str] = FleetLease(bucket, "replica-1", Plain(), ttl_s=0.03, poll_s=0.01)

    async def work() -> str:
        await kv.renewal_in_flight.wait()  # the renewer is inside an update when the work ends
        return "pulled"

    done, _ = await asyncio.wait([asyncio.ensure_future(lease.run("pull.k", work))], timeout=10)
    assert done, "the lease's renewer did not stop"
    assert done.pop().result() == "pulled"
    # Written over the renewal's revision: a stale revision would leave the key `running` (and renewed for ever).
    assert kv.doc == {"state": "done", "owner": "replica-1", "result": {"value": "pulled"}}
    # The renewer ended before the outcome was written (no task of it is left to write `running` again).
    assert not [t for t in asyncio.all_tasks() if t.get_coro().__qualname__.endswith("renew")]
