"""Settings of the model directory's lifecycle: scheduled audits, pruning, idle unloading.

Part of `tasks.settings.Settings` (read and validated there); runs in every process.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._field import setting as _s
from ._values import local_timezone


@dataclass(frozen=True)
class ModelDirSettings:
    """When beat audits the model directory, what it prunes, and how loaded models are kept."""

    audit_crontab: str = _s("OCR_AUDIT_CRONTAB", "0 3 * * *",
                            "When beat sends the model-directory audit `ocr.audit_models`: a "
                            "crontab (minute hour day-of-month month day-of-week) in "
                            "OCR_TIMEZONE; `off` schedules nothing.")
    timezone: str = _s("OCR_TIMEZONE", "",
                       "Time zone of the beat schedule (IANA name); empty: this machine's.")
    prune_on_schedule: bool = _s("OCR_PRUNE_ON_SCHEDULE", "1",
                                 "Whether beat's scheduled audit also prunes (0: it only "
                                 "reports).")
    prune_prefix: str = _s("OCR_PRUNE_PREFIX", "old_",
                           "Model-directory entries whose name starts with this are pruned "
                           "(rename a model to retire it); empty: no prefix rule.")
    retired_models: tuple[str, ...] = _s("OCR_RETIRED_MODELS", "",
                                         "Comma-separated models to prune whole (hub repo "
                                         "ids `org/name`, or folder names): retiring a hub "
                                         "repo cannot be a rename.")
    prune_unused_days: float = _s("OCR_PRUNE_UNUSED_DAYS", "0",
                                  "Prune entries neither used by a worker nor modified for "
                                  "this many days; 0: never.")
    prune_grace_minutes: float = _s("OCR_PRUNE_GRACE_MINUTES", "60",
                                    "Broken or partial entries modified more recently than "
                                    "this are kept: a download or copy may be running.")
    idle_unload_seconds: float = _s("OCR_IDLE_UNLOAD_SECONDS", "0",
                                    "A pool child unloads its engine after this many seconds "
                                    "without a task and reloads it on the next; 0: never.")
    model_heartbeat_seconds: float = _s("OCR_MODEL_HEARTBEAT_SECONDS", "30",
                                        "How often a pool child renews its `loaded model` "
                                        "registration in Redis (it expires after 3 beats).")
    golden_set: str = _s("OCR_GOLDEN_SET", "",
                         "A folder (or s3:// prefix) of documents with ground truth beside "
                         "them (`NAME.gt.txt`, `NAME.gt.xml`, as for `submit.py eval`) that "
                         "beat's scheduled audit sends to every engine the live workers "
                         "serve and scores (`ocr_admin.py accuracy`); empty: none.")

    @property
    def audit_schedule(self) -> str | None:
        """The audit's crontab expression, or None when scheduling is off."""
        value = " ".join(self.audit_crontab.split())
        return None if value.lower() in ("", "off") else value

    @property
    def schedule_timezone(self) -> str:
        """OCR_TIMEZONE, or this machine's zone (TZ, /etc/localtime), or UTC."""
        return self.timezone or local_timezone()
