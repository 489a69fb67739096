"""The gateway's memo of reusable route replies (services/gateway/route_memo.py): what makes two requests the same,
how long a reply is kept, and what it is kept for."""

from __future__ import annotations

import pytest

from contracts.router import BackendRef, RouteReply, RouteRequest, RouteReuse
from services.gateway.route_memo import RouteMemo

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def reply(ms: int | None = 500, max_prompt_tokens: int | None = 8192) -> RouteReply:
    reuse = None if ms is None else RouteReuse(ms=ms, max_prompt_tokens=max_prompt_tokens)
    backend = BackendRef(host_id="h1", kind="openai", base_url="http://h1:8000/v1")
    return RouteReply(model_ref="m", backend=backend, model_name="m", reuse=reuse)


def ask(**kw: object) -> RouteRequest:
    return RouteRequest(**{"role": "coding", "user_id": "alice", "options": {"temperature": 0.2}, **kw})


def test_the_same_request_but_its_prompt_estimate_gets_the_kept_reply_within_its_time() -> None:
    clock = Clock()
    memo = RouteMemo(1.0, clock=clock)
    kept = reply(ms=500)
    memo.keep(ask(prompt_tokens=10), kept, memo.generation)
    assert memo.get(ask(prompt_tokens=3000)) is kept
    # options compare by content, not by key order
    assert memo.key(ask(options={"a": [1], "b": 2})) == memo.key(ask(options={"b": 2, "a": [1]}))
    assert memo.get(ask(options={"temperature": 0.2})) is kept
    for other in (ask(user_id="bob"), ask(options={"temperature": 0.3}), ask(role="general"),
                  ask(performance_profile="fast"), ask(required_context=9000), ask(provision_wait_s=0)):  # fmt: skip
        assert memo.get(other) is None, other
    assert memo.get(ask(prompt_tokens=8193)) is None  # a prompt past the num_ctx it was decided at
    clock.now += 0.499
    assert memo.get(ask(prompt_tokens=10)) is kept
    clock.now += 0.002
    assert memo.get(ask(prompt_tokens=10)) is None and len(memo) == 0
    assert memo.reused == 3


def test_the_gateway_bound_caps_the_routers_time_and_zero_keeps_nothing() -> None:
    clock = Clock()
    memo = RouteMemo(0.2, clock=clock)
    memo.keep(ask(), reply(ms=60_000), memo.generation)
    clock.now += 0.21
    assert memo.get(ask()) is None
    off = RouteMemo(0.0, clock=clock)
    off.keep(ask(), reply(), off.generation)
    assert len(off) == 0


def test_a_reply_not_offered_or_asked_before_a_forget_is_not_kept() -> None:
    memo = RouteMemo(1.0)
    memo.keep(ask(), reply(ms=None), memo.generation)
    assert len(memo) == 0
    asked_at = memo.generation
    memo.keep(ask(role="general"), reply(), memo.generation)
    memo.forget()  # e.g. llm.degraded while another ask was on its way
    assert len(memo) == 0
    memo.keep(ask(), reply(), asked_at)
    assert len(memo) == 0
    memo.keep(ask(), reply(max_prompt_tokens=None), memo.generation)
    assert memo.get(ask(prompt_tokens=10**9)) is not None  # no bound on the prompt


def test_a_full_memo_starts_over() -> None:
    memo = RouteMemo(1.0, limit=2)
    for role in ("a", "b", "c"):
        memo.keep(ask(role=role), reply(), memo.generation)
    assert len(memo) == 1 and memo.get(ask(role="c")) is not None
