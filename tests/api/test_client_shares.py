"""A token's share of the workers and its highest priority, as the API and fetch use them.

`tokens create --weight --max-priority`: the weight the broker's fetch reads, a job
above the priority refused.

A real worker with the fake engine, the Procfile's `api`, a real redis-server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
import redis
import requests

from tasks.broker.layout import LANE_WEIGHTS_KEY
from tests.api_server import ApiServer, create_token, session
from tests.harness import ROOT, Worker, eventually, fake_env
from tests.image_fixtures import png


@pytest.fixture(scope="module")
def api(start_worker: Callable[..., Worker], start_api: Callable[..., ApiServer]) -> ApiServer:
    start_worker(**fake_env())
    return start_api()


def tokens(redis_url: str, *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "ocr_admin.py", "tokens", *words], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)})


def post(http: requests.Session, api: ApiServer, priority: str) -> requests.Response:
    return http.post(f"{api.url}/v1/jobs", files={"file": ("a.png", png(60))},
                     data={"priority": priority}, timeout=30)


def test_a_token_held_to_normal_is_refused_interactive(api: ApiServer, redis_url: str) -> None:
    http = session(create_token(redis_url, "held", "--max-priority", "normal",
                                "--weight", "3"))
    r = redis.Redis.from_url(redis_url)
    try:
        assert r.hget(LANE_WEIGHTS_KEY, "held") == b"3"
        refused = post(http, api, "interactive")
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "priority_not_allowed"
        for priority in ("normal", "batch"):
            answer = post(http, api, priority)
            assert answer.status_code == 202, answer.text
            job = answer.json()["id"]

            def finished(job: str = job) -> bool:
                return bool(http.get(f"{api.url}/v1/jobs/{job}", timeout=10)
                            .json()["status"] == "SUCCESS")

            eventually(finished, 60, f"{priority} job done")
        # an operator lifts the limit and changes the weight; revoking drops the weight
        done = tokens(redis_url, "set", "held", "--max-priority", "any", "--weight", "2")
        assert done.returncode == 0 and "weight=2" in done.stdout, done.stderr
        assert r.hget(LANE_WEIGHTS_KEY, "held") == b"2"
        assert post(http, api, "interactive").status_code == 202
        assert tokens(redis_url, "create", "bad", "--weight", "0").returncode != 0
        assert tokens(redis_url, "revoke", "held").returncode == 0
        assert not r.hexists(LANE_WEIGHTS_KEY, "held")
    finally:
        http.close()
        r.close()


def test_a_plain_job_shows_the_priority_its_token_gives_it(api: ApiServer,
                                                           redis_url: str) -> None:
    """`tokens create` says what a plain job gets; the job's status and lists show it."""
    made = tokens(redis_url, "create", "lowly", "--weight", "5", "--max-priority", "batch")
    assert made.returncode == 0, made.stderr
    token = made.stdout.splitlines()[1]
    assert ("plain jobs run at priority batch (this token's --max-priority); "
            "priorities outrank weights") in made.stdout, made.stdout
    plain = tokens(redis_url, "create", "plainly")
    assert "plain jobs run at priority normal (the default)" in plain.stdout, plain.stdout
    http = session(token)
    try:
        answer = http.post(f"{api.url}/v1/jobs", files={"file": ("a.png", png(61))},
                           timeout=30)
        assert answer.status_code == 202, answer.text
        job = answer.json()["id"]
        shown = http.get(f"{api.url}/v1/jobs/{job}", timeout=10).json()
        assert shown["priority"] == "batch", shown
        listed = http.get(f"{api.url}/v1/jobs", timeout=10).json()["jobs"]
        assert [(j["id"], j["priority"]) for j in listed] == [(job, "batch")], listed
        status = subprocess.run([sys.executable, "submit.py", "--json", "status", job],
                                cwd=ROOT, capture_output=True, text=True, timeout=60,
                                env={**os.environ, "REDIS_URL": redis_url,
                                     "PYTHONPATH": str(ROOT)})
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["priority"] == "batch", status.stdout
        everyone = subprocess.run([sys.executable, "submit.py", "--json", "jobs", "--client",
                                   "lowly"], cwd=ROOT, capture_output=True, text=True,
                                  timeout=60, env={**os.environ, "REDIS_URL": redis_url,
                                                   "PYTHONPATH": str(ROOT)})
        assert [j["priority"] for j in json.loads(everyone.stdout)["jobs"]] == ["batch"]
    finally:
        http.close()
