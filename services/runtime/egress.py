"""Where outbound requests that a user can cause may go (docs/gateway.md "Outbound requests").

A URL a caller hands in (`gguf_url`), a registry host in a model name, a CDN location the hub answers: before the
project connects, the host is resolved, EVERY address it resolves to is checked, and the connection goes to a checked
address (the request is pinned to it, so no second resolution can swap the answer). Loopback, link-local (the cloud
metadata service 169.254.169.254 included), private (RFC 1918, fc00::/7, 100.64/10), unspecified, multicast and
reserved addresses are refused unless the operator allowlists them in `MODELFLEET_EGRESS_ALLOW` (comma-separated:
`host`, `host:port`, an address, `address:port`, a CIDR). The configured hub (`HF_ENDPOINT`) and Ollama registry
(`MODELFLEET_PROVISIONER_OLLAMA_REGISTRY`) are allowed automatically. The transports below check every request they
send, so every redirect hop is checked too.

A refusal is `EgressDenied`: its text names the host as the caller gave it and says "not allowed", never what was
resolved or what answered, so the policy is no probe of the network behind it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import httpx
import httpx2
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_DEFAULT_PORTS = {"http": 80, "https": 443}


class EgressSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELFLEET_EGRESS_", extra="ignore", frozen=True)

    allow: str = Field(
        default="",
        description="Comma-separated destinations allowed although not public: host, host:port, address, "
        "address:port, CIDR (e.g. `127.0.0.1,10.0.0.0/8,ollama.lan:11434`).",
    )
    hf_endpoint: str = Field(
        default="https://huggingface.co",
        validation_alias=AliasChoices("HF_ENDPOINT", "MODELFLEET_PROVISIONER_HF_ENDPOINT"),
        description="The configured hub: allowed automatically.",
    )
    ollama_registry: str = Field(
        default="https://registry.ollama.ai",
        validation_alias=AliasChoices("MODELFLEET_PROVISIONER_OLLAMA_REGISTRY"),
        description="The configured Ollama registry: allowed automatically.",
    )


class EgressDenied(PermissionError):
    """An outbound request the policy refuses. The text names the host as given, and nothing that was learnt."""

    def __init__(self, host: str, what: str = "outbound request to"):
        super().__init__(f"{what} host {host!r} is not allowed (not a public address; see MODELFLEET_EGRESS_ALLOW)")
        self.host = host


def _host_of(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _as_ip(text: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(_host_of(text).split("%", 1)[0])
    except ValueError:
        return None
    return _unmapped(ip)


def _unmapped(ip: IPAddress) -> IPAddress:
    """`::ffff:127.0.0.1` is 127.0.0.1 (and NAT64's well-known prefix is not unwrapped: it is refused as reserved)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_public(ip: IPAddress) -> bool:
    """Not loopback, link-local, private, shared, unspecified, multicast, reserved or otherwise non-global."""
    ip = _unmapped(ip)
    return not (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_unspecified
        or ip.is_multicast
        or ip.is_reserved
        or not ip.is_global
    )


@dataclass(frozen=True)
class _Rule:
    net: IPNetwork | None  # an address or CIDR
    name: str | None  # a host name, lower case
    port: int | None  # None: any port

    def matches_name(self, host: str, port: int) -> bool:
        return self.name is not None and self.name == host and self.port in (None, port)

    def matches_ip(self, ip: IPAddress, port: int) -> bool:
        return self.net is not None and ip in self.net and self.port in (None, port)


def _rule(entry: str) -> _Rule:
    entry = entry.strip()
    try:
        return _Rule(ipaddress.ip_network(entry.strip("[]"), strict=False), None, None)
    except ValueError:
        pass
    port: int | None = None
    host = entry
    if entry.startswith("["):  # [v6]:port
        host, _, rest = entry[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    elif entry.count(":") == 1:
        host, _, p = entry.partition(":")
        if not p.isdigit():
            raise ValueError(f"MODELFLEET_EGRESS_ALLOW: bad entry {entry!r}")
        port = int(p)
    ip = _as_ip(host)
    if ip is not None:
        return _Rule(ipaddress.ip_network(ip), None, port)
    if not host or "/" in host:
        raise ValueError(f"MODELFLEET_EGRESS_ALLOW: bad entry {entry!r}")
    return _Rule(None, _host_of(host), port)


def _endpoint_rule(url: str) -> _Rule | None:
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)
    ip = _as_ip(parts.hostname)
    if ip is not None:
        return _Rule(ipaddress.ip_network(ip), None, port)
    return _Rule(None, _host_of(parts.hostname), port)


class EgressPolicy:
    """The allowlist plus the public-address rule; `check_*` resolve and return the addresses to connect to."""

    def __init__(self, allow: list[str] | tuple[str, ...] = (), endpoints: list[str] | tuple[str, ...] = ()):
        self.rules = [_rule(e) for e in allow if e.strip()]
        self.rules += [r for r in (_endpoint_rule(u) for u in endpoints if u) if r is not None]

    @classmethod
    def from_settings(cls, settings: EgressSettings | None = None) -> EgressPolicy:
        s = settings or EgressSettings()
        return cls(s.allow.split(","), [s.hf_endpoint, s.ollama_registry])

    def _allowed(self, ip: IPAddress, port: int) -> bool:
        ip = _unmapped(ip)
        return is_public(ip) or any(r.matches_ip(ip, port) for r in self.rules)

    def _addresses(self, host: str, infos: list[Any]) -> list[str]:
        out: list[str] = []
        for info in infos:
            address = str(info[4][0]).split("%", 1)[0]
            if address not in out:
                out.append(address)
        if not out:
            raise EgressDenied(host)
        return out

    def _decide(self, given: str, port: int, addresses: list[str], by_name: bool) -> list[str]:
        if not by_name and not all(self._allowed(ipaddress.ip_address(a), port) for a in addresses):
            raise EgressDenied(given)
        return addresses

    def _split(self, url: str | httpx.URL | httpx2.URL) -> tuple[str, str, int]:
        text = str(url)
        parts = urlsplit(text)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise EgressDenied(parts.hostname or text[:200], "outbound request (http/https only) to")
        try:
            port = parts.port or _DEFAULT_PORTS[parts.scheme]
        except ValueError:
            raise EgressDenied(parts.hostname) from None
        return parts.hostname, _host_of(parts.hostname), port

    def check_host(self, host: str, port: int) -> list[str]:
        """Resolve `host` (blocking) and check every address; the addresses to connect to, in resolver order."""
        given, name = host, _host_of(host)
        by_name = any(r.matches_name(name, port) for r in self.rules)
        try:
            infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise EgressDenied(given) from None  # no oracle of which internal names exist
        return self._decide(given, port, self._addresses(given, infos), by_name)

    async def acheck_host(self, host: str, port: int) -> list[str]:
        given, name = host, _host_of(host)
        by_name = any(r.matches_name(name, port) for r in self.rules)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise EgressDenied(given) from None
        return self._decide(given, port, self._addresses(given, infos), by_name)

    def check_url(self, url: str | httpx.URL | httpx2.URL) -> list[str]:
        given, _, port = self._split(url)
        return self.check_host(given, port)

    async def acheck_url(self, url: str | httpx.URL | httpx2.URL) -> list[str]:
        given, _, port = self._split(url)
        return await self.acheck_host(given, port)


@lru_cache(maxsize=1)
def default_policy() -> EgressPolicy:
    """The process's policy from its environment (read once)."""
    return EgressPolicy.from_settings()


def _pinned_host(address: str) -> str:
    return address  # httpx brackets an IPv6 address itself


class EgressTransport(httpx.AsyncBaseTransport):
    """An httpx transport that checks each request's host after resolving it and connects to a checked address.

    The URL's host is swapped for that address; `Host` keeps the name and TLS sends it as SNI and verifies the
    certificate against it. Each (scheme, host, port) keeps its own connection pool, so a TLS connection made for
    one name is never reused for another name at the same address. With `follow_redirects`, the client calls this
    for every hop, so every redirect is checked."""

    def __init__(self, policy: EgressPolicy | None = None, **transport_kwargs: Any):
        self.policy = policy or default_policy()
        self._kwargs = transport_kwargs
        self._pools: dict[tuple[str, str, int], httpx.AsyncHTTPTransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        given, name, port = self.policy._split(request.url)
        addresses = await self.policy.acheck_host(given, port)
        key = (request.url.scheme, name, port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = httpx.AsyncHTTPTransport(**self._kwargs)
        request.url = request.url.copy_with(host=_pinned_host(addresses[0]))
        request.extensions = {**request.extensions, "sni_hostname": name}
        return await pool.handle_async_request(request)

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()
        self._pools.clear()


class SyncEgressTransport(httpx2.BaseTransport):
    """The same for `huggingface_hub`'s `httpx2` (blocking)."""

    def __init__(self, policy: EgressPolicy | None = None, **transport_kwargs: Any):
        self.policy = policy or default_policy()
        self._kwargs = transport_kwargs
        self._pools: dict[tuple[str, str, int], httpx2.HTTPTransport] = {}
        self._lock = threading.Lock()  # one client serves several download threads

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        given, name, port = self.policy._split(request.url)
        addresses = self.policy.check_host(given, port)
        key = (request.url.scheme, name, port)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = httpx2.HTTPTransport(**self._kwargs)
        request.url = request.url.copy_with(host=_pinned_host(addresses[0]))
        request.extensions = {**request.extensions, "sni_hostname": name}
        return pool.handle_request(request)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
