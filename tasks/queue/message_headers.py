"""The headers a job's messages carry beside Celery's own: its client, a page's descriptor.

Set by the clients on the job message (tasks/client.py), carried by the worker onto the
job's page and chunk tasks and onto every retry (Celery keeps no custom header when it
retries a task). The broker's fetch picks the job's lane by the client header
(tasks/broker/fetching.py). The sender (tasks/queue/sender.py) also marks a job it
listed under its client (`LISTED_HEADER`): its worker does not list it again. A page or
chunk task's message carries its `PageDescriptor` (`PAGE_HEADER`, a JSON object): a
worker that knows no such header (the previous release) reads the document's meta
instead, and so does this release's for a message without it. Runs in clients and
worker pool children.
"""

from __future__ import annotations

from typing import Any

from tasks.records.clients import CLIENT_HEADER, client_name
from tasks.records.jobs import PageDescriptor

LISTED_HEADER = "ocr_listed"
PAGE_HEADER = "ocr_page"


def job_headers(client: str, listed: bool = False) -> dict[str, str]:
    """The headers of a message of `client`'s job (none for the anonymous client).

    `listed`: its sender listed it under its client (tasks/state/job_index.py).
    """
    name = client_name(client)
    headers = {CLIENT_HEADER: name} if name else {}
    if listed:
        headers[LISTED_HEADER] = "1"
    return headers


def page_headers(client: str, described: PageDescriptor) -> dict[str, Any]:
    """The headers of a page or chunk task of `client`'s job, which reads `described`."""
    return {**job_headers(client), PAGE_HEADER: described.to_json()}


def page_descriptor(request: Any) -> PageDescriptor | None:
    """The descriptor a delivered page or chunk task's message carries (None: none)."""
    described = getattr(request, PAGE_HEADER, None)
    return PageDescriptor.from_json(described) if isinstance(described, dict) else None


def listed(request: Any) -> bool:
    """Whether a delivered job's sender listed it under its client."""
    return getattr(request, LISTED_HEADER, None) == "1"


def client_from(request: Any) -> str:
    """The client a delivered task's message names ("" when none, or not a valid name)."""
    return client_name(getattr(request, CLIENT_HEADER, None))


def carried(request: Any) -> dict[str, Any]:
    """The headers of a delivered task that its retries carry on.

    Its client's, and a page or chunk task's descriptor.
    """
    described = getattr(request, PAGE_HEADER, None)
    page = {PAGE_HEADER: described} if isinstance(described, dict) else {}
    return {**job_headers(client_from(request)), **page}
