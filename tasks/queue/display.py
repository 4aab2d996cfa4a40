"""How jobs are shown to people: who sent what, without payloads or secrets.

Runs wherever a job is sent (clients, Flower's send-task API, workers enqueueing page
tasks): the Celery app puts `job_kwargs_repr()` in each `ocr.document` message's
`kwargsrepr` header, which the worker logs and Flower shows as the task's arguments:
the job's client (its `ocr_client` header) and its file's name first, then the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Celery's own limit for argsrepr/kwargsrepr (celery.app.amqp.AMQP.kwargsrepr_maxsize).
REPR_MAX = 1024
SECRET_KWARGS = ("password",)
PAYLOAD_KWARGS = ("data_b64",)


def b64_size(value: str) -> int:
    """Bytes that a base64 string decodes to (without decoding it)."""
    stripped = value.strip()
    return len(stripped) * 3 // 4 - stripped[-2:].count("=")


def job_kwargs_repr(kwargs: Mapping[str, Any], client: str | None = None) -> str:
    """`repr` of job kwargs with the password masked and inline data as its size.

    `client` (the job's, "" for the anonymous one; None: not a job message) and the
    `filename` come first, so a cut repr still says whose job it is and what it reads.
    """
    shown: dict[str, Any] = {} if client is None else {"client": client}
    if "filename" in kwargs:
        shown["filename"] = kwargs["filename"]
    for key, value in kwargs.items():
        if key in SECRET_KWARGS and value is not None:
            shown[key] = "***"
        elif key in PAYLOAD_KWARGS and isinstance(value, str):
            shown[key] = f"<{b64_size(value)} bytes base64>"
        elif key in PAYLOAD_KWARGS and value is not None:
            shown[key] = f"<{type(value).__name__}>"
        else:
            shown[key] = value
    text = repr(shown)
    return text if len(text) <= REPR_MAX else text[:REPR_MAX - 3] + "..."
