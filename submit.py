#!/usr/bin/env python3
"""`submit.py`: the command-line client of the OCR service (runs on a user's machine).

    submit.py [OPTIONS] FILE...            OCR files, print their text (= submit.py submit)
    submit.py COMMAND [OPTIONS] ...        submit, wait, status, cancel, retry, langs; and
                                           the operator's models, tokens (ocr_admin.py)

`submit.py --help` lists every command with an example and the exit codes;
`submit.py COMMAND --help` shows one command's options. The shared options (`--json`,
`--timeout`, `--out`, `--redis-url`) go before or after the command's name.

Adding a command is one decorated function: `@command(name, summary, example,
shared=..., arguments=...)` on `def run(args, session) -> int`; the help, the parser and
the dispatch come from that registration (`COMMANDS`). Runs as a client: needs Redis
at REDIS_URL and a worker, not the engines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import ocr_admin
from tasks import inference_server as vlm_server
from tasks.client import CONNECTION_ERRORS, JobProgress, OcrClient, masked_url
from tasks.errors import NoWorker, OcrError, ServiceUnreachable
from tasks.operator_console import OperatorConsole
from tasks.queue.routing import PRIORITIES
from tasks.records.request import OUTPUT_CHOICES
from tasks.records.status import JobStatus, WaitStatus
from tasks.settings import Settings, SettingsError

PROG = "submit.py"
EXTENSIONS = {"text": ".txt", "markdown": ".md", "json": ".json", "pdf": ".txt",
              "hocr": ".txt", "alto": ".txt"}
# The stored file of an output, written beside the text by --out.
STORED_SUFFIXES = {"pdf": ".ocr.pdf", "hocr": ".hocr", "alto": ".alto.xml"}

# Exit status; with several jobs the most severe one wins (this order, top first).
EXIT_UNREACHABLE = 5  # Redis did not answer, or no live worker consumes a job's queue
EXIT_FAILURE = 1      # a job failed (its error code is printed)
EXIT_TIMEOUT = 6      # --timeout passed with jobs still running (they go on)
EXIT_CANCELLED = 4    # a job was cancelled
EXIT_PARTIAL = 3      # a job finished with some pages failed (PARTIAL)
EXIT_OK = 0           # every job succeeded
EXIT_USAGE = 2        # bad command line or settings (nothing was sent)
EXIT_INTERRUPTED = 130
SEVERITY = (EXIT_UNREACHABLE, EXIT_FAILURE, EXIT_TIMEOUT, EXIT_CANCELLED, EXIT_PARTIAL,
            EXIT_OK)
EXIT_BY_STATUS: dict[str, int] = {
    JobStatus.SUCCESS: EXIT_OK, JobStatus.PARTIAL: EXIT_PARTIAL,
    JobStatus.CANCELLED: EXIT_CANCELLED, WaitStatus.TIMEOUT: EXIT_TIMEOUT,
    JobStatus.FAILURE: EXIT_FAILURE, WaitStatus.PENDING: EXIT_UNREACHABLE}
EXIT_HELP = """exit status (several jobs: the most severe, in this order):
  5  service unreachable: Redis did not answer, or no live worker consumes the queue
  1  a job failed
  6  --timeout passed with jobs still running (they go on; `wait` them again)
  4  a job was cancelled
  3  a job was PARTIAL (some pages failed; `retry` re-reads them)
  0  every job succeeded
  2  usage error (bad option, file list or setting; nothing was sent)"""
UNREACHABLE_HINT = ("start the service with `make run`, or point REDIS_URL (or "
                    "--redis-url) at the broker's Redis")
NO_WORKER_HINT = ("start a worker that consumes that queue (`make run` starts one for "
                  "`ocr` and `ocr-tesseract`; docs/vlm.md: a VLM worker); the jobs "
                  "stay queued, `submit.py wait ID...` picks them up")
NO_WORKER_GRACE = 6.0   # seconds a job may wait in a queue no live worker consumes
WORKER_RECHECK = 15.0   # seconds between worker checks while jobs run


# --- commands -------------------------------------------------------------------------

Runner = Callable[[argparse.Namespace, "Session"], int]


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, an example, its options and the function it runs."""

    name: str
    summary: str
    example: str
    run: Runner
    arguments: Callable[[argparse.ArgumentParser], None] | None
    shared: tuple[str, ...]


COMMANDS: dict[str, Command] = {}


