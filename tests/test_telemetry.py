"""Units of what people see: kwargs shown by Flower, job log lines, metrics in Redis."""

from __future__ import annotations

import base64
import json

import redis

from tasks.celery_app import create_app
from tasks.display import job_kwargs_repr
from worker_config import Settings


def test_kwargs_repr_hides_payload_and_password() -> None:
    data = base64.b64encode(b"x" * 1001).decode()
    shown = job_kwargs_repr({"data_b64": data, "filename": "a.png", "password": "s3cret"})
    assert shown == "{'data_b64': '<1001 bytes base64>', 'filename': 'a.png', 'password': '***'}"
    assert job_kwargs_repr({"blob": "ocr:blob:abc12345"}) == "{'blob': 'ocr:blob:abc12345'}"
    assert len(job_kwargs_repr({"filename": "n" * 5000})) == 1024


def test_sent_job_message_carries_the_masked_repr(redis_url: str) -> None:
    app = create_app(Settings.from_env({"REDIS_URL": redis_url}))
    data = base64.b64encode(b"\x89PNG" + b"\0" * 996).decode()
    app.send_task("ocr.document", kwargs={"data_b64": data, "password": "s3cret-pw"},
                  queue="display-test")
    client = redis.Redis.from_url(redis_url)
    message = json.loads(client.lpop("display-test") or b"{}")
    assert message["headers"]["kwargsrepr"] == ("{'data_b64': '<1000 bytes base64>', "
                                                "'password': '***'}")
    assert "s3cret" not in json.dumps(message["headers"])
    app.close()
