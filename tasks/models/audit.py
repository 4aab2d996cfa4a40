"""Audit and prune of the model directory: scan, integrity checks, prune policy, removal.

Plain code, no Celery and no Redis: the `ocr.audit_models` task (tasks/queue/maintenance_tasks.py)
runs `run_audit()` in a worker pool child with the Redis side (tasks/models/registry.py)
passed in as an `AuditState`.

Safety rules, all enforced here:

- only direct entries of the (resolved) model directory are ever removed;
- a symbolic link is removed as a link (`os.unlink`), its target is never touched;
  folders are removed with `shutil.rmtree`, which unlinks links inside them without
  following them;
- the configured model, entries a live worker has loaded (by name, or by the resolved
  path the worker loaded), and broken or partial entries modified within the grace period
  are kept;
- pruning scans and removes while holding the prune lock, so two audits never prune at
  once and a second one sees what the first left.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from tasks.errors import ModelDirMissing, OcrError, PathNotAllowed, PruneFailed, PruneLocked

PARTIAL_SUFFIXES = (".incomplete", ".part", ".partial")
MAX_SAFETENSORS_HEADER = 100 * 2**20
# Bytes per element of the safetensors dtypes with a whole number of bytes; tensors of
# other dtypes (packed 4/6-bit types) are only checked to lie inside the file.
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
               "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
               "I64": 8, "U64": 8, "F64": 8, "C64": 8}
MODES = ("audit", "dry-run", "prune")
DAY = 86400.0


@dataclass(frozen=True)
class Holder:
    """A worker pool child that has a model-directory entry loaded (from Redis)."""

    model: str
    path: str
    worker: str
    host: str
    pid: int
    engine: str = ""
    since: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.worker or self.host} (pid {self.pid})"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "path": self.path, "worker": self.worker,
                "host": self.host, "pid": self.pid, "engine": self.engine,
                "since": self.since}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Holder:
        return cls(model=str(data["model"]), path=str(data.get("path", "")),
                   worker=str(data.get("worker", "")), host=str(data.get("host", "")),
                   pid=int(data.get("pid", 0)), engine=str(data.get("engine", "")),
                   since=float(data.get("since", 0.0)))


@dataclass(frozen=True)
class Integrity:
    """What is wrong with an entry: broken files, and partial-download files."""

    problems: tuple[str, ...] = ()
    partial: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems and not self.partial

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": list(self.problems), "partial": list(self.partial)}


@dataclass(frozen=True)
class ModelEntry:
    """One entry of the model directory as the audit saw it."""

    name: str
    kind: str  # "model" (folder with config.json), "folder", "file", "link" (dangling)
    resolved: Path
    size_bytes: int  # bytes stored in the model directory; a link counts 0
    modified: float  # newest mtime of the entry and everything in it
    integrity: Integrity
    model_type: str | None = None
    link: str | None = None  # a symbolic link's target, as written
    last_used: float | None = None
    loaded_by: tuple[Holder, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "model_type": self.model_type,
                "link": self.link, "size_bytes": self.size_bytes,
                "modified": iso(self.modified), "last_used": iso(self.last_used),
                "loaded_by": [h.label for h in self.loaded_by],
                "integrity": self.integrity.to_dict()}


@dataclass(frozen=True)
class PrunePolicy:
    """Which entries go. Built from the settings by the task; see docs/settings.md."""

    current_model: str = ""
    prefix: str = "old_"
    unused_days: float = 0.0
    grace_seconds: float = 3600.0

    def to_dict(self) -> dict[str, Any]:
        return {"current_model": self.current_model, "prefix": self.prefix,
                "unused_days": self.unused_days, "grace_seconds": self.grace_seconds}


@dataclass(frozen=True)
class Decision:
    """Whether an entry goes, and why (`reasons`); `matched` are the prune rules it met."""

    name: str
    prune: bool
    reasons: tuple[str, ...]
    matched: tuple[str, ...]
    detail: str
    size_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "reasons": list(self.reasons),
                               "detail": self.detail}
        if self.prune:
            out["size_bytes"] = self.size_bytes
        else:
            out["matched"] = list(self.matched)
        return out


class AuditState(Protocol):
    """What the audit needs from Redis (tasks.models.registry.ModelRegistry)."""

    def last_used(self) -> dict[str, float]: ...

    def loaded(self) -> list[Holder]: ...

    def prune_lock(self) -> AbstractContextManager[bool]: ...

    def save_report(self, report: dict[str, Any]) -> None: ...


def iso(timestamp: float | None, timespec: str = "seconds") -> str | None:
    """UTC ISO 8601 time of an epoch timestamp (None stays None)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec=timespec)


