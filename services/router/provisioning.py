"""Provisioning on demand: a role whose Ollama model no live backend has, and whose entry says `auto_download`, is
pulled onto the host that fits it best; the route requests for it wait, bounded, on one shared pull."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from contracts.catalog import ModelInfoRequest, RolesRequest
from contracts.envelope import Envelope
from contracts.health import HealthRequest
from contracts.provisioner import ModelPulled, ProvisionCommand, ProvisionCompleted, ProvisionFailed
from contracts.rpc import RpcError
from contracts.subjects import fill
from services.router import domain
from services.router.domain import Decision, Target
from services.router.fleet import Fleet
from services.router.settings import RouterSettings
from services.runtime.rpc import Rpc

log = logging.getLogger(__name__)
#: Namespace of the ids of on-demand provision commands: replicas that decide the same pull send the same id, and
#: JetStream keeps one.
_IDS = uuid.UUID("0f1d7c56-7a43-4d8e-9d59-8a1f3c2b6e01")


@dataclass(eq=False)
class Pull:
    """One on-demand pull of a model onto a host, shared by every request that waits for the model."""

    model_ref: str
    host_id: str
    request_id: uuid.UUID
    started: float
    failure: str | None = None
    ended: float | None = None
    #: set (and replaced) on every piece of news: a pull, a failure, the request's completion
    news: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        news, self.news = self.news, asyncio.Event()
        news.set()


class OnDemand:
    """Decides, starts and follows on-demand pulls (docs/router.md, "Provisioning on demand")."""

    def __init__(
        self,
        fleet: Fleet,
        rpc: Rpc,
        publish: Callable[[Envelope], Awaitable[None]],
        settings: RouterSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fleet = fleet
        self.rpc = rpc
        self.publish = publish
        self.settings = settings
        self.clock = clock
        self.pulls: dict[str, Pull] = {}
        self._auto: tuple[dict[str, bool], float] | None = None
        self._starting: dict[str, asyncio.Lock] = {}

    def invalidate(self) -> None:
        self._auto = None

    async def auto_download(self, role: str) -> bool:
        """The role's entry in the active profile set says `auto_download` (cached like resolutions)."""
        now = self.clock()
        if self._auto is None or self._auto[1] <= now:
            reply = await self.rpc.ask(RolesRequest(), timeout_s=self.settings.resolve_timeout_s)
            self._auto = ({e.role: e.auto_download for e in reply.roles}, now + self.settings.resolve_cache_ttl_s)
        return self._auto[0].get(role, False)

    async def provide(
        self, role: str, model_ref: str, redecide: Callable[[], Decision], wait_s: float, num_ctx: int
    ) -> Decision:
        """Start (or join) the pull of `model_ref` and wait up to `wait_s` until a route can choose it; a 503 naming
        the role, the model, the host and the state of the pull after that."""
        if not await self.auto_download(role):
            raise _unavailable(role, f"{model_ref} is not installed anywhere and auto_download is off")
        pull = await self._pull(role, model_ref, num_ctx)
        deadline = time.monotonic() + wait_s
        while True:
            if pull.failure is not None:
                raise _unavailable(role, f"{model_ref} is installed nowhere; provisioning it on {pull.host_id} failed: "
                                         f"{pull.failure}")  # fmt: skip
            decision = redecide()
            if decision.picks:
                return decision
            left = deadline - time.monotonic()
            if left <= 0:
                raise _unavailable(
                    role, f"{model_ref} is installed nowhere; provisioning it on {pull.host_id} is under way "
                    f"(auto_download, request {pull.request_id}); not ready within {wait_s:g} s, retry later",
                )  # fmt: skip
            # News wakes the waiters at once; the bounded poll covers a model a host's sample lists first.
            try:
                await asyncio.wait_for(pull.news.wait(), min(left, 1.0))
            except TimeoutError:
                pass

    async def _pull(self, role: str, model_ref: str, num_ctx: int) -> Pull:
        # One start at a time per model: requests that arrive while the first one asks the catalog join its pull.
        async with self._starting.setdefault(model_ref, asyncio.Lock()):
            held = self.pulls.get(model_ref)
            if held is not None and not self._expired(held, self.clock()):
                return held
            return await self._start(role, model_ref, num_ctx)

    async def _start(self, role: str, model_ref: str, num_ctx: int) -> Pull:
        if not await self._provisioner_up():
            # The command is durable: sent now it would run whenever a provisioner starts, long after this request.
            raise _unavailable(role, f"{model_ref} is installed nowhere and no healthy provisioner answers to pull it "
                                     "(auto_download)")  # fmt: skip
        size = await self._size(model_ref)
        now = self.clock()
        host = domain.provision_host(self.fleet, now, size, num_ctx)
        if host is None:
            raise _unavailable(role, f"{model_ref} is installed nowhere and no live host with a reachable Ollama can "
                                     "take it (auto_download)")  # fmt: skip
        # One id per model, host and wait window: replicas deciding the same pull send one command between them.
        slot = int(now // max(self.settings.provision_wait_s, 1.0))
        request_id = uuid.uuid5(_IDS, f"{model_ref}|{host.host_id}|{slot}")
        pull = self.pulls[model_ref] = Pull(model_ref, host.host_id, request_id, now)
        command = ProvisionCommand(
            producer="router", event_id=request_id, request_id=request_id, models=[model_ref], hosts=[host.host_id],
            requested_by=f"router (auto_download, role {role})",
        )  # fmt: skip
        try:
            await self.publish(command)
        except Exception as exc:
            del self.pulls[model_ref]
            raise _unavailable(
                role, f"{model_ref} is installed nowhere; provisioning could not be asked: {exc}"
            ) from exc
        log.info("provisioning on demand: role=%s model=%s host=%s request_id=%s", role, model_ref, host.host_id,
                 request_id)  # fmt: skip
        return pull

    def _expired(self, pull: Pull, now: float) -> bool:
        """A finished pull is forgotten after the cooldown (a failure answers at once until then); one with no news
        for ten waits is asked again (a provisioner that never took the command)."""
        if pull.ended is not None:
            return now - pull.ended >= self.settings.cooldown_s
        return now - pull.started >= 10 * self.settings.provision_wait_s

    async def _provisioner_up(self) -> bool:
        """At least one provisioner replica answers its health request, healthy (as the gateway's provision route
        checks before a `wait: true` request)."""
        replies = await self.rpc.gather(
            HealthRequest(), subject=fill(HealthRequest.SUBJECT, service="provisioner"),
            timeout_s=self.settings.resolve_timeout_s, done=lambda got: any(r.healthy for r in got),
        )  # fmt: skip
        return any(r.healthy for r in replies)

    async def _size(self, model_ref: str) -> int | None:
        """The model's file size from the catalog (its largest quantization), for the fit estimate; None unknown."""
        try:
            doc = await self.rpc.ask(ModelInfoRequest(model=model_ref), timeout_s=self.settings.resolve_timeout_s)
        except RpcError:
            return None
        sizes = [q.size_bytes for q in doc.quantizations if q.size_bytes]
        return max(sizes) if sizes else None

    # --- news from the streams (every replica folds them) ------------------------------------------------------------

    def pulled(self, event: ModelPulled) -> None:
        pull = self._of(event.request_id)
        if pull is not None:
            pull.ended = self.clock()
        for p in self.pulls.values():
            p.notify()  # the model may be the one a pull waits for, whichever request pulled it

    def failed(self, event: ProvisionFailed) -> None:
        pull = self._of(event.request_id)
        if pull is not None:
            pull.failure, pull.ended = event.reason, self.clock()
            pull.notify()

    def completed(self, event: ProvisionCompleted) -> None:
        pull = self._of(event.request_id)
        if pull is None:
            return
        pull.ended = pull.ended or self.clock()
        if pull.failure is None and not any(a.action in ("pulled", "present") for a in event.actions):
            reasons = "; ".join(f"{a.action}: {a.reason}" for a in event.actions if a.reason) or "nothing was pulled"
            pull.failure = reasons
        pull.notify()

    def _of(self, request_id: uuid.UUID) -> Pull | None:
        return next((p for p in self.pulls.values() if p.request_id == request_id), None)


def nowhere_installed(fleet: Fleet, primary: Target, now: float) -> bool:
    """No live, reachable backend has the model loaded or installed (a dead host's copy does not count)."""
    for key in primary.keys:
        for index in (fleet.loaded_by, fleet.installed_by):
            for b in index.get(key, {}).values():
                if b.reachable and b.host.deadline >= now:
                    return False
    return True


def _unavailable(role: str, why: str) -> RpcError:
    return RpcError(503, f"no backend serves role {role!r}: {why}", code="no_backend", field="role")
