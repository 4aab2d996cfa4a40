"""A client's line corrections, kept by document content so that later jobs carry them.

Used by the `api` process (`PUT` and `DELETE /v1/jobs/{id}/pages/{n}/lines/{line}`,
every result format) and by the accuracy tools (`corrected_pages`). A correction
belongs to a client and a document's content (its sha256), not to one job: it is found
again by page and by line box (`box_matches`: IoU at least MATCH_IOU), so a later job
of the same document by the same client carries it. Each correction keeps its last
few versions (text, who, when; OCR_CORRECTION_VERSIONS); a revert is a version whose
text is None.

Keys (tasks/state/keys.py; no TTL: a person's work lives until an operator deletes
it, bounded instead): `ocr:corrections:<client>:<sha256>` is a hash
`<page>:<x0>,<y0>,<x1>,<y1>` -> the line's record (JSON); `ocr:corrections:<client>`
is a hash `<sha256>:<page>` -> the page as corrected (its full text, engine,
language, job), the ground truth `corrected_pages` returns;
`ocr:corrections:<client>:bytes` is the length of all those records, counted in the
client's bytes quota (tasks/state/stored_bytes.py). One script writes a line's
record and its page's, and counts them, or refuses the write past the quota.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from tasks.state.boundary import transient_methods
from tasks.state.keys import (
    api_bytes_key,
    corrected_pages_key,
    corrections_bytes_key,
    corrections_key,
)
from tasks.state.lua import Script
from tasks.state.stored_bytes import STORED, over_quota, results_keys

Box = tuple[int, int, int, int]
MATCH_IOU = 0.8  # a later read's line is the corrected one when their boxes overlap this much
MAX_TEXT = 10_000  # characters of one corrected line
PAGE_SCAN = 1000  # fields an HSCAN of a document's corrections asks for at a time

# KEYS: 1 the client's inputs set, 2 its corrections' bytes, 3 the document's lines,
# 4 the client's pages, 5 and 6 its results' count. ARGV: 1 the line's field, 2 its
# record, 3 the page's field, 4 its record ('': none, the field deleted), 5 the limit
# (0: none). A write that grows the client's stored bytes past the limit is refused:
# -1, nothing written. Else the records are written and their change in length
# counted; returns the corrections' bytes. Records written before they were counted
# make the count go below 0 as they shrink: it stays at 0.
_WRITE = Script(STORED + """
local grows = string.len(ARGV[2]) + string.len(ARGV[4])
  - redis.call('HSTRLEN', KEYS[3], ARGV[1]) - redis.call('HSTRLEN', KEYS[4], ARGV[3])
local limit = tonumber(ARGV[5])
if grows > 0 and limit > 0
    and stored(KEYS[1], KEYS[2], '', KEYS[5], KEYS[6]) + grows > limit then
  return -1
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[4], ARGV[3])
else
  redis.call('HSET', KEYS[4], ARGV[3], ARGV[4])
end
local total = redis.call('INCRBY', KEYS[2], grows)
if total < 0 then
  redis.call('SET', KEYS[2], 0)
  total = 0
end
return total
""")


@dataclass(frozen=True)
class Version:
    """One version of a line's correction: its text (None: reverted), who and when."""

    version: int
    text: str | None
    by: str
    at: float

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "text": self.text, "by": self.by, "at": self.at}


@dataclass(frozen=True)
class LineCorrection:
    """A corrected line of a document's page: where it is, what the engine read, its versions."""

    page: int
    box: Box
    original: str
    versions: tuple[Version, ...]

    @property
    def current(self) -> Version:
        return self.versions[-1]

    @property
    def active(self) -> bool:
        return self.current.text is not None

    def to_json(self) -> dict[str, Any]:
        return {"page": self.page, "box": list(self.box), "original": self.original,
                "versions": [v.to_json() for v in self.versions]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LineCorrection:
        box = tuple(int(v) for v in data["box"])
        return cls(int(data["page"]), (box[0], box[1], box[2], box[3]), str(data["original"]),
                   tuple(Version(int(v["version"]), v["text"], str(v["by"]), float(v["at"]))
                         for v in data["versions"]))


@dataclass(frozen=True)
class CorrectedPage:
    """A page a person corrected: ground truth for scoring engines.

    `text` is the page's full text with every correction applied; `engine` and `lang`
    read it, in job `job_id` of the document `sha256`.
    """

    sha256: str
    number: int
    text: str
    engine: str | None
    lang: str | None
    job_id: str
    corrected_lines: int
    at: float

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "number": self.number, "text": self.text,
                "engine": self.engine, "lang": self.lang, "job_id": self.job_id,
                "corrected_lines": self.corrected_lines, "at": self.at}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CorrectedPage:
        return cls(str(data["sha256"]), int(data["number"]), str(data["text"]),
                   data.get("engine"), data.get("lang"), str(data["job_id"]),
                   int(data["corrected_lines"]), float(data["at"]))


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1); 0 for empty ones."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_matches(a: Sequence[float], b: Sequence[float]) -> bool:
    return iou(a, b) >= MATCH_IOU