# --- integrity ----------------------------------------------------------------------

def check_safetensors(path: Path) -> str | None:
    """None when the header parses and every tensor fits the file, else the problem.

    The format: 8-byte little-endian header length N, N bytes of JSON mapping tensor
    names to {dtype, shape, data_offsets: [begin, end]} (relative to the data that
    follows the header), then the data.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"{path.name}: shorter than the 8-byte header length"
            length = int.from_bytes(head, "little")
            if length == 0 or length > MAX_SAFETENSORS_HEADER or 8 + length > size:
                return f"{path.name}: header length {length} does not fit the file ({size} B)"
            raw = handle.read(length)
    except OSError as exc:
        return f"{path.name}: cannot be read ({exc.strerror or type(exc).__name__})"
    try:
        header = json.loads(raw)
    except ValueError:
        return f"{path.name}: header is not valid JSON"
    if not isinstance(header, dict):
        return f"{path.name}: header is not a JSON object"
    data_bytes = size - 8 - length
    for name, info in header.items():
        if name == "__metadata__":
            continue
        problem = _tensor_problem(info, data_bytes)
        if problem:
            return f"{path.name}: tensor {name[:80]!r} {problem}"
    return None


def _tensor_problem(info: Any, data_bytes: int) -> str | None:
    if not isinstance(info, dict):
        return "has no description"
    offsets = info.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
        return "has invalid data_offsets"
    begin, end = offsets
    if end > data_bytes:
        return f"ends at data byte {end} of {data_bytes} (truncated)"
    shape, width = info.get("shape"), DTYPE_BYTES.get(str(info.get("dtype")))
    if width is None or not isinstance(shape, list) \
            or not all(isinstance(d, int) and d >= 0 for d in shape):
        return None  # a packed dtype, or no shape to check the size against
    needed = math.prod(shape) * width
    return None if needed == end - begin else f"needs {needed} bytes but has {end - begin}"


def check_index(path: Path) -> str | None:
    """A `*.safetensors.index.json`: parses, and every shard it lists exists."""
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError):
        return f"{path.name}: does not parse"
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        return f"{path.name}: has no weight_map"
    for shard in sorted({str(v) for v in weight_map.values()}):
        if "/" in shard or shard in (".", "..") or not (path.parent / shard).is_file():
            return f"{path.name}: shard {shard[:80]!r} is missing"
    return None


def read_config(folder: Path) -> tuple[bool, str | None, str | None]:
    """(has config.json, its model_type, the problem when it does not parse)."""
    config = folder / "config.json"
    if not config.exists() and not config.is_symlink():
        return False, None, None
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return True, None, "config.json does not parse"
    if not isinstance(data, dict):
        return True, None, "config.json is not a JSON object"
    model_type = data.get("model_type")
    return True, model_type if isinstance(model_type, str) else None, None


def _check_file(path: Path, rel: str) -> tuple[list[str], list[str]]:
    problems: list[str] = []
    partial: list[str] = []
    if path.name.endswith(PARTIAL_SUFFIXES):
        partial.append(rel)
    elif path.is_symlink() and not path.exists():
        problems.append(f"{rel}: dangling symbolic link")
    elif path.name.endswith(".safetensors"):
        problem = check_safetensors(path)
        if problem:
            problems.append(problem if rel == path.name else f"{rel}: {problem}")
    elif path.name.endswith(".safetensors.index.json"):
        problem = check_index(path)
        if problem:
            problems.append(problem)
    return problems, partial


# --- scan ---------------------------------------------------------------------------

def scan_entry(model_dir: Path, name: str) -> ModelEntry:
    """Kind, size, newest mtime and integrity of one entry of the (resolved) model dir.

    A symbolic link is read through (read-only) for its kind and integrity; its size
    counts 0 because its target lies elsewhere.
    """
    path = model_dir / name
    info = path.lstat()
    link = os.readlink(path) if stat.S_ISLNK(info.st_mode) else None
    resolved = path.resolve()
    if link is not None:
        if not resolved.exists():
            return ModelEntry(name, "link", resolved, 0, info.st_mtime,
                              Integrity((f"dangling symbolic link to {link}",)), link=link)
        if model_dir.is_relative_to(resolved):
            return ModelEntry(name, "link", resolved, 0, info.st_mtime, Integrity(
                ("link to the model directory or a folder above it",)), link=link)
    if not resolved.is_dir():
        problems, partial = _check_file(path, name)
        size = info.st_size if link is None else 0
        modified = max(info.st_mtime, resolved.stat().st_mtime)
        return ModelEntry(name, "file", resolved, size, modified,
                          Integrity(tuple(problems), tuple(partial)), link=link)
    size, modified, problems, partial = _walk(resolved, count_size=link is None)
    has_config, model_type, config_problem = read_config(resolved)
    if config_problem:
        problems.insert(0, config_problem)
    return ModelEntry(name, "model" if has_config else "folder", resolved, size,
                      max(modified, info.st_mtime), Integrity(tuple(problems), tuple(partial)),
                      model_type=model_type, link=link)


def _walk(root: Path, count_size: bool) -> tuple[int, float, list[str], list[str]]:
    """Bytes of regular files (hard links once), newest mtime, problems, partial files."""
    size, modified = 0, root.lstat().st_mtime
    problems: list[str] = []
    partial: list[str] = []
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        base = Path(folder)
        for name in sorted(files) + [d for d in dirs if (base / d).is_symlink()]:
            path = base / name
            try:
                st = path.lstat()
            except OSError:
                continue  # removed while scanning
            modified = max(modified, st.st_mtime)
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                size += st.st_size if count_size else 0
            found, parts = _check_file(path, str(path.relative_to(root)))
            problems += found
            partial += parts
    return size, modified, problems, partial


def scan(model_dir: Path, last_used: Mapping[str, float],
         loaded: Iterable[Holder]) -> list[ModelEntry]:
    """Every entry of the model directory (hidden ones too), sorted by name."""
    holders = list(loaded)
    entries = []
    for name in sorted(os.listdir(model_dir)):
        try:
            entry = scan_entry(model_dir, name)
        except FileNotFoundError:
            continue  # removed while scanning
        by = tuple(h for h in holders if h.model == name or _leads_to(h.path, entry.resolved))
        entries.append(replace(entry, last_used=last_used.get(name), loaded_by=by))
    return entries


def _leads_to(path: str, entry: Path) -> bool:
    """Whether a loaded model's path is the entry or inside it."""
    return bool(path) and Path(path).is_relative_to(entry)


