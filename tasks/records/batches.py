"""A batch as the service keeps it: its state and its record, typed.

Pure; crosses process boundaries (the HTTP API, the workers' batch driver, submit.py).
`BatchStore` (tasks/state/batch_store.py) reads and writes `BatchRecord`s; the driver
(tasks/lifecycle/batches.py) and the batch commands read them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any


class BatchState(StrEnum):
    """Where a batch stands: RUNNING, then how it ended."""

    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"      # every document of the collection read completely
    PARTIAL = "PARTIAL"      # some documents failed (or were read in part)
    FAILURE = "FAILURE"      # every document failed, or the source or target was refused
    CANCELLED = "CANCELLED"

    @property
    def final(self) -> bool:
        return self is not BatchState.RUNNING

    @classmethod
    def of(cls, value: object) -> BatchState:
        """The state a record names (RUNNING for a record without one)."""
        try:
            return cls(str(value))
        except ValueError:
            return cls.RUNNING


FINAL_STATES = tuple(s for s in BatchState if s.final)
RETRYABLE_STATES = (BatchState.PARTIAL, BatchState.FAILURE)
COUNTS = ("listed", "done", "failed", "skipped", "skipped_failed", "pages_done",
          "pages_failed")
_JSON_FIELDS = ("options", "error")
_BOOL_FIELDS = ("overwrite", "retry_failed", "document_callbacks", "local", "cancel", "cancel_sent",
                "listed_all", "fresh")
_FLOAT_FIELDS = ("created", "started", "ended", "stepped")


@dataclass(frozen=True)
class BatchRecord:
    """One batch: where it reads and writes, how, for whom, and how far it got.

    `skipped_failed`: documents skipped because their manifest line shows them read
    with the same options already, and failed (they count as failed for the batch's
    end: the state is the collection's). `fresh`: the target had no manifest line when
    the batch began (nothing to compare). `local`: a folder driven by submit.py itself.
    """

    id: str
    source: str = ""
    target: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    priority: str = "batch"
    client: str = ""
    owner: str = ""
    api_client: str = ""
    callback_url: str = ""
    overwrite: bool = False
    retry_failed: bool = False  # read again the documents whose line shows a failure
    document_callbacks: bool = False
    local: bool = False
    state: BatchState = BatchState.RUNNING
    phase: str = "list"
    cursor: str = ""
    chain: str = ""
    cancel: bool = False
    cancel_sent: bool = False
    listed_all: bool = False
    fresh: bool | None = None
    error: dict[str, Any] | None = None
    created: float = 0.0
    started: float | None = None
    ended: float | None = None
    stepped: float | None = None
    listed: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    skipped_failed: int = 0
    pages_done: int = 0
    pages_failed: int = 0

    @property
    def exists(self) -> bool:
        return bool(self.id)

    def driven_by(self, chain: str) -> bool:
        """Whether a step of `chain` drives this batch: it exists, runs, and names it."""
        return self.exists and not self.state.final and self.chain == chain

    def counts(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name in COUNTS}

    def ending(self) -> BatchState:
        """How a batch whose listing is done and whose flight is empty ends.

        The collection's state: documents skipped as failed already count as failed.
        """
        failed = self.failed + self.skipped_failed
        done = self.done + self.skipped - self.skipped_failed
        return (BatchState.SUCCESS if failed == 0 else
                BatchState.FAILURE if done == 0 else BatchState.PARTIAL)

    def with_(self, **changes: Any) -> BatchRecord:
        return replace(self, **changes)

    # --- the Redis hash ----------------------------------------------------------------

    def to_hash(self) -> dict[str, str]:
        """The record as its Redis hash's fields (strings; None fields left out)."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = encode_field(f.name, value)
        return out

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> BatchRecord:
        """The record a hash holds (an empty record, id "", for none)."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, text in raw.items():
            if name not in known:
                continue
            values[name] = decode_field(name, text)
        values.setdefault("id", "")
        return cls(**values)


def encode_field(name: str, value: Any) -> str:
    """One field as its hash holds it."""
    if name in _BOOL_FIELDS:
        return "true" if value else "false"
    if name in _JSON_FIELDS:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def decode_field(name: str, text: str) -> Any:
    if name in _BOOL_FIELDS:
        return text == "true"
    if name in _JSON_FIELDS:
        return json.loads(text) if text else None if name == "error" else {}
    if name in _FLOAT_FIELDS:
        return float(text) if text else None
    if name in COUNTS:
        return int(text or 0)
    if name == "state":
        return BatchState.of(text)
    return text
