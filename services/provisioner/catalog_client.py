"""The provisioner's side of `rpc.catalog.roles.v1`: the roles of the active profile set."""

from __future__ import annotations

import asyncio
import json

from faststream.nats import NatsBroker

from contracts.catalog import RolesReply, RolesRequest
from services.provisioner.outcomes import Failure


class CatalogClient:
    def __init__(self, broker: NatsBroker, timeout_s: float):
        self.broker = broker
        self.timeout_s = timeout_s

    async def roles(self, attempts: int = 3) -> RolesReply:
        """Ask the catalog; a timeout or "no responders" (a catalog restarting) is retried before it fails."""
        for attempt in range(1, attempts + 1):
            try:
                msg = await self.broker.request(
                    RolesRequest().model_dump(mode="json"), RolesRequest.SUBJECT, timeout=self.timeout_s
                )
                break
            except Exception as exc:
                if attempt == attempts:
                    raise Failure(
                        f"the catalog did not answer {RolesRequest.SUBJECT} ({attempts} tries): "
                        f"{type(exc).__name__} {exc}".strip()
                    ) from exc
                await asyncio.sleep(0.2 * attempt)
        data = json.loads(msg.body or b"null")
        if isinstance(data, dict) and "error" in data and set(data) == {"error"}:
            raise Failure(f"the catalog refused: {data['error'].get('detail')}")
        return RolesReply.model_validate(data)
