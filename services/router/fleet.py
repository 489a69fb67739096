"""The router's fleet view, folded from the event streams: hosts, their backends, models on each, passive health."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from contracts.fit import fit_on_host
from contracts.hardware import BackendStatus, GpuSampled, HostHeartbeat
from contracts.model_ref import with_default_tag
from contracts.provisioner import ModelPulled
from contracts.router import BackendBusy, BackendCallCompleted, BackendChecked, BackendKind, BackendRef
from contracts.vram import EstimateSettings, FitClass

#: Index key of a model on a kind of backend: ("ollama", "qwen3:8b") or ("openai", "smollm2").
ModelKey = tuple[str, str]
#: Outcomes that count against a backend at once, whatever the failure count (they say "not now" outright).
TRIPPING = frozenset({"connect_refused", "rate_limited"})
#: Seconds between heartbeats assumed until a host tells its interval.
DEFAULT_INTERVAL_S = 10.0
_FIT_CACHE_LIMIT = 512


@dataclass(frozen=True, slots=True)
class HealthRules:
    """The passive-health and liveness rules every replica applies the same way (settings fill them)."""

    allowed_fails: int = 3
    cooldown_s: float = 5.0
    window_s: float = 60.0
    ewma_alpha: float = 0.3
    in_flight_ttl_s: float = 30.0
    missed_beats: int = 3
    #: calls in flight a backend takes, across every gateway; `limits` names backends (base URL or host id) apart
    max_in_flight: int = 64
    limits: Mapping[str, int] = field(default_factory=dict)

    def limit_for(self, host_id: str, base_url: str) -> int:
        return self.limits.get(base_url, self.limits.get(host_id, self.max_in_flight))


@dataclass(frozen=True, slots=True)
class LoadedModel:
    size_bytes: int = 0
    context_length: int | None = None


@dataclass(frozen=True, slots=True)
class Advert:
    """What a host says one of its backends serves now. `installed` None: the sample does not list installed
    models (today's Ollama fields), so what `model.pulled` told stays."""

    kind: BackendKind
    base_url: str
    reachable: bool
    loaded: dict[str, LoadedModel]
    installed: dict[str, int | None] | None = None


def adverts(sample: GpuSampled) -> list[Advert]:
    """The backends a sample tells of: the probe's `backends` list (its Ollama with `/api/tags` and `/api/ps`, and the
    OpenAI-compatible servers with what their `/models` lists), or, from a probe that predates that list, the host's
    Ollama fields (loaded models only; installed ones then come from `model.pulled` alone)."""
    if sample.backends:
        return [_advert(b) for b in sample.backends]
    if not sample.ollama_url:
        return []
    loaded = {
        with_default_tag(m.name): LoadedModel(m.size_vram_bytes or m.size_bytes, m.context_length)
        for m in sample.ollama_models
    }
    return [Advert("ollama", sample.ollama_url.rstrip("/"), sample.ollama_reachable, loaded)]


def _as_listed(name: str) -> str:
    return name


def _advert(b: BackendStatus) -> Advert:
    # Ollama names get Ollama's default tag, as model refs resolve; an OpenAI id is matched exactly as listed.
    name: Callable[[str], str] = with_default_tag if b.kind == "ollama" else _as_listed
    loaded = {name(m.name): LoadedModel(m.size_vram_bytes or m.size_bytes or 0, m.context_length) for m in b.loaded}
    # The installed list replaces what `model.pulled` told (a model deleted since is gone); an unreachable backend
    # lists nothing, so None keeps what it last said (it is skipped anyway).
    installed = {name(m.name): m.size_bytes for m in b.installed} if b.reachable else None
    return Advert(b.kind, b.base_url.rstrip("/"), b.reachable, loaded, installed)


@dataclass(eq=False, slots=True)
class Host:
    host_id: str
    last_seen: float = 0.0
    #: Alive while now <= deadline (last_seen + interval x missed beats).
    deadline: float = 0.0
    sampled_at: float = 0.0
    gpus_free: list[int] = field(default_factory=list)
    gpu_indexes: list[int] = field(default_factory=list)
    ram_available: int = 0
    backends: dict[str, Backend] = field(default_factory=dict)
    #: Ollama names `model.pulled` reported on this host, with their size: installed on its Ollama backend.
    pulled: dict[str, int | None] = field(default_factory=dict)
    fit_cache: dict[tuple[int, int], bool] = field(default_factory=dict)

    def fits(self, size_bytes: int, num_ctx: int) -> bool:
        """The estimator the `fit` report uses (simple form: size and context), against this host's free memory."""
        key = (size_bytes, num_ctx)
        hit = self.fit_cache.get(key)
        if hit is None:
            got = fit_on_host(
                self.host_id, None, EstimateSettings(num_ctx=num_ctx), gpus_free=self.gpus_free,
                ram_available=self.ram_available, file_size_bytes=size_bytes, gpu_indexes=self.gpu_indexes,
            )  # fmt: skip
            if len(self.fit_cache) >= _FIT_CACHE_LIMIT:
                self.fit_cache.clear()
            hit = self.fit_cache[key] = got.fit is not FitClass.WONT_FIT
        return hit


@dataclass(eq=False, slots=True)
class Backend:
    host: Host
    kind: BackendKind
    base_url: str
    #: Deterministic tie-breaker, so every replica orders equal candidates the same way.
    id: str
    reachable: bool = True
    #: When the evidence `reachable` follows was taken (a sample, a beat, a successful call or check): older
    #: evidence changes nothing, so a sample that arrives late cannot undo what a newer answer showed.
    reach_at: float = -math.inf
    loaded: dict[str, LoadedModel] = field(default_factory=dict)
    installed: dict[str, int | None] = field(default_factory=dict)
    ewma_ms: float | None = None
    failures: deque[float] = field(default_factory=deque)
    open_until: float = 0.0
    #: Opened and not closed since by a success: half-open once `open_until` has passed.
    tripped: bool = False
    #: gateway instance -> (its in-flight count on this backend, when it said so)
    in_flight_by_gateway: dict[str, tuple[int, float]] = field(default_factory=dict)
    #: The sum of every report and the oldest report's time: while that one is fresh, so are all (the hot path).
    busy_sum: int = 0
    busy_oldest: float = math.inf
    #: The latest active check folded: (when, outcome).
    last_check: tuple[float, str] | None = None
    #: Calls in flight this backend takes (summed over the gateways); at it, routes skip the backend.
    limit: int = 64
    #: This backend as a route reply names it, made once (router/operations.py `_backend`).
    ref: BackendRef | None = None

    def report_in_flight(self, gateway: str, count: int, at: float) -> None:
        held = self.in_flight_by_gateway.get(gateway)
        if held is not None and held[1] > at:
            return  # an older report than the one held
        self.in_flight_by_gateway[gateway] = (count, at)
        self._sum_reports()

    def _sum_reports(self) -> None:
        reports = self.in_flight_by_gateway.values()
        self.busy_sum = sum(n for n, _ in reports)
        self.busy_oldest = min((t for _, t in reports), default=math.inf)

    def busy(self, now: float, ttl_s: float) -> int:
        """Calls open on this backend: the latest count of every gateway that reported within `ttl_s`."""
        horizon = now - ttl_s
        if self.busy_oldest < horizon:
            # A gateway fell silent (stopped, or idle since its last report): its count no longer holds.
            for gateway in [g for g, (_, t) in self.in_flight_by_gateway.items() if t < horizon]:
                del self.in_flight_by_gateway[gateway]
            self._sum_reports()
        return self.busy_sum

    def saturated(self, now: float, ttl_s: float) -> bool:
        """At its concurrency limit: the cheap sum first, the aging check only when the sum says so."""
        return self.busy_sum >= self.limit and self.busy(now, ttl_s) >= self.limit

    def circuit(self, now: float) -> str:
        return "open" if self.open_until > now else "half_open" if self.tripped else "closed"

    def recent_failures(self, now: float, window_s: float) -> int:
        return sum(1 for t in self.failures if t >= now - window_s)

    def healthy(self, now: float, fail_open: bool = False) -> bool:
        """A closed circuit on a live, reachable host: half-open is not healthy until a success closes it."""
        return (
            not self.tripped
            and self.open_until <= now
            and (fail_open or (self.reachable and self.host.deadline >= now))
        )


class Fleet:
    """Every replica folds the same streams in the same order, so every replica holds the same view."""

    def __init__(self, rules: HealthRules | None = None) -> None:
        self.rules = rules or HealthRules()
        self.hosts: dict[str, Host] = {}
        #: model -> {backend id: backend} where the model is loaded (Ollama /api/ps, an OpenAI backend's list)
        self.loaded_by: dict[ModelKey, dict[str, Backend]] = {}
        #: model -> {backend id: backend} where the model is installed (pulled), loaded or not
        self.installed_by: dict[ModelKey, dict[str, Backend]] = {}
        #: the latest deadline of any host: below `now`, every view is stale and routing fails open
        self.freshest: float = 0.0
        #: told (backend, from, to) when a fold moves a backend's circuit (the metrics' transitions counter)
        self.on_circuit: Callable[[Backend, str, str], None] | None = None

    # --- hosts and backends ----------------------------------------------------------------------------------------

    def host(self, host_id: str) -> Host:
        got = self.hosts.get(host_id)
        if got is None:
            got = self.hosts[host_id] = Host(host_id)
        return got

    def _seen(self, host: Host, at: float, interval_s: float | None) -> None:
        if at <= host.last_seen:
            return
        host.last_seen = at
        host.deadline = at + (interval_s or DEFAULT_INTERVAL_S) * self.rules.missed_beats
        self.freshest = max(self.freshest, host.deadline)

    def backend(self, host: Host, kind: BackendKind, base_url: str) -> Backend:
        url = base_url.rstrip("/")
        got = host.backends.get(url)
        if got is None:
            got = host.backends[url] = Backend(host, kind, url, f"{host.host_id} {url}")
            got.limit = self.rules.limit_for(host.host_id, url)
            if kind == "ollama":
                self._set_installed(got, dict(host.pulled))
        return got

    def _drop_backend(self, b: Backend) -> None:
        self._set_loaded(b, {})
        self._set_installed(b, {})
        b.host.backends.pop(b.base_url, None)

    def _set_loaded(self, b: Backend, loaded: dict[str, LoadedModel]) -> None:
        _reindex(self.loaded_by, b, b.loaded.keys(), loaded.keys())
        b.loaded = loaded

    def _set_installed(self, b: Backend, installed: dict[str, int | None]) -> None:
        _reindex(self.installed_by, b, b.installed.keys(), installed.keys())
        b.installed = installed

    # --- the fold --------------------------------------------------------------------------------------------------

    def observe_heartbeat(self, beat: HostHeartbeat) -> None:
        """Liveness; the host's Ollama backend exists (reachable or not) as soon as a beat names it."""
        host = self.host(beat.host_id)
        at = beat.occurred_at.timestamp()
        fresh = at > host.last_seen
        self._seen(host, at, beat.interval_s)
        if beat.ollama_url and fresh:
            _reached(self.backend(host, "ollama", beat.ollama_url), at, beat.ollama_reachable)

    def observe_sample(self, sample: GpuSampled) -> None:
        """Free memory, and the backends the sample tells of; an older sample than the one held changes nothing."""
        host = self.host(sample.host_id)
        at = sample.occurred_at.timestamp()
        self._seen(host, at, sample.interval_s)
        if at < host.sampled_at:
            return
        host.sampled_at = at
        host.gpus_free = [g.memory_free_bytes for g in sample.gpus] if sample.has_gpu else []
        host.gpu_indexes = [g.index for g in sample.gpus] if sample.has_gpu else []
        host.ram_available = sample.memory_available_bytes
        host.fit_cache.clear()
        told = adverts(sample)
        urls = {a.base_url for a in told}
        for b in [b for b in host.backends.values() if b.base_url not in urls]:
            self._drop_backend(b)
        for a in told:
            b = self.backend(host, a.kind, a.base_url)
            _reached(b, at, a.reachable)
            if a.reachable:  # an unreachable backend lists nothing: keep what it last said (it is skipped anyway)
                self._set_loaded(b, a.loaded)
            if a.installed is not None:
                self._set_installed(b, {**a.installed, **{n: m.size_bytes or None for n, m in a.loaded.items()}})
            elif a.reachable:
                self._set_installed(b, {**host.pulled, **{n: m.size_bytes or None for n, m in a.loaded.items()}})

    def observe_pulled(self, event: ModelPulled) -> None:
        """`model.pulled` names the Ollama model installed on a host (an HF checkpoint is for the fallback)."""
        name = with_default_tag(event.model)
        host = self.host(event.target_host)
        host.pulled[name] = event.size_bytes
        for b in host.backends.values():
            if b.kind == "ollama":
                self._set_installed(b, {**b.installed, name: event.size_bytes})

    def observe_call(self, event: BackendCallCompleted) -> None:
        """Passive health from a gateway's report: in-flight per gateway, latency EWMA, failures and the circuit."""
        b = self.backend(self.host(event.host_id), event.kind, event.backend_url)
        at = event.occurred_at.timestamp()
        if event.in_flight is not None:
            b.report_in_flight(event.gateway_instance, event.in_flight, at)
        rules = self.rules
        if event.outcome == "ok":
            sample = event.ttft_ms if event.ttft_ms is not None else event.latency_ms
            b.ewma_ms = sample if b.ewma_ms is None else rules.ewma_alpha * sample + (1 - rules.ewma_alpha) * b.ewma_ms
            _reached(b, at, True)
            self._succeeded(b, at)
            return
        if event.outcome == "error" and event.status_code is not None and event.status_code < 500:
            return  # the request's own fault (400, 404...): says nothing about the backend
        self._failed(b, at, event.outcome)

    def observe_busy(self, event: BackendBusy) -> None:
        """A gateway's count of calls open on a backend, told when its first call starts and while calls stay open:
        the same in-flight rule as a call report's (the checker reads it to tell busy from hung)."""
        b = self.backend(self.host(event.host_id), event.kind, event.backend_url)
        b.report_in_flight(event.gateway_instance, event.in_flight, event.occurred_at.timestamp())

    def observe_check(self, event: BackendChecked) -> None:
        """An active check: the same circuit rules as a call, except that any non-2xx answer counts (a check asks
        nothing a backend could refuse), its latency is not inference latency (no EWMA), and a timeout the checker
        saw while the gateways had calls open on the backend (`in_flight`) counts for nothing: a backend that serves
        one request at a time answers no check while it generates (a hung one with calls open is caught by those
        calls' own failures). The verdict travels in the event, so every replica folds the same one whatever order
        its busy reports and check results arrive in."""
        b = self.backend(self.host(event.host_id), event.kind, event.backend_url)
        at = event.occurred_at.timestamp()
        b.last_check = (at, event.outcome)
        if event.outcome == "ok":
            _reached(b, at, True)
            self._succeeded(b, at)
        elif event.outcome == "timeout" and event.in_flight:
            return
        else:
            self._failed(b, at, event.outcome)

    def _succeeded(self, b: Backend, at: float) -> None:
        if at >= b.open_until:  # a success while open is a call that started before the trip: the cooldown holds
            b.failures.clear()
            if b.tripped and self.on_circuit is not None:
                self.on_circuit(b, "half_open", "closed")
            b.tripped = False

    def _failed(self, b: Backend, at: float, outcome: str) -> None:
        rules = self.rules
        b.failures.append(at)
        while b.failures and b.failures[0] < at - rules.window_s:
            b.failures.popleft()
        half_open_trial = b.tripped and at >= b.open_until
        if outcome in TRIPPING or len(b.failures) >= rules.allowed_fails or half_open_trial:
            before = b.circuit(at)
            b.open_until = max(b.open_until, at + rules.cooldown_s)
            b.tripped = True
            if before != "open" and self.on_circuit is not None:
                self.on_circuit(b, before, "open")

    # --- reads -----------------------------------------------------------------------------------------------------

    def stale(self, now: float) -> bool:
        """No host has been heard from within its deadline: the view itself is out of date."""
        return self.freshest < now

    def alive(self, now: float) -> list[Host]:
        return [h for h in self.hosts.values() if h.deadline >= now]


def _reached(b: Backend, at: float, reachable: bool) -> None:
    """Reachability follows the newest evidence: a sample taken before a successful call or check (samples come
    from the host and can arrive late) does not mark the backend unreachable again."""
    if at >= b.reach_at:
        b.reachable, b.reach_at = reachable, at


def _reindex(index: dict[ModelKey, dict[str, Backend]], b: Backend, old: Iterable[str], new: Iterable[str]) -> None:
    old_names, new_names = set(old), set(new)
    for name in old_names - new_names:
        members = index.get((b.kind, name))
        if members is not None:
            members.pop(b.id, None)
            if not members:
                del index[(b.kind, name)]
    for name in new_names - old_names:
        index.setdefault((b.kind, name), {})[b.id] = b
