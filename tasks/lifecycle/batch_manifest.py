"""A batch's manifest under its target: the steps' parts, read back once, composed.

Runs where a batch's driver runs (a worker child taking `ocr.batch_step`; submit.py for
a local folder) and in the HTTP API (the console's batch page).

Each step of the driver writes the lines it settled (documents whose jobs ended,
refusals, duplicates) as one object, a part: `<target>.manifest-parts/<time>-<random>.jsonl`,
named in time order, so that documents ending at once never write the same object. No
document has an object of its own. A run over a target that holds lines (a batch sent
again, a retry) reads the parts back once, as it starts, into a `ManifestIndex`; when
the batch ends, `manifest.jsonl` is composed from the parts.
"""

from __future__ import annotations

import bisect
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tasks.lifecycle.batch_lines import FAILED, SKIPPED
from tasks.lifecycle.batch_sources import Document, Target

PARTS_DIR = ".manifest-parts/"  # the lines each step settled, one object a step
MANIFEST_FILE = "manifest.jsonl"
READERS = 16  # parts read at once
INDEXES = 16  # batches' indexes one driver keeps


def part_name() -> str:
    """A new part's name: time-ordered, unique across steps and hosts."""
    return f"{PARTS_DIR}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"


def write_part(target: Target, lines: list[dict[str, Any]]) -> None:
    """The lines one step settled, as one object (composing reads these, not each line)."""
    if lines:
        body = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)
        target.put(part_name(), body.encode(), "application/jsonl")


def has_lines(target: Target) -> bool:
    """Whether the target holds any manifest line (one LIST)."""
    names, _ = target.names(PARTS_DIR, "", 1)
    return bool(names)


def line_key(line: dict[str, Any]) -> tuple[str, int]:
    """What one line of `manifest.jsonl` stands for: a document, and its manifest line.

    Two lines of a manifest naming the same URL are two lines; a document read again
    (a retry) replaces its own line only.
    """
    at = line.get("line_at")
    return str(line.get("name", "")), at if isinstance(at, int) else -1


def part_lines(target: Target, alive: Callable[[], object] | None = None,
               page: int = 1000) -> Iterator[dict[str, Any]]:
    """Every line of every part, in the parts' order (a later line is a later word).

    `alive` is called before each page of names (the step keeps its lock); `page`
    parts are read at once.
    """
    after = ""
    while True:
        if alive is not None:
            alive()
        names, more = target.names(PARTS_DIR, after, page)
        with ThreadPoolExecutor(READERS) as pool:
            bodies = list(pool.map(target.get, names))
        for body in bodies:
            for raw in (body or b"").decode("utf-8", "replace").splitlines():
                try:
                    line = json.loads(raw)
                except json.JSONDecodeError:
                    continue
                if isinstance(line, dict):
                    yield line
        if not more or not names:
            return
        after = names[-1]


def latest_lines(target: Target, alive: Callable[[], object] | None = None
                 ) -> list[dict[str, Any]]:
    """Each input line's latest line, sorted by name and then by `line_at`."""
    latest = {line_key(line): line for line in part_lines(target, alive)}
    return [latest[key] for key in sorted(latest)]


def first_latest_lines(target: Target, most: int) -> tuple[list[dict[str, Any]], bool]:
    """`latest_lines` of the parts' first `most` lines; and whether any were left unread.

    What reads it for a person (the console's batch page) reads a bounded part of a
    batch of any size: at most `most` lines, from at most `most` + 1 parts.
    """
    read = list(itertools.islice(part_lines(target, page=min(1000, most + 1)), most + 1))
    latest = {line_key(line): line for line in read[:most]}
    return [latest[key] for key in sorted(latest)], len(read) > most


def compose_from_parts(target: Target, alive: Callable[[], object] | None = None) -> int:
    """Write `manifest.jsonl` from the steps' parts: each input line's latest line."""
    lines = latest_lines(target, alive)
    composed = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)
    target.put(MANIFEST_FILE, composed.encode(), "application/jsonl")
    return len(lines)


def _version(version: object) -> str:
    return json.dumps(version, sort_keys=True)


class ManifestIndex:
    """What the lines already under a target say, read back from its parts once.

    By a document's name, what its latest line shows read (the source version, the
    options' digest, the status): a batch sent again skips a document read alike. And
    the documents whose latest line failed, in the order of `manifest.jsonl`: a retry
    reads them again. A duplicate's line (`SKIPPED`) shows no read of its own.
    """

    def __init__(self) -> None:
        self._reads: dict[str, tuple[str, str, str]] = {}
        self._failed: dict[tuple[str, int], Document] = {}
        self._order: list[tuple[str, int]] | None = None

    @classmethod
    def read(cls, target: Target, alive: Callable[[], object] | None = None
             ) -> ManifestIndex:
        index = cls()
        for line in part_lines(target, alive):
            index.add(line)
        return index

    def add(self, line: dict[str, Any]) -> None:
        """Take one line, later than those taken before."""
        status, key = str(line.get("status") or ""), line_key(line)
        self._order = None
        if status in FAILED:
            self._failed[key] = Document(str(line.get("source") or ""), key[0], {},
                                         dict(line.get("options") or {}),
                                         at=str(key[1]) if key[1] >= 0 else "")
        else:
            self._failed.pop(key, None)
        if status != SKIPPED:
            self._reads[key[0]] = (_version(line.get("source_version")),
                                   str(line.get("options_digest") or ""), status)

    def line(self, name: str) -> dict[str, Any] | None:
        """What the latest line of the document named `name` shows; None: no line."""
        read = self._reads.get(name)
        if read is None:
            return None
        version, digest, status = read
        return {"source_version": json.loads(version), "options_digest": digest,
                "status": status}

    def page(self, cursor: str, count: int) -> tuple[list[tuple[Document, str]], bool]:
        """A retry's source: up to `count` failed documents after `cursor`, and done."""
        if self._order is None:
            self._order = sorted(self._failed)
        try:
            name, at = json.loads(cursor) if cursor else ("", -2)
            first = bisect.bisect_right(self._order, (str(name), int(at)))
        except (json.JSONDecodeError, TypeError, ValueError):
            first = 0  # not a cursor of this source: from the start
        keys = self._order[first:first + count]
        return ([(self._failed[key], json.dumps(list(key))) for key in keys],
                first + count >= len(self._order))


class Indexes:
    """The indexes one driver read, one a batch's run (its chain and phase)."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[tuple[str, str], ManifestIndex]] = {}
        self._lock = threading.Lock()

    def of(self, batch_id: str, run: tuple[str, str],
           read: Callable[[], ManifestIndex]) -> ManifestIndex:
        """The batch's index for this run, `read()` when this driver has none yet."""
        with self._lock:
            held = self._held.get(batch_id)
        if held is not None and held[0] == run:
            return held[1]
        index = read()
        with self._lock:
            self._held.pop(batch_id, None)
            self._held[batch_id] = (run, index)
            while len(self._held) > INDEXES:
                self._held.pop(next(iter(self._held)))
        return index

    def drop(self, batch_id: str) -> None:
        with self._lock:
            self._held.pop(batch_id, None)
