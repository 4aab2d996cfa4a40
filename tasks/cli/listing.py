"""`submit.py jobs`: the operator's list of jobs, every client's or one's, newest first.

Runs in `submit.py` (an operator's machine). Reads the job index
(`tasks/state/job_index.py`: every job sent through the HTTP API, submit.py, a Python
client or by task name once a worker started it) with the filters of `GET /v1/jobs`:
status, time sent, a page size and the cursor a page ends with. A failed job's row
names its error's code (`--json`: the error, as `GET /v1/jobs` shows it).
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from tasks.client import JobProgress, OcrClient
from tasks.errors import BadRequest
from tasks.records.status import JobStatus, WaitStatus
from tasks.state.job_index import Cursor, Page

STATUSES = (WaitStatus.QUEUED, WaitStatus.RUNNING, *JobStatus)
_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_LIMIT = 1000


def when(text: str, now: float | None = None) -> float:
    """Epoch seconds of `text`, a time as a command line takes it.

    Seconds since the epoch, an ISO 8601 date or time (local time unless it says its
    zone), or an age ago: `90s`, `30m`, `2h`, `7d`.
    """
    now = time.time() if now is None else now
    value = text.strip()
    ago = _AGO.match(value)
    if ago:
        return now - float(ago.group(1)) * _UNIT[ago.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: epoch seconds, an ISO 8601 date or time, or an age "
            "such as 30m, 2h, 7d") from None


def statuses_of(values: Sequence[str] | None) -> frozenset[str] | None:
    """`--status` given once or more, each one or several comma separated; None: any."""
    chosen = {part.strip().upper() for value in values or () for part in value.split(",")
              if part.strip()}
    unknown = sorted(chosen - set(STATUSES))
    if unknown:
        raise BadRequest(f"unknown status {', '.join(unknown)}; choose among "
                         f"{', '.join(STATUSES)}")
    return frozenset(chosen) or None


def jobs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--client", dest="of_client", metavar="NAME",
                        help="only this client's jobs ('' for the anonymous client's); "
                             "default: every client's")
    parser.add_argument("--status", action="append", metavar="STATUS",
                        help=f"only jobs in these statuses ({', '.join(STATUSES)}): "
                             "repeat it, or comma separate")
    parser.add_argument("--since", type=when, metavar="WHEN",
                        help="only jobs sent at or after WHEN: epoch seconds, an ISO 8601 "
                             "date or time, or an age such as 30m, 2h, 7d")
    parser.add_argument("--until", type=when, metavar="WHEN", help="only jobs sent at or "
                        "before WHEN (as --since)")
    parser.add_argument("--limit", type=int, default=20, metavar="N",
                        help=f"most jobs shown (1-{MAX_LIMIT}; default 20)")
    parser.add_argument("--cursor", metavar="CURSOR",
                        help="go on from where a page ended (its last line says)")


Found = tuple[JobProgress, float, dict[str, Any] | None]


def job_pages(client: OcrClient, args: argparse.Namespace) -> Page[Found]:
    """One page of jobs as `args` ask: (progress, time sent, error), newest first.

    The error is a failed job's (`code`, `message`, `retryable`); None for the others.
    """
    if not 1 <= args.limit <= MAX_LIMIT:
        raise BadRequest(f"--limit must be 1 to {MAX_LIMIT}")
    statuses = statuses_of(args.status)
    after = None if args.cursor is None else Cursor.decode(args.cursor)

    def describe(batch: Sequence[tuple[str, float]]) -> list[Found | None]:
        found = client.states.read_many([job_id for job_id, _ in batch])
        return [(progress, sent, error_of(client, progress))
                for progress, (_, sent) in zip(found, batch, strict=True)]

    return client.index.page(args.of_client, args.since, args.until, after, args.limit,
                             describe,
                             lambda found: statuses is None or found[0].status in statuses)


def error_of(client: OcrClient, progress: JobProgress) -> dict[str, Any] | None:
    """A failed job's error (its stored result's); None for a job that did not fail."""
    if progress.status != JobStatus.FAILURE:
        return None
    result = progress.result if progress.result is not None else client.result(
        progress.id, original=True)
    error = result.get("error")
    return error if isinstance(error, dict) else None


def record(progress: JobProgress, sent: float,
           error: dict[str, Any] | None = None) -> dict[str, Any]:
    """A job as `--json` shows it (the fields `GET /v1/jobs` gives, where it knows them)."""
    return {"id": progress.id, "status": progress.status.value, "state": progress.state,
            "progress": {"done": progress.done,
                         "total": progress.total if progress.planned else None},
            "error": error, "client": progress.client, "filename": progress.filename,
            "priority": progress.priority or None, "created": round(sent, 3)}


def line(progress: JobProgress, sent: float, error: dict[str, Any] | None = None) -> str:
    """A job in one line: when, status, pages, client, file, id; a failure's error code."""
    stamp = datetime.fromtimestamp(sent).strftime("%Y-%m-%d %H:%M:%S")
    pages = f"{progress.done}/{progress.total}" if progress.planned else "-"
    code = f"\t{error.get('code', 'failed')}" if error is not None else ""
    return (f"{stamp}  {progress.status.value:<9} {pages:>7}  "
            f"{progress.client or '(anonymous)'}\t{progress.filename or '-'}\t{progress.id}"
            f"{code}")
