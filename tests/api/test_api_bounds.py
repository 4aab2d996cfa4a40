"""No 500 from input: every body and query field is bounded where it is parsed.

Through the Procfile's `api` process and a real Redis (no worker: each request here is
refused before anything is sent). Bodies other than multipart uploads are at most 64 KB
on every route and answer invalid JSON with 400; dates and numbers that Python cannot
hold are 400, never a traceback in the API's log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import requests

from tests.api_server import ApiServer, create_token, session

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def api(start_api: Callable[..., ApiServer]) -> ApiServer:
    return start_api(LOG_LEVEL="info")


@pytest.fixture(scope="module")
def dana(api: ApiServer, redis_url: str) -> requests.Session:
    return session(create_token(redis_url, "dana"))


def refused(answer: requests.Response) -> str:
    """The error message of a coded 400 `bad_request`."""
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "bad_request", error
    return str(error["message"])


def test_usage_dates_beyond_the_calendar_are_400(api: ApiServer,
                                                 dana: requests.Session) -> None:
    for params in ({"to": "9999-12-31"}, {"from": "9999-12-30", "to": "9999-12-31"},
                   {"to": "0001-01-01"}, {"to": "2024-02-30"}):
        refused(dana.get(f"{api.url}/v1/usage", params=params, timeout=30))
    assert dana.get(f"{api.url}/v1/usage", params={"to": "2024-02-29"},
                    timeout=30).status_code == 200
    assert "Traceback" not in api.log()


def test_an_integer_too_long_to_convert_is_400(api: ApiServer,
                                               dana: requests.Session) -> None:
    digits = b"9" * 4400  # past Python's int-to-string limit (4,300 digits)
    for route in ("/v1/jobs", "/v1/batches"):
        body = b'{"path": "/a.png", "deadline": ' + digits + b"}"
        if route == "/v1/batches":
            body = (b'{"source": "s3://docs/", "result_url": "s3://out/", "priority": '
                    + digits + b"}")
        assert "not valid JSON" in refused(dana.post(f"{api.url}{route}", data=body,
                                                     headers=JSON, timeout=30))
    assert "Traceback" not in api.log()


def test_every_route_holds_json_bodies_to_64_kb(api: ApiServer,
                                                dana: requests.Session) -> None:
    big = b'{"source": "s3://docs/' + b"a" * 200_000 + b'/", "result_url": "s3://out/"}'
    for route in ("/v1/batches", "/v1/jobs", "/v1/jobs/some-job/retry",
                  "/v1/batches/some-batch/cancel"):
        assert "64 KB" in refused(dana.post(f"{api.url}{route}", data=big, headers=JSON,
                                            timeout=30))

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it comes
        yield b'{"source": "s3://docs/'
        for _ in range(40):
            yield b"a" * 4096
        yield b'/", "result_url": "s3://out/"}'

    assert "64 KB" in refused(dana.post(f"{api.url}/v1/batches", data=chunked(),
                                        headers=JSON, timeout=30))


def test_invalid_json_is_400_and_a_wrong_field_422(api: ApiServer,
                                                   dana: requests.Session) -> None:
    for route in ("/v1/batches", "/v1/jobs", "/v1/jobs/some-job/retry"):
        refused(dana.post(f"{api.url}{route}", data=b'{"source": ', headers=JSON,
                          timeout=30))
    # Valid JSON whose fields do not fit the schema stays 422, as for a job's options.
    answer = dana.post(f"{api.url}/v1/batches", json={"source": "s3://docs/"}, timeout=30)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "bad_request"
