"""The service's configuration entry point, as Celery and operators know it.

The settings themselves live in `tasks.settings` (typed, validated, documented) and the
Celery configuration derived from them in `tasks.queue.celery_config`; this module
names both for operators' scripts (`from worker_config import Settings`) and runs as
`python worker_config.py > docs/settings.md`, which regenerates the settings'
documentation. Nothing in `tasks/` imports it (`celery -A tasks` builds its app from
`tasks.queue.app`).
"""

from __future__ import annotations

from tasks.queue.celery_config import celery_config
from tasks.settings import Settings, SettingsError, settings_markdown

__all__ = ["Settings", "SettingsError", "celery_config", "settings_markdown"]

if __name__ == "__main__":
    print(settings_markdown(), end="")
