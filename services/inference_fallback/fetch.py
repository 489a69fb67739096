"""A role's `fallback: {"repo", "revision"}` that is not in the models directory yet is fetched through the provisioner
of THIS host: a `cmd.provisioner.fetch.<host id>.v1` (a ProvisionFetch) for the checkpoint reference
`org/name@<revision>`, waited for (bounded) on its `evt.provisioner.request.completed.v1`. Only the provisioners whose
host id fills the subject consume it, so the files land in this host's models directory, never in another host's.
The provisioner pins a tag to its commit, downloads every file and verifies each sha256; the action it reports names
the commit (the folder `<models dir>/<repo>/<commit>/`) or why it failed.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from contracts.envelope import Envelope
from contracts.health import HealthReply, HealthRequest
from contracts.provisioner import ProvisionActionResult, ProvisionCompleted, ProvisionFailed, ProvisionFetch
from contracts.rpc import RpcError
from contracts.subjects import fill
from services.runtime.rpc import Rpc

log = logging.getLogger(__name__)

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
FIELD = "fallback.repo"


class FetchError(RpcError):
    """A checkpoint the provisioner could not fetch (or nobody fetches): the error names the repo and why."""


#: Publishes a command or event on a subject (the stream's, with the envelope's event_id as Nats-Msg-Id).
Publish = Callable[[Envelope, str], Awaitable[None]]
#: Subscribes a callback to a subject; returns what unsubscribes it.
Subscribe = Callable[[str, Callable[[bytes], Awaitable[None]]], Awaitable[Callable[[], Awaitable[None]]]]


class CheckpointFetcher:
    """One fetch per `repo@revision` at a time in this replica; every request for it waits for that one."""

    def __init__(
        self,
        rpc: Rpc,
        publish: Publish,
        subscribe: Subscribe,
        *,
        host_id: str,
        timeout_s: float,
        provisioner_timeout_s: float,
    ) -> None:
        self.rpc, self.publish, self.subscribe = rpc, publish, subscribe
        self.host_id, self.timeout_s, self.provisioner_timeout_s = host_id, timeout_s, provisioner_timeout_s
        self._flights: dict[str, asyncio.Future[tuple[str, str]]] = {}

    async def fetch(self, repo: str, revision: str) -> tuple[str, str]:
        """The commit of `repo@revision` and the host whose provisioner has it in its models directory."""
        key = f"{repo}@{revision}"
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(self._fetch(repo, revision))
            self._flights[key] = flight
            flight.add_done_callback(lambda _: self._flights.pop(key, None))
        return await asyncio.shield(flight)

    async def _fetch(self, repo: str, revision: str) -> tuple[str, str]:
        ref = f"{repo}@{revision}"
        await self._provisioner_answers(ref)
        cmd = ProvisionFetch(
            producer="inference-fallback",
            host=self.host_id,
            models=[ref],
            requested_by=f"inference-fallback@{self.host_id}",
        )
        got: asyncio.Future[ProvisionCompleted] = asyncio.get_running_loop().create_future()

        async def on_completed(data: bytes) -> None:
            try:
                event = ProvisionCompleted.model_validate_json(data)
            except ValidationError:
                return
            if event.request_id == cmd.request_id and not got.done():
                got.set_result(event)

        async def on_failed(data: bytes) -> None:
            """The provisioner gave up on the whole command (dead-lettered): no request.completed will come."""
            try:
                event = ProvisionFailed.model_validate_json(data)
            except ValidationError:
                return
            if event.request_id == cmd.request_id and event.error_channel == "dead_letter" and not got.done():
                got.set_exception(self._failed(ref, f"the provisioner gave up on request {cmd.request_id}: "
                                                    f"{event.reason}"))  # fmt: skip

        unsubscribe = [
            await self.subscribe(ProvisionCompleted.SUBJECT, on_completed),
            await self.subscribe(ProvisionFailed.SUBJECT, on_failed),
        ]
        subject = fill(ProvisionFetch.SUBJECT, host=self.host_id)
        log.info("fallback.fetch %s: asking the provisioner of %s on %s (request %s)", ref, self.host_id, subject,
                 cmd.request_id)  # fmt: skip
        try:
            await self.publish(cmd, subject)
            done = await asyncio.wait_for(got, self.timeout_s)
        except TimeoutError:
            raise FetchError(
                504,
                f"{FIELD}: fetching {ref} through the provisioner did not finish within {self.timeout_s:g} s "
                f"(request {cmd.request_id} goes on; ask again later)",
                code="fetch_timeout", field=FIELD,
            ) from None  # fmt: skip
        finally:
            for off in unsubscribe:
                await off()
        return self._commit(ref, revision, done.actions)

    async def _provisioner_answers(self, ref: str) -> None:
        """The fetch command is consumed only by a provisioner on this host; with none, it would wait in the stream
        for nobody and the request would time out: say so at once instead. Health replies name their host."""
        subject = fill(HealthRequest.SUBJECT, service="provisioner")
        host = self.host_id

        def here(got: list[HealthReply]) -> bool:
            return any(r.healthy and r.host == host for r in got)

        replies = await self.rpc.gather(HealthRequest(), subject=subject, timeout_s=self.provisioner_timeout_s,
                                        done=here)  # fmt: skip
        if not here(replies):
            elsewhere = sorted({r.host for r in replies if r.healthy})
            seen = f"healthy provisioners answered from {', '.join(elsewhere)} only" if elsewhere else "none answered"
            raise FetchError(
                503,
                f"{FIELD}: {ref} is not in this host's models directory and no healthy provisioner runs on host "
                f"{host} to fetch it into that directory (asked {subject} for {self.provisioner_timeout_s:g} s; "
                f"{seen}); start a provisioner with MODELFLEET_HOST_ID={host} on this host",
                code="no_provisioner", field=FIELD,
            )  # fmt: skip

    def _commit(self, ref: str, revision: str, actions: list[ProvisionActionResult]) -> tuple[str, str]:
        mine = [a for a in actions if a.model == ref]
        failed = [a for a in mine if a.action in ("failed", "skipped")]
        done = [a for a in mine if a.action in ("present", "pulled", "imported")]
        if failed or not done:
            reasons = "; ".join(f"{a.action} on {a.target_host}: {a.reason or 'no reason given'}" for a in failed)
            raise self._failed(ref, reasons or f"the request's result has no action for {ref}")
        action = done[0]
        commit = action.revision or (revision if _COMMIT.match(revision) else None)
        if commit is None or not _COMMIT.match(commit):
            raise self._failed(ref, f"the provisioner reported {action.action} without a commit ({action.revision!r})")
        log.info("fallback.fetch %s: %s by the provisioner of %s at %s", ref, action.action, action.target_host, commit)
        return commit, action.target_host

    def _failed(self, ref: str, reason: str) -> FetchError:
        return FetchError(502, f"{FIELD}: the provisioner could not fetch {ref}: {reason}", code="fetch_failed",
                          field=FIELD)  # fmt: skip


def nats_subscribe(connection: Callable[[], Any]) -> Subscribe:
    """`Subscribe` over the nats-py connection `connection()` gives (the broker's, once connected): a core
    subscription, on which JetStream-published events arrive too."""

    async def subscribe(subject: str, cb: Callable[[bytes], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        async def on_msg(msg: Any) -> None:
            await cb(msg.data)

        nc = connection()
        sub = await nc.subscribe(subject, cb=on_msg)
        await nc.flush()  # the server knows the subscription before the command goes out
        return sub.unsubscribe  # type: ignore[no-any-return]

    return subscribe
