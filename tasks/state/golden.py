"""The golden set's scores in Redis: each run per engine, and their history.

Runs where a golden-set run is sent (beat's scheduled audit in a worker child,
`ocr_admin.py accuracy --run`), in the worker that runs each job's callback
`ocr.golden_score`, and in the metrics exporter. A run sends each document of the set
(OCR_GOLDEN_SET) to each engine with its ground truth; each job is remembered with its
run, engine, document and the truth's length (`assign`), so that its end scores it
(`record`; a job that failed scores as nothing read). The engine's last document ends
its run: one record `{"run", "engine", "model", "release", "cer", "wer", "documents",
"chars", "words", "failed", "finished"}` is pushed on the history (newest first, the
last HISTORY_MAX kept: at least 30 runs of every engine of a small fleet).
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
_META = ("_expected", "_release", "_done")


class GoldenStore:
    """One Redis's golden-set runs."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def begin(self, run: str, engine: str, documents: int, release: str) -> None:
        key = golden_run_key(run, engine)
        pipe = self._redis.pipeline()
        pipe.hset(key, mapping={"_expected": documents, "_release": release})
        pipe.expire(key, RUN_TTL)
        pipe.execute()

    def assign(self, job_id: str, run: str, engine: str, document: str, chars: int,
               words: int) -> None:
        """Remember what job `job_id` reads: scored by `record` when it ends."""
        self._redis.set(golden_job_key(job_id), json.dumps({
            "run": run, "engine": engine, "document": document, "chars": chars,
            "words": words}), ex=RUN_TTL)

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
            "words": words, "model": model, "failed": failed}))
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
        release = fields.get("_release", b"")
        record = {"run": run, "engine": engine,
                  "model": models.most_common(1)[0][0] if models else "",
                  "release": release.decode() if isinstance(release, bytes) else release,
                  "cer": round(char_edits / chars, 6) if chars else 0.0,
                  "wer": round(word_edits / words, 6) if words else 0.0,
                  "documents": len(documents), "chars": chars, "words": words,
                  "failed": sum(1 for d in documents if d.get("failed")),
                  "finished": round(time.time(), 3)}
        pipe = self._redis.pipeline()
        pipe.lpush(GOLDEN_HISTORY_KEY, json.dumps(record))
        pipe.ltrim(GOLDEN_HISTORY_KEY, 0, HISTORY_MAX - 1)
        pipe.expire(GOLDEN_HISTORY_KEY, HISTORY_TTL)
        pipe.execute()
        return record

    def history(self) -> list[dict[str, Any]]:
        """Every run kept, newest first."""
        return [json.loads(raw) for raw in self._redis.lrange(GOLDEN_HISTORY_KEY, 0, -1)]


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
