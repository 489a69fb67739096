"""Route replies a gateway reuses instead of asking the router again (DESIGN §9: "the gateway may cache a route for a
short time if the router's events invalidate it; the router stays the one place that decides").

The router says which replies may be reused and for how long (`RouteReply.reuse`, docs/router.md "Route reuse"): only
decisions no other backend competes in. The gateway keeps such a reply for identical requests (every field of the
`RouteRequest` but the prompt estimate, which only has to stay within `reuse.max_prompt_tokens`), for the shorter of
the router's time and its own bound, and forgets every reply at once when anything may have changed the decision:
a call of its own that failed, a router's `llm.degraded` / `llm.recovered`, a failed active check, a catalog change.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from contracts.router import RouteReply, RouteRequest

#: Replies kept at most; the memo is emptied when full (it refills from the next asks).
LIMIT = 4096

Key = tuple[Any, ...]


class RouteMemo:
    def __init__(self, max_s: float, *, clock: Callable[[], float] = time.monotonic, limit: int = LIMIT):
        self.max_s = max_s
        self.clock = clock
        self.limit = limit
        #: bumped by every `forget`: a reply asked for before it is not kept after it
        self.generation = 0
        self.reused = 0
        self._replies: dict[Key, tuple[RouteReply, float, int | None]] = {}

    @staticmethod
    def key(request: RouteRequest) -> Key:
        """Every field the router reads but the prompt estimate (options as canonical JSON: they may hold lists)."""
        values: list[Any] = []
        for name, value in request:
            if name == "prompt_tokens":
                continue
            if isinstance(value, dict | list):
                value = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
            values.append(value)
        return tuple(values)

    def get(self, request: RouteRequest) -> RouteReply | None:
        """The kept reply for `request`, if one holds (no key is built while nothing is kept)."""
        if not self._replies:
            return None
        hit = self._replies.get(key := self.key(request))
        if hit is None:
            return None
        reply, until, max_prompt_tokens = hit
        if until <= self.clock():
            del self._replies[key]
            return None
        if max_prompt_tokens is not None and (request.prompt_tokens or 0) > max_prompt_tokens:
            return None
        self.reused += 1
        return reply

    def keep(self, request: RouteRequest, reply: RouteReply, generation: int) -> None:
        """Keep `reply` for `request` when the router offers it for reuse and nothing was forgotten since it was asked
        for."""
        reuse = reply.reuse
        if reuse is None or self.max_s <= 0 or generation != self.generation:
            return
        if len(self._replies) >= self.limit:
            self._replies.clear()
        until = self.clock() + min(reuse.ms / 1000, self.max_s)
        self._replies[self.key(request)] = (reply, until, reuse.max_prompt_tokens)

    def forget(self) -> None:
        self.generation += 1
        self._replies.clear()

    def __len__(self) -> int:
        return len(self._replies)
