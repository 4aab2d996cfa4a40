"""A job's input options decoded and checked: a file, a `path` or a `url`, and its targets.

Runs in the `api` process, for `JobService.submit` (tasks/api/_service.py): what the
workers would refuse is refused here first, before anything is stored. The job's
`JobRequest` is built here, once; its URLs are parsed here and checked by the gate
(tasks/admission.py:admit) alone.
"""

from __future__ import annotations

import time
from pathlib import PurePosixPath
from typing import Any

from tasks.api._schemas import JobOptions
from tasks.errors import BadRequest, PathNotAllowed
from tasks.lifecycle.callback_urls import callback_target
from tasks.lifecycle.url_policy import parse_url
from tasks.records.request import JobRequest
from tasks.settings import Settings


def job_request(options: JobOptions, upload: str | None, filename: str,
                settings: Settings) -> JobRequest:
    """The job's request of its options: its input (a file, a `path` or a `url`) checked.

    An uploaded file's request names no input (`source` ""): it is stored as the job
    is sent (`JobRequest.stored_as`).
    """
    return JobRequest.for_door(_input_kwargs(options, upload, filename, settings))


def _input_kwargs(options: JobOptions, upload: str | None, filename: str,
                  settings: Settings) -> dict[str, Any]:
    """The task's arguments of a job's options: its input (a file, a `path` or a `url`) checked."""
    kwargs = options.task_kwargs()
    if options.deadline is not None and options.deadline <= time.time():
        raise BadRequest("`deadline` is in the past")
    if options.callback_url is not None:
        # The workers' own rule (allow-list, no private addresses unless listed).
        kwargs["callback_url"] = callback_target(options.callback_url, settings).url
    if options.result_url is not None:  # the gate checks where it lies (`admit`)
        target = parse_url(options.result_url, "`result_url`", prefix_ok=True)
        if target.scheme != "s3":
            raise BadRequest("`result_url` must be an s3:// URL (results are written to a "
                             "bucket)")
        kwargs["result_url"] = target.url
    if upload is not None:
        if options.path is not None or options.url is not None:
            raise BadRequest("send either a file, a `path` or a `url`, not two")
        kwargs.setdefault("filename", filename)
        return kwargs
    if options.url is not None:
        if options.path is not None:
            raise BadRequest("send either a `path` or a `url`, not both")
        kwargs["url"] = parse_url(options.url, "`url`").url  # the gate checks it (`admit`)
        kwargs.setdefault("filename", kwargs["url"].rstrip("/").rsplit("/", 1)[-1])
        return kwargs
    if options.path is None:
        raise BadRequest("send a `file` (multipart), or a `path` or `url` (JSON)")
    _check_path(options.path, settings)
    kwargs["path"] = options.path
    kwargs.setdefault("filename", PurePosixPath(options.path).name)
    return kwargs


def _check_path(raw: str, settings: Settings) -> None:
    """Refuse early what the worker would refuse; the worker resolves links itself."""
    path = PurePosixPath(raw)
    if not path.is_absolute() or ".." in path.parts or "\x00" in raw:
        raise BadRequest("`path` must be an absolute path without `..`")
    if not any(path.is_relative_to(str(root)) for root in settings.allowed_roots):
        raise PathNotAllowed("the path is outside the allowed roots (OCR_ALLOWED_ROOTS)")
