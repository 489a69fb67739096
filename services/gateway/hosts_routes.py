"""Gateway routes for hosts and sizing: GET /api/v1/hosts, /api/v1/hosts/{id}, and /api/v1/fit (GET and POST)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, NamedTuple

import httpx
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import BaseModel, Field, ValidationError

from contracts.advice import CandidateFit, advise_host, library_candidate
from contracts.architecture import rescale_shape
from contracts.catalog import CatalogModelsRequest, ModelDoc, ModelInfoRequest
from contracts.fit import (
    DEFAULT_QUANT,
    FitReport,
    HostCapacity,
    SizingMethod,
    capacity,
    fit_report,
    gguf_source_url,
    library_shapes,
)
from contracts.gguf_header import GgufError, GgufHeader, model_shape
from contracts.hardware import HOSTS_BUCKET, GpuSampled
from contracts.local_models import LocalModelsRequest
from contracts.rpc import RpcError
from contracts.subjects import EVENTS_STREAM
from contracts.vram import (
    EstimateSettings,
    ModelShape,
    Recommendation,
    SettingsRecommendation,
    recommend_settings,
)
from services.gateway.auth import caller
from services.gateway.bus_client import BusClient, bus_of
from services.gateway.errors import ERROR_RESPONSES
from services.gateway.fit_body import FitBody
from services.gateway.subscriptions import dead_letter
from services.runtime.egress import EgressDenied, EgressSettings, EgressTransport
from services.runtime.gguf_io import read_file_header, read_url_header
from services.runtime.kv_scan import HOSTS_LIST_TIMEOUT_S, host_samples

# Read-only, but fleet internals: any valid token (a user's or the admin's).
router = APIRouter(dependencies=[Depends(caller)], responses=ERROR_RESPONSES)

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


def _bus(request: Request) -> BusClient:
    """The bus client, connected: these routes read JetStream and KV directly, outside the seam."""
    bus = bus_of(request)
    bus.require()
    return bus


def _summary(sample: GpuSampled, now: datetime) -> HostSummary:
    age = max(0.0, (now - sample.occurred_at).total_seconds())
    return HostSummary(
        host_id=sample.host_id, age_s=round(age, 3), stale=age > STALE_INTERVALS * (sample.interval_s or 5.0),
        sample=sample,
    )  # fmt: skip


async def latest_samples(bus: BusClient) -> list[GpuSampled]:
    """The latest sample of every host, in one pass over the `hosts` bucket's last entry per key: a key a probe
    deletes, or the bucket's max age expires, while the listing runs is left out instead of failing it (a listing of
    the keys then a `get` of each raised for a key gone in between)."""
    try:
        return await host_samples(bus.broker.connection.jetstream())
    except TimeoutError as exc:
        detail = f"the `{HOSTS_BUCKET}` bucket did not list in {HOSTS_LIST_TIMEOUT_S:g}s"
        raise RpcError(504, detail, code="timeout") from exc


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
    memory_bytes: int = Field(
        description="what the model tier is chosen by: the free memory of all the host's GPUs together, else free RAM"
    )
    memory_source: str = Field(description="'gpu' or 'ram'")
    model: Recommendation
    settings: SettingsRecommendation
    # Added with recommendations across GPUs (optional, so older replies stay valid):
    num_ctx: int | None = Field(default=None, description="the context candidates are sized at (the settings')")
    placement: CandidateFit | None = Field(
        default=None, description="where the recommended model goes: the same layer split as /api/v1/fit"
    )
    offload: list[CandidateFit] = Field(
        default_factory=list, description="better models that run here only partially offloaded, with their split"
    )


@router.get("/api/v1/hosts/{host_id}/recommendations", response_model=HostRecommendations, tags=["hosts"])
async def host_recommendations(request: Request, host_id: str) -> HostRecommendations:
    """The library model for the host's memory tier, judged by the same layer split as `fit` over all its GPUs
    (a subset when better), the better models that fit only partially offloaded, and the profile and settings for
    its RAM and cores."""
    bus = _bus(request)
    sample = {s.host_id: s for s in await latest_samples(bus)}.get(host_id)
    if sample is None:
        raise HTTPException(404, f"host {host_id!r} has not reported")
    try:
        library = await bus.ask(CatalogModelsRequest())
    except RpcError as exc:  # the CLI shows the sample without advice on a 503, whatever the catalog's trouble
        raise RpcError(503, f"catalog unavailable: {exc.detail}", code="unavailable") from exc
    settings = recommend_settings(sample.memory_total_bytes, sample.cpu_physical_cores or sample.cpu_logical_cores)
    headers = await local_headers(bus, host_id)
    candidates = [library_candidate(doc, headers.get(doc.sources.local_path or "")) for doc in library.models]
    advice = advise_host(
        capacity(sample), [c for c in candidates if c is not None], EstimateSettings(num_ctx=settings.context_length)
    )
    return HostRecommendations(
        host_id=host_id, memory_bytes=advice.memory_bytes, memory_source=advice.memory_source, model=advice.model,
        settings=settings, num_ctx=advice.num_ctx, placement=advice.placement, offload=advice.offload,
    )  # fmt: skip


async def local_headers(bus: BusClient, host_id: str) -> dict[str, ModelShape]:
    """The GGUF header shapes the catalog knows for `host_id`'s local files (its probe's report), by absolute path:
    an imported model whose `local_path` is one of them is sized from it. None when the catalog cannot say."""
    try:
        reply = await bus.ask(LocalModelsRequest(host=host_id))
    except RpcError:  # no catalog answer: the file-size form, as before
        return {}
    return {str(m.file.path): m.file.shape for m in reply.models if m.file.shape is not None}


async def _capacities(bus: BusClient, host: str | None) -> list[HostCapacity]:
    samples = await latest_samples(bus)
    if host is not None:
        samples = [s for s in samples if s.host_id == host]
        if not samples:
            raise HTTPException(404, f"host {host!r} has not reported")
    return [capacity(s) for s in samples]


#: GGUF headers read for catalog models, by URL (a header is small and a published file does not change).
#: A remote GGUF's server connects within this long and goes silent no longer than the read bound (the fit route's own
#: bounds are the gateway settings `OUTBOUND_CONNECT_TIMEOUT_S` and `OUTBOUND_READ_TIMEOUT_S`, at most these).
OUTBOUND_CONNECT_TIMEOUT_S = 10.0
OUTBOUND_READ_TIMEOUT_S = 30.0
_HEADER_CACHE: OrderedDict[str, ModelShape] = OrderedDict()
HEADER_CACHE_SIZE = 64


async def _header_shape(url: str) -> ModelShape:
    """The shape from a remote GGUF's header (HTTP Range reads through the egress policy), cached by URL."""
    if url in _HEADER_CACHE:
        _HEADER_CACHE.move_to_end(url)
        return _HEADER_CACHE[url]
    header, total = await _read_url_header(url, OUTBOUND_CONNECT_TIMEOUT_S)
    shape = model_shape(header, total or 0)
    _HEADER_CACHE[url] = shape
    while len(_HEADER_CACHE) > HEADER_CACHE_SIZE:
        _HEADER_CACHE.popitem(last=False)
    return shape


