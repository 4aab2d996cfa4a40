"""Maintenance tasks: the model-directory audit. Thin: options in, domain code, report out.

Task bodies run in worker pool children of the default queue `ocr`: any worker on a
machine whose OCR_MODEL_DIR is the directory to audit.
"""

from __future__ import annotations

import functools
import socket
from typing import Any

import redis
from celery import Task, shared_task

from tasks.errors import BadRequest, OcrError, TransientError
from tasks.models.audit import AuditRun, PrunePolicy, mode_for, run_audit
from tasks.models.registry import ModelRegistry
from tasks.state.stores import connect
from worker_config import Settings, scheduled_run_window


@functools.cache
def _registry(redis_url: str, heartbeat: float, lock_seconds: float) -> ModelRegistry:
    return ModelRegistry(connect(redis_url), heartbeat, lock_seconds)


def models_registry(settings: Settings) -> ModelRegistry:
    """The Redis side of the model lifecycle for these settings (cached per process)."""
    return _registry(settings.redis_url, settings.model_heartbeat_seconds,
                     float(settings.hard_time_limit + 60))


def prune_policy(settings: Settings) -> PrunePolicy:
    return PrunePolicy(current_model=settings.model, prefix=settings.prune_prefix,
                       unused_days=settings.prune_unused_days,
                       grace_seconds=settings.prune_grace_minutes * 60)


@shared_task(name="ocr.audit_models", bind=True, throws=(OcrError,))
def audit_models(self: Task, prune: bool = False, dry_run: bool = False,
                 scheduled: bool = False) -> dict[str, Any]:
    """Audit (and with `prune`, prune) OCR_MODEL_DIR; see docs/tasks.md for the report."""
    if not all(isinstance(v, bool) for v in (prune, dry_run, scheduled)):
        raise BadRequest("prune, dry_run and scheduled must be true or false")
    settings = self.app.ocr_settings
    state = models_registry(settings)
    try:
        if scheduled and not state.claim_scheduled_run(str(self.request.id),
                                                       scheduled_run_window(settings)):
            return {"id": self.request.id, "worker": self.request.hostname, "skipped": True,
                    "reason": "another beat already sent this scheduled audit"}
        run = AuditRun(settings.model_dir, prune_policy(settings), mode_for(prune, dry_run),
                       host=socket.gethostname(), task_id=self.request.id,
                       worker=self.request.hostname or "")
        return run_audit(run, state)
    except redis.RedisError as exc:
        raise TransientError(f"Redis became unreachable during the audit "
                             f"({type(exc).__name__})") from exc
