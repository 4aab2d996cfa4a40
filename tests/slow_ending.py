"""A fake engine whose pool child stalls in the middle of ending a cancelled job.

Loaded by real workers as a plugin (OCR_ENGINE_PLUGINS, `slow-ending`); its text only
describes the image. Its `load` (in each pool child, never in the worker parent)
makes that child's `JobEnder.finish` wait `FAKE_ENDING_SECONDS` (default 60) before
finishing a CANCELLED outcome: the child then holds the job's end claim with nothing
of its ending done, the window in which the chaos soak saw a cancel's SIGKILL land.
With `FAKE_ENDING_STALL=stored` it stalls every ending after storing its result (the
window in which the long soak saw a whole worker host SIGKILLed).
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
        finish = JobEnder.finish

        after_store = os.environ.get("FAKE_ENDING_STALL") == "stored"

        def stalled(self: JobEnder, outcome: Outcome) -> Any:
            if after_store:
                self._ports.publish(outcome)  # stored; the rest of the ending not begun
                time.sleep(stall)
            elif outcome.status is JobStatus.CANCELLED:
                time.sleep(stall)
            return finish(self, outcome)

        JobEnder.finish = stalled  # type: ignore[method-assign]
        return cls(float(os.environ.get("FAKE_PAGE_SECONDS", "0")))
