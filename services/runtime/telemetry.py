"""OpenTelemetry setup: one tracer provider per process, exported over OTLP/HTTP when configured."""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter


def build_tracer_provider(service_name: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """A provider named for the service; spans go to `exporter`, else to OTLP/HTTP if its endpoint is set.

    `OTEL_SERVICE_NAME` is set by the runtime per service; an operator's explicit value wins.
    """
    os.environ.setdefault("OTEL_SERVICE_NAME", service_name)
    resource = Resource.create({"service.name": os.environ["OTEL_SERVICE_NAME"], "service.namespace": "modelfleet"})
    provider = TracerProvider(resource=resource)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif _otlp_endpoint_configured():
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL"))
        if protocol not in (None, "", "http/protobuf"):
            raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use http/protobuf")
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=200))
    trace.set_tracer_provider(provider)
    return provider


def _otlp_endpoint_configured() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
