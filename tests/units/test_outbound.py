"""The outbound address policy (tasks/lifecycle/outbound.py), fuzzed over address spellings.

Every way of writing a private, loopback or link-local IPv4 address (decimal, octal,
hex, short forms, each IPv4-in-IPv6 embedding) is refused at submit (BadRequest or
CallbackNotAllowed), and after resolution; public ones pass. No network: the resolver
is a function of the test.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.errors import AddressNotAllowed, BadRequest, CallbackNotAllowed
from tasks.lifecycle.callback_urls import callback_target
from tasks.lifecycle.outbound import (
    embedded_ipv4,
    is_public,
    literal_ip,
    normalise_url,
    resolve_checked,
)
from tasks.settings import Settings

NOT_PUBLIC_V4 = ["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254",
                 "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "198.18.0.1"]
PUBLIC_V4 = ["8.8.8.8", "93.184.216.34", "1.1.1.1"]
policy = Settings.from_env({})


def v4_spellings(address: str) -> list[str]:
    """Non-canonical spellings that inet_aton and browsers read as `address`."""
    a, b, c, d = (int(p) for p in address.split("."))
    value = int(ipaddress.IPv4Address(address))
    return [str(value), hex(value), f"0{a:o}.{b}.{c}.{d}", f"{a}.{b}.{(c << 8) + d}",
            f"{a}.{(b << 16) + (c << 8) + d}", f"0x{a:x}.{b}.{c}.{d}",
            f"{a:04d}.{b}.{c}.{d}" if a else f"00.{b}.{c}.{d}"]


def v6_embeddings(address: str) -> list[str]:
    """The IPv6 forms that carry `address` (the issue's list)."""
    v4 = int(ipaddress.IPv4Address(address))
    hi, lo = v4 >> 16, v4 & 0xFFFF
    teredo_client = v4 ^ 0xFFFFFFFF
    return [f"::ffff:{address}", f"::ffff:{hi:x}:{lo:x}", f"::{hi:x}:{lo:x}",  # mapped, compat
            f"::ffff:0:{hi:x}:{lo:x}",                                    # translated
            f"64:ff9b::{hi:x}:{lo:x}", f"64:ff9b:1::{hi:x}:{lo:x}",        # NAT64
            f"2002:{hi:x}:{lo:x}::1",                                      # 6to4
            f"2001:0:{hi:x}:{lo:x}:0:0:{teredo_client >> 16:x}:{teredo_client & 0xFFFF:x}"]


@pytest.mark.parametrize("address", NOT_PUBLIC_V4)
def test_every_spelling_of_a_private_address_is_refused_at_submit(address: str) -> None:
    for host in v4_spellings(address):
        with pytest.raises(BadRequest):
            normalise_url(f"http://{host}:9391/hook")
    for v6 in v6_embeddings(address):
        assert not is_public(v6), v6
        with pytest.raises(CallbackNotAllowed):
            callback_target(f"http://[{v6}]:9391/hook", policy)


@pytest.mark.parametrize("address", PUBLIC_V4)
def test_public_addresses_pass_in_every_embedding(address: str) -> None:
    assert callback_target(f"http://{address}/hook", policy).host == address
    for v6 in v6_embeddings(address):
        if v6.startswith("64:ff9b:1:"):
            # The local-use NAT64 prefix may put the IPv4 address after a /48, /56, /64
            # or /96: it passes only when every reading is public (these have zeros).
            assert not is_public(v6)
            continue
        assert is_public(v6), v6
        assert ipaddress.IPv4Address(address) in embedded_ipv4(ipaddress.IPv6Address(v6))


def test_nat64_metadata_address_refused() -> None:
    """The issue's cloud-metadata case: `[64:ff9b::a9fe:a9fe]` is 169.254.169.254."""
    with pytest.raises(CallbackNotAllowed):
        callback_target("http://[64:ff9b::a9fe:a9fe]/latest/meta-data/", policy)
    with pytest.raises(CallbackNotAllowed):
        callback_target("http://[64:ff9b::7f00:1]:9391/", policy)


octet = st.integers(0, 255)


@settings(max_examples=300, deadline=None, database=None)
@given(st.tuples(octet, octet, octet, octet),
       st.sampled_from(["dec", "hex", "oct", "short2", "short3", "pad"]))
def test_fuzzed_ipv4_spellings(parts: tuple[int, int, int, int], form: str) -> None:
    """A non-canonical spelling never passes; the canonical one is judged by is_public."""
    a, b, c, d = parts
    canonical = f"{a}.{b}.{c}.{d}"
    value = int(ipaddress.IPv4Address(canonical))
    host = {"dec": str(value), "hex": hex(value), "oct": f"0{a:o}.{b}.{c}.{d}",
            "short2": f"{a}.{(b << 16) + (c << 8) + d}", "short3": f"{a}.{b}.{(c << 8) + d}",
            "pad": f"0{a}.{b}.{c}.{d}"}[form]
    if host == canonical:
        return
    with pytest.raises(BadRequest):
        normalise_url(f"https://{host}/x")
    target = normalise_url(f"https://{canonical}/x")
    ip = literal_ip(target.host)
    assert ip is not None and str(ip) == canonical


@settings(max_examples=300, deadline=None, database=None)
@given(st.integers(0, 2**128 - 1))
def test_fuzzed_ipv6_is_judged_by_the_ipv4_inside(value: int) -> None:
    """Whatever IPv6 address: public only if every IPv4 address it carries is public."""
    address = ipaddress.IPv6Address(value)
    inner = embedded_ipv4(address)
    if inner:
        assert is_public(address) == all(is_public(v4) for v4 in inner)
    else:
        assert is_public(address) == (address.is_global and not address.is_multicast)


def resolver(*addresses: str) -> Any:
    def resolve(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port)) for a in addresses]

    return resolve


def test_resolved_once_and_every_address_checked() -> None:
    target = normalise_url("https://files.example.com/a")
    assert [a.sockaddr[0] for a in resolve_checked(target, None, resolver("8.8.8.8"))] \
        == ["8.8.8.8"]
    for bad in ("10.0.0.1", "::ffff:127.0.0.1", "64:ff9b::a9fe:a9fe", "2002:a00:1::"):
        with pytest.raises(AddressNotAllowed):
            resolve_checked(target, None, resolver("8.8.8.8", bad))
    allowed = resolve_checked(target, lambda ip: str(ip) == "10.0.0.1",
                              resolver("10.0.0.1"))
    assert allowed[0].sockaddr[0] == "10.0.0.1"


def test_credentials_and_odd_characters_refused() -> None:
    for url in ("http://user:pw@example.com/", "http://example.com/a b",
                "http://exa\\mple.com/", "ftp://example.com/", "http://[fe80::1%25eth0]/"):
        with pytest.raises(BadRequest):
            normalise_url(url)