async def _read_url_header(
    url: str, connect_timeout_s: float, read_timeout_s: float = OUTBOUND_READ_TIMEOUT_S
) -> tuple[GgufHeader, int | None]:
    """A remote GGUF's header through the egress policy, connecting within `connect_timeout_s` and silent no longer
    than `read_timeout_s` (every hop)."""
    timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
    async with httpx.AsyncClient(follow_redirects=True, timeout=timeout, transport=EgressTransport()) as client:
        return await read_url_header(url, client=client)


def _unreachable(exc: GgufError, url: str, connect_timeout_s: float, read_timeout_s: float) -> RpcError | None:
    """A read that failed because the URL's server took no connection in time (503) or went silent (504), naming
    it; None for any other failure (the file's own fault: a 404, not a GGUF)."""
    cause = exc.__cause__
    if not isinstance(cause, httpx.TimeoutException | httpx.ConnectError):
        return None
    try:
        where = httpx.URL(url).host or url
    except httpx.InvalidURL:
        where = url
    if isinstance(cause, httpx.ConnectError | httpx.ConnectTimeout):
        detail = (
            f"gguf_url: {where} is unreachable: no connection within {connect_timeout_s:g}s ({type(cause).__name__})"
        )
        return RpcError(503, detail, code="unavailable", field="gguf_url")
    if isinstance(cause, httpx.TimeoutException):
        detail = f"gguf_url: {where} did not answer within {read_timeout_s:g}s ({type(cause).__name__})"
        return RpcError(504, detail, code="timeout", field="gguf_url")
    return None


def _local_shape(path: str) -> ModelShape:
    return model_shape(read_file_header(path), Path(path).stat().st_size)


class CatalogSizing(NamedTuple):
    sizes: list[tuple[str, int]]
    shapes: dict[str, ModelShape]
    method: SizingMethod
    warnings: list[str]


