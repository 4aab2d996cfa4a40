"""A fake engine whose pool child stalls in the middle of ending a cancelled job.

Loaded by real workers as a plugin (OCR_ENGINE_PLUGINS, `slow-ending`); its text only
describes the image. Its `load` (in each pool child, never in the worker parent)
makes that child's `JobEnder` wait `FAKE_ENDING_SECONDS` (default 60) after claiming
a CANCELLED outcome's end, before storing it: the child then holds the job's end claim
with nothing of its ending done, the window in which the chaos soak saw a cancel's
SIGKILL land. With `FAKE_ENDING_STALL=stored` it stalls every ending after storing its
result, before what follows it (the window in which the long soak saw a whole worker
host SIGKILLed); with `FAKE_ENDING_STALL=claimed`, every ending it finishes after
its claim, before storing (a fanned-out PDF's merge, in which the chaos soak saw one).
"""

from __future__ import annotations

import os
import time
from typing import Any

from tasks.lifecycle.job_exit import JobEnder
from tasks.records.jobs import JobStatus, Outcome
from tasks.settings import Settings
from tests.fake_engines import FakeEngine


class SlowEndingEngine(FakeEngine):
    """A fake: `fake WxH mean=M`, and a stalled ending for cancelled jobs (see above)."""

    name = "slow-ending"

    @classmethod
    def load(cls, settings: Settings) -> SlowEndingEngine:
        stall = float(os.environ.get("FAKE_ENDING_SECONDS", "60"))
        finish, after_storing = JobEnder._finish, JobEnder._after_storing
        where = os.environ.get("FAKE_ENDING_STALL", "cancelled")
        after_store = where == "stored"

        def stalled_finish(self: JobEnder, outcome: Outcome) -> Any:
            if where == "claimed" or (where == "cancelled"
                                      and outcome.status is JobStatus.CANCELLED):
                time.sleep(stall)
            return finish(self, outcome)

        def stalled_after(self: JobEnder, outcome: Outcome, **steps: bool) -> Any:
            if after_store:
                time.sleep(stall)  # stored; the rest of the ending not begun
            return after_storing(self, outcome, **steps)

        JobEnder._finish = stalled_finish  # type: ignore[method-assign]
        JobEnder._after_storing = stalled_after  # type: ignore[method-assign]
        return cls(float(os.environ.get("FAKE_PAGE_SECONDS", "0")))
