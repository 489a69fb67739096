"""Which hosts to provision: the probes' latest samples in the `hosts` KV bucket, plus statically configured ones."""

from __future__ import annotations

import time
from dataclasses import dataclass

from faststream.nats import NatsBroker

from services.runtime.kv_scan import host_samples


@dataclass(frozen=True)
class Host:
    host_id: str
    ollama_url: str | None
    reachable: bool
    gpu_free_bytes: int


class HostDirectory:
    """Reads are cached for `ttl_s`: a burst of requests costs one scan of the bucket, and probes sample every few s."""

    def __init__(self, broker: NatsBroker, static: dict[str, str], ttl_s: float = 1.0):
        self.broker = broker
        self.static = static
        self.ttl_s = ttl_s
        self._cached: tuple[float, dict[str, Host]] | None = None

    async def all(self) -> dict[str, Host]:
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < self.ttl_s:
            return self._cached[1]
        hosts = await self._read()
        self._cached = (now, hosts)
        return hosts

    async def _read(self) -> dict[str, Host]:
        hosts = {h: Host(h, url, True, 0) for h, url in self.static.items()}
        for sample in await host_samples(self.broker.connection.jetstream()):
            free = sum(g.memory_free_bytes for g in sample.gpus) if sample.has_gpu else 0
            hosts[sample.host_id] = Host(sample.host_id, sample.ollama_url, sample.ollama_reachable, free)
        return hosts

    async def targets(self, requested: list[str]) -> tuple[dict[str, str], dict[str, str]]:
        """(host -> Ollama URL to provision, host -> why it cannot be). None requested: every reachable host."""
        hosts = await self.all()
        if not requested:
            return {h.host_id: h.ollama_url for h in hosts.values() if h.reachable and h.ollama_url}, {}
        ok: dict[str, str] = {}
        bad: dict[str, str] = {}
        for name in requested:
            host = hosts.get(name)
            if host is None:
                bad[name] = f"host {name!r} is unknown (no probe sample in the `hosts` bucket, not configured)"
            elif not host.ollama_url or not host.reachable:
                bad[name] = f"host {name!r}: its probe reports no reachable Ollama ({host.ollama_url or 'no URL'})"
            else:
                ok[name] = host.ollama_url
        return ok, bad
