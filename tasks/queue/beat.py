"""The Procfile's `beat` process: Celery's persistent scheduler, its folder made first.

Runs in the beat process only (`beat_scheduler` in tasks/queue/celery_config.py). The
Procfile keeps the schedule under `var/`, which only `make run` creates beforehand;
any other Procfile runner starts beat from a fresh checkout, so the folder is made
here, when the schedule is opened.
"""

from __future__ import annotations

from pathlib import Path

from celery.beat import PersistentScheduler


class Scheduler(PersistentScheduler):
    """`PersistentScheduler` that makes the schedule file's folder when it opens it."""

    def setup_schedule(self) -> None:
        Path(self.schedule_filename).parent.mkdir(parents=True, exist_ok=True)
        super().setup_schedule()