def command(name: str, summary: str, example: str, *, shared: Sequence[str] = (),
            arguments: Callable[[argparse.ArgumentParser], None] | None = None
            ) -> Callable[[Runner], Runner]:
    """Register `run` as subcommand `name` (help order = registration order).

    `shared` names the shared options it takes (json, timeout, out, redis_url: given
    before or after the command's name); `arguments` adds its own to its parser.
    """
    def register(run: Runner) -> Runner:
        COMMANDS[name] = Command(name, summary, example, run, arguments,
                                 ("redis_url", *shared))
        return run
    return register


# --- shared options ---------------------------------------------------------------------

@dataclass(frozen=True)
class SharedOption:
    flags: tuple[str, ...]
    options: dict[str, Any]
    default: Any


SHARED: dict[str, SharedOption] = {
    "json": SharedOption(("--json",), {"action": "store_true",
                                       "help": "one JSON record per line"}, False),
    "timeout": SharedOption(("--timeout",), {
        "type": float, "metavar": "S",
        "help": "stop waiting after S seconds (the jobs go on)"}, None),
    "out": SharedOption(("--out",), {"type": Path, "metavar": "DIR",
                                     "help": "also write each result into DIR"}, None),
    "redis_url": SharedOption(("--redis-url",), {
        "metavar": "URL", "help": "the broker's Redis (default: $REDIS_URL, else "
                                  "redis://127.0.0.1:6379/0)"}, None),
}
TAKES_VALUE = {flag for o in SHARED.values() if o.options.get("action") != "store_true"
               for flag in o.flags}
SHARED_FLAGS = {flag for o in SHARED.values() for flag in o.flags}


def add_shared(parser: argparse.ArgumentParser, names: Sequence[str], *,
               top: bool) -> None:
    """Add the shared options `names` to the top parser or to a command's.

    A command's copies default to SUPPRESS, so a value given before the command's name
    is not overwritten.
    """
    for name in names:
        option = SHARED[name]
        parser.add_argument(*option.flags, dest=name, **option.options,
                            default=option.default if top else argparse.SUPPRESS)


