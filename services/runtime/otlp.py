"""OTLP/HTTP exporters whose last push is bounded when the process stops.

The SDK's exporters retry a push that fails on a connection error for up to `OTEL_EXPORTER_OTLP_TIMEOUT` (10 s),
and a process pushes twice as it stops (its own flush, then the SDK's exit hook): with the collector unreachable, a
service took 15 s to stop after SIGTERM instead of half a second, past compose's 10 s before a SIGKILL. A stop gives
the collector `STOP_FLUSH_S`; what it has not taken by then is dropped, with one warning, and the exporter gives up
at once on every later push (`abort`), without the SDK's "already shutdown" warnings.

Imported only where an OTLP endpoint is configured (the exporters' modules are not loaded otherwise).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics.export import MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

#: How long a stopping process waits for the collector to take its last spans, and its last metrics.
STOP_FLUSH_S = 2.0


def finished_within(work: Callable[[], object], within_s: float) -> bool:
    """Runs `work` on a daemon thread (never holding the process's exit); whether it returned within `within_s`."""
    thread = threading.Thread(target=work, name="otlp-stop-flush", daemon=True)
    thread.start()
    thread.join(within_s)
    return not thread.is_alive()


class StoppableSpanExporter(OTLPSpanExporter):
    """The OTLP span exporter; `abort` stops it for good (a retry waiting on its backoff ends, later pushes fail)."""

    aborted = False

    def abort(self) -> None:
        if not self.aborted:
            self.aborted = True
            super().shutdown()  # type: ignore[no-untyped-call]

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.aborted:
            return SpanExportResult.FAILURE
        return super().export(spans)

    def shutdown(self) -> None:
        self.abort()


class StoppableMetricExporter(OTLPMetricExporter):
    """The OTLP metric exporter; `abort` stops it for good, as `StoppableSpanExporter`."""

    aborted = False

    def abort(self) -> None:
        if not self.aborted:
            self.aborted = True
            super().shutdown()

    def export(
        self, metrics_data: MetricsData, timeout_millis: float | None = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        if self.aborted:
            return MetricExportResult.FAILURE
        return super().export(metrics_data, timeout_millis, **kwargs)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.abort()
