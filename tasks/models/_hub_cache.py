"""Hugging Face hub cache layout: the only module that imports `huggingface_hub`.

Runs wherever a model directory is read: the audit (worker pool child), the model
resolution of the mlx-vlm engine (pool child) and of the settings (any process). Nothing
here reaches the network: the cache is read with `scan_cache_dir`, revisions are removed
with `delete_revisions`, and a repo's folder name comes from the hub's own constants.

A hub repo is a direct entry `models--<org>--<name>` of the cache with `blobs/` (the
files, named by hash; `*.incomplete` while downloading), `snapshots/<commit>/` (links
into the blobs), `refs/<name>` (a commit hash per branch or tag) and, at the top of the
cache, `.locks/` (download locks, not a model).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import scan_cache_dir
from huggingface_hub.constants import REPO_ID_SEPARATOR, REPO_TYPES
from huggingface_hub.errors import CacheNotFound, CorruptedCacheException
from huggingface_hub.file_download import repo_folder_name

LOCKS_DIR = ".locks"  # the hub's download locks (file_download.py), never a model
NOT_MODELS = frozenset({LOCKS_DIR, "CACHEDIR.TAG"})
INCOMPLETE_SUFFIX = ".incomplete"
# Folder prefixes of the cache: `models--`, `datasets--`, `spaces--`.
REPO_TYPES_BY_PREFIX = {f"{kind}s": kind for kind in REPO_TYPES if kind}


@dataclass(frozen=True)
class HubRevision:
    """One `snapshots/<commit>` folder and the refs that point to it."""

    commit: str
    refs: tuple[str, ...]
    path: Path
    size_bytes: int  # blobs it links to, each once
    modified: float
    own_bytes: int = 0  # blobs no other revision of the repo links to


@dataclass(frozen=True)
class PartialBlob:
    """A `blobs/*.incomplete` file: a download that is running or was interrupted."""

    path: Path
    size_bytes: int
    modified: float


@dataclass(frozen=True)
class HubRepo:
    """A repo of the cache as `scan_cache_dir` saw it (or why it could not)."""

    repo_id: str
    repo_type: str
    folder: str  # the direct entry of the cache: models--org--name
    path: Path
    size_bytes: int  # blobs, each counted once
    modified: float
    revisions: tuple[HubRevision, ...] = ()
    incomplete: tuple[PartialBlob, ...] = ()
    problem: str | None = None  # set when the hub's scan refused the repo

    @property
    def refs(self) -> dict[str, str]:
        return {ref: rev.commit for rev in self.revisions for ref in rev.refs}


def is_hub_folder(name: str) -> bool:
    """Whether a direct entry of the model directory is named like a hub cache repo."""
    kind, sep, rest = name.partition(REPO_ID_SEPARATOR)
    return bool(sep and rest) and kind in REPO_TYPES_BY_PREFIX


def is_not_a_model(name: str) -> bool:
    """Entries the hub keeps beside its repos (`.locks`, `CACHEDIR.TAG`)."""
    return name in NOT_MODELS


def folder_for(repo_id: str, repo_type: str = "model") -> str:
    """The cache folder of a repo id: `org/name` -> `models--org--name`."""
    return str(repo_folder_name(repo_id=repo_id, repo_type=repo_type))


def scan(cache_dir: Path) -> list[HubRepo]:
    """Every hub repo of the cache, sorted by folder (empty when there is none)."""
    try:
        info = scan_cache_dir(cache_dir)
    except (CacheNotFound, ValueError):
        return []
    root = Path(info.cache_dir or cache_dir)
    incomplete: dict[str, list[PartialBlob]] = {}
    for blob in info.incomplete_files:
        folder = blob.file_path.parent.parent.name
        try:
            modified = blob.file_path.lstat().st_mtime
        except OSError:
            continue  # finished or removed meanwhile
        incomplete.setdefault(folder, []).append(
            PartialBlob(blob.file_path, blob.size_on_disk, modified))
    repos: dict[str, HubRepo] = {}
    for repo in info.repos:
        users: dict[Path, int] = {}
        for rev in repo.revisions:
            for blob_path in {f.blob_path for f in rev.files}:
                users[blob_path] = users.get(blob_path, 0) + 1
        revisions = tuple(sorted(
            (HubRevision(r.commit_hash, tuple(sorted(r.refs)), r.snapshot_path,
                         r.size_on_disk, r.last_modified,
                         sum(f.size_on_disk for f in {f.blob_path: f for f in r.files}.values()
                             if users[f.blob_path] == 1))
             for r in repo.revisions),
            key=lambda r: (not r.refs, r.commit)))
        folder = repo.repo_path.name
        repos[folder] = HubRepo(repo.repo_id, repo.repo_type, folder, repo.repo_path,
                                repo.size_on_disk, repo.last_modified, revisions,
                                _sorted(incomplete.get(folder, [])))
    _add_refused(repos, root, info.warnings, incomplete)
    return [repos[f] for f in sorted(repos)]


def _add_refused(repos: dict[str, HubRepo], root: Path,
                 warnings: list[CorruptedCacheException],
                 incomplete: dict[str, list[PartialBlob]]) -> None:
    """Repo folders the hub's scan refused (a missing blob, a ref to no snapshot)."""
    for name in sorted(os.listdir(root)):
        if name in repos or not is_hub_folder(name):
            continue
        kind, _, rest = name.partition(REPO_ID_SEPARATOR)
        path = root / name
        said = [str(w).replace(str(root) + os.sep, "") for w in warnings if name in str(w)]
        repos[name] = HubRepo(rest.replace(REPO_ID_SEPARATOR, "/"), REPO_TYPES_BY_PREFIX[kind],
                              name, path, 0, path.lstat().st_mtime,
                              incomplete=_sorted(incomplete.get(name, [])),
                              problem=said[0] if said else "not a valid hub cache repo")


def _sorted(blobs: list[PartialBlob]) -> tuple[PartialBlob, ...]:
    return tuple(sorted(blobs, key=lambda b: b.path.name))


def resolve(cache_dir: Path, repo_id: str, revision: str | None) -> Path | None:
    """The snapshot folder of `repo_id` at `revision`, read offline, or None.

    `revision` is a ref (default `main`) or a commit hash; None when the cache does not
    have it.
    """
    folder = cache_dir / folder_for(repo_id)
    if not folder.is_dir():
        return None
    wanted = revision or "main"
    for repo in scan(cache_dir):
        if repo.folder != folder.name:
            continue
        for rev in repo.revisions:
            if wanted == rev.commit or wanted in rev.refs:
                return rev.path
    return None


def delete_revisions(cache_dir: Path, commits: list[str]) -> int:
    """Remove snapshots with the hub's own strategy; the bytes it expects to free.

    The blobs only they link to go too. The caller never passes every revision of a
    repo (the hub then removes the whole repo).
    """
    strategy = scan_cache_dir(cache_dir).delete_revisions(*commits)
    strategy.execute()
    return int(strategy.expected_freed_size)
