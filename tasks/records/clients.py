"""Who sent a job: the client name every job carries, and the message header it travels in.

A job's client is the name of the service that sent it: an HTTP API token's name, the
`--client`/OCR_CLIENT of submit.py and `OcrClient` (the host user's login name when
unset), or the `ocr_client` header another Celery client sets; "" for a job that names
none (the anonymous client). It travels as the `ocr_client` message header on the job
and on every page task the job fans out (the broker's lanes are chosen by it), and is
recorded in the job's control hash and result (`client`). Pure; runs in every process.
"""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass

CLIENT_HEADER = "ocr_client"
ANONYMOUS = ""
CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


def client_name(value: object) -> str:
    """`value` when it is a valid client name, else "" (the anonymous client)."""
    return value if isinstance(value, str) and CLIENT_NAME.match(value) else ANONYMOUS


def login_client() -> str:
    """The host user's login name as a client name ("" when it has none that fits)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user of that id (a container's arbitrary uid)
        return ANONYMOUS
    return client_name(re.sub(r"[^A-Za-z0-9_.-]", "-", user)[:64])


RUNNING_BATCHES = 4  # a client's running batches when its token names no number


@dataclass(frozen=True)
class ClientRules:
    """What the gate holds a job to for the client that sends it (tasks/admission.py).

    An HTTP API client's come from its token (`tokens create`); any other client's
    are the service-wide ones. `allowed_urls`: the client's own URL prefixes (an API
    client's, empty when it has none; None: OCR_ALLOWED_URLS alone, the operator's
    doors), read by `url_policy.readable`; `result_urls`: where its results may be written (an API
    client's: its own prefixes, empty when it has none; None: under OCR_ALLOWED_URLS,
    the operator's doors, which hold Redis credentials); `max_priority`: the highest
    priority its jobs may have (None: any); `jobs_in_flight`: its unfinished jobs,
    batch documents included (0: no limit); `batches`: its running batches (0: no
    limit); `pages_per_day`, `pages_per_month`: page caps (None or 0: none);
    `engine_pages_per_day`: caps a day on the pages one engine reads, by engine. Pure;
    crosses process boundaries.
    """

    name: str
    allowed_urls: tuple[str, ...] | None = None
    max_priority: str | None = None
    jobs_in_flight: int = 0
    batches: int = RUNNING_BATCHES
    pages_per_day: int | None = None
    pages_per_month: int | None = None
    result_urls: tuple[str, ...] | None = None
    engine_pages_per_day: tuple[tuple[str, int], ...] = ()

    @classmethod
    def service_wide(cls, name: str) -> ClientRules:
        """The rules of a client without a token of its own: OCR_ALLOWED_URLS alone.

        Such a client sends over the Celery protocol (submit.py, `OcrClient`): it holds
        Redis credentials, and writes results anywhere under OCR_ALLOWED_URLS but a
        read-only prefix.
        """
        return cls(name, batches=0)
