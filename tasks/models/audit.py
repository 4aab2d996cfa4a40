"""Audit and prune of the model directory: scan, integrity checks, prune policy, removal.

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
from tasks.models import _hub_cache as hub_cache
from tasks.models._hub_cache import HubRepo
from tasks.models.locate import locate, split_model

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
    kind: str  # "model" (folder with config.json), "hub", "folder", "file", "link"
    resolved: Path
    size_bytes: int  # bytes stored in the model directory; a link counts 0
    modified: float  # newest mtime of the entry and everything in it
    integrity: Integrity
    model_type: str | None = None
    link: str | None = None  # a symbolic link's target, as written
    last_used: float | None = None
    loaded_by: tuple[Holder, ...] = ()
    configured_by: tuple[Holder, ...] = ()
    repo: HubRepo | None = None  # kind "hub": the repo; `name` is its repo id
    linked_from: tuple[tuple[str, Path], ...] = ()  # hub: (link entry, its target) into it

    @property
    def folder(self) -> str:
        """The direct entry of the model directory."""
        return self.repo.folder if self.repo is not None else self.name

    def names(self, model: str) -> bool:
        """Whether an OCR_MODEL value (`folder`, `org/name`, `org/name@rev`) is this entry."""
        if self.repo is None:
            return model == self.name
        return model.partition("@")[0] in (self.name, self.repo.folder)

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "kind": self.kind, "model_type": self.model_type,
               "link": self.link, "size_bytes": self.size_bytes,
               "modified": iso(self.modified), "last_used": iso(self.last_used),
               "loaded_by": [h.label for h in self.loaded_by],
               "configured_by": sorted({h.worker or h.host for h in self.configured_by}),
               "integrity": self.integrity.to_dict()}
        if self.repo is not None:
            repo = self.repo
            out["hub"] = {
                "folder": repo.folder, "repo_type": repo.repo_type, "refs": repo.refs,
                "linked_from": [name for name, _ in self.linked_from],
                "revisions": [{"commit": r.commit, "refs": list(r.refs),
                               "size_bytes": r.size_bytes, "modified": iso(r.modified)}
                              for r in repo.revisions],
                "incomplete": [{"file": f"{repo.folder}/blobs/{b.path.name}",
                                "size_bytes": b.size_bytes, "modified": iso(b.modified)}
                               for b in repo.incomplete]}
        return out


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
    """Whether an entry (or a part of a hub repo) goes, and why (`reasons`); `matched`
    are the prune rules it met.

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


class AuditState(Protocol):
    """What the audit needs from Redis (tasks.models.registry.ModelRegistry)."""

    def last_used(self) -> dict[str, float]: ...

    def loaded(self) -> list[Holder]: ...

    def configured(self) -> list[Holder]: ...

    def prune_lock(self, scope: str) -> AbstractContextManager[bool]: ...

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


def hub_entry(repo: HubRepo) -> ModelEntry:
    """A hub cache repo as an entry: named by repo id, integrity of every revision."""
    problems = [repo.problem] if repo.problem else []
    model_type = None
    for rev in repo.revisions:  # revisions with refs first
        has_config, kind, config_problem = read_config(rev.path)
        if config_problem:
            problems.append(f"{rev.commit[:12]}/{config_problem}")
        model_type = model_type or kind
        for folder, _, files in os.walk(rev.path, followlinks=False):
            for name in sorted(files):
                path = Path(folder) / name
                found, _ = _check_file(path, f"{rev.commit[:12]}/{path.relative_to(rev.path)}")
                problems += [p if p.startswith(rev.commit[:12]) else f"{rev.commit[:12]}/{p}"
                             for p in found]
    partial = tuple(f"{repo.folder}/blobs/{b.path.name}" for b in repo.incomplete)
    return ModelEntry(repo.repo_id, "hub", repo.path, repo.size_bytes,
                      max([repo.modified, *(b.modified for b in repo.incomplete)]),
                      Integrity(tuple(problems), partial), model_type=model_type, repo=repo)


def scan(model_dir: Path, last_used: Mapping[str, float], loaded: Iterable[Holder],
         configured: Iterable[Holder] = ()) -> list[ModelEntry]:
    """Every entry of the model directory (hidden ones too; not the hub's `.locks`):
    hub repos by repo id, then the other entries, each group sorted by name."""
    holders = list(loaded)
    wanted = list(configured)
    hub = {repo.folder: hub_entry(repo) for repo in hub_cache.scan(model_dir)}
    entries = [hub[f] for f in sorted(hub, key=lambda f: hub[f].name)]
    for name in sorted(os.listdir(model_dir)):
        if name in hub or hub_cache.is_not_a_model(name):
            continue
        try:
            entries.append(scan_entry(model_dir, name))
        except FileNotFoundError:
            continue  # removed while scanning
    entries = [replace(
        entry, last_used=_last_use(entry, last_used),
        loaded_by=tuple(h for h in holders if entry.names(h.model)
                        or _leads_to(h.path, entry.resolved)),
        configured_by=tuple(h for h in wanted if entry.names(h.model)
                            or _leads_to(h.path, entry.resolved)))
        for entry in entries]
    return [_with_links(entry, entries) if entry.repo is not None else entry
            for entry in entries]


def _with_links(hub: ModelEntry, entries: Sequence[ModelEntry]) -> ModelEntry:
    """A hub repo that hand-made links of the directory lead into: their use counts as
    its use, and the revisions they lead to are kept."""
    links = [e for e in entries if e.link is not None and e.resolved.is_relative_to(hub.resolved)]
    if not links:
        return hub
    used = [t for t in [hub.last_used, *(e.last_used for e in links)] if t is not None]
    return replace(hub, last_used=max(used) if used else None,
                   linked_from=tuple((e.name, e.resolved) for e in links))


