"""The egress policy alone: which addresses, names, ports and URL forms it lets through, with the real resolver."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from services.runtime.egress import EgressDenied, EgressPolicy, EgressSettings, is_public

pytestmark = pytest.mark.unit

NONE = EgressPolicy()

REFUSED = [
    "127.0.0.1",  # loopback
    "127.8.9.10",
    "::1",
    "[::1]",
    "169.254.169.254",  # link-local: the cloud metadata service
    "fe80::1",
    "10.1.2.3",  # RFC 1918
    "172.16.0.1",
    "192.168.1.1",
    "fc00::1",  # unique local
    "fd12:3456::1",
    "0.0.0.0",  # unspecified
    "::",
    "224.0.0.1",  # multicast
    "ff02::1",
    "240.0.0.1",  # reserved
    "100.64.0.1",  # shared (carrier-grade NAT)
    "::ffff:127.0.0.1",  # IPv4-mapped IPv6 of loopback
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "2130706433",  # 127.0.0.1 as one decimal number
    "0x7f000001",  # ... as hex
    "0177.0.0.1",  # ... octal
    "127.1",  # ... short form
]


@pytest.mark.parametrize("host", REFUSED)
def test_non_public_addresses_are_refused_in_every_spelling(host: str) -> None:
    with pytest.raises(EgressDenied) as refused:
        NONE.check_host(host, 80)
    assert "not allowed" in str(refused.value)
    assert repr(host) in str(refused.value)  # the host as the caller gave it


@pytest.mark.parametrize("url", [f"http://{h}:8080/x.gguf" for h in ("127.0.0.1", "2130706433", "[::1]", "0x7f000001")])
def test_urls_with_non_public_hosts_are_refused(url: str) -> None:
    with pytest.raises(EgressDenied, match="not allowed"):
        NONE.check_url(url)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert NONE.check_host(address, 443)  # a literal resolves to itself without DNS


def test_a_name_resolving_to_loopback_is_refused_after_resolution() -> None:
    """`localhost` through the real resolver: the name says nothing, its addresses decide."""
    addresses = {str(info[4][0]) for info in socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)}
    assert addresses and all(not is_public(ipaddress.ip_address(a)) for a in addresses)
    with pytest.raises(EgressDenied, match=r"host 'localhost' is not allowed"):
        NONE.check_url("http://localhost:9/x.gguf")
    allowed = EgressPolicy(["127.0.0.0/8", "::1"])
    assert set(allowed.check_url("http://localhost:9/x.gguf")) == addresses


def test_every_resolved_address_must_pass() -> None:
    """A name with one allowlisted and one refused address is refused (the connection could go to either)."""
    addresses = {str(info[4][0]) for info in socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)}
    if addresses == {"127.0.0.1"}:
        # this resolver gives localhost one address: show the rule on the same name with a partial allowlist
        with pytest.raises(EgressDenied):
            EgressPolicy(["127.0.0.2"]).check_host("localhost", 80)
    else:
        with pytest.raises(EgressDenied):
            EgressPolicy(["127.0.0.1"]).check_host("localhost", 80)  # ::1 stays refused


def test_a_name_that_does_not_resolve_is_refused_the_same_way() -> None:
    """No oracle of which internal names exist: the same words as a private address, nothing from the resolver."""
    with pytest.raises(EgressDenied) as refused:
        NONE.check_url("http://no-such-host.invalid/x.gguf")
    assert str(refused.value) == str(EgressDenied("no-such-host.invalid"))


def test_cidrs_addresses_and_ports_in_the_allowlist() -> None:
    policy = EgressPolicy(["10.0.0.0/8", "192.168.1.5:8080", "[::1]:9000", "fd00::/8", "127.0.0.1"])
    assert policy.check_host("10.200.3.4", 1) == ["10.200.3.4"]
    assert policy.check_host("192.168.1.5", 8080) == ["192.168.1.5"]
    with pytest.raises(EgressDenied):
        policy.check_host("192.168.1.5", 8081)  # the port is part of that entry
    with pytest.raises(EgressDenied):
        policy.check_host("192.168.1.6", 8080)
    assert policy.check_host("::1", 9000) == ["::1"]
    with pytest.raises(EgressDenied):
        policy.check_host("::1", 9001)
    assert policy.check_host("fd12::7", 80) == ["fd12::7"]
    assert policy.check_host("::ffff:127.0.0.1", 80)  # mapped form of an allowlisted address
    assert policy.check_host("2130706433", 80) == ["127.0.0.1"]  # decimal form of an allowlisted address
    with pytest.raises(EgressDenied):
        policy.check_host("169.254.169.254", 80)  # still refused: not listed


def test_a_host_name_entry_allows_that_name_only() -> None:
    policy = EgressPolicy(["localhost:7000"])
    assert policy.check_host("LOCALHOST", 7000)  # names compare case-insensitively, then are resolved
    with pytest.raises(EgressDenied):
        policy.check_host("localhost", 7001)
    with pytest.raises(EgressDenied):
        policy.check_host("127.0.0.1", 7000)  # the address behind the name is not itself allowlisted


def test_the_configured_hub_and_registry_are_allowed_automatically(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:5555")
    monkeypatch.setenv("MODELFLEET_PROVISIONER_OLLAMA_REGISTRY", "http://127.0.0.1:6666/")
    monkeypatch.setenv("MODELFLEET_EGRESS_ALLOW", "10.0.0.0/8, 192.168.0.0/16")
    policy = EgressPolicy.from_settings(EgressSettings())
    assert policy.check_url("http://127.0.0.1:5555/api/models/x") == ["127.0.0.1"]
    assert policy.check_url("http://127.0.0.1:6666/v2/library/m/manifests/latest") == ["127.0.0.1"]
    assert policy.check_host("192.168.3.3", 80)
    with pytest.raises(EgressDenied):
        policy.check_url("http://127.0.0.1:5556/")  # the hub's port only, not all of loopback


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://8.8.8.8/x", "gopher://8.8.8.8/", "http:///x"])
def test_only_http_and_https_urls(url: str) -> None:
    with pytest.raises(EgressDenied, match="not allowed"):
        NONE.check_url(url)


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "host:port", "a/b"])
def test_a_bad_allowlist_entry_is_an_error(entry: str) -> None:
    with pytest.raises(ValueError, match="MODELFLEET_EGRESS_ALLOW"):
        EgressPolicy([entry])


async def test_the_async_check_agrees() -> None:
    with pytest.raises(EgressDenied):
        await NONE.acheck_url("http://localhost:9/x")
    assert await EgressPolicy(["127.0.0.0/8", "::1"]).acheck_url("http://2130706433:9/x") == ["127.0.0.1"]
