"""Outbound address policy: one rule for every request the service makes to a URL.

Pure code; the only I/O is the DNS lookup of `resolve_checked` and the connection of
`connect_checked`. Runs wherever a URL is taken (clients and the HTTP API at submit,
worker children at validation) and wherever one is fetched or posted to (worker
children: callbacks in tasks/lifecycle/callbacks.py, URL inputs).

The rule, in the order it is applied:

1. `normalise_url`: scheme and host lower case, IDNA host, default port dropped,
   the path in its canonical form (`canonical_path`), fragment dropped; credentials in
   the URL, control characters, spaces and backslashes are refused, and so is any host
   that a browser or resolver would read as an IPv4 address but that is not written as
   four canonical decimal parts (`2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1`):
   BadRequest. A path whose meaning depends on how the origin decodes it (an encoded
   `/` or backslash, an encoded dot segment) is refused with the caller's code
   (`url_not_allowed` unless it names another). `path_under` compares paths segment by
   segment: `/b/` never holds `/bb/`.
2. `is_public`: an address is public when it is globally routable unicast; an IPv6
   address that carries an IPv4 address (IPv4-mapped `::ffff:0:0/96`, IPv4-translated
   `::ffff:0:0:0/96`, IPv4-compatible `::/96`, NAT64 `64:ff9b::/96` and
   `64:ff9b:1::/48`, 6to4 `2002::/16`, Teredo `2001::/32`) is judged by the IPv4
   address(es) inside it instead.
3. `resolve_checked`: the host is resolved once; every address must be public unless
   the caller's `allowed` says otherwise (an operator's allow-list).
4. `connect_checked`: the connection goes to those checked addresses only (a second DNS
   answer cannot change it), naming the host in `Host`, TLS SNI and the certificate
   check.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from tasks.errors import AddressNotAllowed, BadRequest, OcrError, UrlNotAllowed

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., list[tuple[Any, ...]]]
DEFAULT_PORTS = {"http": 80, "https": 443}
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Escapes an origin may decode before it splits or resolves the path: `/`, `\`, and
# the same once more encoded (`%252F`); control characters.
_SEPARATOR = re.compile(r"%(2F|5C)|%25(2F|5C|2E)", re.IGNORECASE)
_CONTROL_ESCAPE = re.compile(r"%([01][0-9A-F]|7F)", re.IGNORECASE)
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_CANONICAL_PART = re.compile(r"^(0|[1-9][0-9]{0,2})$")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")
_V4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


@dataclass(frozen=True)
class Target:
    """A normalised URL and where it points."""

    url: str       # the normalised URL: what every check and the request use
    scheme: str
    host: str      # lower case, IDNA, IPv6 literals compressed and without brackets
    port: int
    target: str    # path and query, as sent in the request line


class Address(NamedTuple):
    """One checked address: a socket family and its sockaddr."""

    family: int
    sockaddr: tuple[Any, ...]


def normalise_url(url: str, schemes: Sequence[str] = ("http", "https"),
                  what: str = "the URL", refused: type[OcrError] = UrlNotAllowed) -> Target:
    """The normalised `Target` of `url`, or BadRequest (`what` names it in messages).

    A path `canonical_path` refuses raises `refused`.
    """
    if not isinstance(url, str) or _UNSAFE.search(url):
        raise BadRequest(f"{what} must be a URL without spaces, control characters or "
                         "backslashes")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in schemes or not parts.hostname:
        raise BadRequest(f"{what} must be a {' or '.join(schemes)} URL")
    if "@" in parts.netloc:
        raise BadRequest(f"{what} must not carry credentials")
    try:
        port = parts.port or DEFAULT_PORTS.get(scheme)
        host = _normal_host(parts.hostname, what)
    except (ValueError, UnicodeError):
        raise BadRequest(f"{what} has an invalid host or port") from None
    if port is None:
        raise BadRequest(f"{what} must name a port for the scheme {scheme}")
    path = canonical_path(parts.path, what, refused) or "/"
    target = path + (f"?{parts.query}" if parts.query else "")
    netloc = f"[{host}]" if ":" in host else host
    if port != DEFAULT_PORTS.get(scheme):
        netloc += f":{port}"
    return Target(f"{scheme}://{netloc}{target}", scheme, host, port, target)


def _normal_host(hostname: str, what: str) -> str:
    """The host in one spelling; ValueError or BadRequest for anything ambiguous."""
    host = hostname.rstrip(".")
    if ":" in host:  # an IPv6 literal (urlsplit took off the brackets)
        if "%" in host:
            raise ValueError("zone identifiers are not allowed")
        return ipaddress.IPv6Address(host).compressed
    host = host.encode("idna").decode("ascii").lower()
    labels = host.split(".")
    # WHATWG URL and inet_aton read a host whose last label is a number as an IPv4
    # address: only the canonical dotted quad is accepted, so every check sees what
    # is connected to.
    canonical = len(labels) == 4 and all(_CANONICAL_PART.match(p) and int(p) < 256
                                         for p in labels)
    if _NUMERIC_LABEL.match(labels[-1]) and not canonical:
        raise BadRequest(f"{what} spells an IPv4 address in a non-canonical form "
                         "(write it as four decimal parts, a.b.c.d)")
    return host


def canonical_path(path: str, what: str = "the URL",
                   refused: type[OcrError] = UrlNotAllowed) -> str:
    """The path as every origin reads it (RFC 3986 sections 6.2.2 and 5.2.4), or an error.

    Escapes of unreserved characters are decoded (`%7E` is `~`, `%41` is `A`), the other
    escapes written in upper case, and dot segments removed. Refused with `refused`:
    an encoded `/` or backslash (`%2F`, `%5C`, and `%252F`, `%255C`, `%252E` encoded once
    more), since an origin that decodes them before it resolves `..` reads another
    path; a dot segment written with an escape (`%2e%2e`, `.%2E`) or with parameters
    (`..;x`). A malformed escape or an encoded control character is BadRequest.
    """
    if _BAD_ESCAPE.search(path) or _CONTROL_ESCAPE.search(path):
        raise BadRequest(f"{what} has a malformed or control-character escape in its path")
    if _SEPARATOR.search(path):
        raise refused(f"{what} has an encoded / or \\ in its path (an origin may read "
                      "it as a separator)")
    segments = []
    for raw in path.split("/"):
        segment = _ESCAPE.sub(_unescape, raw)
        bare = segment.split(";", 1)[0]
        if bare in (".", "..") and (segment != raw or bare != segment):
            raise refused(f"{what} has a dot segment written with an escape or "
                          "parameters (its meaning depends on the origin)")
        segments.append(segment)
    return remove_dot_segments("/".join(segments))


def _unescape(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else f"%{match.group(1).upper()}"


def path_under(path: str, prefix: str) -> bool:
    """Whether the canonical `path` lies under the canonical `prefix`, segment by segment.

    A prefix ending in `/` holds what is below it; one that does not holds itself and
    what is below it as a folder: `/b` and `/b/` hold `/b/x`, never `/bb/x`.
    """
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


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


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (empty when it carries none)."""
    value = int(address)
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in _V4_TRANSLATED or address in _V4_COMPATIBLE or address in _NAT64:
        return [ipaddress.IPv4Address(value & 0xFFFFFFFF)]
    if address in _NAT64_LOCAL:
        # RFC 6052: within a /48 the IPv4 address may sit after a /48, /56, /64 or /96
        # prefix (bits 64-71 are the reserved `u` octet); every reading is judged.
        return [ipaddress.IPv4Address(v) for v in (
            ((value >> 64) & 0xFFFF) << 16 | (value >> 48) & 0xFFFF,
            ((value >> 72) & 0xFF) << 24 | (value >> 48) & 0xFFFFFF,
            (value >> 48) & 0xFFFFFFFF,
            value & 0xFFFFFFFF)]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    return []


