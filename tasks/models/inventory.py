"""What the model directory holds: its entries (folders, links, hub-cache repos), scanned.

`scan()` lists every entry with its size, kind, integrity and use (last used, loaded by
which workers), read offline (hub repos through tasks/models/_hub_cache.py). Runs in the
worker pool child that runs `ocr.audit_models`; `Holder` (a worker that has a model
loaded) is also written by pool children (tasks/models/registry.py).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.models import _hub_cache as hub_cache
from tasks.models._hub_cache import HubRepo
from tasks.models.integrity import Integrity, check_file, read_config


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


def iso(timestamp: float | None, timespec: str = "seconds") -> str | None:
    """UTC ISO 8601 time of an epoch timestamp (None stays None)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec=timespec)


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
        problems, partial = check_file(path, name)
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
            found, parts = check_file(path, str(path.relative_to(root)))
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
                found, _ = check_file(path, f"{rev.commit[:12]}/{path.relative_to(rev.path)}")
                problems += [p if p.startswith(rev.commit[:12]) else f"{rev.commit[:12]}/{p}"
                             for p in found]
    partial = tuple(f"{repo.folder}/blobs/{b.path.name}" for b in repo.incomplete)
    return ModelEntry(repo.repo_id, "hub", repo.path, repo.size_bytes,
                      max([repo.modified, *(b.modified for b in repo.incomplete)]),
                      Integrity(tuple(problems), partial), model_type=model_type, repo=repo)


def scan(model_dir: Path, last_used: Mapping[str, float], loaded: Iterable[Holder],
         configured: Iterable[Holder] = ()) -> list[ModelEntry]:
    """Every entry of the model directory (hidden ones too; not the hub's `.locks`).

    Hub repos by repo id, then the other entries, each group sorted by name.
    """
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
    """A hub repo that hand-made links of the directory lead into.

    Their use counts as its use, and the revisions they lead to are kept.
    """
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
