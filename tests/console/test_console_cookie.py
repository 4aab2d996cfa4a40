"""The console's session cookie is Secure behind a trusted proxy that ends TLS.

Two of the Procfile's `api` processes on one Redis: one as started by default (no proxy
trusted), one with `API_FORWARDED_ALLOW_IPS=127.0.0.1`, the address this test reaches
it from, as a TLS-ending proxy on this host would. A sign-in forwarded with
`X-Forwarded-Proto: https` by the trusted proxy sets the cookie Secure (and the
redirect stays on https); the same header from a peer that is not trusted changes
nothing, and a plain-HTTP sign-in through the proxy is not Secure. The console's icon
answers `/favicon.ico` too.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import requests

from tests.api_server import ApiServer, create_token

HTTPS = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}


@pytest.fixture(scope="module")
def token(redis_url: str) -> str:
    return create_token(redis_url, "alice")


@pytest.fixture(scope="module")
def direct(start_api: Callable[..., ApiServer]) -> ApiServer:
    return start_api()


@pytest.fixture(scope="module")
def proxied(start_api: Callable[..., ApiServer]) -> ApiServer:
    return start_api(API_FORWARDED_ALLOW_IPS="127.0.0.1")


def sign_in(api: ApiServer, token: str, headers: dict[str, str],
            scheme: str = "http") -> requests.Response:
    """The form posted as a browser posts it: with the Origin of the page it was on."""
    origin = f"{scheme}://{api.url.split('://', 1)[1]}"
    answer = requests.post(f"{api.url}/console/signin", data={"token": token},
                           headers={**headers, "Origin": origin}, allow_redirects=False,
                           timeout=30)
    assert answer.status_code == 303, answer.text
    return answer


def test_a_sign_in_without_its_own_origin_is_refused(direct: ApiServer, token: str) -> None:
    """A login CSRF: another site, or a post naming no Origin, signs no one in."""
    for headers in ({}, {"Origin": "http://evil.example"}, {"Origin": "null"}):
        answer = requests.post(f"{direct.url}/console/signin", data={"token": token},
                               headers=headers, allow_redirects=False, timeout=30)
        assert answer.status_code == 403, (headers, answer.text)
        assert "csrf_failed" in answer.text, answer.text
        assert "ocr_console" not in answer.cookies
    assert "secure" not in cookie_flags(sign_in(direct, token, {}))  # its own: signed in


def cookie_flags(answer: requests.Response) -> set[str]:
    """The attributes of the `ocr_console` cookie the answer sets, in lower case."""
    cookie, = (value for value in answer.raw.headers.getlist("set-cookie")
               if value.startswith("ocr_console="))
    return {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}


def test_the_cookie_is_secure_through_a_trusted_proxy_over_https(
        proxied: ApiServer, token: str) -> None:
    answer = sign_in(proxied, token, HTTPS, "https")
    assert {"secure", "httponly", "samesite"} <= cookie_flags(answer)
    assert answer.headers["location"].endswith("/console/jobs")
    assert not answer.headers["location"].startswith("http://")
    # the session works for the browser that holds it
    cookie = answer.cookies["ocr_console"]
    jobs = requests.get(f"{proxied.url}/console/jobs", cookies={"ocr_console": cookie},
                        headers=HTTPS, timeout=30)
    assert jobs.status_code == 200, jobs.text


def test_plain_http_through_the_proxy_is_not_secure(proxied: ApiServer, token: str) -> None:
    flags = cookie_flags(sign_in(proxied, token, {"X-Forwarded-Proto": "http"}))
    assert "secure" not in flags and "httponly" in flags


def test_the_header_from_a_peer_not_trusted_is_ignored(direct: ApiServer, token: str) -> None:
    flags = cookie_flags(sign_in(direct, token, HTTPS))
    assert "secure" not in flags and "httponly" in flags


def test_the_icon_browsers_ask_for_is_served(direct: ApiServer) -> None:
    """`/favicon.ico` (asked by a browser on any page) answers the console's icon."""
    answer = requests.get(f"{direct.url}/favicon.ico", timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/svg+xml"
    assert answer.content.startswith(b"<svg ")
    page = requests.get(f"{direct.url}/console/signin", timeout=30)
    assert '<link rel="icon" href="/console/static/favicon.svg"' in page.text
    icon = requests.get(f"{direct.url}/console/static/favicon.svg", timeout=30)
    assert icon.status_code == 200 and icon.content == answer.content