# --- policy -------------------------------------------------------------------------

def matched_rules(entry: ModelEntry, policy: PrunePolicy, now: float) -> list[str]:
    """The prune rules an entry meets, in the order prefix, unused, broken, partial."""
    rules = []
    if policy.prefix and entry.name.startswith(policy.prefix):
        rules.append("prefix")
    if policy.unused_days > 0 and now - _last_activity(entry) > policy.unused_days * DAY:
        rules.append("unused")
    if entry.integrity.problems:
        rules.append("broken")
    if entry.integrity.partial:
        rules.append("partial")
    return rules


def _last_activity(entry: ModelEntry) -> float:
    return max(entry.modified, entry.last_used or 0.0)


HELD_BACK = {"audit_only": "audit only",
             "prune_locked": "another audit holds the prune lock"}


def decide(entry: ModelEntry, policy: PrunePolicy, model_dir: Path, now: float,
           pruning: bool, held_back: str = "audit_only") -> Decision:
    """Prune or keep one entry.

    With `pruning` False everything is kept; entries that would go are kept with the
    reason `held_back` (`audit_only`, or `prune_locked`).
    """
    matched = matched_rules(entry, policy, now)
    age = now - entry.modified
    recent = age < policy.grace_seconds
    effective = [r for r in matched if not (recent and r in ("broken", "partial"))]
    current = (model_dir / policy.current_model).resolve() if policy.current_model else None
    keep: list[str] = []
    notes: list[str] = []
    if policy.current_model and (entry.name == policy.current_model or (
            current is not None and current.is_relative_to(entry.resolved))):
        keep.append("current_model")
        notes.append("the configured OCR_MODEL" if entry.name == policy.current_model
                     else f"leads to the configured OCR_MODEL {policy.current_model}")
    if entry.loaded_by:
        keep.append("loaded")
        notes.append("loaded by " + ", ".join(h.label for h in entry.loaded_by))
    if effective and not keep and pruning:
        return Decision(entry.name, True, tuple(effective), tuple(matched),
                        "; ".join(_rule_text(r, entry, policy, now) for r in effective),
                        entry.size_bytes)
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
    return Decision(entry.name, False, tuple(keep), tuple(matched), "; ".join(notes))


