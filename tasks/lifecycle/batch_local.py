"""A local folder as a batch's source and target: `submit.py batch DIR --result-url DIR`.

Runs in submit.py, where the batch's driver runs for a local folder (tasks/cli/
batches.py). The folder is listed in sorted path order (the cursor: the last relative
path handled), hidden files and the target's own files left out; the target writes
each object as a file (written whole, then renamed).

`choose` picks the files a batch reads, once, before it starts: images and PDFs, told
by their first bytes (tasks/records/formats.py), whose path under the folder or name
matches an `--include` GLOB (when some are given) and no `--exclude` GLOB (fnmatch's
globs: `*` also crosses `/`). It says which files it left out, and why.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from tasks.lifecycle.batch_sources import Document
from tasks.records.formats import SNIFF_BYTES, input_format

# Why `choose` left a file out, in the order it asks.
EXCLUDED = "excluded"          # its path or name matches an --exclude GLOB
NOT_INCLUDED = "not_included"  # --include GLOBs given, and none matches it
NOT_A_DOCUMENT = "no_image_or_pdf"  # its first bytes are no image's or PDF's (or none)
UNREADABLE = "unreadable"      # its first bytes could not be read (permissions)


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


def matches(name: str, globs: Sequence[str]) -> bool:
    """Whether a relative path, or its last part, matches one of `globs`."""
    last = name.rsplit("/", 1)[-1]
    return any(fnmatchcase(name, glob) or fnmatchcase(last, glob) for glob in globs)


def _head(path: Path) -> bytes | None:
    """The file's first SNIFF_BYTES; None when it cannot be read."""
    try:
        with path.open("rb") as f:
            return f.read(SNIFF_BYTES)
    except OSError:
        return None


@dataclass(frozen=True)
class FolderChoice:
    """The files of a folder a batch reads, and those left out by reason."""

    chosen: frozenset[str]
    left_out: dict[str, list[str]] = field(default_factory=dict)  # reason -> names


def choose(root: Path, excluded: Path | None, include: Sequence[str] = (),
           exclude: Sequence[str] = ()) -> FolderChoice:
    """The files under `root` a batch reads (see the module's docstring)."""
    chosen: list[str] = []
    left_out: dict[str, list[str]] = {}
    for document in local_documents(root, excluded):
        name = document.name
        if matches(name, exclude):
            reason = EXCLUDED
        elif include and not matches(name, include):
            reason = NOT_INCLUDED
        elif (head := _head(Path(document.url))) is None:
            reason = UNREADABLE
        elif input_format(head) is None:
            reason = NOT_A_DOCUMENT
        else:
            chosen.append(name)
            continue
        left_out.setdefault(reason, []).append(name)
    return FolderChoice(frozenset(chosen), left_out)


@dataclass(frozen=True)
class LocalFolder:
    """Every file under `root` (sorted by relative path), but those under `excluded`.

    `chosen`: only those relative paths (`choose`'s); None: every file.
    """

    root: Path
    excluded: Path | None = None
    chosen: frozenset[str] | None = None

    def page(self, cursor: str, count: int) -> tuple[list[tuple[Document, str]], bool]:
        after = sorted((d for d in local_documents(self.root, self.excluded)
                        if d.name > cursor and (self.chosen is None or d.name in self.chosen)),
                       key=lambda d: d.name)
        return [(d, d.name) for d in after[:count]], len(after) <= count
