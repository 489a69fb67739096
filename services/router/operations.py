"""Router use cases: resolve the request through the catalog (cached briefly), decide on the fleet view, reply."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from contracts.catalog import ModelInfoRequest, ResolveReply, ResolveRequest
from contracts.parameters import ParameterError, validate_parameters
from contracts.router import (
    BackendRef,
    BackendsReply,
    BackendState,
    RoleState,
    RouteCandidate,
    RouteReason,
    RouteReply,
    RouteRequest,
    RouteReuse,
)
from contracts.rpc import RpcError
from services.router import domain, metrics
from services.router.domain import Pick, Target
from services.router.fallbacks import Fallbacks
from services.router.fleet import Backend, Fleet
from services.router.health import role_health
from services.router.provisioning import nowhere_installed
from services.router.settings import RouterSettings
from services.router.strategies import Strategy
from services.runtime.rpc import Rpc

if TYPE_CHECKING:
    from services.router.monitor import RoleWatch
    from services.router.provisioning import OnDemand

log = logging.getLogger(__name__)

#: Resolutions kept at most; the cache is emptied when full (it refills within one TTL).
_CACHE_LIMIT = 8192


@dataclass(frozen=True, slots=True)
class Resolution:
    reply: ResolveReply
    primary: Target
    fallbacks: tuple[Target, ...]
    expires: float


class Router:
    """`route` is the hot path: one dictionary look-up for a cached resolution, then the pure decision."""

    def __init__(
        self,
        fleet: Fleet,
        rpc: Rpc,
        settings: RouterSettings,
        strategies: Mapping[str, Strategy],
        default: Strategy,
        clock: Callable[[], float] = time.time,
        on_demand: OnDemand | None = None,
        fallbacks: Fallbacks | None = None,
    ) -> None:
        self.fleet = fleet
        self.fallbacks = fallbacks
        self.on_demand = on_demand
        self.rpc = rpc
        self.settings = settings
        self.strategies = strategies
        self.default = default
        self.clock = clock
        self._resolutions: dict[tuple[str, str, str | None, str | None], Resolution] = {}
        self._contexts: dict[str, tuple[int | None, float]] = {}
        self._candidates: dict[tuple[str, int, str, str], RouteCandidate] = {}

    def strategy_for(self, role: str | None) -> Strategy:
        return self.strategies.get(role, self.default) if role else self.default

    def invalidate(self) -> None:
        """A catalog change: the next request of every kind asks the catalog again."""
        self._resolutions.clear()
        self._contexts.clear()
        if self.on_demand is not None:
            self.on_demand.invalidate()

    async def route(self, req: RouteRequest) -> RouteReply:
        """The backend for `req` and its fallback chain; every answer (or refusal) is counted by strategy and reason."""
        try:
            reply = await self._route(req)
        except RpcError as exc:
            metrics.refused(self.strategy_for(req.role.removeprefix("role:") if req.role else None).name, exc)
            raise
        metrics.decided(reply)
        return reply

    async def _route(self, req: RouteRequest) -> RouteReply:
        role = req.role.removeprefix("role:") if req.role else None
        try:
            options = validate_parameters(req.options, "request options")
        except ParameterError as exc:
            raise RpcError(422, str(exc), field=f"options.{exc.field}") from exc
        got = await self._resolve(req, role)
        resolved = got.reply
        parameters = {**resolved.parameters, **options}  # request options are the top layer, as the catalog merges
        ollama = any(k == "ollama" for t in (got.primary, *got.fallbacks) for k, _ in t.keys)
        trained = await self._trained_context(resolved.model_ref) if ollama and "num_ctx" not in parameters else None
        ctx = domain.num_ctx(
            parameters, trained, required_context=req.required_context, prompt_tokens=req.prompt_tokens,
            default=self.settings.default_num_ctx,
        )  # fmt: skip
        strategy = self.strategy_for(role)

        def decide() -> domain.Decision:
            return domain.decide(
                self.fleet, got.primary, got.fallbacks, strategy, self.clock(), num_ctx=ctx,
                chain_limit=self.settings.chain_limit,
            )  # fmt: skip

        decision = decide()
        last = self.fallbacks.candidate(role, resolved.model_ref, self.clock()) if role and self.fallbacks else None
        if not decision.picks:
            if decision.saturated:
                raise _busy(req, role, resolved, decision, self.settings.in_flight_ttl_s, self.clock())
            if (
                role
                and self.on_demand is not None
                and resolved.provider == "ollama"
                and nowhere_installed(self.fleet, got.primary, self.clock())
            ):
                wait = self.settings.provision_wait_s
                if req.provision_wait_s is not None:
                    wait = min(wait, req.provision_wait_s)
                try:
                    decision = await self.on_demand.provide(role, resolved.model_ref, decide, wait, ctx)
                except RpcError as exc:
                    if last is None or exc.status != 503:
                        raise
                    assert role is not None
                    return _from_fallback(role, resolved, parameters, ctx, last, f"{exc.detail}")
            elif last is not None and role is not None:
                return _from_fallback(role, resolved, parameters, ctx, last, str(_no_backend(req, role, resolved)))
            else:
                raise _no_backend(req, role, resolved)
        first = decision.picks[0]
        kinds = {p.backend.kind for p in decision.picks}
        chain = [self._candidate(p) for p in decision.picks[1:]]
        if last is not None:
            chain.append(last[0])
        return RouteReply(
            host_id=first.backend.host.host_id,
            backend_url=first.backend.base_url,
            model_ref=first.model_ref,
            fallback=first.model_ref != resolved.model_ref,
            backend=_backend(first),
            model_name=first.model_name,
            provider=resolved.provider if first.model_ref == resolved.model_ref else first.backend.kind,
            role=role,
            options=domain.options_for(parameters, ctx, ollama="ollama" in kinds),
            system_prompt=resolved.system_prompt,
            fallback_chain=chain,
            reason=RouteReason(
                tier=first.tier,
                strategy=decision.strategy,
                fail_open=decision.fail_open,
                detail=domain.describe(decision, resolved.model_ref),
            ),
            fallback_source=last[1] if last else None,
            reuse=self._reuse(decision, resolved, parameters, trained, req, ctx),
        )

    def _reuse(
        self,
        decision: domain.Decision,
        resolved: ResolveReply,
        parameters: dict[str, Any],
        trained: int | None,
        req: RouteRequest,
        ctx: int,
    ) -> RouteReuse | None:
        """What a gateway may reuse this decision for: only one no other backend competes in, so that no strategy
        ordered it and no load can change it while it holds: the model itself loaded on exactly one usable backend
        (no other usable backend of it, none skipped as busy), its circuit closed, at most half its limit busy, the view
        fresh. The num_ctx decided at must not come from the prompt estimate (a larger prompt would raise it)."""
        ms = self.settings.route_reuse_ms
        if ms <= 0 or decision.fail_open or decision.saturated:
            return None
        first = decision.picks[0]
        b = first.backend
        ref = resolved.model_ref
        if first.tier != "loaded" or first.model_ref != ref or b.tripped or b.busy_sum * 2 > b.limit:
            return None
        if any(p.model_ref == ref for p in decision.picks[1:]):
            return None
        without_prompt = domain.num_ctx(
            parameters, trained, required_context=req.required_context, default=self.settings.default_num_ctx
        )
        if without_prompt != ctx:
            return None
        return RouteReuse.model_construct(ms=ms, max_prompt_tokens=ctx)

    def _candidate(self, p: Pick) -> RouteCandidate:
        """A chain entry; contracts are frozen, so one made for a (backend, limit, model) serves every later route."""
        b = p.backend
        key = (b.id, b.limit, p.model_name, p.model_ref)
        got = self._candidates.get(key)
        if got is None:
            if len(self._candidates) >= _CACHE_LIMIT:
                self._candidates.clear()
            got = RouteCandidate.model_construct(backend=_backend(p), model_name=p.model_name, model_ref=p.model_ref)
            self._candidates[key] = got
        return got

    def backends(self, watch: RoleWatch) -> BackendsReply:
        """Every backend of the view with its health, and each watched role's state (for `GET /api/v1/backends`)."""
        now = self.clock()
        stale = self.fleet.stale(now)
        rows = [
            _state(b, now, stale, self.fleet)
            for h in sorted(self.fleet.hosts.values(), key=lambda h: h.host_id)
            for b in sorted(h.backends.values(), key=lambda b: b.id)
        ]
        roles = []
        for role, (_, targets) in sorted(watch.roles.items()):
            health = role_health(self.fleet, targets, now)
            hosts = health.healthy or health.candidates
            roles.append(
                RoleState(role=role, state=watch.states.state(role), hosts=sorted({b.host.host_id for b in hosts}))
            )
        fallbacks = self.fallbacks.states(now) if self.fallbacks is not None else []
        return BackendsReply(backends=rows, stale=stale, roles=roles, fallbacks=fallbacks)

    async def _resolve(self, req: RouteRequest, role: str | None) -> Resolution:
        perf = req.performance_profile
        if role is not None:
            key: tuple[str, str, str | None, str | None] = ("role", role, req.user_id, perf)
        elif req.profile_id is not None:
            key = ("profile", str(req.profile_id), req.user_id, perf)
        else:
            key = ("model", str(req.model), req.user_id, perf)
        now = self.clock()
        hit = self._resolutions.get(key)
        if hit is not None and hit.expires > now:
            return hit
        # Options stay out of the question (and of the cache key): they are the top layer, merged in `route`.
        ask = ResolveRequest(
            role=role, profile_id=req.profile_id, model=req.model, user_id=req.user_id, performance_profile=perf
        )
        reply = await self.rpc.ask(ask, timeout_s=self.settings.resolve_timeout_s)  # a 404 passes through as it is
        got = Resolution(
            reply,
            domain.target(reply.model_ref, reply.provider),
            tuple(domain.target(ref, None) for ref in reply.fallback_chain),
            now + self.settings.resolve_cache_ttl_s,
        )
        if len(self._resolutions) >= _CACHE_LIMIT:
            self._resolutions.clear()
        self._resolutions[key] = got
        return got

    async def _trained_context(self, model_ref: str) -> int | None:
        """The catalog entry's context window, when the catalog knows the model; a failure here never fails a
        route (the default applies)."""
        now = self.clock()
        hit = self._contexts.get(model_ref)
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            doc = await self.rpc.ask(ModelInfoRequest(model=model_ref), timeout_s=self.settings.resolve_timeout_s)
            context = doc.context_window
        except RpcError as exc:
            if exc.status != 404:
                log.warning("no context window for %s: %s", model_ref, exc)
            context = None
        if len(self._contexts) >= _CACHE_LIMIT:
            self._contexts.clear()
        self._contexts[model_ref] = (context, now + self.settings.resolve_cache_ttl_s)
        return context