def _rule_text(rule: str, entry: ModelEntry, policy: PrunePolicy, now: float) -> str:
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


# --- removal ------------------------------------------------------------------------

def remove_entry(model_dir: Path, name: str) -> None:
    """Remove one entry of the resolved model directory; links as links.

    Raises PathNotAllowed for a name that is not a direct entry, OSError when removal
    fails.
    """
    if name in ("", ".", "..") or "/" in name or (os.sep in name) \
            or (os.altsep is not None and os.altsep in name):
        raise PathNotAllowed(f"{name[:80]!r} is not an entry of the model directory")
    path = model_dir / name
    if Path(os.path.abspath(path)).parent != model_dir:
        raise PathNotAllowed(f"{name[:80]!r} is outside the model directory")
    mode = path.lstat().st_mode
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)  # refuses a link swapped in meanwhile; never follows links
    else:
        os.unlink(path)  # a file, or a symbolic link (its target is not touched)


# --- the audit ----------------------------------------------------------------------

@dataclass
class AuditRun:
    """Options of one run of the audit."""

    model_dir: Path
    policy: PrunePolicy
    mode: str = "audit"
    host: str = ""
    task_id: str | None = None
    worker: str = ""
    now: float = field(default_factory=time.time)


def mode_for(prune: bool, dry_run: bool) -> str:
    """`dry-run` whenever asked for (it implies prune), else `prune` or `audit`."""
    return "dry-run" if dry_run else "prune" if prune else "audit"


def run_audit(run: AuditRun, state: AuditState) -> dict[str, Any]:
    """Scan, decide, prune (mode `prune`, under the prune lock) and store the report."""
    started = time.time()
    model_dir = run.model_dir.resolve()
    errors: list[dict[str, Any]] = []
    entries: list[ModelEntry] = []
    decisions: list[Decision] = []
    if not model_dir.is_dir():
        errors.append(ModelDirMissing(f"{run.model_dir} is not a directory on "
                                      f"{run.host or 'this host'}").to_dict())
    else:
        lock = state.prune_lock() if run.mode == "prune" else nullcontext(True)
        with lock as acquired:
            entries = scan(model_dir, state.last_used(), state.loaded())
            pruning = run.mode != "audit" and acquired
            held_back = "audit_only" if acquired else "prune_locked"
            decisions = [decide(e, run.policy, model_dir, run.now, pruning, held_back)
                         for e in entries]
            if not acquired:
                errors.append(PruneLocked().to_dict())
            elif run.mode == "prune":
                decisions = [_apply(d, model_dir, errors) for d in decisions]
    report = build_report(run, model_dir, entries, decisions, errors, started)
    state.save_report(report)
    return report


def _apply(decision: Decision, model_dir: Path, errors: list[dict[str, Any]]) -> Decision:
    if not decision.prune:
        return decision
    try:
        remove_entry(model_dir, decision.name)
    except (OSError, OcrError) as exc:
        message = exc.message if isinstance(exc, OcrError) else \
            f"{decision.name}: {exc.strerror or type(exc).__name__}"
        errors.append({**PruneFailed(message).to_dict(), "name": decision.name})
        return replace(decision, prune=False, reasons=("remove_failed",),
                       detail=f"removal failed: {message}")
    return decision


def build_report(run: AuditRun, model_dir: Path, entries: Sequence[ModelEntry],
                 decisions: Sequence[Decision], errors: list[dict[str, Any]],
                 started: float) -> dict[str, Any]:
    """The JSON report (docs/tasks.md, `ocr.audit_models`)."""
    pruned = [d for d in decisions if d.prune]
    return {
        "id": run.task_id,
        "worker": run.worker,
        "host": run.host,
        "model_dir": str(model_dir),
        "mode": run.mode,
        "dry_run": run.mode == "dry-run",
        "started_at": iso(started, "milliseconds"),
        "finished_at": iso(time.time(), "milliseconds"),
        "policy": run.policy.to_dict(),
        "models": [e.to_dict() for e in entries],
        "totals": {
            "entries": len(entries),
            "size_bytes": sum(e.size_bytes for e in entries),
            "models": sum(e.kind == "model" for e in entries),
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
