"""HTTP callbacks: the summary of a finished job, POSTed as JSON to the caller's URL.

Runs in worker children, inside the `ocr.http_callback` task (which retries).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

SUMMARY_FIELDS = ("id", "status", "filename", "format", "page_count", "failed_pages",
                  "error", "cached", "retry_of")


def summary(outcome: dict[str, Any]) -> dict[str, Any]:
    """What a callback carries: the outcome without page texts (fetch those by id)."""
    out = {k: outcome[k] for k in SUMMARY_FIELDS if k in outcome}
    out["pages_done"] = sum(1 for p in outcome.get("pages", []) if "error" not in p)
    return out


def post_json(url: str, body: dict[str, Any], timeout: float) -> int:
    """POST `body`; returns the HTTP status.

    A 4xx answer is final (returned: the receiver refused it, asking again cannot
    help); 5xx answers and network errors raise, and the task retries them.
    """
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "ocr-queue-callback"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500:
            return int(exc.code)
        raise