def _from_fallback(
    role: str, resolved: ResolveReply, parameters: dict[str, Any], ctx: int, last: tuple[RouteCandidate, str], why: str
) -> RouteReply:
    """No backend can take the role: its fallback slot answers (the chain's last entry, promoted)."""
    candidate, source = last
    return RouteReply(
        host_id=candidate.backend.host_id, backend_url=candidate.backend.base_url, model_ref=resolved.model_ref,
        fallback=True, backend=candidate.backend, model_name=candidate.model_name, provider="fallback", role=role,
        options=domain.options_for(parameters, ctx, ollama=False), system_prompt=resolved.system_prompt,
        reason=RouteReason(tier="fallback", strategy="fallback", detail=f"the fallback slot answers ({source}): {why}"),
        fallback_source=source,
    )  # fmt: skip


def _backend(p: Pick) -> BackendRef:
    """Unvalidated construction: every value comes from a contract the fold validated (the hot path); made once per
    backend and limit (contracts are frozen)."""
    b = p.backend
    ref = b.ref
    if ref is None or ref.max_in_flight != b.limit:
        ref = BackendRef.model_construct(
            host_id=b.host.host_id, kind=b.kind, base_url=b.base_url, max_in_flight=b.limit
        )
        b.ref = ref
    return ref


