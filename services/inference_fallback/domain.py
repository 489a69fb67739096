"""Fallback decisions, free of IO: which roles are degraded, which slots to evict or expire, the sampling a request
asks for. The slot manager (slots.py) and the generator (generate.py) act on these."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from contracts.router import LlmDegraded, LlmRecovered
from contracts.rpc import RpcError

#: The tokens a request may ask for when neither `max_tokens` nor `num_predict` says (Ollama's default is 128; a
#: fallback answer that stops mid-sentence is worse than a slower one).
DEFAULT_MAX_TOKENS = 512


@dataclass
class RoleHealth:
    """What the router said last about each role: degraded since, or recovered at (monotonic seconds)."""

    degraded_since: dict[str, float] = field(default_factory=dict)
    recovered_at: dict[str, float] = field(default_factory=dict)

    def degraded(self, event: LlmDegraded, now: float) -> str | None:
        """The role to warm, or None (an event without a role names only a backend)."""
        if event.role is None:
            return None
        self.degraded_since.setdefault(event.role, now)
        self.recovered_at.pop(event.role, None)
        return event.role

    def recovered(self, event: LlmRecovered, now: float) -> str | None:
        if event.role is None:
            return None
        self.degraded_since.pop(event.role, None)
        self.recovered_at[event.role] = now
        return event.role

    def is_degraded(self, role: str) -> bool:
        return role in self.degraded_since


@dataclass(frozen=True)
class SlotUse:
    """What the decisions need to know of one loaded slot."""

    key: str
    memory_bytes: int
    in_flight: int
    last_used: float
    ready: bool = True


def expires_at(slot: SlotUse, health: RoleHealth, idle_expiry_s: float) -> float | None:
    """When an idle slot goes: `idle_expiry_s` after its last use or its role's recovery, whichever is later.
    A slot of a degraded role, or one still answering, never expires."""
    if health.is_degraded(slot.key) or slot.in_flight > 0 or not slot.ready:
        return None
    return max(slot.last_used, health.recovered_at.get(slot.key, -math.inf)) + idle_expiry_s


def expired(slots: Iterable[SlotUse], health: RoleHealth, idle_expiry_s: float, now: float) -> list[str]:
    return [s.key for s in slots if (at := expires_at(s, health, idle_expiry_s)) is not None and at <= now]


def evictions_to_fit(slots: Iterable[SlotUse], need: int, budget: int, keep: str | None = None) -> list[str] | None:
    """The least recently used idle slots to evict so that `need` more bytes fit in `budget`, or None when even
    evicting every idle slot would not make room (slots answering a request are never evicted)."""
    loaded = list(slots)
    free = budget - sum(s.memory_bytes for s in loaded)
    if need <= free:
        return []
    chosen: list[str] = []
    for s in sorted((s for s in loaded if s.in_flight == 0 and s.ready and s.key != keep), key=lambda s: s.last_used):
        chosen.append(s.key)
        free += s.memory_bytes
        if need <= free:
            return chosen
    return None


@dataclass(frozen=True)
class Sampling:
    """The generation settings of one request, in transformers' terms."""

    max_new_tokens: int
    do_sample: bool
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p or 1.0, top_k=self.top_k or 0)
        if self.repetition_penalty is not None:
            kwargs["repetition_penalty"] = self.repetition_penalty
        return kwargs


def sampling(options: Mapping[str, Any], max_tokens: int | None) -> Sampling:
    """The catalog's parameter names (`temperature`, `top_p`, `top_k`, `repeat_penalty`, `seed`, `num_predict`,
    `stop`) as transformers' generate settings; temperature 0 is greedy; `max_tokens` wins over `num_predict`.
    Options a PyTorch slot has no use for (`num_ctx`, `min_p`, `mirostat`...) are ignored. Bad values: a 422 naming
    `options.<name>`."""
    temperature = _number(options, "temperature", 0.0, 100.0)
    top_p = _number(options, "top_p", 0.0, 1.0)
    top_k = _integer(options, "top_k", 0, 1_000_000)
    penalty = _number(options, "repeat_penalty", 0.0, 100.0)
    seed = _integer(options, "seed", -(2**63), 2**63 - 1)
    predict = _integer(options, "num_predict", -2, 1_000_000)
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS if predict is None or predict < 0 else predict
    if max_tokens < 1:
        raise RpcError(422, "options.num_predict: must be at least 1 token", field="options.num_predict")
    stop = options.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,) if stop else ()
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(s for s in stop if s)
    else:
        raise RpcError(422, f"options.stop: a string or a list of strings, got {stop!r}"[:300], field="options.stop")
    greedy = temperature is not None and temperature == 0
    return Sampling(
        max_new_tokens=max_tokens,
        do_sample=not greedy,
        temperature=None if greedy else (temperature if temperature is not None else 0.8),
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=None if penalty is None or penalty == 0 else penalty,
        seed=seed,
        stop=stops,
    )


def _number(options: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    value = options.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RpcError(
            422, f"options.{name}: a number from {low:g} to {high:g}, got {value!r}", field=f"options.{name}"
        )
    return float(value)


def _integer(options: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = options.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RpcError(422, f"options.{name}: an integer from {low} to {high}, got {value!r}", field=f"options.{name}")
    return value


def stop_at(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop string starts in `text`, or None."""
    hits = [i for s in stops if (i := text.find(s)) >= 0]
    return min(hits) if hits else None


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of `text` might be the start of a stop string (not yet safe to send)."""
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                keep = max(keep, n)
                break
    return keep
