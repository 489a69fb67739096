"""Routing decisions, free of IO: the candidates of a resolved model in tiers, ordered by a strategy; num_ctx."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from contracts.model_ref import ModelRefError, parse_model_ref
from services.router.fleet import Backend, Fleet, Host, ModelKey
from services.router.strategies import Strategy

#: num_ctx sent to Ollama when neither the resolved parameters nor the catalog's model entry give one (Ollama's
#: own default is smaller than most chat prompts need, and a request that changes it makes Ollama reload).
DEFAULT_NUM_CTX = 8192
#: Tiers, best first: loaded in memory; installed and the estimate fits the host's free memory; installed.
TIERS = ("loaded", "fits", "installed")
_EMPTY: dict[str, Backend] = {}


@dataclass(frozen=True, slots=True)
class Target:
    """A catalog model reference and where to look it up: (backend kind, the name that kind knows it by)."""

    model_ref: str
    keys: tuple[ModelKey, ...]


def target(model_ref: str, provider: str | None) -> Target:
    """`ollama` models by their Ollama name on a host, `openai` ones by the id a backend lists; a fallback model,
    whose provider the resolution does not tell (None), is looked up both ways. Other providers (an HF checkpoint,
    a local file) no HTTP backend serves: no keys."""
    keys: list[ModelKey] = []
    if provider in (None, "ollama"):
        try:
            name = parse_model_ref(model_ref).ollama_name
        except ModelRefError:
            name = None
        if name:
            keys.append(("ollama", name))
    if provider in (None, "openai"):
        keys.append(("openai", model_ref))
    return Target(model_ref, tuple(keys))


class Pick(NamedTuple):
    """A tuple, not a frozen dataclass: a decision makes several and this is the hot path."""

    backend: Backend
    model_name: str
    model_ref: str
    tier: str


@dataclass(frozen=True, slots=True)
class Decision:
    """`picks[0]` is the choice, the rest its fallback chain, in order; empty when nothing serves any model.
    `saturated`: usable backends skipped because they are at their concurrency limit (by backend id)."""

    picks: list[Pick]
    strategy: str
    fail_open: bool
    saturated: dict[str, Backend] = field(default_factory=dict)


def decide(
    fleet: Fleet,
    primary: Target,
    fallbacks: Sequence[Target],
    strategy: Strategy,
    now: float,
    *,
    num_ctx: int,
    chain_limit: int = 4,
) -> Decision:
    """The backend for `primary` and up to `chain_limit` next candidates: the model's own candidates by tier, then
    those of each fallback model. Backends with an open circuit are skipped; so are dead hosts, unless every
    host's view is stale (then liveness is not checked: fail open); so are backends at their concurrency limit
    (kept in `saturated`, so that the caller can tell "busy" from "none"). Cost: the candidates of the models asked,
    never a scan of the fleet, and a tier is looked at only while the chain is not yet full."""
    fail_open = fleet.stale(now)
    want = 1 + chain_limit
    picks: list[Pick] = []
    saturated: dict[str, Backend] = {}
    for t in (primary, *fallbacks):
        _candidates(fleet, t, strategy, now, num_ctx, want - len(picks), fail_open, picks, saturated)
        if len(picks) >= want:
            break
    return Decision(picks, strategy.name, fail_open, saturated)


def _candidates(
    fleet: Fleet,
    t: Target,
    strategy: Strategy,
    now: float,
    num_ctx: int,
    k: int,
    fail_open: bool,
    out: list[Pick],
    saturated: dict[str, Backend],
) -> None:
    if k <= 0:
        return
    names = dict(t.keys)
    taken = {(p.backend.id, p.model_name) for p in out}
    goal = len(out) + k
    ttl = fleet.rules.in_flight_ttl_s
    # The hot loop: plain attribute reads, no calls, for the tens of backends that have a model loaded.
    closed: list[Backend] = []
    half: list[Backend] = []
    for key in t.keys:
        for b in fleet.loaded_by.get(key, _EMPTY).values():
            if b.open_until > now or not (fail_open or (b.reachable and b.host.deadline >= now)):
                continue
            if taken and (b.id, key[1]) in taken:
                continue
            if b.busy_sum >= b.limit and b.saturated(now, ttl):
                saturated[b.id] = b
                continue
            (half if b.tripped else closed).append(b)
    _take(strategy, closed, half, now, k, "loaded", names, t.model_ref, out)
    if len(out) >= goal:
        return
    fits: tuple[list[Backend], list[Backend]] = ([], [])
    rest: tuple[list[Backend], list[Backend]] = ([], [])
    for key in t.keys:
        name = key[1]
        for b in fleet.installed_by.get(key, _EMPTY).values():
            if name in b.loaded or b.open_until > now or not (fail_open or (b.reachable and b.host.deadline >= now)):
                continue
            if taken and (b.id, name) in taken:
                continue
            if b.busy_sum >= b.limit and b.saturated(now, ttl):
                saturated[b.id] = b
                continue
            size = b.installed.get(name)
            tier = fits if size and b.host.fits(size, num_ctx) else rest
            tier[1 if b.tripped else 0].append(b)
    _take(strategy, *fits, now, goal - len(out), "fits", names, t.model_ref, out)
    _take(strategy, *rest, now, goal - len(out), "installed", names, t.model_ref, out)


def _take(
    strategy: Strategy,
    closed: list[Backend],
    half: list[Backend],
    now: float,
    k: int,
    name: str,
    names: Mapping[str, str],
    ref: str,
    out: list[Pick],
) -> None:
    """Closed circuits first, then half-open ones (a trial call may go through), each ordered by the strategy."""
    if k <= 0:
        return
    ranked = strategy.rank(closed, now, k) if closed else []
    if half and len(ranked) < k:
        ranked += strategy.rank(half, now, k - len(ranked))
    out.extend(Pick(b, names[b.kind], ref, name) for b in ranked)


def num_ctx(
    parameters: Mapping[str, Any],
    trained_context: int | None,
    *,
    required_context: int | None = None,
    prompt_tokens: int | None = None,
    default: int = DEFAULT_NUM_CTX,
) -> int:
    """The resolved parameters' num_ctx, else the model's trained context, else `default`; raised to what the
    request says it needs (`required_context`, else at least its prompt), never lowered."""
    base = int(parameters.get("num_ctx") or trained_context or default)
    return max(base, required_context or 0, prompt_tokens or 0)


def options_for(parameters: Mapping[str, Any], ctx: int, *, ollama: bool) -> dict[str, Any]:
    """The options to send: the merged parameters, with `num_ctx` set whenever an Ollama backend may get them."""
    return {**parameters, "num_ctx": ctx} if ollama else dict(parameters)


def describe(decision: Decision, resolved_ref: str) -> str:
    """One sentence for people: which backend, from which tier, ordered how, and what was skipped."""
    if not decision.picks:
        return f"no backend serves {resolved_ref}"
    first = decision.picks[0]
    b = first.backend
    how = {"loaded": "has it loaded", "fits": "has it installed and room to load it", "installed": "has it installed"}
    text = f"{b.host.host_id} ({b.kind} {b.base_url}) {how[first.tier]}; ordered {decision.strategy.replace('_', '-')}"
    if first.model_ref != resolved_ref:
        text += f"; {resolved_ref} has no usable backend, serving fallback {first.model_ref}"
    if decision.fail_open:
        text += "; every host's view is stale, liveness not checked (fail open)"
    return text


def provision_host(fleet: Fleet, now: float, size_bytes: int | None, num_ctx: int) -> Host | None:
    """Where to pull a model no live backend has: a live host with a reachable Ollama whose circuit is not open; those
    the estimate says it fits first (every host when the size is unknown), then the most free GPU memory, then RAM;
    ties by host id, so every replica picks the same host."""

    def key(h: Host) -> tuple[bool, int, int, str]:
        fits = size_bytes is None or h.fits(size_bytes, num_ctx)
        return not fits, -sum(h.gpus_free), -h.ram_available, h.host_id

    hosts = [
        h
        for h in fleet.hosts.values()
        if h.deadline >= now
        and any(b.kind == "ollama" and b.reachable and b.open_until <= now for b in h.backends.values())
    ]
    return min(hosts, key=key) if hosts else None
