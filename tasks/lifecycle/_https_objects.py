"""Reading an object over http(s) through the outbound address policy (standard library).

Runs in worker pool children; private to the one fetcher (tasks/lifecycle/fetcher.py),
which passes the client's list (OCR_ALLOWED_URLS narrowed to its own prefixes). Every
hop of a request, the first and each redirect, HEAD and GET alike, is checked before
anything is sent: its canonical URL must lie under that list (`url_not_allowed`
otherwise: the hop is never asked), and its host is
resolved once (`outbound.resolve_checked`) and connected to at exactly the checked
addresses (`outbound.connect_checked`): a private, loopback or link-local address is
refused (`address_not_allowed`) unless the URL, under a prefix, names that address
itself (`https://10.0.0.5/...`; a name that resolves there is refused). TLS is
verified against the system's trust store, which honours SSL_CERT_FILE and
SSL_CERT_DIR (the tests trust their self-signed certificate that way).

Every request runs within its `Deadline` (OCR_URL_DEADLINE, from the fetcher): each
hop's connection is watched from its socket's start (the TLS handshake, the headers,
the body), and cut when the time is up: `url_timeout`. A body shorter than its
`Content-Length` is `transient`, never taken as the object.
"""

from __future__ import annotations

import functools
import http.client
import socket
from collections.abc import Iterator, Sequence
from urllib.parse import urljoin

from tasks.errors import (
    InputDenied,
    InputNotFound,
    InputTooLarge,
    OcrError,
    TransientError,
    UrlNotAllowed,
)
from tasks.lifecycle._deadline import Deadline, shut
from tasks.lifecycle._s3 import CHUNK, ObjectInfo
from tasks.lifecycle.outbound import IP, connect_checked, literal_ip, resolve_checked
from tasks.lifecycle.url_policy import ObjectUrl, check_url

MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)


class _Response:
    """An answered request: the response, its connection, and the URL that answered."""

    def __init__(self, response: http.client.HTTPResponse,
                 connection: http.client.HTTPConnection, url: ObjectUrl) -> None:
        self.response = response
        self.connection = connection
        self.url = url

    def close(self) -> None:
        self.response.close()
        self.connection.close()


def _request(url: ObjectUrl, method: str, allowed: Sequence[str], deadline: Deadline,
             headers: dict[str, str] | None = None,
             unanswered: tuple[int, ...] = ()) -> _Response | None:
    """Send `method` to `url`, following allowed redirects, within `deadline`.

    A 2xx answer, its connection still watched by `deadline`; None for a status in
    `unanswered`; else the status's error.
    """
    for _ in range(MAX_REDIRECTS + 1):
        url = check_url(url.url, allowed, "the URL")  # every hop, before it is asked
        target = url.target
        assert target is not None
        # A non-public address only when this URL, already under OCR_ALLOWED_URLS,
        # names that very address (`https://10.0.0.5/`): never through a name.
        named = literal_ip(target.host)
        connection, response = None, None
        try:
            addresses = resolve_checked(target, functools.partial(_is, named))
            connection = connect_checked(target, addresses, deadline.wait(),
                                         opened=functools.partial(_watch, deadline))
            connection.request(method, target.target,
                               headers={"User-Agent": "ocr-service", **(headers or {})})
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            if deadline.expired:
                raise deadline.error() from None
            raise TransientError(f"the server did not answer ({type(exc).__name__})") from None
        finally:
            if response is None and connection is not None:
                connection.close()  # unanswered (the deadline's `opened` check included)
        if deadline.expired:  # headers that the deadline's cut ended are no answer
            response.close()
            connection.close()
            raise deadline.error()
        status = response.status
        if status in _REDIRECTS:
            location = response.getheader("Location") or ""
            response.close()
            connection.close()
            if not location:
                raise InputDenied(f"the server redirected (HTTP {status}) without a Location")
            try:
                url = check_url(urljoin(url.url, location), allowed, "a redirect")
            except UrlNotAllowed:
                raise UrlNotAllowed("the server redirected out of the allowed prefixes "
                                    "(OCR_ALLOWED_URLS and the client's own); the "
                                    "redirect was not followed") from None
            continue
        if 200 <= status < 300:
            return _Response(response, connection, url)
        response.close()
        connection.close()
        if status in unanswered:
            return None
        raise _status_error(status)
    raise InputDenied(f"more than {MAX_REDIRECTS} redirects")


def _is(named: IP | None, address: IP) -> bool:
    return address == named


def _watch(deadline: Deadline, sock: socket.socket) -> None:
    """`sock`, just connected, cut when `deadline` is up (a response keeps it, too)."""
    deadline.watch(functools.partial(shut, sock))
    deadline.check()  # the time was up before the watch began


def _status_error(status: int) -> OcrError:
    if status in (404, 410):
        return InputNotFound(f"the object does not exist (HTTP {status})")
    if status in (401, 403):
        return InputDenied(f"the server denied the read (HTTP {status})")
    if status == 412:  # If-Match failed: the object was replaced after the HEAD
        return TransientError("the object changed while it was read; it is read again")
    if status >= 500 or status in (408, 429):
        return TransientError(f"the server is unavailable (HTTP {status})")
    return InputDenied(f"the server refused the read (HTTP {status})")


def head(url: ObjectUrl, allowed: Sequence[str], deadline: Deadline) -> ObjectInfo:
    """Size and identity (ETag, else Last-Modified) from a HEAD.

    Unknown when the server does not answer HEAD (405, 501): the GET is then counted.
    """
    answer = _request(url, "HEAD", allowed, deadline, unanswered=(405, 501))
    if answer is None:
        return ObjectInfo(None, None)
    try:
        length = answer.response.getheader("Content-Length")
        etag = answer.response.getheader("ETag") or None
        modified = answer.response.getheader("Last-Modified")
        weak = etag is not None and etag.startswith("W/")
        identity = etag if etag and not weak else (f"modified:{modified}" if modified else None)
        return ObjectInfo(int(length) if length and length.isdigit() else None, identity)
    finally:
        answer.close()


def stream(url: ObjectUrl, info: ObjectInfo, allowed: Sequence[str], deadline: Deadline,
           limit: int) -> Iterator[bytes]:
    """The body in pieces of up to 1 MiB (redirects checked as for the HEAD).

    A Content-Length over `limit` bytes is refused before the body is read; a body
    that ends short of it is `transient`.

    A strong ETag seen by the HEAD is sent as If-Match: a server that honours it
    answers 412 for a replaced object, read again as `transient`.
    """
    headers = {}
    if info.etag and not info.etag.startswith("modified:"):
        headers["If-Match"] = info.etag
    answer = _request(url, "GET", allowed, deadline, headers)
    assert answer is not None
    length = answer.response.getheader("Content-Length")
    if length and length.isdigit() and int(length) > limit:
        answer.close()
        raise InputTooLarge("the object's Content-Length is over the input limit")
    try:
        while True:
            try:
                piece = answer.response.read(CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                if deadline.expired:
                    raise deadline.error() from None
                raise TransientError(f"the read was cut ({type(exc).__name__})") from None
            if piece:
                yield piece
                continue
            if deadline.expired:  # the end the deadline's cut made
                raise deadline.error()
            missing = answer.response.length  # what Content-Length said is still to come
            if missing:
                raise TransientError(f"the body ended {missing} bytes short of its "
                                     "Content-Length; it is read again")
            return
    finally:
        answer.close()