# --- parser -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    examples = "\n".join(f"  {c.example}" for c in COMMANDS.values())
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="OCR images and PDFs through the service's queue. A first word that "
                    "is not a command is a file: `submit.py a.png b.pdf` = "
                    "`submit.py submit a.png b.pdf`.",
        epilog=f"examples:\n{examples}\n\n{EXIT_HELP}\n\n"
               f"`{PROG} COMMAND --help` shows a command's options.")
    add_shared(parser, list(SHARED), top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for cmd in COMMANDS.values():
        child = sub.add_parser(cmd.name, help=cmd.summary, description=cmd.summary,
                               epilog=f"example: {cmd.example}")
        add_shared(child, cmd.shared, top=False)
        if cmd.arguments is not None:
            cmd.arguments(child)
    return parser


def with_default_command(argv: list[str]) -> list[str]:
    """Insert `submit` before the first word that is no shared option nor command.

    `submit.py --json a.png` = `submit.py --json submit a.png`.
    """
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in COMMANDS or word in ("-h", "--help"):
            return argv
        flag, eq, _ = word.partition("=")
        if flag not in SHARED_FLAGS:
            return [*argv[:i], "submit", *argv[i:]]
        i += 2 if flag in TAKES_VALUE and not eq else 1
    return argv


def check_shared(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 cmd: Command) -> None:
    """A shared option given before a command that does not take it is a usage error."""
    for name, option in SHARED.items():
        if name not in cmd.shared and getattr(args, name, option.default) != option.default:
            parser.error(f"{option.flags[0]} does not apply to `{cmd.name}`")


# --- session: settings and the client, made on first use ------------------------------

class Session:
    """What a command runs with: settings, and a client whose Redis has answered."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._settings: Settings | None = None
        self._client: OcrClient | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            env = dict(os.environ)
            if self.args.redis_url:
                env["REDIS_URL"] = self.args.redis_url
            self._settings = Settings.from_env(env)
        return self._settings

    @property
    def client(self) -> OcrClient:
        if self._client is None:
            self._client = OcrClient(self.settings)
            self._client.check_service()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


# --- results ---------------------------------------------------------------------------

def label(result: dict[str, Any]) -> str:
    """How a line names a job: its input's file name, else its id."""
    return str(result.get("filename") or result.get("id"))


def exit_status(results: Sequence[dict[str, Any]]) -> int:
    codes = {EXIT_BY_STATUS.get(str(r.get("status")), EXIT_FAILURE) for r in results}
    return next((code for code in SEVERITY if code in codes), EXIT_OK)


def emit(results: list[dict[str, Any]], args: argparse.Namespace, output: str,
         client: OcrClient) -> int:
    """Print results in input order (and write them to --out); the exit status."""
    for result in results:
        status = result.get("status")
        name = label(result)
        if args.json:
            print(json.dumps(result, ensure_ascii=False), flush=True)
        elif JobStatus.of(status).answered:
            if len(results) > 1:
                print(f"==> {name} <==")
            print(result["text"], flush=True)
        if not args.json:
            for line in problem_lines(result):
                print(line, file=sys.stderr, flush=True)
        if args.out is not None and JobStatus.of(status).answered or (
                args.out is not None and status == JobStatus.CANCELLED and result.get("pages")):
            write_output(result, args.out, output, client)
    if any(r.get("status") == WaitStatus.PENDING for r in results):
        print(f"{PROG}: {NO_WORKER_HINT}", file=sys.stderr)
    return exit_status(results)


def problem_lines(result: dict[str, Any]) -> list[str]:
    """The stderr lines of a result that is not a plain success, each naming its file."""
    written = result.get("result_object") or {}
    if not written.get("error"):
        return _status_lines(result)
    # The result is stored (and printed); only its copy at --result-url failed.
    failed = written["error"]
    return [f"{label(result)}: {failed['code']}: {failed['message']} (the result is "
            "kept in the result store)", *_status_lines(result)]


def _status_lines(result: dict[str, Any]) -> list[str]:
    name, status = label(result), result.get("status")
    error = result.get("error") or {}
    if status == JobStatus.PARTIAL:
        return [f"{name}: PARTIAL: page {p['number']} failed: {p['code']}: {p['message']}"
                for p in result.get("failed_pages", [])]
    if status == JobStatus.CANCELLED:
        kept = len(result.get("pages", []))
        return [f"{name}: CANCELLED" + (f" ({kept} finished pages kept)" if kept else "")]
    if status == WaitStatus.TIMEOUT:
        return [f"{name}: still running when --timeout passed (job {result['id']}; "
                f"`{PROG} wait {result['id']}` waits again)"]
    if status == WaitStatus.PENDING:
        return [f"{name}: {error.get('code')}: {error.get('message')} "
                f"(job {result['id']} stays queued)"]
    if status != JobStatus.SUCCESS:
        return [f"{name}: {status} {error.get('code')}: {error.get('message')}"]
    return []


def write_output(result: dict[str, Any], out_dir: Path, output: str,
                 client: OcrClient) -> list[Path]:
    """Write the text (or JSON) and the stored file: searchable PDF, hOCR or ALTO."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(result.get("filename") or result["id"]).stem or result["id"]
    path = out_dir / (stem + EXTENSIONS.get(result.get("output", output), ".txt"))
    if path.suffix == ".json":
        path.write_text(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        path.write_text(result["text"])
    written = [path]
    stored = client.fetch_output(result)
    kind = next((k for k in STORED_SUFFIXES if isinstance(result.get(k), dict)), None)
    if stored is not None and kind is not None:
        written.append(out_dir / f"{stem}{STORED_SUFFIXES[kind]}")
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
    return f"{name} {status.state.lower()}"


# --- waiting, with a live worker on each job's queue ------------------------------------

def without_worker(queues: dict[str, str], live: dict[str, set[str]]) -> dict[str, str]:
    """The jobs (of `queues`: job id -> its queue) that no live worker serves."""
    served = set().union(*live.values())
    return {job_id: queue for job_id, queue in queues.items() if queue not in served}


def inference_server_note(client: OcrClient, queues: set[str],
                          live: dict[str, set[str]]) -> str:
    """Why jobs wait for vlm-api workers: their inference server does not answer.

    '' when no live vlm-api worker consumes one of the jobs' `queues`, or when the
    server (at this host's OCR_VLM_API_URL) answers.
    """
    vlm_workers = [served for served in live.values() if vlm_server.QUEUE in served]
    if not any(queues & served for served in vlm_workers):
        return ""
    check = vlm_server.check_server(client.settings)
    return "" if check.ok else (f"{check.message}: vlm-api workers retry those pages "
                                "until it does")


def no_worker_record(client: OcrClient, job_id: str, queue: str) -> dict[str, Any]:
    error = NoWorker(f"no live worker consumes queue '{queue}'")
    return {"id": job_id, "status": WaitStatus.PENDING.value, "filename": client.filename(job_id),
            "error": error.to_dict()}


def wait_for(client: OcrClient, ids: list[str], timeout: float | None
             ) -> dict[str, dict[str, Any]]:
    """Wait for jobs, checking that a live worker consumes each one's queue.

    Checked before waiting and every WORKER_RECHECK s while waiting; a job without a
    worker for NO_WORKER_GRACE s is reported PENDING with error `no_worker`. When
    vlm-api workers serve a job's queue and their inference server does not answer,
    a line on stderr says so (once, until it answers again).
    """
    progress = ProgressLine(sys.stderr, {i: client.filename(i) for i in ids})
    pending, results = list(dict.fromkeys(ids)), {}
    queue_of = {job_id: client.queue_of(job_id) for job_id in pending}  # never changes
    start = time.monotonic()
    stop = None if timeout is None else start + timeout
    next_check, orphaned_since, poll_for, said = start, None, 0.0, ""
    try:
        while pending:
            got = client.wait(pending, on_progress=progress, timeout=poll_for)
            for job_id, result in got.items():
                if result["status"] != WaitStatus.TIMEOUT or (stop and time.monotonic() >= stop):
                    results[job_id] = result
                    pending.remove(job_id)
            now = time.monotonic()
            if pending and now >= next_check:
                live = OperatorConsole(client).live_queues()  # presence records: no wait
                queues = {job_id: queue_of[job_id] for job_id in pending}
                orphans = without_worker(queues, live)
                note = inference_server_note(client, set(queues.values()), live)
                if note and note != said:
                    print(f"{PROG}: {note}", file=sys.stderr, flush=True)
                said = note
                orphaned_since = (orphaned_since or now) if orphans else None
                if orphaned_since is not None and now - orphaned_since >= NO_WORKER_GRACE:
                    for job_id, queue in orphans.items():
                        results[job_id] = no_worker_record(client, job_id, queue)
                        pending.remove(job_id)
                now = time.monotonic()
                next_check = now + (2.0 if orphans else WORKER_RECHECK)
            poll_for = max(0.2, (next_check if stop is None else min(next_check, stop)) - now)
    finally:
        progress.close()
    return results


# --- the commands ---------------------------------------------------------------------

def submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="a local file, or an s3://bucket/key or https:// URL the "
                             "workers read themselves (under their OCR_ALLOWED_URLS)")
    parser.add_argument("--no-wait", action="store_true",
                        help="print each job's id and file name, and return")
    parser.add_argument("--engine", help="tesseract, rapidocr, mlx-vlm or vlm-api (default: "
                        "the worker's, or by `--lang` as OCR_LANG_ENGINES says)")
    parser.add_argument("--pages", help='pages to read, e.g. "1-3,7"')
    parser.add_argument("--password", help="password of an encrypted PDF")
    parser.add_argument("--output", choices=OUTPUT_CHOICES, default="text",
                        help="pdf, hocr and alto also store a file (--out DIR writes "
                             "NAME.ocr.pdf, NAME.hocr, NAME.alto.xml)")
    parser.add_argument("--lang", help="tesseract language(s) of the pages, e.g. vie, "
                                       "chi_sim, ell+eng, or auto: each page in the "
                                       "languages of its own script (default: the "
                                       "worker's OCR_LANG, auto unless set; see langs)")
    parser.add_argument("--mode", choices=("auto", "ocr", "text"), default=None,
                        help="PDFs: text layer where present (auto), OCR always, text only")
    add_job_options(parser)
    parser.add_argument("--callback-task", help="Celery task (by name) that gets the result")
    parser.add_argument("--callback-queue", help="queue of --callback-task")
    parser.add_argument("--callback-url", help="http(s) URL the result summary is POSTed to")
    parser.add_argument("--result-url", metavar="S3_URL",
                        help="s3://bucket/prefix/ (or an object key) the workers write the "
                             "result to, in --output's format; the result names the object")


def add_job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--priority", choices=tuple(PRIORITIES),
                        help="interactive jobs go before normal (default) and batch ones")
    parser.add_argument("--deadline", type=float, metavar="SECONDS",
                        help="not started within SECONDS: never started; running past "
                             "it: stops, keeping the pages done (deadline_exceeded)")


def _failure(filename: str, exc: OcrError) -> dict[str, Any]:
    return {"id": None, "status": JobStatus.FAILURE.value, "filename": filename,
            "error": exc.to_dict()}


@command("submit", "OCR files and print their text (the default command)",
         f"{PROG} --json --pages 1-3 report.pdf scan.png",
         shared=("json", "timeout", "out"), arguments=submit_arguments)
def run_submit(args: argparse.Namespace, session: Session) -> int:
    client = session.client
    options = {"engine": args.engine, "pages": args.pages, "password": args.password,
               "output": args.output, "mode": args.mode, "lang": args.lang,
               "priority": args.priority,
               "deadline": args.deadline, "callback_task": args.callback_task,
               "callback_queue": args.callback_queue, "callback_url": args.callback_url,
               "result_url": args.result_url}
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
    parser.add_argument("ids", nargs="+", metavar="ID")


@command("wait", "wait for jobs sent with --no-wait and print their results",
         f"{PROG} wait --json 5b0c2a1e-...", shared=("json", "timeout", "out"),
         arguments=ids_argument)
def run_wait(args: argparse.Namespace, session: Session) -> int:
    client = session.client
    results = wait_for(client, args.ids, args.timeout)
    return emit([results[i] for i in dict.fromkeys(args.ids)], args, "text", client)


@command("status", "show where jobs stand, without waiting",
         f"{PROG} status 5b0c2a1e-...", shared=("json",), arguments=ids_argument)
def run_status(args: argparse.Namespace, session: Session) -> int:
    client = session.client
    for job_id in args.ids:
        status = client.status(job_id)
        record = {"id": job_id, "filename": client.filename(job_id),
                  "state": status.state, "done": status.done, "total": status.total,
                  "queue": client.queue_of(job_id)}
        if args.json:
            print(json.dumps(record), flush=True)
        else:
            pages = f" {status.done}/{status.total} pages" if status.total else ""
            print(f"{record['filename'] or job_id}: {status.state}{pages} "
                  f"(job {job_id}, queue {record['queue']})", flush=True)
    return EXIT_OK


@command("cancel", "cancel jobs: queued ones never start, running ones stop and keep "
         "the pages they finished", f"{PROG} cancel 5b0c2a1e-...", shared=("json",),
         arguments=ids_argument)
def run_cancel(args: argparse.Namespace, session: Session) -> int:
    client = session.client
    outcome = client.cancel(args.ids)
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
         f"{PROG} retry 5b0c2a1e-...", shared=("json", "timeout", "out"),
         arguments=retry_arguments)
def run_retry(args: argparse.Namespace, session: Session) -> int:
    client = session.client
    new_ids: list[str] = []
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
    replies = OperatorConsole(session.client).languages()
    if args.json:
        print(json.dumps({"workers": replies}), flush=True)
    else:
        for worker, reply in sorted(replies.items()):
            langs = reply.get("languages")
            listed = " ".join(langs) if langs is not None else "(any: no lang option)"
            print(f"{worker}\t{reply.get('engine')}\tdefault {reply.get('default')}\t"
                  f"{listed}", flush=True)
    if not replies:
        print(f"{PROG}: no worker answered; {NO_WORKER_HINT}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


@command("tokens", ocr_admin.TOKENS_SUMMARY, f"{PROG} tokens create billing --json",
         shared=("json",), arguments=ocr_admin.build_tokens_parser)
def run_tokens(args: argparse.Namespace, session: Session) -> int:
    """The operator's `tokens` (ocr_admin.py), with submit.py's words."""
    return ocr_admin.run_tokens_command(args, session, PROG)


# --- main ------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    words = with_default_command(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(words)  # usage errors exit 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    cmd = COMMANDS[args.command]
    check_shared(parser, args, cmd)
    session = Session(args)
    try:
        return cmd.run(args, session)
    except SettingsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ServiceUnreachable as exc:
        print(f"{PROG}: {exc.message}: {UNREACHABLE_HINT}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except CONNECTION_ERRORS as exc:  # Redis went away mid-run
        url = masked_url(session.settings.redis_url)
        print(f"{PROG}: lost Redis at {url} ({str(exc).strip().rstrip('.')}): "
              f"{UNREACHABLE_HINT}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        session.close()


if __name__ == "__main__":
    sys.exit(main())
