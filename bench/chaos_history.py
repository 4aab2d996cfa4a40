"""The chaos soak's history records (bench/chaos.py writes them, bench/chaos_checker.py reads them).

Runs in the soak's own process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Input:
    """A document the load sends, with its direct read (one text per page)."""

    name: str
    data: bytes
    kind: str  # image | pdf | digital
    pages: list[str]


@dataclass
class Job:
    """One job of the load, as its client saw it."""

    key: str  # the Idempotency-Key every try of the submission carries
    input: str
    transport: str  # upload | url
    output: str
    engine: str | None
    priority: str
    deadline: float | None = None
    cancel_at: float | None = None
    job_id: str | None = None
    submitted: float = 0.0
    refused: str | None = None  # why it was not accepted (a coded answer or no answer)
    tries: int = 0
    cancel_answer: int | None = None
    final: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    rendered: dict[str, int] = field(default_factory=dict)  # format -> bytes fetched
    ended: float | None = None
    # Followed by its Server-Sent Events (any API process, again after a cut stream):
    watched: bool = False
    event_end: str | None = None  # the status its `end` event carried
    event_streams: int = 0  # streams opened until the end came


@dataclass
class Fault:
    at: float
    kind: str
    detail: str
    seconds: float = 0.0
