"""OpenTelemetry setup: one tracer provider per process, exported over OTLP/HTTP when configured."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler

if TYPE_CHECKING:
    from services.runtime.otlp import StoppableSpanExporter

#: The names this process's runtime put in `OTEL_SERVICE_NAME` itself (an operator's own value is not among them).
_named_here: set[str] = set()
#: Whether a provider was built in this process already (the first is the global one).
_built_one = False
#: The OTLP exporter of each provider that has one, aborted by `shutdown_tracing` if the collector does not answer.
_otlp_of: WeakKeyDictionary[TracerProvider, StoppableSpanExporter] = WeakKeyDictionary()

log = logging.getLogger(__name__)


def build_tracer_provider(service_name: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """A provider named for the service; spans go to `exporter`, else to OTLP/HTTP if its endpoint is set.

    `OTEL_SERVICE_NAME` is set by the runtime per service; an operator's explicit value wins. A process that hosts
    two services (the gateway with its router replica, `services.gateway_router`) names each one's spans for it;
    the first provider built is the process's global one."""
    global _built_one
    given = os.environ.get("OTEL_SERVICE_NAME")
    first, _built_one = not _built_one, True
    if given is None:
        os.environ["OTEL_SERVICE_NAME"] = given = service_name
        _named_here.add(service_name)
    name = service_name if given in _named_here else given
    resource = Resource.create({"service.name": name, "service.namespace": "modelfleet"})
    provider = traced_when_exported(resource)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif _otlp_endpoint_configured():
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL"))
        if protocol not in (None, "", "http/protobuf"):
            raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use http/protobuf")
        from services.runtime.otlp import StoppableSpanExporter

        _otlp_of[provider] = otlp = StoppableSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(otlp, schedule_delay_millis=200))
    if first:
        trace.set_tracer_provider(provider)
    return provider


def shutdown_tracing(provider: TracerProvider, within_s: float | None = None) -> None:
    """Shut the provider down at a stop: its last spans go to the collector if it takes them within `within_s`
    (`STOP_FLUSH_S`, 2 s); else they are dropped, with one warning, and the stop goes on (services/runtime/otlp.py)."""
    otlp = _otlp_of.pop(provider, None)
    if otlp is None:
        provider.shutdown()
        return
    from services.runtime.otlp import STOP_FLUSH_S, finished_within

    bound_s = STOP_FLUSH_S if within_s is None else within_s
    if not finished_within(provider.shutdown, bound_s):
        otlp.abort()
        log.warning("traces: the OTLP collector took no spans within %g s of the stop; the last ones are dropped",
                    bound_s)  # fmt: skip


def traced_when_exported(resource: Resource | None = None) -> TracerProvider:
    """A provider whose spans record only while it has a span processor, or under a caller's sampled trace."""
    sampler = WhenExported()
    provider = TracerProvider(resource=resource or Resource.create({}), sampler=ParentBased(root=sampler))
    sampler.provider = provider
    return provider


def exports_spans(provider: TracerProvider) -> bool:
    """Whether the provider's spans go anywhere now (it has a span processor: an exporter's, or a test's)."""
    return bool(provider._active_span_processor._span_processors)


def _otlp_endpoint_configured() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


class WhenExported(Sampler):
    """Start a trace only when this process's spans go somewhere (its provider has a span processor, which may be
    added after the provider is built); a trace a caller started and sampled is always continued (`ParentBased`).

    An unexported trace still cost a recording span per HTTP request and bus hop, a traceparent header on every
    request and its parsing on the other side, for nothing: on the data plane that was a measurable share of the
    gateway's and the router's CPU per small completion (observability/README.md)."""

    provider: TracerProvider | None = None

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):  # type: ignore[no-untyped-def]
        exported = self.provider is None or exports_spans(self.provider)
        return (ALWAYS_ON if exported else ALWAYS_OFF).should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return "WhenExported"
