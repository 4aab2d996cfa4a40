"""The access log without credentials: query-string secrets are redacted.

Runs in the `api` process: scripts/run_api.py installs `RedactQuery` on uvicorn's
access log handler. A token sent as `?access_token=...` is refused (tokens go in the
Authorization header only) but the request line would still be logged; the values of
parameters whose names look like credentials are replaced by `REDACTED` first.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any
from urllib.parse import unquote_plus

from uvicorn.config import LOGGING_CONFIG

SECRET_NAMES = re.compile(r"(?i)^(access_token|token|api_key|apikey|key|secret|password|"
                          r"passwd|auth|authorization|bearer|signature|sig|"
                          r"x-amz-signature|x-amz-credential|x-amz-security-token)$")
_PAIR = re.compile(r"([^&=;]+)=([^&;]*)")


def redact(target: str) -> str:
    """`target` (path and query) with credential-like query values replaced."""
    path, sep, query = target.partition("?")
    if not sep:
        return target

    def hide(match: re.Match[str]) -> str:
        name = match.group(1)
        return f"{name}=REDACTED" if SECRET_NAMES.match(unquote_plus(name)) else match.group(0)

    return path + sep + _PAIR.sub(hide, query)


class RedactQuery(logging.Filter):
    """Redacts the access record: args (client, method, path+query, version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact(args[2]), *args[3:])
        return True


def log_config() -> dict[str, Any]:
    """The logging configuration of uvicorn, with the access handler filtered."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_query"] = {"()": RedactQuery}
    config["handlers"]["access"]["filters"] = ["redact_query"]
    return config
