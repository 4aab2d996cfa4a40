"""The prune policy: which entries of the model directory may go, and why the others stay.

`decide()` turns a scanned entry into a `Decision` (prune, keep, or prune only parts of a
hub repo: stale partial blobs, revisions no ref points to) by the rules of
`PrunePolicy`; `status()` says how a report shows it. Pure; runs in the worker pool
child that runs `ocr.audit_models`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.models.inventory import ModelEntry
from tasks.models.locate import locate, split_model

DAY = 86400.0


@dataclass(frozen=True)
class PrunePolicy:
    """Which entries go. Built from the settings by the task; see docs/settings.md."""

    current_model: str = ""
    prefix: str = "old_"
    unused_days: float = 0.0
    grace_seconds: float = 3600.0
    retired: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"current_model": self.current_model, "prefix": self.prefix,
                "unused_days": self.unused_days, "grace_seconds": self.grace_seconds,
                "retired": list(self.retired)}


@dataclass(frozen=True)
class Decision:
    """Whether an entry (or a part of a hub repo) goes, and why.

    `reasons` say why; `matched` are the prune rules it met.

    `scope`: `entry` (the whole entry), `incomplete` (`parts`: stale `.incomplete` files,
    relative to the model directory) or `revisions` (`parts`: commit hashes).
    """

    name: str
    prune: bool
    reasons: tuple[str, ...]
    matched: tuple[str, ...]
    detail: str
    size_bytes: int = 0
    scope: str = "entry"
    parts: tuple[str, ...] = ()
    folder: str = ""  # the direct entry removed for scope `entry` (default: `name`)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "scope": self.scope,
                               "reasons": list(self.reasons), "detail": self.detail}
        if self.parts:
            out["parts"] = list(self.parts)
        if self.prune:
            out["size_bytes"] = self.size_bytes
        else:
            out["matched"] = list(self.matched)
        return out


def matched_rules(entry: ModelEntry, policy: PrunePolicy, now: float) -> list[str]:
    """The prune rules an entry as a whole meets.

    In the order retired, prefix, unused, broken, partial. A hub repo meets only
    `retired` and `unused` (its partial files and detached revisions are pruned apart,
    see `decide_parts`).
    """
    rules = []
    if any(entry.names(r) for r in policy.retired):
        rules.append("retired")
    if entry.repo is None and policy.prefix and entry.name.startswith(policy.prefix):
        rules.append("prefix")
    if policy.unused_days > 0 and now - _last_activity(entry) > policy.unused_days * DAY:
        rules.append("unused")
    if entry.repo is None and entry.integrity.problems:
        rules.append("broken")
    if entry.repo is None and entry.integrity.partial:
        rules.append("partial")
    return rules


def _last_activity(entry: ModelEntry) -> float:
    return max(entry.modified, entry.last_used or 0.0)


HELD_BACK = {"audit_only": "audit only",
             "prune_locked": "another audit holds the prune lock"}


def _configured_path(policy: PrunePolicy, model_dir: Path) -> Path | None:
    if not policy.current_model:
        return None
    return locate(model_dir, policy.current_model) or \
        (model_dir / policy.current_model).resolve()


def decide(entry: ModelEntry, policy: PrunePolicy, model_dir: Path, now: float,
           pruning: bool, held_back: str = "audit_only") -> Decision:
    """Prune or keep one entry as a whole.

    With `pruning` False everything is kept; entries that would go are kept with the
    reason `held_back` (`audit_only`, or `prune_locked`).
    """
    matched = matched_rules(entry, policy, now)
    age = now - entry.modified
    recent = age < policy.grace_seconds
    effective = [r for r in matched if not (recent and r in ("broken", "partial"))]
    current = _configured_path(policy, model_dir)
    keep: list[str] = []
    notes: list[str] = []
    if policy.current_model and (entry.names(policy.current_model) or (
            current is not None and current.is_relative_to(entry.resolved))):
        keep.append("current_model")
        notes.append("the configured OCR_MODEL" if entry.names(policy.current_model)
                     else f"leads to the configured OCR_MODEL {policy.current_model}")
    if entry.configured_by:
        if not keep:
            keep.append("current_model")
        notes.append("the configured OCR_MODEL of " + ", ".join(
            sorted({h.worker or h.host for h in entry.configured_by})))
    if entry.loaded_by:
        keep.append("loaded")
        notes.append("loaded by " + ", ".join(h.label for h in entry.loaded_by))
    if effective and not keep and pruning:
        return Decision(entry.name, True, tuple(effective), tuple(matched),
                        "; ".join(_rule_text(r, entry, policy, now) for r in effective),
                        entry.size_bytes, folder=entry.folder)
    if matched and not effective:
        keep.append("recent")
        notes.append(f"modified {_ago(age)} ago, within the grace period: may still be "
                     "downloading or copying")
    if effective and not keep:
        keep.append(held_back)
        notes.append(HELD_BACK[held_back])
    if not matched:
        keep.append("no_rule")
        notes.append("no prune rule matches")
    if effective:
        notes.append("would be pruned: " + "; ".join(
            _rule_text(r, entry, policy, now) for r in effective))
    return Decision(entry.name, False, tuple(keep), tuple(matched), "; ".join(notes),
                    folder=entry.folder)


def decide_parts(entry: ModelEntry, policy: PrunePolicy, model_dir: Path, now: float,
                 pruning: bool, held_back: str = "audit_only") -> list[Decision]:
    """The parts of a hub repo that go while the repo stays.

    `.incomplete` files older than the grace period (`stale_incomplete`), and revisions
    no ref points to (`detached`) unless configured, loaded, recent, or the repo's last
    revision.
    """
    repo = entry.repo
    if repo is None or (model_dir / repo.folder).is_symlink():
        return []  # a linked repo's insides lie elsewhere: only the link may go
    out = []
    stale = [b for b in repo.incomplete if now - b.modified >= policy.grace_seconds]
    if stale:
        files = tuple(f"{repo.folder}/blobs/{b.path.name}" for b in stale)
        detail = (f"{len(stale)} partial download(s) untouched for over "
                  f"{_ago(policy.grace_seconds)}; the repo stays")
        out.append(_part(entry, "incomplete", "stale_incomplete", files,
                         sum(b.size_bytes for b in stale), detail, pruning, held_back))
    protected = _protected_paths(entry, policy, model_dir)
    wanted = {split_model(m)[1] for m in
              [policy.current_model, *(h.model for h in entry.configured_by),
               *(h.model for h in entry.loaded_by)] if m and entry.names(m)}
    detached = [r for r in repo.revisions if not r.refs]
    if detached and len(detached) < len(repo.revisions):
        goes = [r for r in detached
                if r.commit not in wanted and now - r.modified >= policy.grace_seconds
                and not any(p.is_relative_to(r.path) for p in protected)]
        if goes:
            commits = tuple(r.commit for r in goes)
            detail = (f"{len(goes)} revision(s) no ref points to "
                      f"(refs: {', '.join(f'{k}={v[:12]}' for k, v in repo.refs.items())})")
            out.append(_part(entry, "revisions", "detached", commits,
                             sum(r.own_bytes for r in goes), detail, pruning, held_back))
    return out


def _protected_paths(entry: ModelEntry, policy: PrunePolicy, model_dir: Path) -> list[Path]:
    paths = [Path(h.path) for h in (*entry.loaded_by, *entry.configured_by) if h.path]
    paths += [target for _, target in entry.linked_from]
    current = _configured_path(policy, model_dir)
    return paths + ([current] if current is not None else [])


def _part(entry: ModelEntry, scope: str, rule: str, parts: tuple[str, ...], size: int,
          detail: str, pruning: bool, held_back: str) -> Decision:
    if pruning:
        return Decision(entry.name, True, (rule,), (rule,), detail, size, scope, parts,
                        entry.folder)
    return Decision(entry.name, False, (held_back,), (rule,),
                    f"{HELD_BACK[held_back]}; would be pruned: {detail}", size, scope,
                    parts, entry.folder)


def _rule_text(rule: str, entry: ModelEntry, policy: PrunePolicy, now: float) -> str:
    if rule == "retired":
        return "listed in OCR_RETIRED_MODELS"
    if rule == "prefix":
        return f"name starts with {policy.prefix!r}"
    if rule == "unused":
        return (f"unused for {(now - _last_activity(entry)) / DAY:.0f} days "
                f"(limit {policy.unused_days:g})")
    if rule == "broken":
        return "broken: " + "; ".join(entry.integrity.problems[:3])
    return "partial download: " + ", ".join(entry.integrity.partial[:3])


def _ago(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.0f} h"


CURRENT_REASONS = frozenset({"current_model", "loaded"})


HELD_BACK_REASONS = frozenset({"audit_only", "prune_locked", "remove_failed"})


def status(decision: Decision | None, broken: bool = False) -> dict[str, Any]:
    """An entry's status in the design's words.

    `OLD` (a prune candidate; `old_reason` says why), `BROKEN` (its integrity check
    found problems: no worker can load it), `CURRENT` (configured or loaded somewhere)
    or `OK`.
    """
    reasons = set(decision.reasons) if decision is not None else set()
    if decision is not None and (decision.prune or HELD_BACK_REASONS & reasons) \
            and not CURRENT_REASONS & reasons:
        return {"status": "OLD", "old_reason": decision.detail}
    if broken:
        return {"status": "BROKEN", "old_reason": None}
    if CURRENT_REASONS & reasons:
        return {"status": "CURRENT", "old_reason": None}
    return {"status": "OK", "old_reason": None}