def _subject(req: RouteRequest, role: str | None) -> tuple[str, str]:
    """How an error names what was asked, and the request field it was asked by."""
    if role:
        return f"role {role!r}", "role"
    if req.profile_id:
        return f"profile {req.profile_id}", "profile_id"
    return f"model {req.model!r}", "model"


def _busy(
    req: RouteRequest, role: str | None, resolved: ResolveReply, decision: domain.Decision, ttl_s: float, now: float
) -> RpcError:
    """Every usable backend is at its concurrency limit: a 429 the gateway answers with `Retry-After`."""
    what, field = _subject(req, role)
    full = "; ".join(
        f"{b.host.host_id} {b.base_url} ({b.busy(now, ttl_s)} of {b.limit})"
        for b in sorted(decision.saturated.values(), key=lambda b: b.id)
    )
    detail = f"every backend of {what} ({resolved.model_ref}) is at its concurrency limit, calls in flight: {full}"
    return RpcError(429, detail, code="rate_limited", field=field)


def _no_backend(req: RouteRequest, role: str | None, resolved: ResolveReply) -> RpcError:
    what, field = _subject(req, role)
    chain = f" nor its fallbacks ({', '.join(resolved.fallback_chain)})" if resolved.fallback_chain else ""
    served = "" if resolved.provider in ("ollama", "openai") else f" (provider {resolved.provider!r}: no HTTP backend)"
    detail = (
        f"no backend serves {what}: {resolved.model_ref}{served} is loaded or installed on no live backend with a "
        f"closed circuit{chain}"
    )
    return RpcError(503, detail, code="no_backend", field=field)


def _at(t: float | None) -> datetime | None:
    return datetime.fromtimestamp(t, UTC) if t else None


def _state(b: Backend, now: float, stale: bool, fleet: Fleet) -> BackendState:
    rules = fleet.rules
    return BackendState(
        host_id=b.host.host_id, kind=b.kind, base_url=b.base_url, healthy=b.healthy(now, stale),
        host_alive=b.host.deadline >= now, reachable=b.reachable, circuit=b.circuit(now),
        open_until=_at(b.open_until) if b.open_until > now else None, in_flight=b.busy(now, rules.in_flight_ttl_s),
        max_in_flight=b.limit,
        latency_ewma_ms=None if b.ewma_ms is None else round(b.ewma_ms, 3),
        recent_failures=b.recent_failures(now, rules.window_s),
        last_check_at=_at(b.last_check[0]) if b.last_check else None,
        last_check_outcome=b.last_check[1] if b.last_check else None,
        loaded=sorted(b.loaded), installed=sorted(b.installed),
    )  # fmt: skip
