"""The update check: on an interval (last check time persisted), compare each installed pinned model's revision with
its repo's default branch and publish evt.provisioner.update.available.v1. Honours SKIP_MODEL_DOWNLOADS."""

from __future__ import annotations

import asyncio
import logging
import time

from contracts.provisioner import UpdateAvailable
from services.provisioner import domain
from services.provisioner.hub import HubClient
from services.provisioner.store import ProvisionerStore
from services.runtime.outbox import Outbox

log = logging.getLogger(__name__)

STATE_KEY = "update_check"


class UpdateChecker:
    def __init__(
        self,
        *,
        store: ProvisionerStore,
        outbox: Outbox,
        hub: HubClient,
        host_id: str,
        interval_s: float,
        skip: bool,
        branch: str = "main",
    ):
        self.store = store
        self.outbox = outbox
        self.hub = hub
        self.host_id = host_id
        self.interval_s = interval_s
        self.skip = skip
        self.branch = branch

    async def run(self) -> None:
        await self.store.database.migrated.wait()
        while True:
            state = await self.store.get_state(STATE_KEY) or {}
            last = state.get("last_check_at")
            now = time.time()
            if domain.update_due(last, now, self.interval_s):
                found = await self.check_once()
                await self.store.put_state(STATE_KEY, {"last_check_at": now, "skipped": self.skip, "found": len(found)})
                last = now
            await asyncio.sleep(max(0.2, min(60.0, (last or now) + self.interval_s - time.time())))

    async def check_once(self) -> list[UpdateAvailable]:
        if self.skip:
            log.info("update check skipped: SKIP_MODEL_DOWNLOADS is set")
            return []
        found: list[UpdateAvailable] = []
        remote: dict[str, str | None] = {}
        for row in await self.store.inventory():
            if row.source != "pinned_hf" or not row.repo_id or not row.revision:
                continue  # Ollama-registry digests are not compared (see docs/provisioning.md)
            if row.repo_id not in remote:
                try:
                    pinned = await asyncio.to_thread(self.hub.pin, row.repo_id, self.branch, allow_unpinned=True)
                    remote[row.repo_id] = pinned.commit
                except Exception as exc:
                    log.warning("update check of %s failed: %s", row.repo_id, exc)
                    remote[row.repo_id] = None
            commit = remote[row.repo_id]
            if commit and commit != row.revision:
                found.append(
                    UpdateAvailable(
                        producer="provisioner",
                        host=self.host_id,
                        target_host=row.host,
                        model=row.model_id,
                        repo_id=row.repo_id,
                        installed_revision=row.revision,
                        remote_revision=commit,
                        source="pinned_hf",
                    )
                )
        if found:
            async with self.store.database.transaction() as session:
                for event in found:
                    await self.outbox.add(session, event)
            self.outbox.wake()
        return found
