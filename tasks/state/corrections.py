"""A client's line corrections, kept by document content so that later jobs carry them.

Used by the `api` process (`PUT` and `DELETE /v1/jobs/{id}/pages/{n}/lines/{line}`,
every result format) and by the accuracy tools (`corrected_pages`). A correction
belongs to a client and a document's content (its sha256), not to one job: it is found
again by page and by line box (`box_matches`: IoU at least MATCH_IOU), so a later job
of the same document by the same client carries it. Each correction keeps its
versions (text, who, when); a revert is a version whose text is None.

Keys (tasks/state/keys.py; no TTL: a person's work lives until reverted):
`ocr:corrections:<client>:<sha256>` is a hash `<page>:<x0>,<y0>,<x1>,<y1>` -> the
line's record (JSON); `ocr:corrections:<client>` is a hash `<sha256>:<page>` -> the
page as corrected (its full text, engine, language, job), the ground truth
`corrected_pages` returns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from tasks.state.boundary import transient_methods
from tasks.state.keys import corrected_pages_key, corrections_key

Box = tuple[int, int, int, int]
MATCH_IOU = 0.8  # a later read's line is the corrected one when their boxes overlap this much
MAX_TEXT = 10_000  # characters of one corrected line


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


@transient_methods("corrections (Redis)")
class Corrections:
    """One client's corrections (`ocr:corrections:<client>*`)."""

    def __init__(self, client: redis.Redis, owner: str) -> None:
        self._redis = client
        self.owner = owner

    def of_document(self, digest: str) -> list[LineCorrection]:
        """Every corrected line of the document (reverted ones too: their history stays)."""
        raw = self._redis.hgetall(corrections_key(self.owner, digest))
        found = [LineCorrection.from_json(json.loads(v)) for v in raw.values()]
        return sorted(found, key=lambda c: (c.page, c.box[1], c.box[0]))

    def for_page(self, digest: str, page: int) -> list[LineCorrection]:
        return [c for c in self.of_document(digest) if c.page == page]

    def correct(self, digest: str, page: int, box: Box, original: str, text: str | None,
                by: str, at: float | None = None) -> LineCorrection:
        """A new version of the line's correction (`text` None: reverted); the record.

        The line is found by its box among the page's corrections (`box_matches`), so
        a correction made in a later job of the document adds to the same history.
        """
        key = corrections_key(self.owner, digest)
        with self._redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    known = [c for c in (LineCorrection.from_json(json.loads(v))
                                         for v in pipe.hgetall(key).values())
                             if c.page == page and box_matches(c.box, box)]
                    earlier = max(known, key=lambda c: iou(c.box, box)) if known else None
                    versions = earlier.versions if earlier is not None else ()
                    version = Version(len(versions) + 1, text, by,
                                      round(time.time() if at is None else at, 3))
                    record = LineCorrection(page, earlier.box if earlier else box,
                                            earlier.original if earlier else original,
                                            (*versions, version))
                    pipe.multi()
                    pipe.hset(key, _field(page, record.box), json.dumps(record.to_json()))
                    pipe.execute()
                    return record
                except redis.WatchError:
                    continue

    def record_page(self, page: CorrectedPage) -> None:
        """The page as corrected now (its text), or forgotten when no line stays corrected."""
        field = f"{page.sha256}:{page.number}"
        if page.corrected_lines:
            self._redis.hset(corrected_pages_key(self.owner), field, json.dumps({
                "sha256": page.sha256, "number": page.number, "text": page.text,
                "engine": page.engine, "lang": page.lang, "job_id": page.job_id,
                "corrected_lines": page.corrected_lines, "at": page.at}))
        else:
            self._redis.hdel(corrected_pages_key(self.owner), field)

    def pages(self) -> list[CorrectedPage]:
        raw = self._redis.hgetall(corrected_pages_key(self.owner))
        out = []
        for value in raw.values():
            data = json.loads(value)
            out.append(CorrectedPage(str(data["sha256"]), int(data["number"]), str(data["text"]),
                                     data.get("engine"), data.get("lang"), str(data["job_id"]),
                                     int(data["corrected_lines"]), float(data["at"])))
        return sorted(out, key=lambda p: (p.sha256, p.number))


def corrected_pages(client: redis.Redis, owner: str) -> list[CorrectedPage]:
    """The pages client `owner` corrected: each one's full corrected text and its engine.

    Ground truth for the accuracy tools: score an engine's read of the page against
    `text`. Pages whose every correction was reverted are not among them.
    """
    return Corrections(client, owner).pages()
