"""What the API offers the console: its services, the job list, usage, errors and schemas.

The console (tasks/console/) is a second front end over the same services as the
`/v1` routes. It imports them from here, never from the API's private modules.
"""

from __future__ import annotations

from tasks.api._batches import BatchService
from tasks.api._errors import (
    Busy,
    CompareTooLarge,
    NotFinished,
    NotFound,
    Unauthorized,
    http_status,
)
from tasks.api._heavy import HeavyWork, heavy_of
from tasks.api._listing import STATUSES, list_jobs, parse_statuses
from tasks.api._pages import ended_result
from tasks.api._schemas import FINAL_STATUSES, JobOptions
from tasks.api._service import JobService
from tasks.api._usage import client_usage

__all__ = ["FINAL_STATUSES", "STATUSES", "BatchService", "Busy", "CompareTooLarge",
           "HeavyWork", "JobOptions", "JobService", "NotFinished", "NotFound",
           "Unauthorized", "client_usage", "ended_result", "heavy_of", "http_status",
           "list_jobs", "parse_statuses"]
