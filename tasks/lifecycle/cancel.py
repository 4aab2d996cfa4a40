"""Cancelling a job on the server: the body of the public task `ocr.cancel`.

Runs in whichever worker child takes the `ocr.cancel` message (any client can send it:
Python, Node, celery-node, Flower's API). The marker comes first, so no task of the job
starts from then on, on any worker, even one restarted since. For a fanned-out PDF the
end claim comes before its running pages are stopped, so the kill that follows cannot
end the job first, and the pages finished by then are kept in the CANCELLED result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tasks.pipeline.results import cancelled_result
from tasks.records.jobs import DocumentMeta, JobStatus, Outcome
from tasks.records.results import DocumentResult

if TYPE_CHECKING:
    from tasks.lifecycle.job_exit import JobEnder
    from tasks.state.job_control import JobControl
    from tasks.state.join import DocumentJoin

# What `ocr.cancel` answers for a job that had ended before the cancel came.
ALREADY_ENDED = "already_ended"
CANCELLED = "cancelled"


def cancel_job(job_id: str, control: JobControl, join: DocumentJoin, ender: JobEnder,
               stop: Callable[[list[str]], None]) -> str:
    """Cancel `job_id`; `stop(ids)` kills the tasks of those ids wherever they run.

    Returns `cancelled`, or `already_ended` when the job had finished (its result
    stands).
    """
    control.cancel(job_id)
    meta = join.find(job_id)
    if meta is None:
        # Queued, or running as a single task: its request (callbacks) is in its
        # message. The result is shown at once; the job is ended where the message is
        # met — the worker parent when it kills or skips the revoked task, or any
        # child that starts it later (the marker) — which fires its callbacks.
        if ender.has_ended(job_id):
            return ALREADY_ENDED
        stop([job_id])
        info = control.info(job_id)
        ender.announce(Outcome(job_id, JobStatus.CANCELLED, None, cancelled_result(
            job_id, [], DocumentResult(status=None, filename=info.get("filename", "")))))
        return CANCELLED
    if not ender.claim(job_id):
        return ALREADY_ENDED
    stop([job_id, *meta.page_tasks, *meta.chunk_tasks, *meta.escalation_tasks()])
    finish_cancelled(meta, join, ender)
    return CANCELLED


def end_cancelled_document(meta: DocumentMeta, join: DocumentJoin, ender: JobEnder) -> bool:
    """End a fanned-out PDF whose cancel marker a page task met; False if it had ended.

    The cancel found no document to end when it came while the PDF was being split
    (its meta not yet written): the first page task that meets the marker ends it. A
    claim whose ender died with its whole worker is taken over (`take_over_abandoned`).
    """
    if not ender.claim(meta.job_id) and ender.take_over_abandoned(meta.job_id) is None:
        return False
    finish_cancelled(meta, join, ender)
    return True


def finish_cancelled(meta: DocumentMeta, join: DocumentJoin, ender: JobEnder) -> None:
    """Finish a cancelled PDF whose end claim the caller holds: the pages done are kept.

    The claim taken first, no page recorded later writes anything (`DocumentJoin`).
    """
    job_id = meta.job_id
    pages = [p for p in join.pages(job_id) if not p.failed]
    if meta.text_chunks:  # the chunks done: their heading levels ranked, sizes dropped
        # imported here: the pipeline brings PyMuPDF, which the API's cancel never needs
        from tasks.pipeline.documents import relevel_headings

        pages = relevel_headings(pages, meta.text_chunks, meta.request.output)
    result = cancelled_result(job_id, pages, meta.base)
    ender.finish(Outcome(job_id, JobStatus.CANCELLED, meta.request, result,
                         engine=meta.job.engine, started=meta.job.started))
