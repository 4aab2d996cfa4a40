"""Results as the command line shows them: text, problem lines, --out files, progress.

Runs in `submit.py` (a user's machine). Every line names its input file; a result that
is not a plain success gets one line on stderr per problem, and a result with page
warnings one per warning; `--out DIR` writes the text (or JSON) and the stored file,
named by the table of formats (tasks/records/formats.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from tasks.cli.core import exit_status
from tasks.client import JobProgress, OcrClient
from tasks.records.formats import FORMATS, STORED_FORMATS, text_suffix
from tasks.records.request import last_named
from tasks.records.status import JobStatus, WaitStatus

PROG = "submit.py"
NO_WORKER_HINT = ("start a worker that consumes that queue (`make run` starts one for "
                  "`ocr` and `ocr-tesseract`; docs/vlm.md: a VLM worker); the jobs "
                  "stay queued, `submit.py wait ID...` picks them up")


def label(result: dict[str, Any]) -> str:
    """How a line names a job: its input's file name, else its id."""
    return str(result.get("filename") or result.get("id"))


def results_status(results: Sequence[dict[str, Any]]) -> int:
    """The exit status of these results: the most severe outcome."""
    return exit_status([str(r.get("status")) for r in results])


def emit(results: list[dict[str, Any]], args: argparse.Namespace, output: str,
         client: OcrClient) -> int:
    """Print results in input order (and write them to --out); the exit status."""
    pages = getattr(args, "pages", None)
    # A range given for several files is for those that have its pages: it is warned
    # of only when no document of the command reaches its last page.
    warn_beyond = len(results) == 1 or not any(reaches(r, pages) for r in results)
    for result in results:
        status = result.get("status")
        name = label(result)
        if args.json:
            print(json.dumps(result, ensure_ascii=False), flush=True)
        elif JobStatus.of(status).answered:
            if len(results) > 1:
                print(f"==> {name} <==")
            print(result["text"], flush=True)
        kept = status == JobStatus.CANCELLED and result.get("pages")
        if args.out is not None and (JobStatus.of(status).answered or kept):
            write_output(result, args.out, output, client)
        if not args.json:
            total = client.status(str(result["id"])).total if kept else 0
            for line in problem_lines(result, total, args.out):
                print(line, file=sys.stderr, flush=True)
        beyond = pages_beyond(result, pages) if warn_beyond else ""
        if beyond:
            print(beyond, file=sys.stderr, flush=True)
    if any(r.get("status") == WaitStatus.PENDING for r in results):
        print(f"{PROG}: {NO_WORKER_HINT}", file=sys.stderr)
    return results_status(results)


def reaches(result: dict[str, Any], pages: str | None) -> bool:
    """Whether the document of `result` has the last page `pages` names."""
    count = result.get("page_count")
    return isinstance(count, int) and count >= last_named(pages)


def pages_beyond(result: dict[str, Any], pages: str | None) -> str:
    """The warning for a page selection past the document's last page ("": none).

    The worker reads the pages the document has; a user who asked `--pages 1-500` of a
    3-page document is told that pages 4-500 were not there (`emit`: with several
    files, only when none of them has page 500).
    """
    count = result.get("page_count")
    asked = last_named(pages)
    if not isinstance(count, int) or not count or asked <= count:
        return ""
    return (f"{label(result)}: warning: --pages {pages} goes past the document's last page "
            f"({count}); pages after {count} do not exist and were not read")


def problem_lines(result: dict[str, Any], total: int = 0,
                  out: Path | None = None) -> list[str]:
    """The stderr lines of a result that is not a plain success, each naming its file.

    `total`: the pages a cancelled job was to read; `out`: where --out wrote its pages.
    """
    written = result.get("result_object") or {}
    warned = warning_lines(result)
    if not written.get("error"):
        return [*_status_lines(result, total, out), *warned]
    # The result is stored (and printed); only its copy at --result-url failed.
    failed = written["error"]
    return [f"{label(result)}: {failed['code']}: {failed['message']} (the result is "
            "kept in the result store)", *_status_lines(result, total, out), *warned]


