"""The last entry of every key of a JetStream KV bucket, read in one pass.

nats-py's `KeyValue.watchall()` (and `keys()`, built on it) tells the end of the entries that were there with a `None`
marker that it may put first: it pushes the entries to the client while asking the server how many are pending, and
when the server has already sent them all (pending 0) but the client has not read one yet, it signals "no entries" and
the entries come after the marker. A listing of a 40-key bucket then came back empty in about 1.5 % of listings on a
2-core machine (a CI failure of the hosts listing test, and, in the provisioner, hosts reported unknown).

Here a pull consumer is used instead: nothing is delivered before it is fetched, so the number pending that the
server gives when the consumer is created is exact, and each message's own `num_pending` tells the end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from nats.js.kv import KV_DEL, KV_MARKER_REASON, KV_OP, KV_PURGE
from pydantic import ValidationError

from contracts.hardware import HOSTS_BUCKET, GpuSampled

log = logging.getLogger(__name__)

#: Server-placed markers (nats-server 2.11+) that end a key: its max age or TTL expired, it was purged or removed.
_REMOVAL_MARKERS = frozenset({"MaxAge", "Purge", "Remove"})
#: Messages fetched per request.
_BATCH = 256
#: The longest a read of the `hosts` bucket waits for its next entry.
HOSTS_LIST_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class KvEntry:
    key: str
    value: bytes
    revision: int


async def last_entries(js: JetStreamContext, bucket: str, timeout_s: float) -> list[KvEntry]:
    """Every key whose last entry is a value, sorted by key; a key deleted or purged (or expired) is left out.

    Raises `TimeoutError` when the server sends no next entry within `timeout_s`, and nats-py's `NotFoundError` when
    the bucket does not exist."""
    prefix = f"$KV.{bucket}."
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, ack_policy=AckPolicy.NONE, max_ack_pending=-1,
        inactive_threshold=max(10.0, 2 * timeout_s),
    )  # fmt: skip
    sub = await js.pull_subscribe(f"{prefix}>", stream=f"KV_{bucket}", config=config)
    latest: dict[str, KvEntry] = {}
    consumer: str | None = None
    try:
        info = await sub.consumer_info()
        consumer, pending = info.name, info.num_pending or 0
        while pending > 0:
            try:
                msgs = await sub.fetch(min(pending, _BATCH), timeout=timeout_s)
            except TimeoutError as exc:  # nats-py's own TimeoutError is one
                raise TimeoutError(f"the {bucket!r} bucket sent no entry in {timeout_s:g}s") from exc
            for msg in msgs:
                pending = msg.metadata.num_pending or 0
                key = msg.subject[len(prefix) :]
                headers = msg.headers or {}
                marker = headers.get(KV_MARKER_REASON)
                if marker is not None and marker not in _REMOVAL_MARKERS:
                    continue  # a marker of a later server this code does not know: it changes no value
                if headers.get(KV_OP) in (KV_DEL, KV_PURGE) or marker is not None or not msg.data:
                    latest.pop(key, None)
                else:
                    latest[key] = KvEntry(key, msg.data, msg.metadata.sequence.stream)
    finally:
        await sub.unsubscribe()
        if consumer is not None:
            try:  # at once, rather than after its inactivity threshold
                await js.delete_consumer(f"KV_{bucket}", consumer)
            except (NatsError, TimeoutError):
                pass  # the server removes it after the threshold anyway
    return [latest[key] for key in sorted(latest)]


async def host_samples(js: JetStreamContext) -> list[GpuSampled]:
    """The latest sample of every host in the `hosts` bucket, sorted by host id; none when no probe has reported yet
    (no bucket). An entry of an incompatible writer is logged and skipped: one bad entry hides no other host.

    Raises `TimeoutError` as `last_entries` does, after `HOSTS_LIST_TIMEOUT_S`."""
    try:
        entries = await last_entries(js, HOSTS_BUCKET, HOSTS_LIST_TIMEOUT_S)
    except NotFoundError:
        return []
    samples = []
    for entry in entries:
        try:
            samples.append(GpuSampled.model_validate_json(entry.value))
        except ValidationError as exc:
            log.warning("ignored %s/%s: %s", HOSTS_BUCKET, entry.key, exc)
    return samples
