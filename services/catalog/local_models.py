"""The catalog's `local:` models: each host's latest evt.hardware.local_models.scanned.v1, folded in memory by every
replica (like the router's fleet view), and answered on rpc.catalog.local_models.list.v1 (docs/catalog.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from faststream.nats import DeliverPolicy

from contracts.local_models import LocalModelDoc, LocalModelsReply, LocalModelsRequest, LocalModelsScanned
from contracts.subjects import EVENTS_STREAM
from services.runtime.bus import jstream
from services.runtime.dlq import StreamRouter
from services.runtime.rpc import Rpc

#: A report is current for this many of its own `report_s` (the probe's longest gap between reports); after that
#: the host's files drop out of the listing (its probe stopped, or MODELFLEET_MODEL_DIRS was unset there).
STALE_AFTER_REPORTS = 3
#: `report_s` of a report that does not say it (the probe's default).
DEFAULT_REPORT_S = 60.0


@dataclass
class LocalModelsView:
    """host id -> its latest report. Pure: the caller passes the time."""

    reports: dict[str, LocalModelsScanned]

    def fold(self, event: LocalModelsScanned) -> bool:
        """Keep the newer report of the host; a redelivered or late older one changes nothing. True if kept."""
        held = self.reports.get(event.host_id)
        if held is not None and held.occurred_at >= event.occurred_at:
            return False
        self.reports[event.host_id] = event
        return True

    @staticmethod
    def current(report: LocalModelsScanned, now: datetime) -> bool:
        limit = STALE_AFTER_REPORTS * (report.report_s or DEFAULT_REPORT_S)
        return now - report.occurred_at <= timedelta(seconds=limit)

    def listing(self, req: LocalModelsRequest, now: datetime) -> LocalModelsReply:
        """Every file of every current host (sorted by host, then path) that passes the request's filters."""
        hosts = sorted(h for h, r in self.reports.items() if self.current(r, now))
        docs = [
            LocalModelDoc(host_id=h, file=f, reported_at=self.reports[h].occurred_at)
            for h in hosts
            if req.host is None or req.host == h
            for f in self.reports[h].files
            if (req.ref is None or f.ref == req.ref) and (req.sha256 is None or f.sha256 == req.sha256)
        ]
        return LocalModelsReply(models=docs, hosts=hosts)


def register_local_models(rpc: Rpc, streams: StreamRouter, view: LocalModelsView, replay_s: float) -> None:
    """No durable: every replica folds the reports of the last `replay_s` seconds, then every new one."""
    since = datetime.now(UTC) - timedelta(seconds=replay_s)

    @streams.fold(
        LocalModelsScanned.SUBJECT, stream=jstream(EVENTS_STREAM), deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=since,
    )  # fmt: skip
    async def on_scanned(event: LocalModelsScanned) -> None:
        """Consumes evt.hardware.local_models.scanned.v1; replaces the host's files with the report's (a file missing
        from it is gone). Idempotent: a report no newer than the one held is ignored (occurred_at)."""
        view.fold(event)

    @rpc.handler(LocalModelsRequest)
    async def on_list(req: LocalModelsRequest) -> LocalModelsReply:
        """Consumes rpc.catalog.local_models.list.v1; replies the current `local:` models, filtered. Read-only."""
        return view.listing(req, datetime.now(UTC))
