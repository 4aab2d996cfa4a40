#!/usr/bin/env python3
"""`submit.py`: the command-line client of the OCR service (runs on a user's machine).

    submit.py [OPTIONS] FILE...            OCR files, print their text (= submit.py submit)
    submit.py COMMAND [OPTIONS] ...        submit, wait, status, cancel, retry, langs; and
                                           the operator's jobs, models, tokens (ocr_admin.py)

`submit.py --help` lists every command with an example and the exit codes;
`submit.py COMMAND --help` shows one command's options. The shared options (`--json`,
`--timeout`, `--out`, `--redis-url`) go before or after the command's name.

Adding a command is one decorated function here, `@command(...)` on `def run(args,
session) -> int` (the registry: tasks/cli/commands.py); the session, the exit codes
and the error handling are the command lines' shared core (tasks/cli/core.py, which
`ocr_admin.py` uses too), the printing of results tasks/cli/output.py. Runs as a
client: needs Redis (REDIS_URL, or the one `make run` started) and a worker, not the
engines.
"""

from __future__ import annotations

if __name__ == "__main__":  # `./submit.py` by a Python without the service's packages
    from tasks.cli.launch import ensure_packages

    ensure_packages(__file__)

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ocr_admin
from tasks.admission import job_queues
from tasks.cli import batches, evaluate, listing
from tasks.cli.commands import (
    COMMANDS,
    build_parser,
    check_shared,
    command,
    mistyped_command,
    with_default_command,
)
from tasks.cli.core import (
    EXIT_FAILURE,
    EXIT_HELP,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Session,
    door_refusal,
    run_command,
)
from tasks.cli.core import exit_status as statuses_exit
from tasks.cli.job_options import submit_arguments
from tasks.cli.output import (
    NO_WORKER_HINT,
    PROG,
    emit,
    problem_lines,
    results_status,
)
from tasks.cli.waiting import wait_for
from tasks.client import OcrClient
from tasks.errors import NoWorker, OcrError
from tasks.operator_console import OperatorConsole
from tasks.queue.routing import PRIORITIES
from tasks.records.status import JobStatus, WaitStatus

__all__ = ["COMMANDS", "batches", "evaluate", "EXIT_FAILURE", "EXIT_HELP", "EXIT_OK",
           "EXIT_UNREACHABLE", "EXIT_USAGE", "build_parser", "exit_status", "main", "wait_for",
           "with_default_command"]


# --- results ---------------------------------------------------------------------------

def exit_status(results: Sequence[dict[str, Any]]) -> int:
    """The exit status of these results: the most severe outcome."""
    return results_status(results)


# --- the commands ---------------------------------------------------------------------

def _failure(filename: str, exc: OcrError) -> dict[str, Any]:
    return {"id": None, "status": JobStatus.FAILURE.value, "filename": filename,
            "error": exc.to_dict()}


@command("submit", "OCR files and print their text (the default command)",
         f"{PROG} --json --pages 1-3 report.pdf scan.png",
         shared=("json", "timeout", "out", "client"), arguments=submit_arguments)
def run_submit(args: argparse.Namespace, session: Session) -> int:
    folders = [file for file in args.files if Path(file).is_dir()]
    if folders:  # a usage error, before Redis is asked: `batch` reads folders
        for folder in folders:
            print(f"{PROG}: {folder}: a folder: use `{PROG} batch {folder} --result-url "
                  "OUT/` (every image and PDF in it, each output into OUT/); nothing "
                  "was sent", file=sys.stderr)
        return EXIT_USAGE
    client = session.client
    options = {"engine": args.engine, "escalate": args.escalate,
               "escalate_below": args.escalate_below, "pages": args.pages,
               "password": args.password,
               "output": args.output, "mode": args.mode, "lang": args.lang,
               "priority": args.priority,
               "deadline": args.deadline, "callback_task": args.callback_task,
               "callback_queue": args.callback_queue, "callback_url": args.callback_url,
               "result_url": args.result_url, "no_cache": args.no_cache or None}
    # Refused at the door, before any file is read or sent: options no worker could
    # run, a language no live worker reads (usage error), an engine no live worker runs
    # (unreachable, with its make target).
    try:
        client.admit({k: v for k, v in options.items()
                      if v is not None and k not in ("priority", "deadline")})
    except OcrError as exc:
        return door_refusal(exc, PROG)
    order: list[str | dict[str, Any]] = []
    for file in args.files:
        try:
            order.append(client.submit(file, **options))
        except OcrError as exc:
            order.append(_failure(Path(file).name, exc))
    sent = [item for item in order if isinstance(item, str)]
    if args.no_wait:
        records = [item if isinstance(item, dict) else
                   {"id": item, "status": WaitStatus.PENDING.value,
                    "filename": client.filename(item)}
                   for item in order]
        for record in records:
            if args.json:
                print(json.dumps(record), flush=True)
            elif record["status"] == WaitStatus.PENDING:
                print(f"{record['id']}\t{record['filename']}", flush=True)
        for line in [x for r in records if r["status"] != WaitStatus.PENDING
                     for x in problem_lines(r)]:
            print(line, file=sys.stderr)
        return exit_status([r for r in records if r["status"] != WaitStatus.PENDING])
    results = wait_for(client, sent, args.timeout)
    ordered = [item if isinstance(item, dict) else results[item] for item in order]
    return emit(ordered, args, args.output, client)


