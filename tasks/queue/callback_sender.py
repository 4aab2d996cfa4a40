"""The callback sender: threads of the control worker that empty the callback outbox.

Started by the control worker alone (tasks/queue/signals.py): a webhook POST never runs
in an OCR worker, so a slow receiver holds no child that reads pages. It takes each
delivery of the outbox (tasks/state/callback_outbox.py) when it is due: a job's
`callback_url` POST (tasks/lifecycle/callbacks.py), its `callback_task` message, a
batch's POST.

- OCR_CALLBACK_THREADS threads send; one client's deliveries hold at most
  OCR_CALLBACK_THREADS_PER_CLIENT of them. Another client's wait for none of them.
  Each control worker counts its own threads.
- Where Redis keeps replicas, a delivery goes out only once its record, and so the
  ending written with it, is on them: a failover never takes back an ending the
  world was told of.
- A POST answered 2xx (or 3xx/4xx, final) or a task message published is removed from
  the outbox, and the POST's answer recorded on the job (its result's `callback`).
  One that failed is due again after the queue's backoff (tasks/queue/retry_policy.py),
  for OCR_CALLBACK_RETRY_SECONDS; then its job records `callback_failed`.
- A delivery taken is held for a lease: a sender that dies with it leaves it due
  again when its lease ends. Its event id (`X-OCR-Event-Id`, `event_id` in the signed
  body) is the same on every try, so a receiver drops a duplicate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from tasks import tracing
from tasks.errors import CallbackNotAllowed, OcrError, TransientError
from tasks.lifecycle.callbacks import post_json, record_delivery, signing_secrets
from tasks.queue.client_shares import ClientShares
from tasks.queue.job_services import JobServices
from tasks.queue.retry_policy import countdown, retries_within
from tasks.state.boundary import CONNECTION_ERRORS, publishing
from tasks.state.callback_outbox import HTTP, CallbackOutbox, Delivery, client_of
from tasks.state.connection import new_client

if TYPE_CHECKING:
    from tasks.settings import Settings
    from tasks.state.stores import Stores

log = logging.getLogger(__name__)
IDLE_WAIT = 10.0  # an idle sender's wait on the outbox's doorbell
HELD_WAIT = 1.0  # a sender's wait while what is due waits for its client's threads
DUE_READ = 100  # due deliveries read at a time
_STORE_ERRORS: tuple[type[BaseException], ...] = (OcrError, *CONNECTION_ERRORS)
_FAILED_SEND = (TransientError, OSError)  # OSError: ConnectionError, timeouts, URLError
Publish = Callable[[str, dict[str, Any], "str | None"], None]


class CallbackSender:
    """The outbox's sending threads of one control worker (`start`, `stop`)."""

    def __init__(self, settings: Settings, outbox: CallbackOutbox, stores: Stores,
                 publish: Publish, node: str = "") -> None:
        self._settings = settings
        self._outbox = outbox
        self._stores = stores
        self._publish = publish  # a callback task's message: (name, argument, queue)
        self._node = node
        self._shares = ClientShares(settings.callback_threads,
                                    settings.callback_threads_per_client)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(self._shares.total,
                                        thread_name_prefix="ocr-callback")
        # Longer than one POST to every address of its host may take.
        self.lease = 3 * settings.callback_timeout + 30

    def start(self) -> None:
        threading.Thread(target=self._loop, name="ocr-callback-outbox", daemon=True).start()
        log.info("callback sender %s: %d threads, %d per client", self._node,
                 self._shares.total, self._shares.per_client)

    def stop(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._turn()
            except _STORE_ERRORS as exc:
                log.warning("callback outbox unreachable (%s); tried again in 2 s",
                            type(exc).__name__)
                self._stop.wait(2)
            except Exception:  # logged whole: the sender must outlive a bug in one turn
                log.exception("callback sender: its turn failed; tried again in 2 s")
                self._stop.wait(2)

    def _turn(self) -> None:
        """Start what is due and has room; else wait on the doorbell, or for a due time."""
        members, next_in = self._outbox.due(DUE_READ)
        started = held_back = 0
        for member in members:
            client = client_of(member)
            if not self._shares.take(client):
                held_back += 1
                continue
            delivery = None
            try:
                delivery = self._outbox.take(member, self.lease)
            finally:
                if delivery is None:  # another sender took it, or the outbox was unreachable
                    self._shares.give_back(client)
            if delivery is None:
                continue
            self._pool.submit(self._run, delivery)
            started += 1
        if started:
            return
        if held_back:  # until a thread is freed (each delivery done rings) or a new one
            self._outbox.wait(HELD_WAIT)
            return
        self._outbox.wait(IDLE_WAIT if next_in is None else min(IDLE_WAIT, next_in))

    def _run(self, delivery: Delivery) -> None:
        try:
            self.send(delivery)
        except _STORE_ERRORS as exc:
            log.warning("callback %s: the outbox was unreachable (%s); it is sent again "
                        "when its lease ends", delivery.id, type(exc).__name__)
        finally:
            self._shares.give_back(delivery.client)

    def send(self, delivery: Delivery) -> None:
        """One try of `delivery`: removed once sent or refused for good, else due later."""
        control = self._stores.control
        target = self._settings.redis_target
        started = time.monotonic()
        try:
            if not self._outbox.keep(delivery, target):
                raise TransientError("the callback's ending is on no Redis replica yet")
            with tracing.continued(delivery.traceparent or None):
                status = self._deliver(delivery)
        except CallbackNotAllowed as exc:
            record_delivery(control, delivery.job_id, "refused", exc.code,
                            attempts=delivery.attempts + 1)
            self._outbox.done(delivery)
            log.warning("callback %s refused: %s", delivery.id, exc.message)
            return
        except _FAILED_SEND as exc:
            self._failed(delivery, exc)
            return
        if delivery.kind == HTTP:
            sent = status < 300
            record_delivery(control, delivery.job_id, "sent" if sent else "rejected",
                            None if sent else "callback_rejected",
                            attempts=delivery.attempts + 1, http_status=status)
        self._outbox.done(delivery)
        log.info("callback %s sent by %s: %s, try %d, %.2f s (%.2f s after its ending)",
                 delivery.id, self._node, status if delivery.kind == HTTP else "published",
                 delivery.attempts + 1, time.monotonic() - started,
                 time.time() - delivery.first)

    def _deliver(self, delivery: Delivery) -> int:
        """POST it (its answer's status), or publish its task message (0)."""
        if delivery.kind == HTTP:
            secrets = signing_secrets(delivery.owner, self._stores.webhook_secrets,
                                      self._settings)
            return post_json(delivery.target, delivery.body, self._settings, secrets)
        with publishing("the callback task"):
            self._publish(delivery.target, delivery.body, delivery.queue)
        return 0

    def _failed(self, delivery: Delivery, exc: BaseException) -> None:
        """Due again after the backoff, or recorded `callback_failed` once out of time."""
        reason = type(exc.__cause__ or exc).__name__
        if delivery.attempts >= retries_within(self._settings.callback_retry_seconds):
            record_delivery(self._stores.control, delivery.job_id, "failed",
                            "callback_failed", attempts=delivery.attempts + 1, reason=reason)
            self._outbox.done(delivery)
            log.error("callback %s failed %d times (%s); given up", delivery.id,
                      delivery.attempts + 1, reason)
            return
        wait = countdown(delivery.attempts)
        self._outbox.later(delivery.failed_once(), wait)
        log.warning("callback %s not sent (%s), try %d; kept in the outbox, sent again "
                    "in %.0f s", delivery.id, reason, delivery.attempts + 1, wait)


def start_sender(app: Any, settings: Settings, node: str) -> CallbackSender:
    """The control worker's sender, started."""
    def publish(name: str, argument: dict[str, Any], queue: str | None) -> None:
        app.send_task(name, args=[argument], queue=queue)

    # a client of its own: its doorbell's blocking reads hold a connection
    outbox = CallbackOutbox(new_client(settings.redis_target), settings.result_ttl)
    sender = CallbackSender(settings, outbox, JobServices.for_app(app).stores, publish, node)
    sender.start()
    return sender
