"""`submit.py batch`: OCR a whole collection, and follow, cancel or retry a batch.

Runs in submit.py (a user's machine). `batch SOURCE --result-url TARGET` with an
s3:// (or https://) SOURCE records the batch in Redis and sends its driver's first
step: the workers do the rest (tasks/lifecycle/batches.py); the command waits for its
end like the other forms (`--no-wait`: the id alone), and `batch status|wait|cancel|
retry ID` follow it. With a local folder as SOURCE (and a folder as TARGET) this
process steps the same driver itself (tasks/cli/local_batch.py). It reads the
folder's images and PDFs, told by their first bytes; `--include`/`--exclude GLOB`
choose among them, and one line on stderr says how many files were left out and why.
Each is uploaded as a job (`--password` goes with each, never into a record), at most
OCR_BATCH_WINDOW at once, its output and manifest line written under TARGET as it
ends, `manifest.jsonl` at the end; run it again to resume (files whose manifest line
shows the same size, mtime and options are skipped, and those that failed still
count: the exit status is the collection's). Before the text summary, stderr names
each document that failed, with its code, from the target's manifest.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from tasks.admission import check_result_target
from tasks.cli.commands import command
from tasks.cli.core import (
    EXIT_CANCELLED,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Session,
    door_refusal,
)
from tasks.cli.local_batch import Progress, failure_lines, progress_stream, run_local
from tasks.cli.output import PROG
from tasks.errors import OcrError
from tasks.lifecycle.batch_local import (
    EXCLUDED,
    NOT_A_DOCUMENT,
    NOT_INCLUDED,
    UNREADABLE,
    FolderChoice,
    LocalTarget,
    choose,
)
from tasks.lifecycle.fetcher import Fetcher
from tasks.lifecycle.url_policy import is_url
from tasks.queue.batch_steps import batch_store, start_chain
from tasks.records.batches import RETRYABLE_STATES, BatchRecord, BatchState
from tasks.records.request import OUTPUT_CHOICES
from tasks.settings import Settings
from tasks.state.batch_store import BatchStore, progress_of
from tasks.state.connection import connect

ACTIONS = ("status", "wait", "cancel", "retry")
EXIT_BY_STATE = {BatchState.SUCCESS.value: EXIT_OK, BatchState.PARTIAL.value: EXIT_PARTIAL,
                 BatchState.FAILURE.value: EXIT_FAILURE,
                 BatchState.CANCELLED.value: EXIT_CANCELLED}
WAIT_SECONDS = 1.0  # between two reads of a batch the command waits for


def batch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", metavar="SOURCE|ACTION",
                        help="an s3://bucket/prefix/, a manifest's URL or a local folder; "
                        f"or one of {', '.join(ACTIONS)} followed by a batch's id")
    parser.add_argument("batch_id", nargs="?", metavar="ID", help="the batch (ACTION)")
    parser.add_argument("--result-url", metavar="TARGET",
                        help="s3://bucket/prefix/ (a folder for a local SOURCE)")
    parser.add_argument("--output", choices=OUTPUT_CHOICES, default="text")
    parser.add_argument("--lang")
    parser.add_argument("--engine")
    parser.add_argument("--mode", choices=("auto", "ocr", "text"))
    parser.add_argument("--pages")
    parser.add_argument("--no-cache", action="store_true",
                        help="read each document afresh: not answered from the result "
                        "cache (documents the manifest shows read are still skipped: "
                        "--overwrite reads them too)")
    parser.add_argument("--priority", default="batch",
                        choices=("interactive", "normal", "batch"))
    parser.add_argument("--overwrite", action="store_true",
                        help="read every document, even one whose manifest line shows the "
                        "same source version and options")
    parser.add_argument("--retry-failed", action="store_true",
                        help="local SOURCE: read again the files whose line says they failed")
    parser.add_argument("--no-wait", action="store_true",
                        help="print the batch's id and return (s3:// or https:// SOURCE)")
    parser.add_argument("--progress", action="store_true",
                        help="a progress line on stderr every second also when it is not "
                        "a terminal (else every 5 s there)")
    parser.add_argument("--include", action="append", default=[], metavar="GLOB",
                        help="local SOURCE: read only files whose path under it, or name, "
                        "matches GLOB (repeatable; `*` also crosses `/`)")
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="local SOURCE: leave out files whose path or name matches "
                        "GLOB (repeatable)")
    parser.add_argument("--password", help="local SOURCE: password of its encrypted PDFs "
                        "(sent with each job, never written to the manifest)")


@command("batch", "OCR a collection (s3:// prefix, manifest or folder) into a target; "
         "status|wait|cancel|retry ID", f"{PROG} batch s3://scans/2024/ --result-url "
         "s3://ocr/2024/", shared=("json", "timeout", "client"), arguments=batch_arguments)
def run_batch(args: argparse.Namespace, session: Session) -> int:
    """Start a batch, drive a local one, or act on one by its id."""
    if args.what in ACTIONS:
        if not args.batch_id:
            print(f"{PROG}: batch {args.what} needs a batch's id", file=sys.stderr)
            return EXIT_USAGE
        return _act(args, session)
    if not args.result_url:
        print(f"{PROG}: batch SOURCE needs --result-url TARGET", file=sys.stderr)
        return EXIT_USAGE
    options = {k: v for k, v in {"output": args.output, "lang": args.lang,
                                 "engine": args.engine, "mode": args.mode,
                                 "pages": args.pages,
                                 "no_cache": args.no_cache or None}.items() if v is not None}
    if is_url(args.what):
        local_only = [flag for flag, given in (("--include", args.include),
                                               ("--exclude", args.exclude),
                                               ("--password", args.password)) if given]
        if local_only:
            print(f"{PROG}: {', '.join(local_only)}: only for a local folder as SOURCE",
                  file=sys.stderr)
            return EXIT_USAGE
        return _start(args, session, options)
    source, target = Path(args.what), Path(args.result_url)
    if not source.is_dir():
        print(f"{PROG}: {source} is not a folder (nor an s3:// or https:// URL)",
              file=sys.stderr)
        return EXIT_USAGE
    try:  # refused at the door, as submit's files are
        session.client.admit({**options, "password": args.password} if args.password
                             else options, priority=args.priority)
    except OcrError as exc:
        return door_refusal(exc, PROG)
    choice = choose(source, target, args.include, args.exclude)
    said = left_out_line(choice)
    if said:
        print(f"{PROG}: {said}", file=sys.stderr, flush=True)
    summary = run_local(session.client, _store(session), source, target, options,
                        overwrite=args.overwrite, retry_failed=args.retry_failed,
                        priority=args.priority, timeout=args.timeout,
                        progress=progress_stream(args.progress), chosen=choice.chosen,
                        password=args.password)
    summary["left_out"] = {reason: len(names) for reason, names in choice.left_out.items()}
    if not args.json:  # on stderr, as submit.py's lines of failed files
        retry = None if args.retry_failed else ("run again with --retry-failed to read "
                                                "them again")
        for line in failure_lines(LocalTarget(target), summary, retry):
            print(line, file=sys.stderr, flush=True)
    _print(summary, args.json)
    return EXIT_BY_STATE.get(summary["state"], EXIT_TIMEOUT)


REASONS = {NOT_A_DOCUMENT: "no image or PDF (by their first bytes)",
           EXCLUDED: "matched --exclude", NOT_INCLUDED: "matched no --include",
           UNREADABLE: "could not be read"}
EXAMPLES = 3  # names shown of each reason's files


def left_out_line(choice: FolderChoice) -> str:
    """One line saying how many files the batch leaves out, why, and a few names."""
    if not choice.left_out:
        return ""
    count = sum(len(names) for names in choice.left_out.values())
    parts = []
    for reason, names in choice.left_out.items():
        shown = ", ".join(names[:EXAMPLES]) + (", ..." if len(names) > EXAMPLES else "")
        parts.append(f"{len(names)} {REASONS[reason]} ({shown})")
    return (f"left out {count} of {count + len(choice.chosen)} files: "
            f"{'; '.join(parts)}")


def _start(args: argparse.Namespace, session: Session, options: dict[str, Any]) -> int:
    """Record a batch in Redis and send its first step; wait for its end (or not)."""
    client = session.client
    try:
        priority = client.admit(options, priority=args.priority).priority
        # The target where this client writes results, clear of read-only prefixes.
        check_result_target(args.result_url, client.rules, session.settings,
                            service=False, batch=True)
    except OcrError as exc:
        return door_refusal(exc, PROG)
    store = _store(session)
    record = store.create(BatchRecord(id="", source=args.what, target=args.result_url,
                                      options=options, priority=priority,
                                      client=client.client, overwrite=args.overwrite))
    start_chain(client.app, store, record.id)
    if args.no_wait:
        print(json.dumps({"id": record.id, "state": BatchState.RUNNING.value})
              if args.json else record.id, flush=True)
        return EXIT_OK
    progress = progress_stream(args.progress)
    print(f"batch {record.id}: {args.what} -> {args.result_url}", file=progress.stream,
          flush=True)
    return _wait(store, record.id, args, progress, session.settings)


def _store(session: Session) -> BatchStore:
    return batch_store(session.settings, connect(session.settings.redis_target,
                                                 patient=False))


def _act(args: argparse.Namespace, session: Session) -> int:
    client = session.client
    store = _store(session)
    batch_id = args.batch_id
    record = store.get(batch_id)
    if not record.exists:
        print(f"{PROG}: no batch {batch_id}", file=sys.stderr)
        return EXIT_FAILURE
    if args.what == "cancel" and not record.state.final:
        store.update(batch_id, cancel=True)
        if not record.local:  # a local batch's own process sees it at its next step
            start_chain(client.app, store, batch_id)
    elif args.what == "retry":
        if record.state not in RETRYABLE_STATES or record.local:
            print(f"{PROG}: only a PARTIAL or FAILURE batch of the service can be retried "
                  f"(a local one: run it again with --retry-failed); this one is "
                  f"{record.state}", file=sys.stderr)
            return EXIT_USAGE
        store.reopen(batch_id, "retry")
        start_chain(client.app, store, batch_id)
    elif args.what == "wait":
        return _wait(store, batch_id, args, progress_stream(args.progress),
                     session.settings)
    _print(progress_of(store.get(batch_id), store.in_flight(batch_id)), args.json)
    return EXIT_OK


def _wait(store: BatchStore, batch_id: str, args: argparse.Namespace,
          progress: Progress, settings: Settings) -> int:
    """Wait for the batch's end (or --timeout); print it; the exit status of its state."""
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    while not store.get(batch_id).state.final:
        progress.show(progress_of(store.get(batch_id), store.in_flight(batch_id)))
        if deadline is not None and time.monotonic() > deadline:
            _print(progress_of(store.get(batch_id), store.in_flight(batch_id)), args.json)
            return EXIT_TIMEOUT
        time.sleep(WAIT_SECONDS)
    shown = progress_of(store.get(batch_id), 0)
    if not args.json:
        for line in _service_failures(store.get(batch_id), shown, settings):
            print(line, file=sys.stderr, flush=True)
    _print(shown, args.json)
    return EXIT_BY_STATE.get(shown["state"], EXIT_OK)


