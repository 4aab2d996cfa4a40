"""Pages metered per client, `GET /v1/usage`, `ocr_admin.py usage`, and page caps.

The Procfile's `api` process, real Redis and a real worker (fake engine): jobs of three
API clients and two Celery senders are read, then counted per client (the Prometheus
counter `ocr_client_pages_total`, scraped as the exporter does, and the day's usage in
Redis), and a client's page cap refuses a job before any page is read: at the API
(429, the job never sent) and when its PDF is planned (FAILURE, nothing read).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import redis
import requests
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tasks.metrics.metrics_collector import RedisCollector
from tasks.state.usage import fewest_pages
from tests.api_server import ApiServer, create_token, session, wait_end
from tests.harness import FAST_PAGES, ROOT, Worker, eventually, fake_env, make_client
from tests.image_fixtures import png
from tests.pdf_fixtures import image_pdf, plain_pages


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(**fake_env(**FAST_PAGES, OCR_CONCURRENCY="2"))


@pytest.fixture(scope="module")
def api(start_api: Callable[..., ApiServer], worker: Worker) -> ApiServer:
    return start_api()


def send(http: requests.Session, api: ApiServer, data: bytes, name: str = "scan.png",
         **fields: str) -> requests.Response:
    return http.post(f"{api.url}/v1/jobs", files={"file": (name, data)}, data=fields,
                     timeout=30)


def sent(http: requests.Session, api: ApiServer, data: bytes, name: str = "scan.png",
         **fields: str) -> str:
    answer = send(http, api, data, name, **fields)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def scrape(redis_url: str) -> dict[tuple[str, str, str], float]:
    """`ocr_client_pages_total` as the exporter serves it, summed over nodes."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(redis.Redis.from_url(redis_url)))
    found: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name == "ocr_client_pages_total":
                key = (sample.labels["client"], sample.labels["engine"],
                       sample.labels["outcome"])
                found[key] = found.get(key, 0.0) + sample.value
    return found


