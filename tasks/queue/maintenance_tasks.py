"""Maintenance tasks: the model-directory audit. Thin: options in, domain code, report out.

Task bodies run in worker pool children. A plain audit goes to queue `ocr` and audits
the directory of the worker that takes it. An every-host audit (beat's scheduled run,
`submit.py models`) reaches one worker per (host, model directory): the sender
broadcasts the remote-control command `model_directory` (tasks/queue/control.py), picks
one worker of each (host, directory) from the replies and sends each its copy through
the worker's own direct queue (Celery's `worker_direct`). The copies carry the run's id
in `run`; the first worker of a host to take its copy claims that directory for the
run, so a directory is audited once per run even when two beats dispatched.
"""

from __future__ import annotations

import functools
import re
import socket
from typing import Any

import redis
from celery import Celery, Task, shared_task
from celery.utils.nodenames import nodesplit

from tasks.errors import BadRequest, OcrError, TransientError
from tasks.models.audit import AuditRun, mode_for, run_audit
from tasks.models.decisions import PrunePolicy
from tasks.models.registry import ModelRegistry
from tasks.queue.brokers import direct_queue
from tasks.queue.golden import send_scheduled
from tasks.records.redis_target import RedisTarget
from tasks.settings import Settings, audit_crontab_fields
from tasks.state.connection import connect

RUN_ID = re.compile(r"[A-Za-z0-9_.-]{1,100}\Z")
# A copy not started by then (its worker went away after answering) is dropped unrun.
COPY_EXPIRES = 6 * 3600


@functools.cache
def _registry(target: RedisTarget, heartbeat: float, lock_seconds: float) -> ModelRegistry:
    return ModelRegistry(connect(target), heartbeat, lock_seconds)


def models_registry(settings: Settings) -> ModelRegistry:
    """The Redis side of the model lifecycle for these settings (cached per process)."""
    return _registry(settings.redis_target, settings.model_heartbeat_seconds,
                     float(settings.hard_time_limit + 60))


def prune_policy(settings: Settings) -> PrunePolicy:
    return PrunePolicy(current_model=settings.model, prefix=settings.prune_prefix,
                       unused_days=settings.prune_unused_days,
                       grace_seconds=settings.prune_grace_minutes * 60,
                       retired=settings.retired_models)


def audit_targets(app: Celery, timeout: float = 2.0) -> list[dict[str, Any]]:
    """One live worker per (host, model directory), asked by broadcast."""
    return pick_targets(app.control.broadcast("model_directory", reply=True,
                                              timeout=timeout) or [])


def pick_targets(replies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One node per (host, model directory) from `model_directory` replies.

    The first node name in sort order, an OCR worker before a light control worker.
    """
    groups: dict[tuple[str, str], list[tuple[bool, str]]] = {}
    for reply in replies:
        for node, answer in reply.items():
            if isinstance(answer, dict) and "model_dir" in answer:
                light = answer.get("role", "ocr") != "ocr"  # a control worker: last
                groups.setdefault((str(answer["host"]), str(answer["model_dir"])),
                                  []).append((light, node))
    return [{"host": host, "model_dir": model_dir, "node": min(nodes)[1]}
            for (host, model_dir), nodes in sorted(groups.items())]


def dispatch_every_host(app: Celery, run: str, prune: bool, dry_run: bool,
                        timeout: float = 2.0) -> list[dict[str, Any]]:
    """Send run `run`'s copy of the audit to one worker per (host, directory).

    Returns the targets, each with the `task_id` of its copy.
    """
    targets = audit_targets(app, timeout)
    for target in targets:
        result = app.send_task("ocr.audit_models",
                               queue=direct_queue(app.ocr_settings, target["node"]),
                               kwargs={"prune": prune, "dry_run": dry_run, "run": run},
                               expires=COPY_EXPIRES)
        target["task_id"] = str(result.id)
    return targets


@shared_task(name="ocr.audit_models", bind=True, throws=(OcrError,))
def audit_models(self: Task, prune: bool = False, dry_run: bool = False,
                 scheduled: bool = False, every_host: bool = False,
                 run: str | None = None) -> dict[str, Any]:
    """Audit (and with `prune`, prune) OCR_MODEL_DIR; see docs/tasks.md for the report."""
    if not all(isinstance(v, bool) for v in (prune, dry_run, scheduled, every_host)):
        raise BadRequest("prune, dry_run, scheduled and every_host must be true or false")
    if run is not None and not (isinstance(run, str) and RUN_ID.match(run)):
        raise BadRequest("run must be 1-100 characters of A-Z a-z 0-9 _ . -")
    settings = self.app.ocr_settings
    state = models_registry(settings)
    node = self.request.hostname or ""
    host = nodesplit(node)[1] if "@" in node else socket.gethostname()
    try:
        if scheduled and not state.claim_scheduled_run(str(self.request.id),
                                                       scheduled_run_window(settings)):
            return {"id": self.request.id, "worker": node, "skipped": True,
                    "reason": "another beat already sent this scheduled audit"}
        if (scheduled or every_host) and run is None:
            targets = dispatch_every_host(self.app, str(self.request.id), prune, dry_run)
            report = {"id": self.request.id, "worker": node, "run": self.request.id,
                      "dispatched": targets}
            if scheduled and settings.golden_set:  # what the models read, beside them
                report["golden"] = send_scheduled(self.app, str(self.request.id))
            return report
        model_dir = settings.model_dir.resolve()
        if run is not None and not state.claim_host_run(run, f"{host}:{model_dir}"):
            return {"id": self.request.id, "worker": node, "host": host,
                    "model_dir": str(model_dir), "run": run, "skipped": True,
                    "reason": "another worker of this host audits this directory in "
                              "this run"}
        audit = AuditRun(settings.model_dir, prune_policy(settings),
                         mode_for(prune, dry_run), host=host, task_id=self.request.id,
                         worker=node, run=run)
        return run_audit(audit, state)
    except redis.RedisError as exc:
        raise TransientError(f"Redis became unreachable during the audit "
                             f"({type(exc).__name__})") from exc


def scheduled_run_window(settings: Settings) -> float:
    """Seconds during which a second scheduled audit is a duplicate (another beat's).

    Half the shortest gap between two runs of the crontab (a lower bound: only minutes
    and hours are considered), so a run on the next scheduled time is never skipped.
    """
    if settings.audit_schedule is None:
        return 0.0
    fields_ = audit_crontab_fields(settings.audit_schedule)
    minutes, hours = sorted(fields_["minute"]), sorted(fields_["hour"])
    if len(minutes) > 1:
        gap = _cyclic_gap(minutes, 60) * 60
    elif len(hours) > 1:
        gap = _cyclic_gap(hours, 24) * 3600
    else:
        gap = 86400
    return gap / 2


def _cyclic_gap(values: list[int], period: int) -> int:
    return min((b - a) % period or period for a, b in zip(values, values[1:] + values[:1],
                                                          strict=True))