def warning_lines(result: dict[str, Any]) -> list[str]:
    """A line per page warning of the result (`lang_missing`, `lang_uncertain`, ...).

    Each names the file, the code, and the page and what to do (the message).
    """
    return [f"{label(result)}: warning: {w.get('code')}: {w.get('message')}"
            for w in result.get("warnings") or [] if isinstance(w, dict)]


def _status_lines(result: dict[str, Any], total: int, out: Path | None) -> list[str]:
    name, status = label(result), result.get("status")
    error = result.get("error") or {}
    if status == JobStatus.PARTIAL:
        return [f"{name}: PARTIAL: page {p['number']} failed: {p['code']}: {p['message']}"
                for p in result.get("failed_pages", [])]
    if status == JobStatus.CANCELLED:
        return [f"{name}: CANCELLED{_kept(result, total, out)}"]
    if status == WaitStatus.TIMEOUT:
        return [f"{name}: still running when --timeout passed (job {result['id']}; "
                f"`{PROG} wait {result['id']}` waits again)"]
    if status == WaitStatus.PENDING:
        return [f"{name}: {error.get('code')}: {error.get('message')} "
                f"(job {result['id']} stays queued)"]
    if status != JobStatus.SUCCESS:
        return [f"{name}: {status} {error.get('code')}: {error.get('message')}"]
    return []


def _kept(result: dict[str, Any], total: int, out: Path | None) -> str:
    """How many pages a cancelled job kept, and where they are."""
    pages = [p["number"] for p in result.get("pages", [])]
    if not pages:
        return ": no page had finished"
    of = f" of {total}" if total >= len(pages) else ""
    where = (f"written to {out}" if out is not None else
             f"`{PROG} --json wait {result['id']}` prints them, `--out DIR` writes them")
    return f": {len(pages)}{of} pages kept (pages {_ranges(pages)}; {where})"


def _ranges(numbers: list[int]) -> str:
    """1,2,3,7 -> 1-3,7."""
    runs: list[list[int]] = []
    for n in sorted(set(numbers)):
        if runs and runs[-1][1] == n - 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def write_output(result: dict[str, Any], out_dir: Path, output: str,
                 client: OcrClient) -> list[Path]:
    """Write the text (or JSON) and the stored file: searchable PDF, hOCR or ALTO."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(result.get("filename") or result["id"]).stem or result["id"]
    path = out_dir / (stem + text_suffix(str(result.get("output", output))))
    if path.suffix == FORMATS["json"].suffix:
        path.write_text(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        path.write_text(result["text"])
    written = [path]
    stored = client.fetch_output(result)
    kind = next((k for k in STORED_FORMATS if isinstance(result.get(k), dict)), None)
    if stored is not None and kind is not None:
        written.append(out_dir / f"{stem}{FORMATS[kind].suffix}")
        written[-1].write_bytes(stored)
    return written


class ProgressLine:
    """One status line on a terminal: pages done per job."""

    def __init__(self, stream: TextIO, names: dict[str, str]) -> None:
        self.stream = stream
        self.names = names
        self.seen: dict[str, JobProgress] = {}
        self.enabled = stream.isatty()

    def __call__(self, job_id: str, status: JobProgress) -> None:
        if not self.enabled:
            return
        self.seen[job_id] = status
        parts = [_bar(self.names.get(job_id) or job_id[:8], s) for job_id, s in
                 self.seen.items()]
        self.stream.write("\r\033[K" + "  ".join(parts)[-200:])
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.seen:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _bar(name: str, status: JobProgress) -> str:
    if status.total:
        filled = int(20 * status.done / status.total)
        return f"{name} [{'#' * filled}{'.' * (20 - filled)}] {status.done}/{status.total}"
    return f"{name} {status.status.lower()}"
