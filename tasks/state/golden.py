"""The golden set's scores in Redis: each run per engine, and their history.

Runs where a golden-set run is sent (beat's scheduled audit in a worker child,
`ocr_admin.py accuracy --run`), in the worker that runs each job's callback
`ocr.golden_score`, and in the metrics exporter. A run sends each document of the set
(OCR_GOLDEN_SET) to each engine with its ground truth; each job is remembered with its
run, engine, document and the truth's length (`assign`), so that its end scores it
(`record`; a job that failed scores as nothing read). The engine's last document ends
its run: one record `{"run", "engine", "model", "release", "cer", "wer", "documents",
"chars", "words", "pages", "failed", "finished"}` is pushed on the history (newest
first, the last HISTORY_MAX kept: at least 30 runs of every engine of a small fleet).
A run with escalation on (docs/escalation.md) adds, next to its CER, `escalate` (the
engine that read the unsure pages again), `escalated` (its pages read again) and
`escalated_share` (of its pages), and `kept_first` where a second reading failed.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import redis

from tasks.records.status import JobStatus
from tasks.state.keys import GOLDEN_HISTORY_KEY, golden_job_key, golden_run_key

__all__ = ["HISTORY_MAX", "GoldenStore", "latest_runs"]

HISTORY_MAX = 500
RUN_TTL = 2 * 86400        # a run's documents and its jobs' marks
HISTORY_TTL = 400 * 86400  # renewed by every run
_META = ("_expected", "_release", "_escalate", "_done")


class GoldenStore:
    """One Redis's golden-set runs."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def begin(self, run: str, engine: str, documents: int, release: str,
              escalate: str = "") -> None:
        """A run of `engine` over `documents`; `escalate`: the fleet's escalation engine.

        Its jobs escalate by the fleet's default (OCR_ESCALATE_ENGINE, applied by the
        pool that reads them first); empty, escalation is counted only where a page
        shows it.
        """
        key = golden_run_key(run, engine)
        pipe = self._redis.pipeline()
        pipe.hset(key, mapping={"_expected": documents, "_release": release,
                                "_escalate": escalate})
        pipe.expire(key, RUN_TTL)
        pipe.execute()

    def assign(self, job_id: str, run: str, engine: str, document: str, chars: int,
               words: int, pages: int = 1) -> None:
        """Remember what job `job_id` reads: scored by `record` when it ends.

        `chars`, `words` and `pages` are its ground truth's: a failed job counts them.
        """
        self._redis.set(golden_job_key(job_id), json.dumps({
            "run": run, "engine": engine, "document": document, "chars": chars,
            "words": words, "pages": pages}), ex=RUN_TTL)

    def record(self, result: dict[str, Any]) -> dict[str, Any] | None:
        """Score a golden-set job's result; the run's record when it was its last."""
        raw = self._redis.get(golden_job_key(str(result.get("id"))))
        if raw is None:
            return None  # no golden-set job, or its run expired
        job = json.loads(raw)
        scores = result.get("scores") or {}
        failed = not scores or not JobStatus.of(result.get("status")).answered
        chars = int(job["chars"] if failed else scores.get("chars", job["chars"]))
        words = int(job["words"] if failed else scores.get("words", job["words"]))
        char_edits = chars if failed else _edits(scores.get("cer"), chars)
        word_edits = words if failed else _edits(scores.get("wer"), words)
        model = (result.get("engine") or {}).get("model")
        key = golden_run_key(job["run"], job["engine"])
        self._redis.hset(key, job["document"], json.dumps({
            "char_edits": char_edits, "chars": chars, "word_edits": word_edits,
            "words": words, "model": model, "failed": failed,
            **_escalated_pages(result, int(job.get("pages", 1)))}))
        return self._finish(job["run"], job["engine"])

    def _finish(self, run: str, engine: str) -> dict[str, Any] | None:
        key = golden_run_key(run, engine)
        fields = {k.decode() if isinstance(k, bytes) else k: v
                  for k, v in self._redis.hgetall(key).items()}
        documents = [json.loads(v) for k, v in fields.items() if k not in _META]
        if not fields.get("_expected") or len(documents) < int(fields["_expected"]):
            return None
        if not self._redis.hsetnx(key, "_done", "1"):
            return None  # another callback ended it
        chars = sum(d["chars"] for d in documents)
        words = sum(d["words"] for d in documents)
        char_edits = sum(d["char_edits"] for d in documents)
        word_edits = sum(d["word_edits"] for d in documents)
        models = Counter(str(d["model"]) for d in documents if d.get("model"))
        record = {"run": run, "engine": engine,
                  "model": models.most_common(1)[0][0] if models else "",
                  "release": _text(fields.get("_release")),
                  "cer": round(char_edits / chars, 6) if chars else 0.0,
                  "wer": round(word_edits / words, 6) if words else 0.0,
                  "documents": len(documents), "chars": chars, "words": words,
                  "pages": sum(int(d.get("pages", 0)) for d in documents),
                  "failed": sum(1 for d in documents if d.get("failed")),
                  "finished": round(time.time(), 3)}
        record |= _escalation(engine, _text(fields.get("_escalate")), documents,
                              record["pages"])
        pipe = self._redis.pipeline()
        pipe.lpush(GOLDEN_HISTORY_KEY, json.dumps(record))
        pipe.ltrim(GOLDEN_HISTORY_KEY, 0, HISTORY_MAX - 1)
        pipe.expire(GOLDEN_HISTORY_KEY, HISTORY_TTL)
        pipe.execute()
        return record

    def history(self) -> list[dict[str, Any]]:
        """Every run kept, newest first."""
        return [json.loads(raw) for raw in self._redis.lrange(GOLDEN_HISTORY_KEY, 0, -1)]


def _escalated_pages(result: dict[str, Any], pages: int) -> dict[str, Any]:
    """A job's pages (its truth's `pages` when it read none) and those escalated.

    `escalated`: pages read again by the escalation engine; `kept_first`: pages that
    escalated and kept their first reading (`escalation.error`); `escalate`: the
    engine they went to (present only where a page escalated).
    """
    read = result.get("pages") or []
    marked = [p["escalation"] for p in read if isinstance(p, dict) and p.get("escalation")]
    kept = sum(1 for e in marked if e.get("error"))
    out: dict[str, Any] = {"pages": len(read) or pages, "escalated": len(marked) - kept,
                           "kept_first": kept}
    if marked:
        out["escalate"] = str(marked[0].get("to") or "")
    return out


def _escalation(engine: str, escalate: str, documents: list[dict[str, Any]],
                pages: int) -> dict[str, Any]:
    """A run's escalation next to its CER, when on: the fleet's engine, or one a page shows.

    Off for a run of the escalation engine itself (its pages never escalate).
    """
    shown = escalate or next((str(d["escalate"]) for d in documents if d.get("escalate")), "")
    if not shown or shown == engine:
        return {}
    escalated = sum(int(d.get("escalated", 0)) for d in documents)
    kept = sum(int(d.get("kept_first", 0)) for d in documents)
    return {"escalate": shown, "escalated": escalated,
            "escalated_share": round(escalated / pages, 6) if pages else 0.0,
            **({"kept_first": kept} if kept else {})}


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw or "")


def _edits(rate: Any, length: int) -> int:
    """A job's edits from its rate (null: infinite, something read over an empty truth)."""
    return max(length, 1) if rate is None else round(float(rate) * length)


def latest_runs(history: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Per (engine, model): its last run and the one before (when there is one)."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in history:
        runs = out.setdefault((str(record["engine"]), str(record["model"])), [])
        if len(runs) < 2:
            runs.append(record)
    return out
