"""A set of documents with ground truth: a local folder, one file, or an s3:// prefix.

Runs where reads are scored: `submit.py eval` (a user's machine) and the golden-set
audit (`ocr_admin.py accuracy --run`, beat's nightly audit). Each document `NAME.EXT`
that has `NAME.gt.txt` or `NAME.gt.xml` beside it is in the set (tasks/evaluation/
ground_truth.py reads those); files without one, and the ground-truth files
themselves, are not. One file `NAME.EXT` is a set of one: its truth must lie beside
it. An s3:// prefix is listed and its ground truth read with the
caller's own credentials (the S3 adapter, tasks/lifecycle/_s3.py); its documents are
read by the workers themselves, so the prefix must lie under OCR_ALLOWED_URLS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.errors import BadRequest, InputNotFound
from tasks.evaluation.ground_truth import GT_SUFFIXES, document_name, parse_ground_truth
from tasks.lifecycle.batch_sources import S3Target
from tasks.lifecycle.url_policy import check_url

if TYPE_CHECKING:
    from tasks.settings import Settings

__all__ = ["EvalDocument", "eval_documents"]

LISTING_PAGE = 1000


@dataclass(frozen=True)
class EvalDocument:
    """One document of a set: its file name, where it is read from, its truth's pages."""

    name: str
    source: str  # a local path, or an s3:// URL the workers read
    truth: list[str]


def _pick(names: list[str]) -> list[tuple[str, str]]:
    """(document, ground-truth file) pairs among these names, in name order."""
    present = set(names)
    pairs = []
    for name in sorted(names):
        if name.endswith((*GT_SUFFIXES, "/")) or name.startswith("."):
            continue
        stem = document_name(name)
        found = next((stem + s for s in GT_SUFFIXES if stem + s in present), None)
        if found is not None:
            pairs.append((name, found))
    return pairs


def _folder(folder: Path) -> list[EvalDocument]:
    names = [p.name for p in folder.iterdir() if p.is_file()]
    return [EvalDocument(name, str(folder / name),
                         parse_ground_truth(gt, (folder / gt).read_bytes()))
            for name, gt in _pick(names)]


def _file(path: Path) -> list[EvalDocument]:
    """A set of one: the file and the ground truth beside it."""
    if path.name.endswith(GT_SUFFIXES):
        raise BadRequest(f"{path}: a ground-truth file; name its document (NAME.pdf, "
                         "NAME.png, ...) or the folder that holds both")
    stem = document_name(path.name)
    truth = next((path.with_name(stem + s) for s in GT_SUFFIXES
                  if path.with_name(stem + s).is_file()), None)
    if truth is None:
        raise BadRequest(f"{path}: no ground truth beside it ({stem}.gt.txt or "
                         f"{stem}.gt.xml next to it)")
    return [EvalDocument(path.name, str(path),
                         parse_ground_truth(truth.name, truth.read_bytes()))]


def _s3_prefix(url: str, settings: Settings) -> list[EvalDocument]:
    parsed = check_url(url, settings.allowed_urls, "the set's s3:// prefix", prefix_ok=True)
    prefix = parsed.key if not parsed.key or parsed.key.endswith("/") else parsed.key + "/"
    target = S3Target(parsed.bucket, prefix, settings.url_timeout, settings.url_deadline)
    names: list[str] = []
    more = True
    while more:
        found, more = target.names("", names[-1] if names else "", LISTING_PAGE)
        if not found:
            break
        names.extend(found)
    documents = []
    for name, gt in _pick([n for n in names if "/" not in n]):
        data = target.get(gt)
        if data is None:
            continue  # removed since the listing
        documents.append(EvalDocument(name, f"{target.url}{name}",
                                      parse_ground_truth(gt, data)))
    return documents


def eval_documents(location: str, settings: Settings) -> list[EvalDocument]:
    """The documents with ground truth in a folder, one file, or under an s3:// prefix.

    Raises `InputNotFound` for a path that does not exist, `BadRequest` for a
    location that holds no document with ground truth or a ground truth that cannot
    be read, `UrlNotAllowed` for a prefix outside OCR_ALLOWED_URLS.
    """
    path = Path(location).expanduser()
    if location.startswith("s3://"):
        documents = _s3_prefix(location, settings)
    elif path.is_file():
        documents = _file(path)
    elif path.is_dir():
        documents = _folder(path)
    else:
        raise InputNotFound(f"{location}: no such file or folder")
    if not documents:
        raise BadRequest(f"{location}: no document with ground truth beside it "
                         "(NAME.gt.txt or NAME.gt.xml next to NAME.pdf, NAME.png, ...)")
    return documents