def is_public(ip: IP | str) -> bool:
    """True for a globally routable unicast address (IPv4 inside IPv6 judged as IPv4)."""
    address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner:
            return all(is_public(v4) for v4 in inner)
    return bool(address.is_global and not address.is_multicast)


def literal_ip(host: str) -> IP | None:
    """The address of an IP-literal host, None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def resolve_checked(target: Target, allowed: Callable[[IP], bool] | None = None,
                    resolver: Resolver = socket.getaddrinfo,
                    error: type[OcrError] = AddressNotAllowed) -> list[Address]:
    """The addresses of `target.host`, resolved once, each one checked.

    An address that is not public and that `allowed` does not accept raises `error`
    (AddressNotAllowed unless the caller names its own class); a name that does not
    resolve raises ConnectionError (transient: a retry may succeed).
    """
    try:
        infos = resolver(target.host, target.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectionError(f"cannot resolve the host ({exc.errno})") from None
    out = []
    for family, _, _, _, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if not is_public(address) and not (allowed is not None and allowed(address)):
            raise error(f"the host {target.host} resolves to {address}, a private, "
                        "loopback, link-local or reserved address")
        out.append(Address(family, tuple(sockaddr)))
    if not out:
        raise ConnectionError("the host resolves to no address")
    return out


def connect_checked(target: Target, addresses: Sequence[Address | tuple[Any, ...]],
                    timeout: float,
                    opened: Callable[[socket.socket], object] | None = None
                    ) -> http.client.HTTPConnection:
    """An unopened HTTP(S) connection that connects only to `addresses`.

    Its `connect()` tries the checked addresses in order; `Host`, TLS SNI and the
    certificate check name `target.host`. Redirects are the caller's business (the
    connection never follows one). `opened` is called with the connection's socket
    once it is connected, before a byte is read from it (the TLS handshake included):
    a read's deadline watches it from there (tasks/lifecycle/_deadline.py).
    """
    checked = [Address(int(a[0]), tuple(a[1])) for a in addresses]

    def open_socket() -> socket.socket:
        error: OSError = ConnectionError("no address to connect to")
        for family, sockaddr in checked:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            return sock
        raise error

    if target.scheme == "https":
        context = ssl.create_default_context()

        class Pinned(http.client.HTTPSConnection):
            def connect(self) -> None:
                self.sock = context.wrap_socket(open_socket(), server_hostname=target.host,
                                                do_handshake_on_connect=False)
                if opened is not None:
                    opened(self.sock)
                self.sock.do_handshake()

        return Pinned(target.host, target.port, timeout=timeout, context=context)

    class PinnedPlain(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = open_socket()
            if opened is not None:
                opened(self.sock)

    return PinnedPlain(target.host, target.port, timeout=timeout)