def ids_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="+", metavar="ID",
                        help="job ids, whole or their first 8 or more characters (as the "
                             "console shows them)")


def whole_ids(args: argparse.Namespace, client: OcrClient) -> list[str]:
    """`args.ids`, each short id made whole (`OcrClient.full_id`: ambiguous_id if several)."""
    args.ids = [client.full_id(job_id) for job_id in args.ids]
    return args.ids


@command("wait", "wait for jobs sent with --no-wait and print their results",
         f"{PROG} wait --json 5b0c2a1e-...", shared=("json", "timeout", "out"),
         arguments=ids_argument)
def run_wait(args: argparse.Namespace, session: Session) -> int:
    client = session.client
    ids = whole_ids(args, client)
    results = wait_for(client, ids, args.timeout)
    return emit([results[i] for i in dict.fromkeys(ids)], args, "text", client)


@command("status", "show where jobs stand, without waiting",
         f"{PROG} status 5b0c2a1e-...", shared=("json",), arguments=ids_argument)
def run_status(args: argparse.Namespace, session: Session) -> int:
    """Exit as `wait` would for the jobs that ended or wait with no worker; 0 for the rest."""
    client = session.client
    ended: list[str] = []
    for job_id in whole_ids(args, client):
        status = client.status(job_id)
        queue = client.queue_of(job_id)
        record = {"id": job_id, "filename": status.filename or client.filename(job_id),
                  "client": status.client, "status": status.status.value,
                  "state": status.state, "done": status.done, "total": status.total,
                  "queue": queue, "priority": status.priority or None}
        waiting = None if status.final else client.no_worker(queue)
        if waiting is not None:
            record["error"] = waiting.to_dict()
        if isinstance(waiting, NoWorker):  # a pool at zero is waited for: not ended
            ended.append(WaitStatus.PENDING.value)
        if status.final:
            ended.append(status.status.value)
        if args.json:
            print(json.dumps(record), flush=True)
        else:
            pages = f" {status.done}/{status.total} pages" if status.total else ""
            note = f"; {waiting.code}: {waiting.message}" if waiting is not None else ""
            sender = status.client or "(anonymous)"
            print(f"{record['filename'] or job_id}: {status.status}{pages} "
                  f"(job {job_id}, client {sender}, queue {queue}{note})", flush=True)
    return statuses_exit(ended)


@command("cancel", "cancel jobs: queued ones never start, running ones stop and keep "
         "the pages they finished", f"{PROG} cancel 5b0c2a1e-...", shared=("json",),
         arguments=ids_argument)
def run_cancel(args: argparse.Namespace, session: Session) -> int:
    client = session.client
    outcome = client.cancel(whole_ids(args, client))
    for job_id in dict.fromkeys(args.ids):
        name = client.filename(job_id)
        said = outcome[job_id]
        text = said if said == "cancelled" else f"not cancelled: it had already ended ({said})"
        print(json.dumps({"id": job_id, "filename": name, "outcome": said})
              if args.json else f"{name or job_id}: {text} (job {job_id})", flush=True)
    return EXIT_OK


def retry_arguments(parser: argparse.ArgumentParser) -> None:
    ids_argument(parser)
    parser.add_argument("--password", help="password of an encrypted PDF")
    parser.add_argument("--priority", choices=tuple(PRIORITIES))
    parser.add_argument("--no-wait", action="store_true")


@command("retry", "re-read the failed pages of PARTIAL jobs (the new result is complete)",
         f"{PROG} retry 5b0c2a1e-...", shared=("json", "timeout", "out", "client"),
         arguments=retry_arguments)
