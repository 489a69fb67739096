"""Test-side helpers for the provisioner tests: a NATS client that publishes provision commands,
records every evt.provisioner.* event, answers as a catalog, and writes host entries the way probes do."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import nats
from nats.js.api import KeyValueConfig

from contracts.catalog import RoleEntry, RolesReply, RolesRequest
from contracts.envelope import Contract
from contracts.hardware import HOSTS_BUCKET, GpuDevice, GpuSampled
from contracts.provisioner import ProvisionCommand, ProvisionCompleted
from contracts.rpc import RPC_HEADER, ErrorBody, ErrorReply, Frame

MIB = 1024 * 1024


class Bus:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], float]] = []
        self.nc: Any = None
        self.catalog_asks = 0

    async def start(self, url: str) -> Bus:
        self.nc = await nats.connect(url, connect_timeout=2)

        async def record(msg: Any) -> None:
            self.events.append((msg.subject, json.loads(msg.data), time.monotonic()))

        await self.nc.subscribe("evt.provisioner.>", cb=record)
        return self

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()

    async def provision(self, **fields: Any) -> ProvisionCommand:
        cmd = ProvisionCommand(producer="tests", **fields)
        await self.nc.jetstream().publish(
            cmd.SUBJECT, cmd.model_dump_json().encode(), headers={"Nats-Msg-Id": str(cmd.event_id)}
        )
        return cmd

    def of(self, request_id: uuid.UUID, subject_suffix: str) -> list[dict[str, Any]]:
        return [e for s, e, _ in self.events if s.endswith(subject_suffix) and e.get("request_id") == str(request_id)]

    async def completed(self, request_id: uuid.UUID, timeout_s: float = 30.0) -> ProvisionCompleted:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = self.of(request_id, ".request.completed.v1")
            if done:
                return ProvisionCompleted.model_validate(done[0])
            await asyncio.sleep(0.05)
        raise AssertionError(f"no request.completed for {request_id} in {timeout_s}s; events: {self.events[-5:]}")

    async def request(self, subject: str, body: Contract, timeout_s: float = 10.0) -> Any:
        msg = await self.nc.request(subject, body.model_dump_json().encode(), timeout=timeout_s)
        return json.loads(msg.data)

    async def put_host(
        self, host_id: str, ollama_url: str | None, *, reachable: bool = True, vram_gib: int = 0
    ) -> None:
        js = self.nc.jetstream()
        try:
            kv = await js.key_value(HOSTS_BUCKET)
        except Exception:
            kv = await js.create_key_value(KeyValueConfig(bucket=HOSTS_BUCKET))
        gpus = (
            [GpuDevice(index=0, name="RTX", uuid="GPU-1", memory_total_bytes=vram_gib << 30,
                       memory_free_bytes=vram_gib << 30, memory_used_bytes=0)]
            if vram_gib else []
        )  # fmt: skip
        sample = GpuSampled(
            producer="hardware-probe", host=host_id, host_id=host_id, has_gpu=bool(gpus), gpus=gpus,
            cpu_logical_cores=2, memory_total_bytes=8 << 30, memory_available_bytes=4 << 30,
            ollama_url=ollama_url, ollama_reachable=reachable,
        )  # fmt: skip
        await kv.put(host_id, sample.model_dump_json().encode())

    async def serve_catalog(
        self,
        roles: list[RoleEntry] | None = None,
        profile_set: str = "default",
        *,
        error: ErrorBody | None = None,
        silent: bool = False,
    ) -> None:
        """Answer rpc.catalog.roles.v1 as the catalog does, on the seam's wire format: the RolesReply, or (`error`)
        header `Mf-Rpc: error` with an ErrorReply body, or (`silent`) nothing at all, like a catalog that hangs.
        Every request it gets is counted in `catalog_asks`."""

        async def answer(msg: Any) -> None:
            self.catalog_asks += 1
            RolesRequest.model_validate_json(msg.data or b"{}")
            if silent:
                return
            if error is not None:
                body = ErrorReply(error=error).model_dump_json().encode()
                await self.nc.publish(msg.reply, body, headers={RPC_HEADER: Frame.ERROR.value})
                return
            await msg.respond(RolesReply(profile_set=profile_set, roles=roles or []).model_dump_json().encode())

        await self.nc.subscribe(RolesRequest.SUBJECT, queue="catalog", cb=answer)
        await self.nc.flush()  # the server knows the subscription before anyone asks


async def wait_for(predicate: Any, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def provisioner_env(
    service_env: Any, database_url: str, tmp_path: Any, hub_url: str, hosts: dict[str, str], **extra: str
) -> dict[str, str]:
    return service_env(
        database_url,
        HF_ENDPOINT=hub_url,
        HF_TOKEN="hf_test_secret_token",
        HF_HUB_DISABLE_TELEMETRY="1",
        MODELFLEET_PROVISIONER_OLLAMA_HOSTS=json.dumps(hosts),
        MODELFLEET_PROVISIONER_COMMAND_ACK_WAIT_S="3",
        MODELFLEET_PROVISIONER_CATALOG_TIMEOUT_S="1",
        MODELFLEET_PROVISIONER_MODELS_DIR=str(tmp_path / "models"),
        MODELFLEET_PROVISIONER_QUARANTINE_DIR=str(tmp_path / "quarantine"),
        **extra,
    )


async def db_rows(database_url: str, sql: str) -> list[dict[str, Any]]:
    import asyncpg

    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return [dict(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()
