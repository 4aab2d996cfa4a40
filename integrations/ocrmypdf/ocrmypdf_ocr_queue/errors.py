"""What can go wrong between OCRmyPDF and the service; `plugin.py` raises OCRmyPDF's own.

Runs in OCRmyPDF's processes. Standard library only.
"""

from __future__ import annotations


class QueueError(Exception):
    """A failure talking to the OCR service; its message is one line for the user."""


class Unreachable(QueueError):
    """The service (the HTTP API, or Redis) did not answer, or no worker reads the queue."""


class Refused(QueueError):
    """The service refused the caller: a missing or revoked token, a bad URL."""


class PageFailed(QueueError):
    """The service read the page and its job failed (the service's own error code)."""
