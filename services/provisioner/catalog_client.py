"""The provisioner's side of `rpc.catalog.roles.v1`: the roles of the active profile set."""

from __future__ import annotations

import asyncio

from contracts.catalog import RolesReply, RolesRequest
from contracts.rpc import RpcError
from services.provisioner.outcomes import Failure
from services.runtime.rpc import Rpc

#: A catalog restarting answers nothing (504) or is not subscribed yet (503); only these are worth asking again.
RETRIED = frozenset({503, 504})


class CatalogClient:
    def __init__(self, rpc: Rpc, timeout_s: float, *, attempts: int = 3, backoff_s: float = 0.2):
        self.rpc = rpc
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s

    async def roles(self) -> RolesReply:
        """Ask the catalog; a 503/504 is retried, any other error fails at once. Raises `Failure` naming why."""
        for attempt in range(1, self.attempts + 1):
            try:
                return await self.rpc.ask(RolesRequest(), timeout_s=self.timeout_s)
            except RpcError as exc:
                if exc.status not in RETRIED:
                    raise Failure(f"the catalog refused {RolesRequest.SUBJECT}: {_describe(exc)}") from exc
                if attempt == self.attempts:
                    raise Failure(
                        f"the catalog did not answer {RolesRequest.SUBJECT} ({self.attempts} tries): {_describe(exc)}"
                    ) from exc
            await asyncio.sleep(self.backoff_s * attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")


def _describe(exc: RpcError) -> str:
    return f"{exc.status} {exc.code}: {exc.detail}"
