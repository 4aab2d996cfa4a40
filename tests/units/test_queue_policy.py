"""One owner per queue decision (routing, retries, engines), without a worker.

- The engine a job runs on: a worker parent that ends a job itself names the engine a
  pool child would have read it with (`resident.engine_for_job`, language routing
  included).
- One retry policy: the job, page and chunk tasks and the HTTP callback task back off
  alike (`tasks/queue/retry_policy.py`), and what the docs say of callbacks is the
  policy's count; a retry after writes a failover took goes out on a new connection.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import Retry
from kombu import Producer

from tasks.engines.resident import engine_for_job
from tasks.errors import PrimaryReplaced, TransientError
from tasks.queue import parent_endings, retry_policy
from tasks.records.request import JobRequest
from tasks.settings import Settings
from tests.harness import ROOT


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"path": "/x.png"}, "tesseract"),
    ({"path": "/x.png", "lang": "chi_sim"}, "rapidocr"),
    ({"path": "/x.png", "lang": "chi_sim+vie"}, "tesseract"),  # rapidocr does not read vie
    ({"path": "/x.png", "lang": "chi_sim", "engine": "tesseract"}, "tesseract"),
])
def test_parent_and_child_name_one_engine(kwargs: dict[str, str], expected: str) -> None:
    settings = Settings.from_env({"OCR_LANG_ENGINES": "chi_sim=rapidocr"})
    request = JobRequest.from_kwargs(kwargs, settings.all_engine_names())
    app = SimpleNamespace(ocr_engine="tesseract", ocr_settings=settings)
    child = engine_for_job(request.engine, request.lang, "tesseract", settings)
    assert parent_endings._engine_of(request, app) == child == expected  # type: ignore[arg-type]
    assert parent_endings._engine_of(None, app) == "tesseract"  # type: ignore[arg-type]


def test_one_retry_policy_for_tasks_and_callbacks() -> None:
    for retries in range(8):
        step = retry_policy.backoff_step(retries)
        assert step == min(retry_policy.RETRY_BACKOFF_MAX, 2 * 2**retries)
        for _ in range(50):  # equal jitter: half the step for sure, half at random
            assert step / 2 <= retry_policy.countdown(retries) <= step
    # A callback is retried for a time, on the same backoff: an hour by default holds
    # dozens of retries, a receiver down for minutes still gets its callback.
    hour = retry_policy.retries_within(Settings.from_env({}).callback_retry_seconds)
    assert 60 <= hour <= 90, hour
    assert retry_policy.retries_within(30) == 4  # 1.5 + 3 + 6 + 12 s, the next step 24 s
    tasks_md = (ROOT / "docs" / "tasks.md").read_text()
    assert "retried with backoff on 5xx and network errors for `OCR_CALLBACK_RETRY_SECONDS`" \
        in tasks_md
    settings_md = (ROOT / "docs" / "settings.md").read_text()
    assert not re.search(r"retried \d+ times", settings_md)


@pytest.mark.parametrize("error", [PrimaryReplaced, TransientError])
def test_a_retry_after_a_failover_goes_out_on_a_new_broker_connection(
        own_redis_url: str, error: type[TransientError]) -> None:
    """The pool's connections may be on the replaced primary, which drops what it takes.

    A real Celery app on a real Redis; the task is a fake that records its retry.
    """
    app = Celery(broker=own_redis_url, set_as_current=False)
    sent: dict[str, Any] = {}

    def retry(**options: Any) -> Retry:
        sent.update(options)
        return Retry()

    task = SimpleNamespace(
        app=SimpleNamespace(ocr_settings=Settings.from_env({}), ocr_engine="tesseract",
                            connection_for_write=app.connection_for_write),
        request=SimpleNamespace(retries=0, headers={}), retry=retry)
    with pytest.raises(Retry):
        retry_policy.retry_later(task, error("the ending met a failover"))
    if error is PrimaryReplaced:
        assert isinstance(sent["producer"], Producer)  # on a connection of its own
    else:
        assert "producer" not in sent  # the pool's, as every other publish
    app.close()
