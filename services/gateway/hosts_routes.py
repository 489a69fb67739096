"""Gateway routes for hosts and sizing: GET /api/v1/hosts, /api/v1/hosts/{id}, and /api/v1/fit (GET and POST)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BucketNotFoundError, NoKeysError
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field, ValidationError

from contracts.catalog import CatalogModelsRequest, ModelDoc, ModelInfoRequest
from contracts.fit import FitReport, HostCapacity, capacity, fit_report
from contracts.gguf_header import GgufError, model_shape
from contracts.hardware import HOSTS_BUCKET, GpuSampled
from contracts.rpc import RpcError
from contracts.subjects import EVENTS_STREAM
from contracts.vram import (
    EstimateSettings,
    ModelChoice,
    ModelShape,
    Recommendation,
    SettingsRecommendation,
    recommend_model,
    recommend_settings,
)
from services.gateway.auth import caller
from services.gateway.bus_client import BusClient, bus_of
from services.gateway.errors import ERROR_RESPONSES
from services.gateway.subscriptions import dead_letter
from services.runtime.egress import EgressDenied
from services.runtime.gguf_io import read_url_header

# Read-only, but fleet internals: any valid token (a user's or the admin's).
router = APIRouter(dependencies=[Depends(caller)], responses=ERROR_RESPONSES)

#: What a catalog model is sized as when no quantization is asked for (the one Ollama pulls by default).
DEFAULT_QUANT = "Q4_K_M"
#: A host whose latest sample is older than this many of its intervals is reported stale.
STALE_INTERVALS = 3.0


class HostSummary(BaseModel):
    host_id: str
    age_s: float
    stale: bool
    sample: GpuSampled


class HostsReply(BaseModel):
    hosts: list[HostSummary]


class HostDetail(HostSummary):
    history: list[GpuSampled] = Field(description="the host's last samples from the EVENTS stream, oldest first")


class FitBody(BaseModel):
    """POST /api/v1/fit: a model shape the caller read from a GGUF header (modelfleet fit PATH does)."""

    model: str = Field(min_length=1, max_length=1024)
    shape: ModelShape
    settings: EstimateSettings = Field(default_factory=EstimateSettings)
    host: str | None = Field(default=None, min_length=1, max_length=253)


def _bus(request: Request) -> BusClient:
    """The bus client, connected: these routes read JetStream and KV directly, outside the seam."""
    bus = bus_of(request)
    bus.require()
    return bus


async def _bucket(bus: BusClient) -> KeyValue | None:
    try:
        return await bus.broker.connection.jetstream().key_value(HOSTS_BUCKET)
    except BucketNotFoundError:
        return None  # no probe has reported yet


def _summary(sample: GpuSampled, now: datetime) -> HostSummary:
    age = max(0.0, (now - sample.occurred_at).total_seconds())
    return HostSummary(
        host_id=sample.host_id, age_s=round(age, 3), stale=age > STALE_INTERVALS * (sample.interval_s or 5.0),
        sample=sample,
    )  # fmt: skip


async def latest_samples(bus: BusClient) -> list[GpuSampled]:
    kv = await _bucket(bus)
    if kv is None:
        return []
    try:
        keys = await kv.keys()
    except NoKeysError:
        return []
    samples = []
    for key in sorted(keys):
        entry = await kv.get(key)
        if entry.value:
            try:
                samples.append(GpuSampled.model_validate_json(entry.value))
            except ValidationError:
                continue  # a newer, incompatible writer: skip rather than fail the listing
    return samples


@router.get("/api/v1/hosts", response_model=HostsReply, tags=["hosts"])
async def list_hosts(request: Request) -> HostsReply:
    """The latest sample of every host (from the `hosts` KV bucket), with its age and a stale flag."""
    now = datetime.now(UTC)
    return HostsReply(hosts=[_summary(s, now) for s in await latest_samples(_bus(request))])


async def history(bus: BusClient, host_id: str, latest: GpuSampled, last: int) -> list[GpuSampled]:
    """The host's last `last` GpuSampled events, read from EVENTS with an ephemeral consumer from a start time."""
    interval = latest.interval_s or 5.0
    start = latest.occurred_at - timedelta(seconds=interval * (last + 2) * 1.5 + 1.0)
    js = bus.broker.connection.jetstream()
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start,
        ack_policy=AckPolicy.NONE, inactive_threshold=10.0, max_ack_pending=-1,
    )  # fmt: skip
    sub = await js.pull_subscribe(GpuSampled.SUBJECT, stream=EVENTS_STREAM, config=config)
    found: list[GpuSampled] = []
    try:
        for _ in range(200):  # bounded: 200 batches of 256 messages
            try:
                msgs = await sub.fetch(256, timeout=0.5)
            except TimeoutError:
                break
            for msg in msgs:
                try:
                    sample = GpuSampled.model_validate_json(msg.data)
                except ValidationError as exc:  # skipped, logged, dead-lettered: the history goes on
                    await dead_letter(bus, msg, exc, "gateway/host-history")
                    continue
                if sample.host_id == host_id:
                    found.append(sample)
            if msgs and msgs[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return found[-last:]


@router.get("/api/v1/hosts/{host_id}", response_model=HostDetail, tags=["hosts"])
async def get_host(
    request: Request, host_id: str, last: Annotated[int, Query(ge=1, le=500, description="history length")] = 10
) -> HostDetail:
    """One host's latest sample and its last `last` samples."""
    bus = _bus(request)
    latest = {s.host_id: s for s in await latest_samples(bus)}.get(host_id)
    if latest is None:
        raise HTTPException(404, f"host {host_id!r} has not reported (no entry in the {HOSTS_BUCKET!r} bucket)")
    summary = _summary(latest, datetime.now(UTC))
    return HostDetail(**summary.model_dump(), history=await history(bus, host_id, latest, last))


class HostRecommendations(BaseModel):
    host_id: str
    memory_bytes: int = Field(description="what the model tier is chosen by: the largest free GPU, else free RAM")
    memory_source: str = Field(description="'gpu' or 'ram'")
    model: Recommendation
    settings: SettingsRecommendation


def _choice(doc: ModelDoc) -> ModelChoice | None:
    """A library model as a candidate: its default (or smallest) quantization's size, its mean rating."""
    sizes = {q.name: q.size_bytes for q in doc.quantizations if q.size_bytes}
    if not sizes or not doc.parameter_count:
        return None
    size = sizes.get(DEFAULT_QUANT, min(sizes.values()))
    quality = round(sum(doc.ratings.values()) / len(doc.ratings)) if doc.ratings else 0
    return ModelChoice(name=doc.id, parameters_b=doc.parameter_count / 1e9, size_bytes=size, quality=quality)


@router.get("/api/v1/hosts/{host_id}/recommendations", response_model=HostRecommendations, tags=["hosts"])
async def host_recommendations(request: Request, host_id: str) -> HostRecommendations:
    """The library model for the host's memory tier, and the profile and settings for its RAM and cores."""
    bus = _bus(request)
    sample = {s.host_id: s for s in await latest_samples(bus)}.get(host_id)
    if sample is None:
        raise HTTPException(404, f"host {host_id!r} has not reported")
    try:
        library = await bus.ask(CatalogModelsRequest())
    except RpcError as exc:  # the CLI shows the sample without advice on a 503, whatever the catalog's trouble
        raise RpcError(503, f"catalog unavailable: {exc.detail}", code="unavailable") from exc
    choices = [c for c in map(_choice, library.models) if c is not None]
    on_gpu = sample.has_gpu and bool(sample.gpus)
    memory = sample.gpu_free_bytes() if on_gpu else sample.memory_available_bytes
    return HostRecommendations(
        host_id=host_id, memory_bytes=memory, memory_source="gpu" if on_gpu else "ram",
        model=recommend_model(memory, choices),
        settings=recommend_settings(sample.memory_total_bytes, sample.cpu_physical_cores or sample.cpu_logical_cores),
    )  # fmt: skip


async def _capacities(bus: BusClient, host: str | None) -> list[HostCapacity]:
    samples = await latest_samples(bus)
    if host is not None:
        samples = [s for s in samples if s.host_id == host]
        if not samples:
            raise HTTPException(404, f"host {host!r} has not reported")
    return [capacity(s) for s in samples]


async def _catalog_sizes(bus: BusClient, model: str) -> tuple[list[tuple[str, int]], int | None]:
    """The catalog's quantizations (name, size) of `model` and its context window, via rpc.catalog.models.info.v1."""
    doc = await bus.ask(ModelInfoRequest(model=model))
    return [(q.name, q.size_bytes) for q in doc.quantizations if q.size_bytes], doc.context_window


@router.get("/api/v1/fit", response_model=FitReport, tags=["hosts"])
async def fit_get(
    request: Request,
    model: Annotated[str | None, Query(min_length=1, max_length=1024, description="a catalog model name")] = None,
    quant: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
    num_ctx: Annotated[int, Query(ge=1, le=10_000_000)] = 2048,
    parallel: Annotated[int, Query(ge=1, le=256)] = 1,
    cache_type: Annotated[str, Query(pattern=r"^(f32|f16|bf16|q8_0|q4_0)$")] = "f16",
    host: Annotated[str | None, Query(min_length=1, max_length=253)] = None,
    size_bytes: Annotated[int | None, Query(ge=0, description="a file size: the simple form")] = None,
    gguf_url: Annotated[
        str | None, Query(min_length=1, max_length=4096, description="a GGUF over HTTP (Range reads)")
    ] = None,
) -> FitReport:
    """What a model needs (weights, KV cache, compute, overhead) and how it fits each host (or `host`).

    Give one of: `gguf_url` (its header is read with HTTP Range), `size_bytes` (file_size x 1.2 + ctx/1000 MiB
    + 500 MiB), or `model` (the catalog's sizes for `quant`, or every quantization and the best per host)."""
    given = [n for n, v in (("model", model), ("size_bytes", size_bytes), ("gguf_url", gguf_url)) if v is not None]
    if len(given) != 1:
        raise HTTPException(422, f"give exactly one of model, size_bytes, gguf_url (got {given or 'none'})")
    bus = _bus(request)
    s = EstimateSettings(num_ctx=num_ctx, parallel=parallel, cache_type=cache_type)
    hosts = await _capacities(bus, host)
    if gguf_url is not None:
        try:
            header, total = await read_url_header(gguf_url)
            shape = model_shape(header, total or 0)
        except GgufError as exc:
            raise HTTPException(422, f"gguf_url: {exc}") from exc
        except EgressDenied as exc:  # the egress policy (docs/gateway.md "Outbound requests"): nothing was contacted
            raise RpcError(403, f"gguf_url: {exc}", code="egress_not_allowed", field="gguf_url") from None
        return fit_report(gguf_url, "gguf", s, hosts, shape=shape, quant=shape.file_type)
    if size_bytes is not None:
        return fit_report(f"{size_bytes} bytes", "size", s, hosts, size_bytes=size_bytes, quant=quant)
    assert model is not None
    sizes, _ = await _catalog_sizes(bus, model)
    if not sizes:
        raise HTTPException(422, f"model: the catalog knows no file sizes for {model!r}")
    chosen = [q for q in sizes if quant is None or q[0].upper() == quant.upper()]
    if not chosen:
        raise HTTPException(422, f"quant: {model!r} has no {quant!r} (has {', '.join(q for q, _ in sizes)})")
    # without --quant: the catalog's default quantization when it has it, else its smallest file
    pick = chosen[0] if quant else next((q for q in chosen if q[0] == DEFAULT_QUANT), min(chosen, key=lambda q: q[1]))
    return fit_report(model, "catalog", s, hosts, size_bytes=pick[1], quant=pick[0], quants=sizes)


@router.post("/api/v1/fit", response_model=FitReport, tags=["hosts"])
async def fit_post(request: Request, body: FitBody) -> FitReport:
    """The same report for a model shape the caller read itself (a local GGUF header)."""
    hosts = await _capacities(_bus(request), body.host)
    return fit_report(body.model, "gguf", body.settings, hosts, shape=body.shape, quant=body.shape.file_type)
