"""Audit and prune of the model directory: the run, from scan to report.

The steps are modules of their own: tasks/models/integrity.py (file checks),
inventory.py (the scan), decisions.py (the prune policy), prune.py (removal).

Plain code, no Celery and no Redis: the `ocr.audit_models` task (tasks/queue/maintenance_tasks.py)
runs `run_audit()` in a worker pool child with the Redis side (tasks/models/registry.py)
passed in as an `AuditState`.

The directory may hold plain model folders (and links to them), Hugging Face hub
cache repos (`models--org--name/`, read through tasks/models/_hub_cache.py), or both.
A hub repo is listed by repo id; it is removed whole only when retired
(OCR_RETIRED_MODELS) or unused; otherwise only its stale `blobs/*.incomplete` files and
its revisions no ref points to are removed.

Safety rules, all enforced here:

- only direct entries of the (resolved) model directory are ever removed;
- a symbolic link is removed as a link (`os.unlink`), its target is never touched;
  folders are removed with `shutil.rmtree`, which unlinks links inside them without
  following them;
- the configured model of the auditing worker and of every live worker (registered in
  Redis whether or not the model is loaded), entries a live worker has loaded (by name,
  or by the resolved path the worker loaded), and broken or partial entries modified
  within the grace period are kept;
- in a hub repo, a revision a ref points to, the configured or loaded revision, and
  `.incomplete` files within the grace period are kept; the last revision of a repo is
  never removed as a revision;
- pruning scans and removes while holding the prune lock, so two audits never prune at
  once and a second one sees what the first left.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tasks.errors import ModelDirMissing, PruneLocked
from tasks.models.decisions import Decision, PrunePolicy, decide, decide_parts, status
from tasks.models.inventory import Holder, ModelEntry, iso, scan
from tasks.models.prune import apply

MODES = ("audit", "dry-run", "prune")


class AuditState(Protocol):
    """What the audit needs from Redis (tasks.models.registry.ModelRegistry)."""

    def last_used(self) -> dict[str, float]: ...

    def loaded(self) -> list[Holder]: ...

    def configured(self) -> list[Holder]: ...

    def prune_lock(self, scope: str) -> AbstractContextManager[bool]: ...

    def save_report(self, report: dict[str, Any]) -> None: ...


@dataclass
class AuditRun:
    """Options of one run of the audit."""

    model_dir: Path
    policy: PrunePolicy
    mode: str = "audit"
    host: str = ""
    task_id: str | None = None
    worker: str = ""
    run: str | None = None  # the every-host run this audit is part of
    now: float = field(default_factory=time.time)


def mode_for(prune: bool, dry_run: bool) -> str:
    """`dry-run` whenever asked for (it implies prune), else `prune` or `audit`."""
    return "dry-run" if dry_run else "prune" if prune else "audit"


def run_audit(run: AuditRun, state: AuditState) -> dict[str, Any]:
    """Scan, decide, prune (mode `prune`, under this directory's prune lock), report."""
    started = time.time()
    model_dir = run.model_dir.resolve()
    errors: list[dict[str, Any]] = []
    notes: list[str] = []
    entries: list[ModelEntry] = []
    decisions: list[Decision] = []
    if not model_dir.is_dir():
        where = f"{run.model_dir} is not a directory on {run.host or 'this host'}"
        if run.policy.current_model:
            errors.append(ModelDirMissing(where).to_dict())
        else:  # a tesseract-only worker: nothing to audit is not a failure
            notes.append(f"{where}: no model directory and no OCR_MODEL, nothing to audit")
    else:
        lock = state.prune_lock(f"{run.host}:{model_dir}") if run.mode == "prune" \
            else nullcontext(True)
        with lock as acquired:
            entries = scan(model_dir, state.last_used(), state.loaded(), state.configured())
            pruning = run.mode != "audit" and acquired
            held_back = "audit_only" if acquired else "prune_locked"
            for entry in entries:
                whole = decide(entry, run.policy, model_dir, run.now, pruning, held_back)
                decisions.append(whole)
                if not whole.prune:
                    decisions += decide_parts(entry, run.policy, model_dir, run.now,
                                              pruning, held_back)
            if not acquired:
                errors.append(PruneLocked().to_dict())
            elif run.mode == "prune":
                decisions = [apply(d, model_dir, errors) for d in decisions]
    report = build_report(run, model_dir, entries, decisions, errors, started, notes)
    state.save_report(report)
    return report


def build_report(run: AuditRun, model_dir: Path, entries: Sequence[ModelEntry],
                 decisions: Sequence[Decision], errors: list[dict[str, Any]],
                 started: float, notes: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON report (docs/tasks.md, `ocr.audit_models`)."""
    pruned = [d for d in decisions if d.prune]
    whole = {d.name: d for d in decisions if d.scope == "entry"}
    return {
        "id": run.task_id,
        "run": run.run,
        "worker": run.worker,
        "host": run.host,
        "model_dir": str(model_dir),
        "mode": run.mode,
        "dry_run": run.mode == "dry-run",
        "started_at": iso(started, "milliseconds"),
        "finished_at": iso(time.time(), "milliseconds"),
        "policy": run.policy.to_dict(),
        "model_dir_exists": model_dir.is_dir() or bool(entries),
        "notes": list(notes),
        "models": [{**e.to_dict(), **status(whole.get(e.name), bool(e.integrity.problems))}
                   for e in entries],
        "totals": {
            "entries": len(entries),
            "size_bytes": sum(e.size_bytes for e in entries),
            "models": sum(e.kind in ("model", "hub") for e in entries),
            "hub_repos": sum(e.kind == "hub" for e in entries),
            "broken": sum(bool(e.integrity.problems) for e in entries),
            "partial": sum(bool(e.integrity.partial) for e in entries),
            "loaded": sum(bool(e.loaded_by) for e in entries),
            "pruned": len(pruned),
            "pruned_bytes": sum(d.size_bytes for d in pruned),
        },
        "pruned": [d.to_dict() for d in pruned],
        "kept": [d.to_dict() for d in decisions if not d.prune],
        "errors": errors,
    }
