"""Metrics: one OpenTelemetry meter provider per process, read by Prometheus on `/metrics`, pushed over OTLP if set.

Code records through the OpenTelemetry API only: a module creates its instruments once with
`meter("modelfleet.<service>")` and records on them; the provider installed here decides where they go.
Each process serves Prometheus's text format on its own port (`METRICS_PORTS`, or `MODELFLEET_METRICS_PORT`;
0 turns the endpoint off), and also exports over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`) is set and `OTEL_METRICS_EXPORTER`, if set, names `otlp`.
docs/observability.md lists the series.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from prometheus_client import start_http_server

if TYPE_CHECKING:
    from services.runtime.otlp import StoppableMetricExporter

log = logging.getLogger(__name__)

#: Each process's Prometheus port when `MODELFLEET_METRICS_PORT` is unset: distinct, so that `modelfleet up`
#: runs them all on one machine. 9464 is the OpenTelemetry Prometheus exporter's conventional port.
METRICS_PORTS: dict[str, int] = {
    "gateway": 9464,
    "catalog": 9465,
    "provisioner": 9466,
    "router": 9467,
    "hardware-probe": 9468,
    "inference-fallback": 9469,
}

#: Histogram buckets in seconds for request-path durations: from 1 ms (the gateway's own overhead) to 5 min.
DURATION_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: Buckets for token counts per request (gen_ai.client.token.usage).
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)
#: Buckets for generation rates ({token}/s): from a CPU fallback's few tokens a second to a batched GPU server's.
TOKEN_RATE_BUCKETS = (1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000)


def meter(name: str) -> Meter:
    """The meter a module records on; instruments made before `install_metrics` start recording once it runs."""
    return metrics.get_meter(name)


@dataclass
class MetricsEndpoint:
    """What `install_metrics` started: the provider, and the Prometheus server when one listens."""

    provider: MeterProvider
    port: int | None
    _server: WSGIServer | None = None
    _thread: threading.Thread | None = None
    _otlp: StoppableMetricExporter | None = None

    def flush(self, within_s: float | None = None) -> None:
        """Push what was recorded to OTLP now (at stop), if the collector takes it within `within_s` (`STOP_FLUSH_S`,
        2 s); else it is dropped with one warning, and so is every later push (services/runtime/otlp.py). The provider
        stays: a process installs it once."""
        if self._otlp is None:  # no push over the network: the readers' own flush (none for Prometheus's)
            self.provider.force_flush()
            return
        if self._otlp.aborted:
            return
        from services.runtime.otlp import STOP_FLUSH_S, finished_within

        bound_s = STOP_FLUSH_S if within_s is None else within_s
        if not finished_within(lambda: self.provider.force_flush(timeout_millis=bound_s * 1000), bound_s):
            self._otlp.abort()
            log.warning("metrics: the OTLP collector took no push within %g s of the stop; the last one is dropped",
                        bound_s)  # fmt: skip


_installed: MetricsEndpoint | None = None
_lock = threading.Lock()


def resolve_port(service_name: str, configured: int | None) -> int:
    """The port this process serves `/metrics` on; 0 when the operator turned it off."""
    if configured is not None:
        return configured
    return METRICS_PORTS.get(service_name, 0)


def install_metrics(
    service_name: str,
    *,
    port: int | None = None,
    bind: str = "127.0.0.1",
    readers: tuple[MetricReader, ...] = (),
) -> MetricsEndpoint:
    """Install the process's meter provider (once: a second call returns the first) and start `/metrics`.

    A port that is taken logs a warning and leaves the endpoint off: a metrics port never stops a service.
    """
    global _installed
    with _lock:
        if _installed is not None:
            return _installed
        os.environ.setdefault("OTEL_SERVICE_NAME", service_name)
        resource = Resource.create({"service.name": os.environ["OTEL_SERVICE_NAME"], "service.namespace": "modelfleet"})
        all_readers: list[MetricReader] = [PrometheusMetricReader(), *readers]
        otlp = None
        if _otlp_metrics_configured():
            from services.runtime.otlp import StoppableMetricExporter

            otlp = StoppableMetricExporter()
            all_readers.append(PeriodicExportingMetricReader(otlp, export_interval_millis=10_000))
        provider = MeterProvider(resource=resource, metric_readers=all_readers, views=_views())
        metrics.set_meter_provider(provider)
        endpoint = MetricsEndpoint(provider, None, _otlp=otlp)
        chosen = resolve_port(service_name, port)
        if chosen > 0:
            try:
                server, thread = start_http_server(chosen, addr=bind)
            except OSError as exc:
                log.warning("metrics: cannot listen on %s:%d (%s); /metrics is off for this process", bind, chosen, exc)
            else:
                endpoint.port, endpoint._server, endpoint._thread = chosen, server, thread
                log.info("metrics: Prometheus /metrics on %s:%d", bind, chosen)
        _installed = endpoint
        return endpoint


def _views() -> list[View]:
    """Bucket boundaries that suit what is measured (the SDK's defaults are in milliseconds up to 10 s)."""
    return [
        View(
            instrument_type=Histogram,
            instrument_unit="s",
            aggregation=ExplicitBucketHistogramAggregation(DURATION_BUCKETS_S),
        ),
        View(
            instrument_type=Histogram,
            instrument_unit="{token}",
            aggregation=ExplicitBucketHistogramAggregation(TOKEN_BUCKETS),
        ),
        View(
            instrument_type=Histogram,
            instrument_unit="{token}/s",
            aggregation=ExplicitBucketHistogramAggregation(TOKEN_RATE_BUCKETS),
        ),
    ]


def _otlp_metrics_configured() -> bool:
    """OTLP push when an OTLP endpoint is set, unless `OTEL_METRICS_EXPORTER` (the SDK's standard variable) leaves
    `otlp` out: compose sets it to `prometheus`, so Prometheus scrapes each process and nothing is counted twice."""
    chosen = os.environ.get("OTEL_METRICS_EXPORTER")
    if chosen is not None and "otlp" not in {part.strip() for part in chosen.split(",")}:
        return False
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"))