def _field(page: int, box: Sequence[int]) -> str:
    return f"{page}:{','.join(str(int(v)) for v in box)}"


def _in_order(found: Iterable[LineCorrection]) -> list[LineCorrection]:
    return sorted(found, key=lambda c: (c.page, c.box[1], c.box[0]))


def _records(values: Iterable[Any]) -> list[LineCorrection]:
    return _in_order(LineCorrection.from_json(json.loads(v)) for v in values)


def _on_page(client: Any, key: str, page: int) -> list[LineCorrection]:
    """The page's records of a document's corrections: its fields alone come back."""
    fields = dict(client.hscan_iter(key, match=f"{page}:*", count=PAGE_SCAN))
    return _records(fields.values())


def _earlier(found: Sequence[LineCorrection], box: Box) -> LineCorrection | None:
    """The record of the line at `box` among a page's: the same box, else the best match."""
    same = [c for c in found if c.box == box]
    if same:
        return same[0]
    matching = [c for c in found if box_matches(c.box, box)]
    return max(matching, key=lambda c: iou(c.box, box)) if matching else None


@transient_methods("corrections (Redis)")
class Corrections:
    """One client's corrections (`ocr:corrections:<client>*`)."""

    def __init__(self, client: redis.Redis, owner: str) -> None:
        self._redis = client
        self.owner = owner

    def of_document(self, digest: str) -> list[LineCorrection]:
        """Every corrected line of the document (reverted ones too: their history stays)."""
        return _records(self._redis.hgetall(corrections_key(self.owner, digest)).values())

    def for_page(self, digest: str, page: int) -> list[LineCorrection]:
        """The corrected lines of one page of the document: that page's records alone."""
        return _on_page(self._redis, corrections_key(self.owner, digest), page)

    def correct(self, digest: str, page: int, box: Box, original: str, text: str | None,
                by: str, *, versions: int, limit: int,
                page_of: Callable[[list[LineCorrection]], CorrectedPage],
                at: float | None = None) -> tuple[LineCorrection, list[LineCorrection]]:
        """A new version of the line's correction (`text` None: reverted).

        The line is found by its box among the page's corrections (the same box, else
        `box_matches`), so a correction made in a later job of the document adds to
        the same record. It keeps the last `versions` versions. `page_of` makes the
        page as corrected from the page's records after the change; it is written with
        the line's record in one step. A write that would take the client's stored
        bytes past `limit` (0: none) is refused, `QuotaExceeded`, and nothing is
        written. Returns the line's record and the page's records after the change.
        """
        key = corrections_key(self.owner, digest)
        keys = [api_bytes_key(self.owner), corrections_bytes_key(self.owner), key,
                corrected_pages_key(self.owner), *results_keys(self.owner)]
        with self._redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    found = _on_page(pipe, key, page)
                    earlier = _earlier(found, box)
                    kept = earlier.versions if earlier is not None else ()
                    version = Version(kept[-1].version + 1 if kept else 1, text, by,
                                      round(time.time() if at is None else at, 3))
                    record = LineCorrection(page, earlier.box if earlier else box,
                                            earlier.original if earlier else original,
                                            (*kept, version)[-versions:])
                    after = [record, *(c for c in found if c is not earlier)]
                    shown = page_of(after)
                    pipe.multi()
                    _WRITE.queue(pipe, keys, [
                        _field(page, record.box), json.dumps(record.to_json()),
                        f"{digest}:{page}",
                        json.dumps(shown.to_json()) if shown.corrected_lines else "",
                        limit])
                    answer = pipe.execute(raise_on_error=False)[-1]  # after its load
                except redis.WatchError:
                    continue
                if isinstance(answer, Exception):
                    raise answer
                if int(answer) < 0:
                    raise over_quota(limit)
                return record, _in_order(after)

    def pages(self) -> list[CorrectedPage]:
        raw = self._redis.hgetall(corrected_pages_key(self.owner))
        found = [CorrectedPage.from_json(json.loads(value)) for value in raw.values()]
        return sorted(found, key=lambda p: (p.sha256, p.number))


def corrected_pages(client: redis.Redis, owner: str) -> list[CorrectedPage]:
    """The pages client `owner` corrected: each one's full corrected text and its engine.

    Ground truth for the accuracy tools: score an engine's read of the page against
    `text`. Pages whose every correction was reverted are not among them.
    """
    return Corrections(client, owner).pages()
