"""Callback URL policy: which `callback_url` a worker may POST to.

Pure code; the only I/O is the DNS lookup of `checked_addresses`.

Runs in worker children (job validation, then the `ocr.http_callback` send) and in
clients and the HTTP API (validation at submit). The rule:

- the URL is normalised first (scheme and host lower case, IDNA host, default port
  dropped, `%2e` decoded and dot segments removed, fragment dropped) and every check,
  and the request itself, use the normalised URL; credentials in the URL are refused;
- OCR_CALLBACK_ALLOWED_HOSTS (host or host:port entries) set: only listed hosts;
- a host that is not listed must be public: an IP literal or resolved address that is
  private, loopback, link-local, reserved, multicast or unspecified is refused (at
  submit for literals and `localhost`, at send time for every resolved address);
- OCR_CALLBACK_URL_PREFIXES (deprecated) set: the normalised URL must also start with
  one of the normalised prefixes.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tasks.errors import BadRequest, CallbackNotAllowed

if TYPE_CHECKING:
    from tasks.settings import Settings

_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")
_DOT = re.compile(r"%2e", re.IGNORECASE)
Resolver = Callable[..., list[tuple[Any, ...]]]


@dataclass(frozen=True)
class CallbackTarget:
    """A checked callback URL: its normalised form and where to connect."""

    url: str
    scheme: str
    host: str          # lower case, IDNA, without brackets
    port: int
    target: str        # path and query, as sent in the request line
    listed: bool       # in OCR_CALLBACK_ALLOWED_HOSTS


def callback_target(url: str, settings: Settings) -> CallbackTarget:
    """The normalised target of `url`, or BadRequest / CallbackNotAllowed."""
    if not isinstance(url, str) or _UNSAFE.search(url):
        raise BadRequest("`callback_url` must be an http or https URL without spaces, "
                         "control characters or backslashes")
    scheme, host, port, target = _normalise(url)
    listed = host_listed(host, port, settings.callback_allowed_hosts)
    if settings.callback_allowed_hosts and not listed:
        raise CallbackNotAllowed(f"the host {host}:{port} is not in "
                                 "OCR_CALLBACK_ALLOWED_HOSTS")
    if not listed and not _may_be_public(host):
        raise CallbackNotAllowed(f"the host {host} is a private, loopback or link-local "
                                 "address; list it in OCR_CALLBACK_ALLOWED_HOSTS")
    netloc = f"[{host}]" if ":" in host else host
    if port != _DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    normal = f"{scheme}://{netloc}{target}"
    prefixes = settings.callback_url_prefixes
    if prefixes and not any(_under(normal, prefix) for prefix in prefixes):
        raise CallbackNotAllowed("`callback_url` is not under an allowed prefix "
                                 "(OCR_CALLBACK_URL_PREFIXES)")
    return CallbackTarget(normal, scheme, host, port, target, listed)


def _normalise(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise BadRequest("`callback_url` must be an http or https URL")
    if "@" in parts.netloc:
        raise BadRequest("`callback_url` must not carry credentials")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
        host = parts.hostname.rstrip(".")
        host = host if ":" in host else host.encode("idna").decode("ascii").lower()
    except (ValueError, UnicodeError):
        raise BadRequest("`callback_url` has an invalid host or port") from None
    path = remove_dot_segments(_DOT.sub(".", parts.path)) or "/"
    target = path + (f"?{parts.query}" if parts.query else "")
    return scheme, host, port, target


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4: `/a/b/../../c` is `/c`; never above the root."""
    out: list[str] = []
    segments = path.split("/")
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")
        elif segment == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    joined = "/".join(out)
    return joined if joined.startswith("/") or not joined else "/" + joined


def _under(url: str, prefix: str) -> bool:
    try:
        scheme, host, port, target = _normalise(prefix)
    except BadRequest:
        return False
    netloc = f"[{host}]" if ":" in host else host
    if port != _DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    normal = f"{scheme}://{netloc}{target}"
    if normal.endswith("/") and not prefix.endswith("/"):
        normal = normal[:-1]  # "https://h" normalises to "https://h/"
    return url.startswith(normal)


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
    try:
        return is_public(ipaddress.ip_address(host))
    except ValueError:
        return True  # a name: its addresses are checked when the callback is sent


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def checked_addresses(target: CallbackTarget,
                      resolve: Resolver = socket.getaddrinfo) -> list[tuple[Any, ...]]:
    """The resolved (family, sockaddr) pairs of `target`, each one checked.

    CallbackNotAllowed when any address is not public and the host is not listed. The
    send connects to these addresses only, so a DNS answer cannot change between this
    check and the connection.
    """
    try:
        infos = resolve(target.host, target.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectionError(f"cannot resolve the callback host ({exc.errno})") from None
    out = []
    for family, _, _, _, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if not target.listed and not is_public(address):
            raise CallbackNotAllowed(f"the host {target.host} resolves to {address}, a "
                                     "private, loopback or link-local address; list it "
                                     "in OCR_CALLBACK_ALLOWED_HOSTS")
        out.append((family, sockaddr))
    return out
