"""The update check: on an interval (last check time persisted), compare each installed model with its upstream and
publish evt.provisioner.update.available.v1. Honours SKIP_MODEL_DOWNLOADS (then no request is made at all).

Two checks, one per kind of upstream: pinned HF imports against the repo's default branch, Ollama-library models
against the registry's manifest digest. A failing model (registry unreachable, 404, host down) is logged and
recorded in the check's state row; it never stops the checker or the other models."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from contracts.provisioner import UpdateAvailable, UpdateCheckSummary, UpdateFound, UpdateProblem, UpdateStatusReply
from services.provisioner import domain
from services.provisioner.hosts import HostDirectory
from services.provisioner.hub import HubClient
from services.provisioner.ollama_backend import BackendError, InstalledModel, OllamaBackend
from services.provisioner.registry import OllamaRegistry, RegistryError
from services.provisioner.store import REGISTRY_DIGESTS_STATE, UPDATE_CHECK_STATE, InventoryRow, ProvisionerStore
from services.runtime.outbox import Outbox

log = logging.getLogger(__name__)

STATE_KEY = UPDATE_CHECK_STATE
MAX_RECORDED = 200  # errors / not-checked entries kept in the state row


@dataclass
class CheckReport:
    """What one check found, could not check, and failed on; stored (bounded) as the `update_check` state."""

    found: list[UpdateAvailable] = field(default_factory=list)
    checked: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    not_checked: list[dict[str, str]] = field(default_factory=list)
    registry_digests: dict[str, str] = field(default_factory=dict)

    def error(self, row: InventoryRow, reason: str) -> None:
        log.warning("update check of %s on %s failed: %s", row.model_id, row.host, reason)
        self.errors.append({"host": row.host, "model": row.model_id, "reason": reason})

    def skip(self, row: InventoryRow, reason: str) -> None:
        self.not_checked.append({"host": row.host, "model": row.model_id, "reason": reason})

    def state(self, now: float, skipped: bool) -> dict[str, Any]:
        return {
            "last_check_at": now,
            "skipped": skipped,
            "found": len(self.found),
            "checked": self.checked,
            "errors": self.errors[:MAX_RECORDED],
            "not_checked": self.not_checked[:MAX_RECORDED],
            "updates": [found(e).model_dump(mode="json") for e in self.found[:MAX_RECORDED]],
        }


def found(event: UpdateAvailable) -> UpdateFound:
    fields = event.model_dump(include=set(UpdateFound.model_fields) - {"host"})
    return UpdateFound(host=event.target_host, **fields)


def _problems(entries: list[dict[str, str]]) -> list[UpdateProblem]:
    return [
        UpdateProblem(host=e.get("host") or "*", model=e.get("model") or "*", reason=(e.get("reason") or "?")[:8000])
        for e in entries
    ]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def summary(state: dict[str, Any]) -> UpdateCheckSummary:
    """The `update_check` state row as a summary (rows written before `updates` was stored list no updates)."""
    return UpdateCheckSummary(
        checked_at=datetime.fromtimestamp(float(state["last_check_at"]), UTC),
        skipped=bool(state.get("skipped")),
        checked=int(state.get("checked") or 0),
        found=[UpdateFound.model_validate(u) for u in state.get("updates") or []],
        errors=_problems(state.get("errors") or []),
        not_checked=_problems(state.get("not_checked") or []),
    )


class PinnedRevisionCheck:
    """Pinned HF imports: the installed commit against the repo's default branch."""

    def __init__(self, hub: HubClient, host_id: str, branch: str = "main"):
        self.hub = hub
        self.host_id = host_id
        self.branch = branch

    def wants(self, row: InventoryRow) -> bool:
        return row.source == "pinned_hf" and bool(row.repo_id and row.revision)

    async def check(self, rows: list[InventoryRow], report: CheckReport) -> None:
        remote: dict[str, str | None] = {}
        for row in rows:
            assert row.repo_id and row.revision
            if row.repo_id not in remote:
                try:
                    pinned = await asyncio.to_thread(self.hub.pin, row.repo_id, self.branch, allow_unpinned=True)
                    remote[row.repo_id] = pinned.commit
                except Exception as exc:
                    remote[row.repo_id] = None
                    report.error(row, f"hub: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                    continue
            commit = remote[row.repo_id]
            if commit is None:
                continue
            report.checked += 1
            if commit != row.revision:
                report.found.append(
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


class OllamaRegistryCheck:
    """Ollama-library models: the host's manifest digest (`/api/tags`) against the registry's (manifest API)."""

    def __init__(
        self,
        registry: OllamaRegistry,
        default_registry: str,
        hosts: HostDirectory,
        backend: Callable[[str], OllamaBackend],
        host_id: str,
    ):
        self.registry = registry
        self.default_registry = default_registry
        self.hosts = hosts
        self.backend = backend
        self.host_id = host_id

    def wants(self, row: InventoryRow) -> bool:
        return row.source in ("curated", "discovered", "custom_hf") and bool(row.ollama_name)

    async def check(self, rows: list[InventoryRow], report: CheckReport) -> None:
        remote: dict[str, str | RegistryError] = {}
        by_host: dict[str, list[tuple[InventoryRow, domain.RegistryRef]]] = {}
        for row in rows:
            assert row.ollama_name
            try:
                ref = domain.registry_ref(row.ollama_name, self.default_registry)
            except domain.NotInRegistry as exc:
                report.skip(row, str(exc))
                continue
            by_host.setdefault(row.host, []).append((row, ref))
        for host, pairs in by_host.items():
            installed = await self._installed(host, [row for row, _ in pairs], report)
            if installed is not None:
                for row, ref in pairs:
                    await self._compare(row, ref, installed, remote, report)

    async def _installed(
        self, host: str, rows: list[InventoryRow], report: CheckReport
    ) -> dict[str, InstalledModel] | None:
        known = (await self.hosts.all()).get(host)
        reason = f"host {host!r} is unknown or has no Ollama URL"
        if known is not None and known.ollama_url:
            try:
                return await self.backend(known.ollama_url).installed()
            except BackendError as exc:
                reason = str(exc)
        for row in rows:
            report.error(row, reason)
        return None

    async def _compare(
        self,
        row: InventoryRow,
        ref: domain.RegistryRef,
        installed: dict[str, InstalledModel],
        remote: dict[str, str | RegistryError],
        report: CheckReport,
    ) -> None:
        name = row.ollama_name
        assert name
        local = installed.get(name)
        if local is None or not local.digest:
            return report.error(row, f"{name!r} is no longer installed on {row.host} (or Ollama reports no digest)")
        if name not in remote:
            try:
                remote[name] = await self.registry.digest(ref)
            except RegistryError as exc:
                remote[name] = exc
        answer = remote[name]
        if isinstance(answer, RegistryError):
            return report.error(row, str(answer))
        try:
            mine = domain.as_digest(local.digest)
        except ValueError as exc:
            return report.error(row, f"Ollama on {row.host}: {exc}")
        report.checked += 1
        report.registry_digests[name] = answer
        if domain.update_pending(mine, answer):
            report.found.append(
                UpdateAvailable(
                    producer="provisioner",
                    host=self.host_id,
                    target_host=row.host,
                    model=row.model_id,
                    installed_revision=mine,
                    remote_revision=answer,
                    source="curated" if row.source == "curated" else "discovered",
                    installed_digest=mine,
                    remote_digest=answer,
                    registry=ref.registry,
                )
            )


Check = PinnedRevisionCheck | OllamaRegistryCheck


class UpdateChecker:
    def __init__(
        self,
        *,
        store: ProvisionerStore,
        outbox: Outbox,
        checks: list[Check],
        interval_s: float,
        skip: bool,
        interval_enabled: bool = True,
    ):
        self.store = store
        self.outbox = outbox
        self.checks = checks
        self.interval_s = interval_s
        self.skip = skip
        self.interval_enabled = interval_enabled
        self._running: asyncio.Task[UpdateCheckSummary] | None = None

    @property
    def running(self) -> bool:
        return self._running is not None and not self._running.done()

    async def run(self) -> None:
        """The interval check (a service task): due when the persisted last check is `interval_s` old."""
        await self.store.database.migrated.wait()
        while True:
            state = await self.store.get_state(STATE_KEY) or {}
            last = state.get("last_check_at")
            now = time.time()
            if domain.update_due(last, now, self.interval_s):
                last = (await self.check_now()).checked_at.timestamp()
            await asyncio.sleep(max(0.2, min(60.0, (last or now) + self.interval_s - time.time())))

    async def check_now(self) -> UpdateCheckSummary:
        """Run a check and record it, or join the one running (interval or requested): never two at once."""
        if not self.running:
            self._running = asyncio.create_task(self._check_and_record())
        assert self._running is not None
        return await asyncio.shield(self._running)  # one caller giving up does not cancel the others' check

    async def status(self) -> UpdateStatusReply:
        await self.store.database.migrated.wait()
        state = await self.store.get_state(STATE_KEY)
        last = summary(state) if state and state.get("last_check_at") is not None else None
        due: datetime | None = None
        if self.interval_enabled:  # never checked: due at once
            due = datetime.fromtimestamp(last.checked_at.timestamp() + self.interval_s, UTC) if last else _utcnow()
        return UpdateStatusReply(
            interval_enabled=self.interval_enabled, interval_s=self.interval_s, running=self.running, last=last,
            next_due_at=due,
        )  # fmt: skip

    async def _check_and_record(self) -> UpdateCheckSummary:
        await self.store.database.migrated.wait()
        now = time.time()
        state = (await self._check_guarded()).state(now, self.skip)
        await self.store.put_state(STATE_KEY, state)
        return summary(state)

    async def _check_guarded(self) -> CheckReport:
        try:
            return await self.check_once()
        except Exception as exc:  # a bug or a lost database must not end the checker; the next interval retries
            log.exception("update check failed")
            report = CheckReport()
            report.errors.append({"host": "*", "model": "*", "reason": f"{type(exc).__name__}: {exc}"[:2000]})
            return report

    async def check_once(self) -> CheckReport:
        report = CheckReport()
        if self.skip:
            log.info("update check skipped: SKIP_MODEL_DOWNLOADS is set")
            return report
        rows = await self.store.inventory()
        for check in self.checks:
            await check.check([r for r in rows if check.wants(r)], report)
        async with self.store.database.transaction() as session:
            for event in report.found:
                await self.outbox.add(session, event)
        if report.registry_digests:
            known = await self.store.get_state(REGISTRY_DIGESTS_STATE) or {}
            await self.store.put_state(REGISTRY_DIGESTS_STATE, {**known, **report.registry_digests})
        if report.found:
            self.outbox.wake()
        return report
