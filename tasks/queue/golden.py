"""The golden set: OCR_GOLDEN_SET read by every engine the fleet serves, and scored.

`send_run` runs where a run starts: beat's scheduled audit (`ocr.audit_models`, in a
worker child, beside the model-directory audit) and `ocr_admin.py accuracy --run`. It
lists the set (tasks/lifecycle/eval_sets.py: a folder or an s3:// prefix, as for
`submit.py eval`), finds the engines the live workers serve (their presence records:
each engine's queue `ocr-<engine>`) and sends each document to each engine as an
ordinary job, through the gate, at `batch` priority under the client `golden-set`:
afresh, with its ground truth (so its result carries `scores`) and the callback task
`ocr.golden_score`, which runs where any `ocr` worker takes it and records the score
(tasks/state/golden.py). Nothing waits: the run's last document ends it, and its
record (per engine, model and release) joins the history that `ocr_admin.py accuracy`
shows and the metrics exporter exports (`ocr_golden_cer`, `ocr_golden_wer`). The jobs
escalate as the fleet's do (OCR_ESCALATE_ENGINE, applied by the pool that reads them
first): the record gives the share of pages escalated next to the CER.
"""

from __future__ import annotations

import functools
import tomllib
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from celery import shared_task

from tasks.errors import OcrError
from tasks.evaluation.scoring import score_pages, total
from tasks.lifecycle.eval_sets import eval_documents
from tasks.queue.routing import queue_for_engine
from tasks.queue.sender import JobSender
from tasks.records.clients import ClientRules
from tasks.records.engines import ENGINES
from tasks.records.jobs import Job, Reservation
from tasks.records.request import JobRequest
from tasks.settings import Settings
from tasks.state.connection import connect
from tasks.state.golden import GoldenStore
from tasks.state.liveness import WorkerPresence
from tasks.state.stores import BlobStore

__all__ = ["CLIENT", "golden_score", "release", "send_run", "send_scheduled", "served_engines"]

CLIENT = "golden-set"
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


@functools.cache
def release() -> str:
    """The service's release: pyproject.toml's version ("unknown" without the file)."""
    try:
        return str(tomllib.loads(PYPROJECT.read_text())["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def served_engines(live: dict[str, set[str]]) -> list[str]:
    """The engines whose queue a live worker consumes, in ENGINES' order."""
    queues = {queue for served in live.values() for queue in served}
    return [engine for engine in ENGINES if queue_for_engine(engine) in queues]


def send_run(settings: Settings, sender: JobSender, put: Callable[[bytes], str],
             live: dict[str, set[str]], gate: Callable[..., Reservation],
             run: str | None = None) -> dict[str, Any]:
    """Send the golden set to every engine served; `{"run", "engines", "jobs"}`.

    `put` stores a local document's bytes (its blob key), once for each job; `gate`:
    the gate (tasks/admission.py:admit, on the floor above), which takes each job's
    reservation and priority as at every door; `jobs`: per engine, the ids of its
    documents' jobs, in document order.
    """
    run = run or uuid.uuid4().hex
    documents = eval_documents(settings.golden_set, settings)
    store = GoldenStore(connect(settings.redis_target))
    engines = served_engines(live)
    data = {d.name: Path(d.source).read_bytes() for d in documents
            if not d.source.startswith("s3://")}
    jobs: dict[str, list[str]] = {}
    for engine in engines:
        store.begin(run, engine, len(documents), release(), settings.escalate_engine)
        for document in documents:
            empty = total(score_pages(document.truth, [""] * len(document.truth)))
            job_id = str(uuid.uuid4())
            request = JobRequest.for_door({
                "url": document.source if document.name not in data else None,
                "filename": document.name, "engine": engine, "no_cache": True,
                "ground_truth": "\f".join(document.truth),
                "callback_task": "ocr.golden_score"})
            reservation = gate(request, ClientRules.service_wide(CLIENT), settings, live,
                               priority="batch", job_id=job_id)
            store.assign(job_id, run, engine, document.name, empty.chars, empty.words,
                         len(document.truth))
            if document.name in data:  # a blob of its own: a job's ending frees it
                request = request.stored_as(put(data[document.name]))
            sender.send(Job(job_id, replace(request, client=CLIENT), reservation=reservation))
            jobs.setdefault(engine, []).append(job_id)
    return {"run": run, "engines": engines, "documents": len(documents), "jobs": jobs}


def send_scheduled(app: Any, run: str) -> dict[str, Any]:
    """Beat's scheduled run (in the audit's worker child); an unreadable set: its error.

    The gate is the app's (`OcrCelery.ocr_gate`, given where the app is made).
    """
    settings: Settings = app.ocr_settings
    client = connect(settings.redis_target)
    try:
        sent = send_run(settings, JobSender(settings, client, app),
                        BlobStore(client, settings.blob_ttl).put,
                        WorkerPresence(client).live_queues(), app.ocr_gate, run)
    except OcrError as exc:
        return {"error": exc.to_dict()}
    return {k: sent[k] for k in ("run", "engines", "documents")}


@shared_task(name="ocr.golden_score", bind=True)
def golden_score(self: Any, result: dict[str, Any]) -> dict[str, Any] | None:
    """A golden-set job's end: its score recorded; the run's record when it was last."""
    if not isinstance(result, dict):
        return None
    settings: Settings = self.app.ocr_settings
    return GoldenStore(connect(settings.redis_target)).record(result)
