"""`submit.py batch`: OCR a whole collection, and follow, cancel or retry a batch.

Runs in submit.py (a user's machine). `batch SOURCE --result-url TARGET` with an
s3:// (or https://) SOURCE records the batch in Redis and sends its driver's first
step: the workers do the rest (tasks/lifecycle/batches.py), and `batch status|wait|
cancel|retry ID` follow it. With a local folder as SOURCE (and a folder as TARGET) this
process drives the batch itself: each file is uploaded as a job, at most
OCR_BATCH_WINDOW at once, its output and manifest line written under TARGET as it
ends, `manifest.jsonl` at the end; run it again to resume (files whose manifest line
shows the same size, mtime and options are skipped).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from tasks.cli.commands import command
from tasks.cli.core import (
    EXIT_CANCELLED,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Session,
)
from tasks.cli.output import PROG
from tasks.client import OcrClient
from tasks.errors import OcrError
from tasks.lifecycle.batch_sources import (
    LocalTarget,
    compose_manifest,
    local_documents,
    manifest_name,
    options_digest,
    output_name,
    read_line,
    same_read,
)
from tasks.lifecycle.batches import FAILED, manifest_line
from tasks.lifecycle.url_inputs import result_content
from tasks.lifecycle.url_policy import is_url
from tasks.queue.batch_chain import batch_store, start_chain
from tasks.records.formats import FORMATS
from tasks.records.request import OUTPUT_CHOICES
from tasks.state.batch_store import FINAL, BatchStore, progress_of
from tasks.state.connection import connect

ACTIONS = ("status", "wait", "cancel", "retry")
EXIT_BY_STATE = {"SUCCESS": EXIT_OK, "PARTIAL": EXIT_PARTIAL, "FAILURE": EXIT_FAILURE,
                 "CANCELLED": EXIT_CANCELLED}
POLL_SECONDS = 0.2


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
    parser.add_argument("--priority", default="batch",
                        choices=("interactive", "normal", "batch"))
    parser.add_argument("--overwrite", action="store_true",
                        help="read every document, even one whose manifest line shows the "
                        "same source version and options")
    parser.add_argument("--retry-failed", action="store_true",
                        help="local SOURCE: read again the files whose line says they failed")


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
                                 "pages": args.pages}.items() if v is not None}
    if is_url(args.what):
        return _start(args, session, options)
    source, target = Path(args.what), Path(args.result_url)
    if not source.is_dir():
        print(f"{PROG}: {source} is not a folder (nor an s3:// or https:// URL)",
              file=sys.stderr)
        return EXIT_USAGE
    summary = run_local(session.client, source, target, options, overwrite=args.overwrite,
                        retry_failed=args.retry_failed, priority=args.priority,
                        window=session.settings.batch_window, timeout=args.timeout)
    _print(summary, args.json)
    return EXIT_BY_STATE.get(summary["state"], EXIT_TIMEOUT)


def _start(args: argparse.Namespace, session: Session, options: dict[str, Any]) -> int:
    """Record a batch in Redis and send its first step; print its id."""
    client = session.client
    client.admit(options)
    store = _store(session)
    batch_id = store.create({"source": args.what, "target": args.result_url,
                             "options": options, "priority": args.priority,
                             "client": client.client, "owner": "",
                             "overwrite": "1" if args.overwrite else ""})
    start_chain(client.app, store, batch_id)
    print(json.dumps({"id": batch_id, "state": "RUNNING"}) if args.json else batch_id,
          flush=True)
    return EXIT_OK


def _store(session: Session) -> BatchStore:
    return batch_store(session.settings, connect(session.settings.redis_target,
                                                 patient=False))


def _act(args: argparse.Namespace, session: Session) -> int:
    client = session.client
    store = _store(session)
    batch_id = args.batch_id
    record = store.get(batch_id)
    if not record:
        print(f"{PROG}: no batch {batch_id}", file=sys.stderr)
        return EXIT_FAILURE
    if args.what == "cancel" and record.get("state") not in FINAL:
        store.update(batch_id, cancel="1")
        start_chain(client.app, store, batch_id)
    elif args.what == "retry":
        if record.get("state") not in ("PARTIAL", "FAILURE"):
            print(f"{PROG}: only a PARTIAL or FAILURE batch can be retried; this one is "
                  f"{record.get('state')}", file=sys.stderr)
            return EXIT_USAGE
        store.reopen(batch_id, "retry")
        start_chain(client.app, store, batch_id)
    elif args.what == "wait":
        deadline = None if args.timeout is None else time.monotonic() + args.timeout
        while store.get(batch_id).get("state") not in FINAL:
            if deadline is not None and time.monotonic() > deadline:
                _print(progress_of(store.get(batch_id), store.in_flight(batch_id)), args.json)
                return EXIT_TIMEOUT
            time.sleep(1.0)
        shown = progress_of(store.get(batch_id), 0)
        _print(shown, args.json)
        return EXIT_BY_STATE.get(shown["state"], EXIT_OK)
    _print(progress_of(store.get(batch_id), store.in_flight(batch_id)), args.json)
    return EXIT_OK


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


# --- a local folder, driven by this process ---------------------------------------------

def run_local(client: OcrClient, source: Path, target_dir: Path, options: dict[str, Any],
              *, overwrite: bool = False, retry_failed: bool = False,
              priority: str = "batch", window: int = 16,
              timeout: float | None = None) -> dict[str, Any]:
    """OCR every file under `source` into `target_dir`; the batch's summary (as shown)."""
    target = LocalTarget(target_dir)
    output = str(options.get("output", "text"))
    digest = options_digest(options)
    record = {"id": "", "target": str(target_dir)}
    documents = local_documents(source, target_dir)
    flight: dict[str, Any] = {}
    counts = {"listed": 0, "done": 0, "failed": 0, "skipped": 0, "pages_done": 0,
              "pages_failed": 0}
    started = time.time()
    deadline = None if timeout is None else time.monotonic() + timeout
    listed_all = False
    while True:
        while not listed_all and len(flight) < window:
            document = next(documents, None)
            if document is None:
                listed_all = True
                break
            counts["listed"] += 1
            line = read_line(target, document.name)
            again = retry_failed and line is not None and line.get("status") in FAILED
            if not overwrite and not again and same_read(line, document, digest):
                counts["skipped"] += 1
                continue
            job_id = client.submit(document.url, filename=document.name.rsplit("/", 1)[-1],
                                   priority=priority, **options)
            flight[job_id] = document
        if listed_all and not flight:
            break
        if deadline is not None and time.monotonic() > deadline:
            break
        for job_id in client.states.ended(list(flight)):
            document = flight.pop(job_id)
            result = client.result(job_id)
            if result.get("status") in ("SUCCESS", "PARTIAL"):
                stored = client.fetch_output(result) if FORMATS[output].stored else None
                written = target.put(output_name(document.name, output),
                                     result_content(result, output, stored),
                                     FORMATS[output].media_type)
                result["result_object"] = {"url": written}
            line = manifest_line(record, document, job_id, result, options)
            target.put(manifest_name(document.name), json.dumps(line, sort_keys=True)
                       .encode(), "application/json")
            ok = line["status"] == "SUCCESS"
            counts["done" if ok else "failed"] += 1
            counts["pages_done"] += line["pages"] - line["pages_failed"]
            counts["pages_failed"] += line["pages_failed"]
        time.sleep(POLL_SECONDS if flight else 0)
    state = "RUNNING" if flight or not listed_all else (
        "SUCCESS" if counts["failed"] == 0 else
        "FAILURE" if counts["done"] == 0 else "PARTIAL")
    if state != "RUNNING":
        try:
            compose_manifest(target)
        except OSError as exc:
            raise OcrError(f"the manifest could not be written: {exc}") from None
    shown = {name: str(value) for name, value in counts.items()}
    shown.update({"state": state, "source": str(source), "target": str(target_dir),
                  "created": f"{started:.3f}", "listed_all": "1" if listed_all else "",
                  **({"ended": f"{time.time():.3f}"} if state != "RUNNING" else {})})
    return progress_of(shown, len(flight))