def run_retry(args: argparse.Namespace, session: Session) -> int:
    client = session.client
    new_ids: list[str] = []
    for job_id in whole_ids(args, client):  # not_found (exit 7) before any retry is sent
        client.status(job_id)
    for job_id in args.ids:
        try:
            new_ids.append(client.retry(job_id, password=args.password,
                                        priority=args.priority))
        except OcrError as exc:
            print(f"{client.filename(job_id) or job_id}: {exc} (job {job_id})",
                  file=sys.stderr)
            return EXIT_FAILURE
    if args.no_wait:
        for new_id in new_ids:
            name = client.filename(new_id)
            print(json.dumps({"id": new_id, "status": WaitStatus.PENDING.value, "filename": name})
                  if args.json else f"{new_id}\t{name}")
        return EXIT_OK
    results = wait_for(client, new_ids, args.timeout)
    return emit([results[i] for i in new_ids], args, "text", client)


@command("models", ocr_admin.MODELS_SUMMARY, f"{PROG} models --prune --dry-run",
         shared=("json", "timeout"), arguments=ocr_admin.models_arguments)
def run_models(args: argparse.Namespace, session: Session) -> int:
    """The operator's `models` (ocr_admin.py), with submit.py's words."""
    return ocr_admin.run_models(args, session, PROG)


@command("langs", "list the languages each live worker reads (a job's --lang)",
         f"{PROG} langs", shared=("json",))
def run_langs(args: argparse.Namespace, session: Session) -> int:
    """One line per worker: engine, default language, languages. Exit 1: no worker."""
    console = OperatorConsole(session.client)
    reading = {node for node, queues in console.live_queues().items()
               if job_queues(queues)}  # the control worker reads nothing
    replies = {worker: reply for worker, reply in console.languages().items()
               if worker in reading}
    if args.json:
        print(json.dumps({"workers": replies}), flush=True)
    else:
        for worker, reply in sorted(replies.items()):
            langs = reply.get("languages")
            listed = " ".join(langs) if langs is not None else "(any: no lang option)"
            default = reply.get("job_default") or reply.get("default")
            auto = " ".join(f"{script}={','.join(codes)}"
                            for script, codes in (reply.get("auto") or {}).items())
            # The languages read with a smaller tessdata_fast model (Debian's).
            fast = " ".join(reply.get("fast") or ())
            print(f"{worker}\t{reply.get('engine')}\tdefault {default}\t{listed}"
                  + (f"\tauto {auto}" if auto else "")
                  + (f"\tfast {fast}" if fast else ""), flush=True)
    if not replies:
        print(f"{PROG}: no worker answered; {NO_WORKER_HINT}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


@command("jobs", "list jobs, newest first: every client's or one's, by status and time",
         f"{PROG} jobs --client billing --status FAILURE --since 2h",
         shared=("json",), arguments=listing.jobs_arguments)
def run_jobs(args: argparse.Namespace, session: Session) -> int:
    """The operator's view of the job lists (`GET /v1/jobs` shows a client its own)."""
    try:
        page = listing.job_pages(session.client, args)
    except OcrError as exc:
        print(f"{PROG}: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    cursor = None if page.next is None else page.next.encode()
    if args.json:
        print(json.dumps({"jobs": [listing.record(*found) for found in page.items],
                          "next_cursor": cursor}), flush=True)
    else:
        for found in page.items:
            print(listing.line(*found), flush=True)
        if cursor is not None:
            print(f"{PROG}: more: add --cursor {cursor}", file=sys.stderr)
    return EXIT_OK


@command("tokens", ocr_admin.TOKENS_SUMMARY, f"{PROG} tokens create billing --json",
         shared=("json",), arguments=ocr_admin.build_tokens_parser)
def run_tokens(args: argparse.Namespace, session: Session) -> int:
    """The operator's `tokens` (ocr_admin.py), with submit.py's words."""
    return ocr_admin.run_tokens_command(args, session, PROG)


# --- main ------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    given = list(sys.argv[1:] if argv is None else argv)
    mistyped = mistyped_command(given)
    if mistyped is not None:  # a usage error, before Redis is asked
        word, meant = mistyped
        print(f"{PROG}: {word!r} is no command and no file; did you mean `{meant}`? "
              f"(`{PROG} --help` lists the commands); nothing was sent", file=sys.stderr)
        return EXIT_USAGE
    words = with_default_command(given)
    args = parser.parse_args(words)  # usage errors exit 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    cmd = COMMANDS[args.command]
    check_shared(parser, args, cmd)
    return run_command(PROG, cmd.run, args,
                       Session(args.redis_url, getattr(args, "client", None)))


if __name__ == "__main__":
    sys.exit(main())
