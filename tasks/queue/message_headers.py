"""The headers a job's messages carry beside Celery's own: the job's client.

Set by the clients on the job message (tasks/client.py), carried by the worker onto the
job's page and chunk tasks and onto every retry (Celery keeps no custom header when it
retries a task). The broker's fetch picks the job's lane by the client header
(tasks/broker/transport.py). Runs in clients and worker pool children.
"""

from __future__ import annotations

from typing import Any

from tasks.records.clients import CLIENT_HEADER, client_name


def job_headers(client: str) -> dict[str, str]:
    """The headers of a message of `client`'s job (none for the anonymous client)."""
    name = client_name(client)
    return {CLIENT_HEADER: name} if name else {}


def client_from(request: Any) -> str:
    """The client a delivered task's message names ("" when none, or not a valid name)."""
    return client_name(getattr(request, CLIENT_HEADER, None))


def carried(request: Any) -> dict[str, str]:
    """The headers of a delivered task that its retries and page tasks carry on."""
    return job_headers(client_from(request))
