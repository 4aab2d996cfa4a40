"""Python client API: submit OCR jobs and wait for results.

Runs in client processes (submit.py, other Python services). Needs only celery and
redis: no engine, MLX or PyMuPDF import happens here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery import Celery
from kombu.utils.uuid import uuid

from tasks.errors import (
    BadRequest,
    DeadlineExceeded,
    InputNotFound,
    InputTooLarge,
    OcrError,
    error_info,
)
from tasks.pipeline.results import cancelled_result
from tasks.state.join import DocumentJoin
from tasks.state.stores import BlobStore, JobControl, OutputStore, connect
from worker_config import PRIORITIES, Settings

FINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")
ProgressCallback = Callable[[str, "JobStatus"], None]


@dataclass(frozen=True)
class JobStatus:
    """Where a job stands: Celery state plus pages done/total while it runs."""

    id: str
    state: str
    done: int = 0
    total: int = 0

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


class OcrClient:
    """Submit jobs to `ocr.document` and collect their results."""

    def __init__(self, settings: Settings | None = None, app: Celery | None = None) -> None:
        self.settings = settings or Settings.from_env()
        if app is None:
            from tasks.queue.app import create_app

            app = create_app(self.settings)
        self.app = app
        redis_client = connect(self.settings.redis_url)
        self._blobs = BlobStore(redis_client, self.settings.blob_ttl)
        self._outputs = OutputStore(redis_client, self.settings.result_ttl)
        self._control = JobControl(redis_client, self.settings.result_ttl)
        self._join = DocumentJoin(redis_client, self.settings.blob_ttl)

    def submit(self, source: str | Path | bytes, *, filename: str | None = None,
               priority: str | None = None, deadline: float | None = None,
               **options: Any) -> str:
        """Upload the input to Redis and enqueue a job; returns the job id.

        `options` are the task's kwargs (engine, pages, password, output, mode,
        callback_task, callback_queue, callback_url). `priority` is interactive,
        normal (default) or batch; `deadline` is seconds from now: a job not started by
        then never starts, a running one stops reading pages.
        """
        data = self._read(source)
        if filename is None:
            filename = Path(source).name if not isinstance(source, bytes) else ""
        blob = self._blobs.put(data)
        kwargs = {"blob": blob, "filename": filename,
                  **{k: v for k, v in options.items() if v is not None}}
        return self._send(kwargs, priority, deadline)

    def _send(self, kwargs: dict[str, Any], priority: str | None,
              deadline: float | None) -> str:
        priority = priority or "normal"  # explicit: send_task ignores the default
        if priority not in PRIORITIES:
            raise BadRequest(f"priority must be one of {', '.join(PRIORITIES)}")
        job_id = uuid()
        send: dict[str, Any] = {"task_id": job_id,
                                "priority": self.settings.priority_value(priority)}
        if deadline is not None:
            kwargs["deadline"] = at = time.time() + deadline
            send["expires"] = datetime.fromtimestamp(at, tz=UTC)
        self._control.remember(job_id, blob=kwargs.get("blob", ""),
                               filename=kwargs.get("filename", ""),
                               deadline=str(kwargs.get("deadline", "")))
        # The app's send_task shows the kwargs without password or payload (Flower, logs).
        self.app.send_task("ocr.document", kwargs=kwargs, **send)
        return job_id

    def cancel(self, ids: Iterable[str]) -> dict[str, str]:
        """Cancel jobs; returns `cancelled`, or the final state a job had reached.

        Queued jobs never start; running ones stop (their running page is killed) and
        keep the pages they finished.
        """
        ids = list(dict.fromkeys(ids))
        for job_id in ids:
            self._control.cancel(job_id)
        page_tasks = [t for job_id in ids for t in self._document_meta(job_id)
                      .get("page_tasks", [])]
        self.app.control.revoke([*ids, *page_tasks], terminate=True, signal="SIGKILL")
        outcome = {}
        for job_id in ids:
            state = self.app.AsyncResult(job_id).state
            if state in FINAL_STATES:
                outcome[job_id] = state.lower()
                continue
            self._control.store_cancelled(job_id, self._pages_so_far(job_id))
            self.app.backend.mark_as_revoked(job_id, "cancelled")
            self._blobs.delete(self._control.info(job_id).get("blob"))
            outcome[job_id] = "cancelled"
        return outcome

    def _document_meta(self, job_id: str) -> dict[str, Any]:
        try:
            return self._join.meta(job_id)
        except OcrError:
            return {}

    def _pages_so_far(self, job_id: str) -> dict[str, Any]:
        """The cancelled result: the pages a fanned-out document finished before."""
        meta = self._document_meta(job_id)
        if not meta or not self._join.claim(job_id):
            return {"id": job_id, "status": "CANCELLED", "pages": [], "text": ""}
        pages = [p for p in self._join.pages(job_id) if "error" not in p]
        self._join.cleanup(job_id)
        self._blobs.delete(meta["blob"])
        return cancelled_result(job_id, pages, meta["base"])

    def retry(self, job_id: str, password: str | None = None,
              priority: str | None = None) -> str:
        """Re-read the failed pages of a PARTIAL job; returns the new job's id.

        The new job's result is complete: it merges the pages the earlier job had.
        """
        earlier = self.result(job_id)
        if earlier.get("status") != "PARTIAL" or not earlier.get("input_blob"):
            raise BadRequest("only a PARTIAL job whose input is still stored can be retried")
        failed = ",".join(str(p["number"]) for p in earlier["failed_pages"])
        kwargs = {"blob": earlier["input_blob"], "filename": earlier.get("filename", ""),
                  "pages": failed, "output": earlier.get("output", "text"),
                  "mode": earlier.get("mode", "auto"), "engine": earlier["engine"]["name"],
                  "merge_from": job_id}
        if password:
            kwargs["password"] = password
        return self._send(kwargs, priority, None)

    def _read(self, source: str | Path | bytes) -> bytes:
        limit = self.settings.max_input_bytes
        if isinstance(source, bytes):
            data = source
        else:
            path = Path(source)
            try:
                size = path.stat().st_size
            except OSError:
                raise InputNotFound(f"cannot read {path}") from None
            if size > limit:
                raise InputTooLarge(f"{path.name} is larger than "
                                    f"{self.settings.max_input_mb} MB")
            data = path.read_bytes()
        if len(data) > limit:
            raise InputTooLarge(f"the input is larger than {self.settings.max_input_mb} MB")
        return data

    def fetch_output(self, result: dict[str, Any]) -> bytes | None:
        """The searchable PDF of a finished `output=pdf` job (None once expired)."""
        pdf = result.get("pdf")
        return self._outputs.get(pdf["key"]) if pdf else None

    def status(self, job_id: str) -> JobStatus:
        res = self.app.AsyncResult(job_id)
        state = res.state
        info = res.info if state == "PROGRESS" and isinstance(res.info, dict) else {}
        return JobStatus(job_id, state, int(info.get("done", 0)), int(info.get("total", 0)))

    def result(self, job_id: str) -> dict[str, Any]:
        """The public result of a finished job (SUCCESS or FAILURE dict)."""
        res = self.app.AsyncResult(job_id)
        state = res.state
        if state == "SUCCESS":
            return dict(res.result)
        if state == "REVOKED":
            return self._revoked(job_id)
        exc = res.result if isinstance(res.result, BaseException) else OcrError()
        return {"id": job_id, "status": "FAILURE", "error": error_info(exc)}

    def _revoked(self, job_id: str) -> dict[str, Any]:
        """A revoked job: cancelled (with the pages it had), or expired at its deadline."""
        cancelled = self._control.cancelled_result(job_id)
        if cancelled is not None:
            return cancelled
        info = self._control.info(job_id)
        if not info.get("cancelled") and info.get("deadline"):
            return {"id": job_id, "status": "FAILURE",
                    "filename": info.get("filename", ""),
                    "error": DeadlineExceeded("the job's deadline passed before it "
                                              "started").to_dict()}
        return {"id": job_id, "status": "CANCELLED", "pages": [], "text": ""}

    def wait(self, ids: Iterable[str], on_progress: ProgressCallback | None = None,
             timeout: float | None = None, poll: float = 0.2) -> dict[str, dict[str, Any]]:
        """Wait for every job and return the results by id.

        Jobs still open at `timeout` are reported with status TIMEOUT; they go on.
        """
        pending = list(dict.fromkeys(ids))
        results: dict[str, dict[str, Any]] = {}
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            for job_id in list(pending):
                status = self.status(job_id)
                if on_progress is not None:
                    on_progress(job_id, status)
                if status.final:
                    results[job_id] = self.result(job_id)
                    pending.remove(job_id)
            if pending:
                if deadline is not None and time.monotonic() >= deadline:
                    for job_id in pending:
                        results[job_id] = {"id": job_id, "status": "TIMEOUT", "error": {
                            "code": "wait_timeout", "retryable": True,
                            "message": "the job had not finished when waiting stopped"}}
                    break
                time.sleep(poll)
        return results

    def audit_models(self, *, prune: bool = False, dry_run: bool = False,
                     timeout: float | None = None) -> dict[str, Any]:
        """Run the model-directory audit `ocr.audit_models` through the queue.

        Returns its report (docs/tasks.md), or a FAILURE/TIMEOUT dict like `wait()`.
        """
        job = self.app.send_task("ocr.audit_models",
                                 kwargs={"prune": prune, "dry_run": dry_run})
        return self.wait([str(job.id)], timeout=timeout)[str(job.id)]

    def unload_models(self, timeout: float = 2.0,
                      destination: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Broadcast the remote-control command `unload_model`; replies by worker."""
        replies = self.app.control.broadcast("unload_model", reply=True, timeout=timeout,
                                             destination=destination)
        merged: dict[str, dict[str, Any]] = {}
        for reply in replies or []:
            merged.update(reply)
        return merged

    def close(self) -> None:
        self.app.close()
