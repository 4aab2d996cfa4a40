"""The headers a job's messages carry beside Celery's own: the job's client.

Set by the clients on the job message (tasks/client.py), carried by the worker onto the
job's page and chunk tasks and onto every retry (Celery keeps no custom header when it
retries a task). The broker's fetch picks the job's lane by the client header
(tasks/broker/fetching.py). The sender (tasks/queue/sender.py) also marks a job it
listed under its client (`LISTED_HEADER`): its worker does not list it again. Runs in
clients and worker pool children.
"""

from __future__ import annotations

from typing import Any

from tasks.records.clients import CLIENT_HEADER, client_name

LISTED_HEADER = "ocr_listed"


def job_headers(client: str, listed: bool = False) -> dict[str, str]:
    """The headers of a message of `client`'s job (none for the anonymous client).

    `listed`: its sender listed it under its client (tasks/state/job_index.py).
    """
    name = client_name(client)
    headers = {CLIENT_HEADER: name} if name else {}
    if listed:
        headers[LISTED_HEADER] = "1"
    return headers


def listed(request: Any) -> bool:
    """Whether a delivered job's sender listed it under its client."""
    return getattr(request, LISTED_HEADER, None) == "1"


def client_from(request: Any) -> str:
    """The client a delivered task's message names ("" when none, or not a valid name)."""
    return client_name(getattr(request, CLIENT_HEADER, None))


def carried(request: Any) -> dict[str, str]:
    """The headers of a delivered task that its retries and page tasks carry on."""
    return job_headers(client_from(request))
