"""Writes a job's ending carries in its own round trip: what the job read, kept and counted.

Runs in worker pool children (a document's task, `tasks/queue/job_task.py`). As the job
reads its pages, their previews (`PreviewStore.queue_put`) and their count in the
client's usage (`PageUsage.queue_counted`) are queued here instead of written at once;
the job's end claim (`JobControl.claim_end`) sends them in its pipeline, before the
claim's own command. So the previews and the usage are in Redis by the time the
result is, as they were when each was written at once, and cost the ending no round
trip of their own. (A job that names a `result_url` writes its previews at once: their
delivery beside the result object reads them.)

A carried write whose command fails (its answer an error: a key of the wrong type,
Redis out of memory) is logged and dropped, and the ending goes on: a preview is not
the result, and a count lost so is logged as a count's failed write always was. Where
the ending never runs (the child is killed, a transient error retries the task),
nothing carried was written; the run that ends the job writes its own. A script among
them that the server does not know (after a restart) is loaded and sent again after
the claim (tasks/state/lua.py), its count then landing just after the result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class CarriedWrites:
    """The writes one job's ending carries; each queues its commands on a pipeline."""

    def __init__(self) -> None:
        self._writes: list[tuple[str, Callable[[Any], None]]] = []

    def add(self, what: str, write: Callable[[Any], None]) -> None:
        """Carry `write` (it queues its commands on the pipeline it is given): `what` it is."""
        self._writes.append((what, write))

    def __len__(self) -> int:
        return len(self._writes)

    def queue(self, pipe: Any) -> list[str]:
        """Queue every carried write on `pipe`; what each command queued is part of."""
        names: list[str] = []
        for what, write in self._writes:
            before = len(pipe)
            write(pipe)
            names += [what] * (len(pipe) - before)
        self._writes.clear()
        return names

    @staticmethod
    def report(job_id: str, names: list[str], answers: list[Any]) -> None:
        """Log the carried commands of `names` whose `answers` (in order) are errors."""
        for what, answer in zip(names, answers, strict=False):
            if isinstance(answer, Exception):
                log.warning("job %s: %s not written with its ending: %s", job_id, what,
                            answer)
