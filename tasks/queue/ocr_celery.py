"""The service's Celery app class: Celery carrying the settings it was built from.

Used in every process with an app (tasks/queue/app.py builds them); tasks and signal
handlers read `app.ocr_settings`, and `app.ocr_engine`: the engine a worker built from
this app loads, resolved once when the app is built (in the worker parent, before its
children fork: a recycled child loads the engine its parent chose).

How jobs are shown to people: who sent what, without payloads or secrets. The app puts
`job_kwargs_repr()` in each `ocr.document` message's `kwargsrepr` header. The worker
logs it, and Flower shows it as the task's arguments. The job's client (its
`ocr_client` header) and its file's name come first, then the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any

from celery import Celery

from tasks.queue.brokers import expiry_in_header, until_confirmed
from tasks.queue.routing import quorum_destination
from tasks.records.clients import CLIENT_HEADER
from tasks.settings import Settings

# Celery's own limit for argsrepr/kwargsrepr (celery.app.amqp.AMQP.kwargsrepr_maxsize).
REPR_MAX = 1024
SECRET_KWARGS = ("password", "ground_truth", "sealed")
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


class OcrCelery(Celery):
    """The Celery app, carrying the service settings it was built from."""

    ocr_settings: Settings
    ocr_engine: str
    ocr_gate: Any = None  # tasks/admission.py:admit, given where the worker's app is made

    def send_task(self, name: str, args: Any = None, kwargs: Any = None,
                  **options: Any) -> Any:
        """Celery's `send_task`; jobs are shown (logs, Flower) with their client.

        Without payload or password. On RabbitMQ a deadline travels in the message's
        header only (`expiry_in_header`) and a message the broker refused (nack) is sent
        again for a while; on quorum queues every message (a job, its pages, a retry)
        goes to the queue of its priority (tasks/queue/routing.py, `quorum_destination`).
        """
        # A page task of an encrypted URL input carries its password: masked too.
        if isinstance(kwargs, Mapping) and (name == "ocr.document" or "password" in kwargs):
            headers = options.get("headers") or {}
            client = str(headers.get(CLIENT_HEADER) or "") if name == "ocr.document" else None
            options["kwargsrepr"] = job_kwargs_repr(kwargs, client)
        if not self.ocr_settings.broker_is_amqp:
            options.setdefault("event_dispatcher", self._sent_events)
            return super().send_task(name, args, kwargs, **options)
        options = expiry_in_header(options)
        if self.ocr_settings.quorum_queues:
            options = quorum_destination(name, args, kwargs, options)
        return until_confirmed(lambda: super(OcrCelery, self).send_task(
            name, args, kwargs, **options), f"task {name}")

    @cached_property
    def _sent_events(self) -> QuietSentEvents:
        return QuietSentEvents(self.events.Dispatcher(enabled=False))


class QuietSentEvents:
    """Celery's `task-sent` events on the Redis broker, not made while nobody hears them.

    Runs where tasks are sent (`send_task`'s `event_dispatcher`). The transport's fanout
    gate leaves quiet a topic of the event exchange that no one heard a moment ago
    (tasks/queue/quiet_events.py); asked first, the event is not built at all.
    """

    def __init__(self, dispatcher: Any) -> None:
        self._dispatcher = dispatcher  # Celery's own kind: it publishes with the producer given

    def publish(self, type: str, fields: dict[str, Any], producer: Any,  # noqa: A002 - Celery's name
                **kwargs: Any) -> Any:
        channel = producer.channel
        gate = channel.ocr_fanout_gate
        if gate is not None and gate.held(channel.fanout_topic(
                self._dispatcher.exchange.name, type.replace("-", "."))):
            return None
        return self._dispatcher.publish(type, fields, producer, **kwargs)
