"""Waiting for jobs at the command line: a progress line, and why vlm-api jobs wait.

Runs in `submit.py` (a user's machine): `wait_for` is the wait of `submit`, `wait` and
`retry`, over `OcrClient.wait` (tasks/client_wait.py), with a progress line on a
terminal and a line on stderr while the inference server of the vlm-api workers that
serve the jobs does not answer.
"""

from __future__ import annotations

import sys
from typing import Any

from tasks import inference_server
from tasks.cli.output import PROG, ProgressLine
from tasks.client import OcrClient
from tasks.client_wait import scaling_from_zero, unserved
from tasks.queue.routing import from_zero_engine


def wait_for(client: OcrClient, ids: list[str], timeout: float | None
             ) -> dict[str, dict[str, Any]]:
    """Wait for jobs with a progress line; a job no live worker serves is reported.

    `OcrClient.wait` watches the workers' presence (`no_worker` after its grace). A job
    for an engine whose pool scales from zero is waited for, with a line that says so.
    When vlm-api workers serve a job's queue and their inference server does not
    answer, a line on stderr says so (once, until it answers again).
    """
    progress = ProgressLine(sys.stderr, {})
    if progress.enabled:  # a terminal: the statuses are read for the line
        progress.names = {i: client.filename(i) for i in ids}
    said = [""]

    def note(queues: set[str], live: dict[str, set[str]]) -> None:
        text = from_zero_note(client, queues, live) or inference_server_note(client, queues,
                                                                             live)
        if text and text != said[0]:
            print(f"{PROG}: {text}", file=sys.stderr, flush=True)
        said[0] = text

    try:
        return client.wait(ids, on_progress=progress if progress.enabled else None,
                           timeout=timeout, on_workers=note, must_exist=True)
    finally:
        progress.close()


def from_zero_note(client: OcrClient, queues: set[str], live: dict[str, set[str]]) -> str:
    """Why jobs wait for an engine whose pool scales from zero (`scaling_from_zero`).

    '' when each of the jobs' `queues` has a live worker, or is no such engine's.
    """
    idle = unserved({queue: queue for queue in queues}, live)
    waiting = sorted(filter(None, (from_zero_engine(queue, client.settings.engines_from_zero)
                                   for queue in idle)))
    return "; ".join(f"{error.code}: {error.message}"
                     for error in map(scaling_from_zero, waiting))


def inference_server_note(client: OcrClient, queues: set[str],
                          live: dict[str, set[str]]) -> str:
    """Why jobs wait for vlm-api workers: their inference server does not answer.

    '' when no live vlm-api worker consumes one of the jobs' `queues`, or when the
    server (at this host's OCR_VLM_API_URL) answers.
    """
    vlm_workers = [served for served in live.values() if inference_server.QUEUE in served]
    if not any(queues & served for served in vlm_workers):
        return ""
    check = inference_server.check_server(client.settings)
    return "" if check.ok else (f"{check.message}: vlm-api workers retry those pages "
                                "until it does")