def _last_use(entry: ModelEntry, last_used: Mapping[str, float]) -> float | None:
    """Last recorded use: by entry name, or for a hub repo by any `org/name[@rev]`."""
    if entry.repo is None:
        return last_used.get(entry.name)
    times = [t for model, t in last_used.items() if entry.names(model)]
    return max(times) if times else None


def _leads_to(path: str, entry: Path) -> bool:
    """Whether a loaded model's path is the entry or inside it."""
    return bool(path) and Path(path).is_relative_to(entry)


# --- policy -------------------------------------------------------------------------

def matched_rules(entry: ModelEntry, policy: PrunePolicy, now: float) -> list[str]:
    """The prune rules an entry as a whole meets, in the order retired, prefix, unused,
    broken, partial. A hub repo meets only `retired` and `unused` (its partial files and
    detached revisions are pruned apart, see `decide_parts`)."""
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
    """The parts of a hub repo that go while the repo stays: `.incomplete` files older
    than the grace period (`stale_incomplete`), and revisions no ref points to
    (`detached`) unless configured, loaded, recent, or the repo's last revision."""
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
    run: str | None = None  # the every-host run this audit is part of
    now: float = field(default_factory=time.time)


def mode_for(prune: bool, dry_run: bool) -> str:
    """`dry-run` whenever asked for (it implies prune), else `prune` or `audit`."""
    return "dry-run" if dry_run else "prune" if prune else "audit"


def run_audit(run: AuditRun, state: AuditState) -> dict[str, Any]:
    """Scan, decide, prune (mode `prune`, under this directory's prune lock) and store
    the report."""
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
                decisions = [_apply(d, model_dir, errors) for d in decisions]
    report = build_report(run, model_dir, entries, decisions, errors, started, notes)
    state.save_report(report)
    return report


def _apply(decision: Decision, model_dir: Path, errors: list[dict[str, Any]]) -> Decision:
    if not decision.prune:
        return decision
    try:
        if decision.scope == "entry":
            remove_entry(model_dir, decision.folder or decision.name)
            if hub_cache.is_hub_folder(decision.folder or decision.name):
                _remove_locks(model_dir, decision.folder)
        elif decision.scope == "incomplete":
            for rel in decision.parts:
                remove_partial_blob(model_dir, rel)
        else:
            remove_revisions(model_dir, decision.folder, decision.parts)
    except (OSError, OcrError) as exc:
        message = exc.message if isinstance(exc, OcrError) else \
            f"{decision.name}: {exc.strerror or type(exc).__name__}"
        errors.append({**PruneFailed(message).to_dict(), "name": decision.name})
        return replace(decision, prune=False, reasons=("remove_failed",),
                       detail=f"removal failed: {message}")
    return decision


def remove_partial_blob(model_dir: Path, rel: str) -> None:
    """Remove `<hub repo>/blobs/<name>.incomplete` of the model directory, nothing else."""
    parts = rel.split("/")
    if len(parts) != 3 or parts[1] != "blobs" or not hub_cache.is_hub_folder(parts[0]) \
            or not parts[2].endswith(hub_cache.INCOMPLETE_SUFFIX) \
            or any(p in ("", ".", "..") for p in parts):
        raise PathNotAllowed(f"{rel[:120]!r} is not a partial blob of a hub repo")
    path = model_dir / rel
    if (model_dir / parts[0]).is_symlink() or (model_dir / parts[0] / "blobs").is_symlink():
        raise PathNotAllowed(f"{rel[:120]!r} lies behind a symbolic link")
    if not stat.S_ISREG(path.lstat().st_mode):
        raise PathNotAllowed(f"{rel[:120]!r} is not a regular file")
    os.unlink(path)


def remove_revisions(model_dir: Path, folder: str, commits: Sequence[str]) -> None:
    """Remove snapshots of one hub repo with the hub's `delete_revisions`; never its last
    revision (that would remove the repo). OSError when a snapshot is still there."""
    repo = next((r for r in hub_cache.scan(model_dir) if r.folder == folder), None)
    if repo is None or (model_dir / folder).is_symlink():
        raise PathNotAllowed(f"{folder!r} is not a hub repo of the model directory")
    present = {r.commit for r in repo.revisions}
    gone = [c for c in commits if c in present]
    if len(gone) >= len(present):
        raise PathNotAllowed(f"{folder}: refusing to remove every revision as revisions")
    if gone:
        hub_cache.delete_revisions(model_dir, gone)
    left = [c for c in gone if (repo.path / "snapshots" / c).exists()]
    if left:
        raise OSError(13, "a snapshot could not be removed", f"{folder}/snapshots/{left[0]}")


def _remove_locks(model_dir: Path, folder: str) -> None:
    locks = model_dir / hub_cache.LOCKS_DIR / folder
    if locks.is_dir() and not locks.is_symlink():
        shutil.rmtree(locks)


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
        "models": [{**e.to_dict(), **status(whole.get(e.name))} for e in entries],
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


CURRENT_REASONS = frozenset({"current_model", "loaded"})
HELD_BACK_REASONS = frozenset({"audit_only", "prune_locked", "remove_failed"})


def status(decision: Decision | None) -> dict[str, Any]:
    """An entry's status in the design's words: `CURRENT` (configured or loaded
    somewhere), `OLD` (a prune candidate; `old_reason` says why) or `OK`."""
    if decision is None:
        return {"status": "OK", "old_reason": None}
    if CURRENT_REASONS & set(decision.reasons):
        return {"status": "CURRENT", "old_reason": None}
    if decision.prune or HELD_BACK_REASONS & set(decision.reasons):
        return {"status": "OLD", "old_reason": decision.detail}
    return {"status": "OK", "old_reason": None}
