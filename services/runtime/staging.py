"""Files too large for one bus message, staged in a JetStream object store: the sender puts, the receiver reads
(checking size and sha256), the sender deletes; what nobody deletes expires after `STAGING_TTL_S`."""

from __future__ import annotations

import hashlib
import uuid

from nats.aio.client import Client as NatsClient
from nats.js.api import ObjectStoreConfig
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from contracts.catalog import STAGING_BUCKET, StagedFile
from contracts.rpc import RpcError

#: A staged file nobody deleted (its sender died) is dropped after this long.
STAGING_TTL_S = 3600.0
#: What the bucket holds at most (files in flight together); a put beyond it fails with a 503.
STAGING_MAX_BYTES = 1024**3


async def _store(nc: NatsClient, create: bool) -> ObjectStore:
    js = nc.jetstream()
    try:
        return await js.object_store(STAGING_BUCKET)
    except BucketNotFoundError:
        if not create:
            raise
    config = ObjectStoreConfig(
        description="files too large for one bus message", ttl=STAGING_TTL_S, max_bytes=STAGING_MAX_BYTES
    )
    try:
        return await js.create_object_store(STAGING_BUCKET, config=config)
    except BadRequestError:  # created by another process just now
        return await js.object_store(STAGING_BUCKET)


async def stage(nc: NatsClient, data: bytes) -> StagedFile:
    """Put `data` under a fresh name; the caller deletes it with `discard` once the receiver answered."""
    name = uuid.uuid4().hex
    try:
        await (await _store(nc, create=True)).put(name, data)
    except Exception as exc:
        raise RpcError(503, f"could not stage {len(data)} bytes in the object store {STAGING_BUCKET}: {exc}") from exc
    return StagedFile(object=name, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


async def fetch(nc: NatsClient, staged: StagedFile, field: str = "staged") -> bytes:
    """The staged bytes, exactly as put (size and sha256 checked); a 422 naming `field` when gone or different."""
    try:
        data = (await (await _store(nc, create=False)).get(staged.object)).data or b""
    except (BucketNotFoundError, ObjectNotFoundError, NotFoundError) as exc:
        raise RpcError(422, f"{field}: no staged object {staged.object!r} (expired or never put)", field=field) from exc
    if len(data) != staged.size_bytes or hashlib.sha256(data).hexdigest() != staged.sha256:
        raise RpcError(
            422,
            f"{field}: staged object {staged.object!r} is {len(data)} bytes with another sha256 than announced "
            f"({staged.size_bytes} bytes)",
            field=field,
        )
    return data


async def discard(nc: NatsClient, staged: StagedFile) -> None:
    """Delete a staged file (best effort: the bucket's TTL drops what this misses)."""
    try:
        await (await _store(nc, create=False)).delete(staged.object)
    except Exception:  # cleanup only: the bucket's TTL is the backstop
        return
