"""Bus fuzz: 10,000 malformed messages against the real services, as processes. Every consumed stream subject gets
random bytes and near-valid JSON (tests/harness/bus_fuzz.py); every rpc subject the services answer gets the same.
Each stream message must land in dlq.<subject> once per consumer of the subject (nothing lost, nothing twice); each
rpc request must get a typed error reply (or, for health, a valid reply); no process may die, and every service must
answer its health rpc afterwards."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from contracts.catalog import (
    AuthRequest,
    CatalogChanged,
    CatalogModelsRequest,
    ExportRequest,
    ImportRequest,
    ModelInfoRequest,
    ModelPatchRequest,
    OverviewRequest,
    ProfileChanged,
    ProfileDeleteRequest,
    ProfileGetRequest,
    ProfileListRequest,
    ProfileSaveRequest,
    ResolveRequest,
    RolesRequest,
    SetDefaultRequest,
    TokenIssueRequest,
    TokenListRequest,
    TokenRevokeRequest,
    UserConfigGetRequest,
    UserConfigRequest,
)
from contracts.envelope import Contract
from contracts.fallback import AdapterUpdated, FallbackAdvertised, GenerateRequest, SlotsRequest
from contracts.hardware import GpuSampled, HostHeartbeat, SampleRequest
from contracts.health import HealthReply, HealthRequest
from contracts.local_models import LocalModelsRequest, LocalModelsScanned
from contracts.provisioner import (
    AuditRequest,
    InventoryDeleteRequest,
    InventoryRequest,
    InventorySyncRequest,
    ModelPulled,
    ProvisionCommand,
    ProvisionCompleted,
    ProvisionFailed,
    ProvisionFetch,
    ProvisionResultRequest,
    QuantizationsRequest,
    UpdateCheckRequest,
    UpdateStatusRequest,
)
from contracts.router import (
    BackendBusy,
    BackendCallCompleted,
    BackendCallsCompleted,
    BackendChecked,
    BackendsRequest,
    LlmDegraded,
    LlmRecovered,
    RouteRequest,
)
from contracts.rpc import RPC_HEADER, ErrorReply, Frame
from contracts.subjects import DLQ_STREAM, dlq_subject, fill
from tests.harness.bus_fuzz import Fuzzer, value_pool
from tests.harness.waiting import eventually

pytestmark = pytest.mark.e2e

SERVICES = ("catalog", "provisioner", "router", "hardware-probe", "inference-fallback")
HOST = "test-host"
#: Stream subject -> (its contract, how many of the services consume it: each consumer dead-letters it once).
CONSUMED: dict[str, tuple[type[Contract], int]] = {
    ProvisionCommand.SUBJECT: (ProvisionCommand, 1),  # provisioner
    fill(ProvisionFetch.SUBJECT, host=HOST): (ProvisionFetch, 1),  # the provisioner of this host (durable per host)
    CatalogChanged.SUBJECT: (CatalogChanged, 2),  # catalog, router
    ProfileChanged.SUBJECT: (ProfileChanged, 1),  # router
    HostHeartbeat.SUBJECT: (HostHeartbeat, 1),
    GpuSampled.SUBJECT: (GpuSampled, 1),
    ModelPulled.SUBJECT: (ModelPulled, 1),
    ProvisionFailed.SUBJECT: (ProvisionFailed, 1),
    ProvisionCompleted.SUBJECT: (ProvisionCompleted, 1),
    BackendCallCompleted.SUBJECT: (BackendCallCompleted, 1),
    BackendCallsCompleted.SUBJECT: (BackendCallsCompleted, 1),
    BackendBusy.SUBJECT: (BackendBusy, 1),
    BackendChecked.SUBJECT: (BackendChecked, 1),
    LlmDegraded.SUBJECT: (LlmDegraded, 2),  # router, inference-fallback
    LlmRecovered.SUBJECT: (LlmRecovered, 2),
    FallbackAdvertised.SUBJECT: (FallbackAdvertised, 1),  # router
    AdapterUpdated.SUBJECT: (AdapterUpdated, 1),  # inference-fallback
    LocalModelsScanned.SUBJECT: (LocalModelsScanned, 1),  # catalog
}
RPC: dict[str, type[Contract]] = {
    c.SUBJECT: c
    for c in (
        ResolveRequest, RolesRequest, AuthRequest, TokenIssueRequest, TokenListRequest, TokenRevokeRequest,
        CatalogModelsRequest, ModelInfoRequest, SetDefaultRequest, ProfileListRequest, ProfileGetRequest,
        ProfileSaveRequest, ProfileDeleteRequest, UserConfigRequest, UserConfigGetRequest, OverviewRequest,
        ImportRequest, ExportRequest, UpdateCheckRequest, UpdateStatusRequest, InventoryRequest, InventorySyncRequest,
        InventoryDeleteRequest, QuantizationsRequest, ProvisionResultRequest, RouteRequest, BackendsRequest,
        SlotsRequest, GenerateRequest, ModelPatchRequest, LocalModelsRequest, AuditRequest,
    )
} | {fill(SampleRequest.SUBJECT, host=HOST): SampleRequest}  # fmt: skip
HEALTH = {fill(HealthRequest.SUBJECT, service=s): HealthRequest for s in SERVICES}
ASYNCAPI = Path(__file__).resolve().parents[2] / "docs" / "asyncapi"
STREAM_MESSAGES = 7_000
RPC_MESSAGES = 3_000


async def test_ten_thousand_malformed_messages_are_dead_lettered_or_refused(
    nats_url, database_url, service_env, start_service
):
    env = service_env(
        database_url=database_url, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", MODELFLEET_FALLBACK_ALLOW_CUDA="false"
    )
    procs = [await start_service(name, env, timeout_s=90) for name in SERVICES]
    fuzz = Fuzzer(seed=20_11, pool=value_pool())
    nc = await nats.connect(nats_url, max_reconnect_attempts=2)
    try:
        js = nc.jetstream()
        # --- stream subjects: published asynchronously, in flights of 500 acks -------------------------------------
        subjects = list(CONSUMED)
        published: Counter[str] = Counter()
        acks: list[Any] = []
        for i in range(STREAM_MESSAGES):
            subject = subjects[i % len(subjects)]
            data = fuzz.payload(CONSUMED[subject][0])
            acks.append(await js.publish_async(subject, data, headers={"Nats-Msg-Id": uuid.uuid4().hex}))
            published[subject] += 1
            if len(acks) >= 500:
                await asyncio.gather(*acks)
                acks.clear()
        for ack in await asyncio.gather(*acks):
            assert not ack.duplicate

        # --- rpc subjects: 64 in flight; each answer is a typed error (or, for health, a valid reply) --------------
        targets = list(RPC.items()) + list(HEALTH.items())
        answers: Counter[str] = Counter()
        bad: list[str] = []
        limit = asyncio.Semaphore(64)

        async def ask(subject: str, contract: type[Contract], data: bytes) -> None:
            async with limit:
                try:
                    msg = await nc.request(subject, data, timeout=10)
                except Exception as exc:
                    bad.append(f"{subject}: {type(exc).__name__} {exc}")
                    return
            kind = _answer(subject, contract, msg)
            answers[kind] += 1
            if kind == "bad":
                bad.append(f"{subject}: {msg.headers} {msg.data[:200]!r}")

        jobs = []
        for i in range(RPC_MESSAGES):
            subject, contract = targets[i % len(targets)]
            data = fuzz.anything(contract) if contract is HealthRequest else fuzz.payload(contract)
            jobs.append(ask(subject, contract, data))
        await asyncio.gather(*jobs)
        assert bad == [], bad[:20]
        assert answers["bad"] == 0 and sum(answers.values()) == RPC_MESSAGES
        # Every payload sent (health aside) is invalid: refused as such, never a 500 from a handler that ran.
        assert {k for k in answers if k.startswith("error")} == {"error 422 invalid_request"}, answers

        # --- every stream message is dead-lettered once by each of its consumers -----------------------------------
        expected = {dlq_subject(s): n * CONSUMED[s][1] for s, n in published.items()}

        async def letters() -> dict[str, int]:
            info = await js.stream_info(DLQ_STREAM, subjects_filter="dlq.>")
            return dict(info.state.subjects or {})

        async def all_letters() -> dict[str, int] | None:
            got = await letters()
            return got if all(got.get(s, 0) >= n for s, n in expected.items()) else None

        got = await eventually(all_letters, timeout_s=120, what="every message dead-lettered")
        assert {s: got.get(s, 0) for s in expected} == expected
        assert set(got) == set(expected)  # nothing dead-lettered that was not fuzzed

        # --- no crash; every service answers its health rpc -------------------------------------------------------
        for proc in procs:
            assert proc.proc.poll() is None, proc.log_tail()
        for subject in HEALTH:
            reply = HealthReply.model_validate_json((await nc.request(subject, b"{}", timeout=5)).data)
            assert reply.nats == "up"
        print(
            f"\nfuzz: {sum(published.values())} stream messages -> {sum(got.values())} dead letters; "
            f"{RPC_MESSAGES} rpc requests -> {dict(answers)}; {fuzz.rejected} valid candidates redrawn"
        )
    finally:
        await nc.close()


def test_every_subject_a_service_receives_is_fuzzed() -> None:
    """The services' own AsyncAPI documents (generated from the handlers, checked by `scripts.gen_asyncapi --check`)
    list what each receives: every such subject is fuzzed, and each stream subject expects one dead letter per
    service that consumes it."""
    receivers: Counter[str] = Counter()
    for service in SERVICES:
        doc = json.loads((ASYNCAPI / f"{service}.json").read_text())
        for op in doc["operations"].values():
            if op["action"] == "receive":
                channel = doc["channels"][op["channel"]["$ref"].rsplit("/", 1)[-1]]
                receivers[channel["address"].replace("example-host", HOST)] += 1
    streams = {s: n for s, n in receivers.items() if not s.startswith("rpc.")}
    assert streams == {s: n for s, (_, n) in CONSUMED.items()}
    assert {s for s in receivers if s.startswith("rpc.")} == set(RPC) | set(HEALTH)


def _answer(subject: str, contract: type[Contract], msg: Msg) -> str:
    frame = (msg.headers or {}).get(RPC_HEADER)
    if frame == Frame.ERROR:
        error = ErrorReply.model_validate_json(msg.data).error  # a typed error, or the test fails here
        return f"error {error.status} {error.code}"
    if frame in (Frame.START, Frame.END):  # a streamed rpc: it starts, then ends with the error frame
        return "stream"
    reply: type[Contract] | None = getattr(contract, "REPLY", None)
    if reply is not None:
        try:
            reply.model_validate_json(msg.data)
        except ValueError:
            return "bad"
        return "reply"
    return "bad"
