"""A local folder as a batch's source and target: `submit.py batch DIR --result-url DIR`.

Runs in submit.py, where the batch's driver runs for a local folder (tasks/cli/
batches.py). The folder is listed in sorted path order (the cursor: the last relative
path handled), hidden files and the target's own files left out; the target writes
each object as a file (written whole, then renamed).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tasks.lifecycle.batch_sources import Document


@dataclass(frozen=True)
class LocalTarget:
    root: Path

    def put(self, name: str, data: bytes, content_type: str) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        part.write_bytes(data)
        os.replace(part, path)
        return str(path)

    def get(self, name: str) -> bytes | None:
        path = self.root / name
        return path.read_bytes() if path.is_file() else None

    def get_range(self, name: str, first: int, last: int) -> bytes | None:
        path = self.root / name
        if not path.is_file():
            return None
        with path.open("rb") as f:
            f.seek(first)
            return f.read(last - first + 1)

    def names(self, under: str, after: str, count: int) -> tuple[list[str], bool]:
        folder = self.root / under
        found = sorted(f"{under}{p.name}" for p in folder.iterdir()) \
            if folder.is_dir() else []
        found = [n for n in found if n > after and not n.endswith(".part")]
        return found[:count], len(found) > count


def local_documents(root: Path, excluded: Path | None) -> Iterator[Document]:
    """Every file under `root` (sorted), but those under `excluded` and hidden ones."""
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if excluded is not None and path.resolve().is_relative_to(excluded.resolve()):
            continue
        stat = path.stat()
        yield Document(str(path), relative.as_posix(),
                       {"size": stat.st_size, "mtime": stat.st_mtime_ns})


@dataclass(frozen=True)
class LocalFolder:
    """Every file under `root` (sorted by relative path), but those under `excluded`."""

    root: Path
    excluded: Path | None = None

    def page(self, cursor: str, count: int) -> tuple[list[tuple[Document, str]], bool]:
        after = sorted((d for d in local_documents(self.root, self.excluded)
                        if d.name > cursor), key=lambda d: d.name)
        return [(d, d.name) for d in after[:count]], len(after) <= count
