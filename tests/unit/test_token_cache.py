"""The gateway's cache of user tokens the catalog accepted: reused for its TTL at most, never past the token's expiry,
never across a dropped NATS connection, dropped whole on `clear()`; refusals are never held."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from contracts.catalog import Caller
from services.gateway.auth import TokenCache
from services.runtime.bus import BusState

pytestmark = pytest.mark.unit

ALICE = Caller(user_id="alice")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cache(ttl_s: float = 30.0, **kw: int) -> tuple[TokenCache, Clock, BusState]:
    clock, bus = Clock(), BusState(connected=True)
    return TokenCache(ttl_s, bus, clock=clock, **kw), clock, bus


def test_an_accepted_token_is_reused_for_the_ttl_and_not_after() -> None:
    tokens, clock, _ = cache(30)
    tokens.put("mf_a", ALICE, None)
    assert tokens.get("mf_a") == ALICE and tokens.get("mf_b") is None
    clock.now += 29.9
    assert tokens.get("mf_a") == ALICE
    clock.now += 0.2
    assert tokens.get("mf_a") is None and len(tokens) == 0


def test_never_past_the_tokens_expiry() -> None:
    tokens, clock, _ = cache(30)
    tokens.put("mf_soon", ALICE, datetime.now(UTC) + timedelta(seconds=5))
    tokens.put("mf_gone", ALICE, datetime.now(UTC) - timedelta(seconds=1))
    assert tokens.get("mf_gone") is None
    clock.now += 4
    assert tokens.get("mf_soon") == ALICE
    clock.now += 2
    assert tokens.get("mf_soon") is None


def test_a_dropped_connection_or_a_clear_forgets_everything() -> None:
    tokens, _, bus = cache(30)
    tokens.put("mf_a", ALICE, None)
    bus.drops += 1  # what a disconnect does: a revocation's news may have been missed
    assert tokens.get("mf_a") is None
    tokens.put("mf_a", ALICE, None)
    assert tokens.get("mf_a") == ALICE
    tokens.clear()
    assert tokens.get("mf_a") is None


def test_a_zero_ttl_holds_nothing_and_a_full_cache_starts_over() -> None:
    off, _, _ = cache(0)
    off.put("mf_a", ALICE, None)
    assert off.get("mf_a") is None and len(off) == 0
    small, _, _ = cache(30, max_entries=3)
    for i in range(3):
        small.put(f"mf_{i}", ALICE, None)
    small.put("mf_3", ALICE, None)
    assert len(small) == 1 and small.get("mf_3") == ALICE and small.get("mf_0") is None
