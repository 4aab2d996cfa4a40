"""HTTP callbacks: the summary of a finished job, POSTed as signed JSON to the caller's URL.

A job's ending writes its callbacks into the outbox (`deliveries`; tasks/state/
callback_outbox.py); the control worker's sender (tasks/queue/callback_sender.py) POSTs
them, and retries them. The URL
is checked again at send time (tasks/lifecycle/callback_urls.py on outbound.py): every resolved
address must be public unless the host is in OCR_CALLBACK_ALLOWED_HOSTS, and the
connection goes to those checked addresses. Redirects are never followed. With
OCR_CALLBACK_SECRET set each POST carries `X-OCR-Timestamp` and `X-OCR-Signature:
sha256=<hex HMAC-SHA256 of "<timestamp>.<raw body>">` (docs/tasks.md: verifying).
A callback of an HTTP API client (a job's ending, a batch's ending, each document's
job) is signed with that client's own secret instead (`signing_secrets`: the owner
named by the record that made the callback, carried in the task's arguments), and
during a rotation's grace period also with its previous one, in
`X-OCR-Signature-Previous`. An API client's callback is never sent unsigned: with no
secret of its own and OCR_CALLBACK_SECRET empty it is refused when it would be sent
(`callback_not_allowed`, recorded on the job). A Celery-protocol sender's callback is
unsigned where OCR_CALLBACK_SECRET is empty.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from tasks import tracing
from tasks.errors import CallbackNotAllowed
from tasks.lifecycle.callback_urls import CallbackTarget, callback_target, checked_addresses
from tasks.lifecycle.outbound import Address, connect_checked
from tasks.state.callback_outbox import HTTP, TASK, Delivery
from tasks.state.webhook_secrets import SigningSecrets, WebhookSecrets

if TYPE_CHECKING:
    from tasks.records.jobs import Outcome
    from tasks.settings import Settings
    from tasks.state.job_control import JobControl

log = logging.getLogger(__name__)
SUMMARY_FIELDS = ("id", "status", "filename", "format", "page_count", "failed_pages",
                  "error", "cached", "retry_of")
TIMESTAMP_HEADER = "X-OCR-Timestamp"
SIGNATURE_HEADER = "X-OCR-Signature"
PREVIOUS_SIGNATURE_HEADER = "X-OCR-Signature-Previous"  # a client's old secret, in grace
EVENT_ID_HEADER = "X-OCR-Event-Id"  # the ending's id (also `event_id` in the signed body)


def summary(outcome: dict[str, Any]) -> dict[str, Any]:
    """What a callback carries: the outcome without page texts (fetch those by id).

    `event_id` names the ending (`<job id>.<status>`): a job ends once, so every POST
    of one callback, retries and redeliveries included, carries the same event id.
    """
    out = {k: outcome[k] for k in SUMMARY_FIELDS if k in outcome}
    out["pages_done"] = sum(1 for p in outcome.get("pages", []) if "error" not in p)
    out["event_id"] = f"{outcome.get('id')}.{outcome.get('status')}"
    return out


def deliveries(outcome: Outcome, owner: str) -> list[Delivery]:
    """An ending's callbacks: its `callback_task` message, its `callback_url` POST.

    Each delivery's id is the ending's event id and its kind, so that the same ending
    written again is the same delivery. `owner`: the job's (signs the POST).
    """
    request = outcome.request
    if request is None:
        return []
    result, now, client = outcome.public(), time.time(), outcome.client
    body, trace = summary(result), {"traceparent": ""}
    tracing.inject(trace)  # the ending's span, for the send's
    made = []
    if request.callback_task:
        made.append(Delivery(f"{body['event_id']}.{TASK}", TASK, request.callback_task,
                             result, job_id=outcome.job_id, client=client,
                             queue=request.callback_queue, first=now,
                             traceparent=trace["traceparent"]))
    if request.callback_url:
        made.append(Delivery(f"{body['event_id']}.{HTTP}", HTTP, request.callback_url,
                             body, owner=owner, job_id=outcome.job_id, client=client,
                             first=now, traceparent=trace["traceparent"]))
    return made


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The `X-OCR-Signature` value: `sha256=` and the hex HMAC of `<timestamp>.<body>`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(body: bytes, secret: str, timestamp: str, signature: str,
           tolerance: float = 300, now: float | None = None) -> bool:
    """What a receiver checks: the signature, and a timestamp within `tolerance` s."""
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - stamp) > tolerance:
        return False
    return hmac.compare_digest(sign(body, secret, stamp), signature)


def signing_secrets(owner: str, secrets: WebhookSecrets,
                    settings: Settings) -> SigningSecrets | None:
    """What a callback of `owner` is signed with; None: it goes unsigned.

    `api:<client>`: that client's secrets, else OCR_CALLBACK_SECRET, else
    CallbackNotAllowed (an API client's callback is never unsigned). Any other owner:
    OCR_CALLBACK_SECRET when set.
    """
    service = SigningSecrets(settings.callback_secret) if settings.callback_secret \
        else None
    if not owner.startswith("api:"):
        return service
    own = secrets.signing(owner[4:]) or service
    if own is None:
        raise CallbackNotAllowed(f"client {owner[4:]!r} has no webhook secret and "
                                 "OCR_CALLBACK_SECRET is empty: its callback is not sent "
                                 "unsigned")
    return own


def record_delivery(control: JobControl, job_id: str, status: str, code: str | None,
                    **details: object) -> None:
    """Record how the callback went on the job: its result's `callback`.

    `{"status": "sent" | "rejected" | "refused" | "failed", "code", "attempts", ...}`
    in the job's control hash; clients (tasks/client.py `result`) merge it into the
    result they read. None for a batch's (no `job_id`).
    """
    if job_id:
        control.record_callback(job_id, {"status": status, "code": code, **details})


def post_json(url: str, body: dict[str, Any], settings: Settings,
              secrets: SigningSecrets | None = None) -> int:
    """POST `body` to the checked `url`, signed with `secrets` (None: unsigned); its status.

    A 3xx or 4xx answer is final (returned: a redirect is not followed, and a refusal
    cannot be helped by asking again); 5xx answers and network errors raise
    (`ConnectionError`/`OSError`), and the sender retries them. A URL the policy refuses
    raises `CallbackNotAllowed` (not retried).
    """
    target = callback_target(url, settings)
    addresses = checked_addresses(target)
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "ocr-queue-callback"}
    if isinstance(body.get("event_id"), str):
        headers[EVENT_ID_HEADER] = body["event_id"]
    if secrets is not None:
        stamp = int(time.time())
        headers[TIMESTAMP_HEADER] = str(stamp)
        headers[SIGNATURE_HEADER] = sign(raw, secrets.current, stamp)
        if secrets.previous:
            headers[PREVIOUS_SIGNATURE_HEADER] = sign(raw, secrets.previous, stamp)
    with tracing.span("ocr.callback", {"http.request.method": "POST",
                                       "server.address": target.host,
                                       "ocr.job_id": body.get("id")}, kind="client") as span:
        tracing.inject(headers)  # the receiver may join the job's trace
        status = _post(target, addresses, raw, headers, settings.callback_timeout)
        span.set({"http.response.status_code": status})
    if 300 <= status < 400:
        log.warning("callback to %s answered %s; redirects are not followed",
                    target.url, status)
    if status >= 500:
        raise ConnectionError(f"the callback receiver answered {status}")
    return status


def _post(target: CallbackTarget, addresses: list[Address], raw: bytes,
          headers: dict[str, str], timeout: float) -> int:
    """One POST through the first checked address that accepts a connection."""
    connection = connect_checked(target, addresses, timeout)
    try:
        connection.request("POST", target.target, body=raw, headers=headers)
        return int(connection.getresponse().status)
    except http.client.HTTPException as exc:
        raise ConnectionError(f"bad HTTP answer ({type(exc).__name__})") from None
    finally:
        connection.close()
