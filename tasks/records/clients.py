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