def _service_failures(record: BatchRecord, shown: dict[str, Any],
                      settings: Settings) -> list[str]:
    """A service batch's failed documents, from its manifest where this host reads it."""
    retry = f"`{PROG} batch retry {record.id}` reads them again"
    failed = shown["documents"]["failed"] + shown["documents"]["skipped_failed"]
    if not failed or record.local:
        return []
    try:
        return failure_lines(Fetcher.for_client(settings, None).target(record.target),
                             shown, retry)
    except (OcrError, ModuleNotFoundError) as exc:  # no boto3, credentials or access here
        reason = exc.code if isinstance(exc, OcrError) else f"no {exc.name}"
        return [f"{failed} documents failed: their lines are in {shown['manifest']} "
                f"(not readable from here: {reason})"]


def _print(shown: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(shown), flush=True)
        return
    docs, pages = shown["documents"], shown["pages"]
    total = "?" if docs["total"] is None else docs["total"]
    print(f"{shown.get('id') or '-'}\t{shown['state']}\tdocuments {docs['done']} done, "
          f"{docs['failed']} failed, {docs['skipped']} skipped, {docs['running']} running "
          f"of {total}\tpages {pages['done']} done, {pages['failed']} failed\t"
          f"{shown['pages_per_second']} pages/s", flush=True)