def admin(redis_url: str, *args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "ocr_admin.py", "usage", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


def test_fewest_pages_of_a_selection() -> None:
    assert fewest_pages(None) == fewest_pages("") == fewest_pages("4-") == 1
    assert fewest_pages("1-3") == fewest_pages("3") == 1  # a document may have 1 page
    assert fewest_pages("1-3,7") == 4  # the document has page 7: pages 1-3 are read too
    assert fewest_pages("2-,5") == 4   # 2 to 5
    assert fewest_pages("1-3,2") == 2


def test_pages_metered_per_client_after_jobs_of_three_clients(
        api: ApiServer, redis_url: str) -> None:
    clients = {name: session(create_token(redis_url, name))
               for name in ("alpha", "beta", "gamma")}
    jobs = [(clients["alpha"], sent(clients["alpha"], api, png())),
            (clients["alpha"], sent(clients["alpha"], api, image_pdf(plain_pages(3)),
                                    "three.pdf", mode="ocr")),
            (clients["beta"], sent(clients["beta"], api, png(140))),
            (clients["gamma"], sent(clients["gamma"], api, png(150))),
            (clients["gamma"], sent(clients["gamma"], api, png(160)))]
    # Celery senders: one named without a token (`other`), one anonymous.
    named = make_client(redis_url, OCR_CLIENT="zeta")
    anonymous = make_client(redis_url)
    anonymous.client = ""
    try:
        others = [named.submit(png(170), filename="z.png"),
                  anonymous.submit(png(180), filename="a.png")]
        ended = named.wait(others[:1], timeout=90) | anonymous.wait(others[1:], timeout=90)
    finally:
        named.close()
        anonymous.close()
    assert [r["status"] for r in ended.values()] == ["SUCCESS"] * 2
    for http, job_id in jobs:
        assert wait_end(http, api, job_id)["status"] == "SUCCESS"

    expected = {"alpha": 4, "beta": 1, "gamma": 2}
    for name, pages in expected.items():
        answer = clients[name].get(f"{api.url}/v1/usage", timeout=10)
        assert answer.status_code == 200, answer.text
        usage = answer.json()
        assert (usage["client"], usage["total"], usage["today"], usage["this_month"]) == \
            (name, pages, pages, pages), usage
        assert len(usage["days"]) == 30 and usage["days"][-1] == {
            "date": today(), "pages": pages, "engines": {"fake": pages}}
        assert usage["engines"] == {"fake": pages}, usage
        assert usage["pages_per_day"] is None
    ranged = clients["alpha"].get(f"{api.url}/v1/usage", params={"from": today(),
                                                                 "to": today()}, timeout=10)
    assert ranged.json()["days"] == [{"date": today(), "pages": 4, "engines": {"fake": 4}}]
    bad = clients["alpha"].get(f"{api.url}/v1/usage", params={"from": "2026-02-30"},
                               timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"
    assert requests.get(f"{api.url}/v1/usage", timeout=10).status_code == 401

    # The counters, bounded labels: token names, `other`, `anonymous` (each process
    # writes its counts within a second: read once every client's are in).
    wanted = {(name, "fake", "read"): float(pages)
              for name, pages in {**expected, "other": 1, "anonymous": 1}.items()}
    counted = eventually(lambda: (lambda c: c if {k: c.get(k) for k in wanted} == wanted
                                  else None)(scrape(redis_url)), 30,
                         lambda: f"the counters {wanted}: {scrape(redis_url)}")
    assert not any(client == "zeta" for client, _, _ in counted)

    # The operator's view: every client, a date range, JSON.
    report = admin(redis_url, "--from", today(), "--to", today())
    totals = {entry["client"]: entry["total"] for entry in report["clients"]}
    assert totals == {**expected, "zeta": 1, "": 1}, report
    assert (report["from"], report["to"]) == (today(), today())
    alpha = admin(redis_url, "--client", "alpha")
    assert [(e["client"], e["days"]) for e in alpha["clients"]] == [("alpha", {today(): 4})]
    yesterday = (dt.date.fromisoformat(today()) - dt.timedelta(days=1)).isoformat()
    assert admin(redis_url, "--to", yesterday)["clients"] == []


def test_page_cap_refuses_at_the_api_before_anything_is_sent(
        api: ApiServer, redis_url: str) -> None:
    capped = session(create_token(redis_url, "capped", "--pages-per-day", "2"))
    for size in (120, 130):
        assert wait_end(capped, api, sent(capped, api, png(size)))["status"] == "SUCCESS"
    store = redis.Redis.from_url(redis_url)
    listed = store.zcard("ocr:jobs:client:capped")
    refused = send(capped, api, png(140))
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["retryable"], error["period"], error["cap"], error["used"],
            error["pages"]) == ("page_quota_exceeded", False, "day", 2, 2, 1), error
    tomorrow = dt.date.fromisoformat(today()) + dt.timedelta(days=1)
    assert error["resets"] == f"{tomorrow.isoformat()}T00:00:00Z"
    assert 0 < int(refused.headers["retry-after"]) <= 86401
    assert store.zcard("ocr:jobs:client:capped") == listed  # no job was sent
    usage = capped.get(f"{api.url}/v1/usage", timeout=10).json()
    assert (usage["today"], usage["pages_per_day"]) == (2, 2)
    # The operator raises the cap: the next job is taken.
    done = subprocess.run([sys.executable, "ocr_admin.py", "tokens", "set", "capped",
                           "--pages-per-day", "3", "--json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "REDIS_URL": redis_url,
                                                      "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and json.loads(done.stdout)["pages_per_day"] == 3, done.stderr
    assert wait_end(capped, api, sent(capped, api, png(140)))["status"] == "SUCCESS"

    # A selection whose fewest pages pass the monthly cap: refused at the door too.
    monthly = session(create_token(redis_url, "monthly", "--pages-per-month", "2"))
    over = send(monthly, api, image_pdf(plain_pages(4)), "four.pdf", pages="1-2,3")
    assert over.status_code == 429
    assert (over.json()["error"]["period"], over.json()["error"]["pages"]) == ("month", 3)


def test_page_cap_refuses_at_planning_with_nothing_read(api: ApiServer,
                                                        redis_url: str) -> None:
    planner = session(create_token(redis_url, "planner", "--pages-per-day", "3"))
    job_id = sent(planner, api, image_pdf(plain_pages(5)), "five.pdf", mode="ocr")
    ended = wait_end(planner, api, job_id)
    assert ended["status"] == "FAILURE", ended
    error = ended["error"]
    assert (error["code"], error["cap"], error["used"], error["pages"], error["period"]) == \
        ("page_quota_exceeded", 3, 0, 5, "day"), error
    result = planner.get(f"{api.url}/v1/jobs/{job_id}/result", params={"format": "json"},
                         timeout=10)
    assert result.status_code == 200 and result.json()["error"]["pages"] == 5
    assert "pages" not in result.json() or not result.json()["pages"]
    # Nothing read: no page counted for the client, no page task was sent.
    assert planner.get(f"{api.url}/v1/usage", timeout=10).json()["today"] == 0
    assert not [k for k in scrape(redis_url) if k[0] == "planner"]
    # A job that fits is read.
    fits = sent(planner, api, image_pdf(plain_pages(3)), "three.pdf", mode="ocr")
    assert wait_end(planner, api, fits)["status"] == "SUCCESS"
    assert planner.get(f"{api.url}/v1/usage", timeout=10).json()["today"] == 3