async def catalog_sizing(doc: ModelDoc, quant: str | None, hf_endpoint: str | None = None) -> CatalogSizing:
    """How a catalog model is sized: its library architecture figures (`shape`); else the GGUF header of its file
    (`header`: its `local_path` when that GGUF is on this host, else its hub or URL file read by HTTP Range; other
    quantizations scaled by file size); else the file size alone (`file-size`), with a warning saying why."""
    sizes = [(q.name, q.size_bytes) for q in doc.quantizations if q.size_bytes]
    shapes = library_shapes(doc)
    if shapes:
        return CatalogSizing(sizes, shapes, "shape", [])
    if doc.architecture is not None and doc.architecture.kind == "diffusion":
        why = f"{doc.id} is a diffusion model ({doc.architecture.architecture}): sized from its file size"
        return CatalogSizing(sizes, {}, "file-size", [why])
    wanted = quant or next((q for q, _ in sizes if q == DEFAULT_QUANT), sizes[0][0] if sizes else None)
    local = doc.sources.local_path or ""
    local_gguf = local.lower().endswith(".gguf") and await asyncio.to_thread(Path(local).is_file)  # on this host
    url = None if local_gguf else gguf_source_url(doc, wanted, hf_endpoint or EgressSettings().hf_endpoint)
    if url is None and not local_gguf:
        why = f"no architecture figures and no GGUF file known for {doc.id}: sized from its file size (simple form)"
        return CatalogSizing(sizes, {}, "file-size", [why])
    try:
        shape = await (asyncio.to_thread(_local_shape, local) if url is None else _header_shape(url))
    except (GgufError, EgressDenied, OSError) as exc:
        return CatalogSizing(
            sizes, {}, "file-size", [f"GGUF header of {doc.id} unreadable ({exc}): sized from its file size"]
        )
    if not sizes:  # the header's file is the one size known
        sizes = [(shape.file_type or "GGUF", shape.file_size_bytes or shape.weights_bytes)]
    header_quant = shape.file_type or ""
    by_quant = {
        q: shape if q.upper() == header_quant.upper() or len(sizes) == 1 else rescale_shape(shape, b, q)
        for q, b in sizes
    }
    return CatalogSizing(sizes, by_quant, "header", [])


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
    + 500 MiB), or `model` (a catalog model: sized from its architecture figures and each quantization's file size,
    else from its GGUF header, else from the file size; `method` says which; for `quant`, or every quantization
    and the best per host)."""
    given = [n for n, v in (("model", model), ("size_bytes", size_bytes), ("gguf_url", gguf_url)) if v is not None]
    if len(given) != 1:
        raise HTTPException(422, f"give exactly one of model, size_bytes, gguf_url (got {given or 'none'})")
    bus = _bus(request)
    s = EstimateSettings(num_ctx=num_ctx, parallel=parallel, cache_type=cache_type)
    hosts = await _capacities(bus, host)
    if gguf_url is not None:
        try:
            connect_s: float = request.app.state.settings.outbound_connect_timeout_s
            read_s: float = request.app.state.settings.outbound_read_timeout_s
            header, total = await _read_url_header(gguf_url, connect_s, read_s)
            shape = model_shape(header, total or 0)
        except GgufError as exc:
            raise _unreachable(exc, gguf_url, connect_s, read_s) or HTTPException(422, f"gguf_url: {exc}") from exc
        except EgressDenied as exc:  # the egress policy (docs/gateway.md "Outbound requests"): nothing was contacted
            raise RpcError(403, f"gguf_url: {exc}", code="egress_not_allowed", field="gguf_url") from None
        return fit_report(gguf_url, "gguf", s, hosts, shape=shape, quant=shape.file_type, method="header")
    if size_bytes is not None:
        return fit_report(f"{size_bytes} bytes", "size", s, hosts, size_bytes=size_bytes, quant=quant)
    assert model is not None
    doc = await bus.ask(ModelInfoRequest(model=model))
    sizing = await catalog_sizing(doc, quant)
    sizes = sizing.sizes
    if not sizes:
        raise HTTPException(422, f"model: the catalog knows no file sizes for {model!r}")
    chosen = [q for q in sizes if quant is None or q[0].upper() == quant.upper()]
    if not chosen:
        raise HTTPException(422, f"quant: {model!r} has no {quant!r} (has {', '.join(q for q, _ in sizes)})")
    # without --quant: the catalog's default quantization when it has it, else its smallest file
    pick = chosen[0] if quant else next((q for q in chosen if q[0] == DEFAULT_QUANT), min(chosen, key=lambda q: q[1]))
    return fit_report(
        model, "catalog", s, hosts, shape=sizing.shapes.get(pick[0]), size_bytes=pick[1], quant=pick[0],
        quants=sizes, quant_shapes=sizing.shapes, method=sizing.method, warnings=sizing.warnings,
    )  # fmt: skip


@router.post("/api/v1/fit", response_model=FitReport, tags=["hosts"])
async def fit_post(request: Request, body: FitBody) -> FitReport:
    """The same report for a model shape the caller read itself (a local GGUF header)."""
    hosts = await _capacities(_bus(request), body.host)
    return fit_report(body.model, "gguf", body.settings, hosts, shape=body.shape, quant=body.shape.file_type)
