"""Callback URL policy: which `callback_url` a worker may POST to.

Pure code; the only I/O is the DNS lookup of `checked_addresses`. The generic part
(normalising a URL, what counts as public, resolving once and connecting only to what
was checked) is the service's one outbound address policy, tasks/lifecycle/outbound.py;
this module adds the callback's own rules.

Runs in worker children (job validation, then the `ocr.http_callback` send) and in
clients and the HTTP API (validation at submit). The rule:

- the URL is normalised first (outbound.normalise_url: non-canonical IPv4 spellings and
  credentials are refused) and every check, and the request itself, use the normalised
  URL;
- OCR_CALLBACK_ALLOWED_HOSTS (host or host:port entries) set: only listed hosts;
- a host that is not listed must be public (outbound.is_public, IPv4 inside IPv6 judged
  as IPv4): refused at submit for literals and `localhost`, at send time for every
  resolved address;
- OCR_CALLBACK_URL_PREFIXES (deprecated) set: the normalised URL must also start with
  one of the normalised prefixes.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tasks.errors import BadRequest, CallbackNotAllowed, UrlNotAllowed
from tasks.lifecycle.outbound import (
    Address,
    Resolver,
    Target,
    is_public,
    literal_ip,
    normalise_url,
    path_under,
    remove_dot_segments,
    resolve_checked,
)

if TYPE_CHECKING:
    from tasks.settings import Settings

__all__ = ["CallbackTarget", "callback_target", "checked_addresses", "host_entry",
           "host_listed", "is_public", "parse_host_entry", "remove_dot_segments"]


@dataclass(frozen=True)
class CallbackTarget(Target):
    """A checked callback URL: its normalised form, and whether its host is listed."""

    listed: bool = False  # in OCR_CALLBACK_ALLOWED_HOSTS


def callback_target(url: str, settings: Settings) -> CallbackTarget:
    """The normalised target of `url`, or BadRequest / CallbackNotAllowed."""
    normal = normalise_url(url, what="`callback_url`", refused=CallbackNotAllowed)
    host, port = normal.host, normal.port
    listed = host_listed(host, port, settings.callback_allowed_hosts)
    if settings.callback_allowed_hosts and not listed:
        raise CallbackNotAllowed(f"the host {host}:{port} is not in "
                                 f"OCR_CALLBACK_ALLOWED_HOSTS; {_to_list(host, port)}")
    if not listed and not _may_be_public(host):
        raise CallbackNotAllowed(f"the host {host} is a private, loopback or link-local "
                                 f"address; {_to_list(host, port)}")
    prefixes = settings.callback_url_prefixes
    if prefixes and not any(_under(normal, prefix) for prefix in prefixes):
        raise CallbackNotAllowed("`callback_url` is not under an allowed prefix "
                                 "(OCR_CALLBACK_URL_PREFIXES)")
    return CallbackTarget(normal.url, normal.scheme, host, port, normal.target, listed)


def host_entry(host: str, port: int) -> str:
    """The OCR_CALLBACK_ALLOWED_HOSTS entry that lists `host` at `port` (`[v6]:port`)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _to_list(host: str, port: int) -> str:
    """What a refusal tells the operator to put in the setting."""
    return (f"to allow it, add `{host_entry(host, port)}` to OCR_CALLBACK_ALLOWED_HOSTS "
            "(comma-separated host:port entries)")


def _under(url: Target, prefix: str) -> bool:
    """Whether `url` lies under `prefix`: its scheme, host and port, path by segments."""
    try:
        normal = normalise_url(prefix)
    except (BadRequest, CallbackNotAllowed, UrlNotAllowed):
        return False
    if (url.scheme, url.host, url.port) != (normal.scheme, normal.host, normal.port):
        return False
    return path_under(url.target.partition("?")[0], normal.target.partition("?")[0])


def parse_host_entry(entry: str) -> tuple[str, int | None]:
    """`host`, `host:port` or `[v6]:port` of OCR_CALLBACK_ALLOWED_HOSTS."""
    entry = entry.strip().lower()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    host, sep, port = entry.rpartition(":")
    if sep and host and ":" not in host:
        return host.rstrip("."), int(port)
    return entry.rstrip("."), None


def host_listed(host: str, port: int, allowed: tuple[str, ...]) -> bool:
    for entry in allowed:
        listed_host, listed_port = parse_host_entry(entry)
        if listed_host == host and listed_port in (None, port):
            return True
    return False


def _may_be_public(host: str) -> bool:
    """False for non-public IP literals and `localhost` names (no DNS here)."""
    if host == "localhost" or host.endswith(".localhost"):
        return False
    address = literal_ip(host)
    return address is None or is_public(address)  # a name: checked when sent


def checked_addresses(target: CallbackTarget,
                      resolve: Resolver = socket.getaddrinfo) -> list[Address]:
    """The resolved addresses of `target`, each one checked (outbound.resolve_checked).

    CallbackNotAllowed when any address is not public and the host is not listed. The
    send connects to these addresses only, so a DNS answer cannot change between this
    check and the connection.
    """
    allowed = (lambda _address: True) if target.listed else None
    try:
        return resolve_checked(target, allowed, resolve, error=CallbackNotAllowed)
    except CallbackNotAllowed as exc:
        raise CallbackNotAllowed(f"{exc.message}; {_to_list(target.host, target.port)}"
                                 ) from None
