#!/usr/bin/env python3
"""Send files to the OCR service and print their text (or JSON results).

    python submit.py [--json] [--no-wait] [--engine E] [--pages R] [--password P]
                     [--output text|markdown|json|pdf] [--mode auto|ocr|text] [--out DIR]
                     [--priority interactive|normal|batch] [--deadline SECONDS]
                     [--callback-task NAME [--callback-queue Q]] [--callback-url URL]
                     FILE...
    python submit.py wait [--json] [--out DIR] ID...
    python submit.py cancel [--json] ID...
    python submit.py retry [--password P] [--json] ID...
    python submit.py models [--prune] [--dry-run] [--json] [--timeout S]
    python submit.py models --unload [--json]

With --out DIR, each result is also written there (text, Markdown or JSON, and
NAME.ocr.pdf for --output pdf). Exit status: 0 when every job succeeded, 1 when any
failed or was PARTIAL (some pages failed), 2 for usage errors.
`models` runs the model-directory audit through the queue (1 when it failed or reported
errors); `models --unload` makes every worker's pool children release their engines
(1 when no worker answered).
Runs as a client: needs Redis at REDIS_URL and a worker, not the engines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from tasks.client import JobStatus, OcrClient
from tasks.errors import OcrError
from worker_config import OUTPUT_CHOICES, PRIORITIES, Settings, SettingsError

EXTENSIONS = {"text": ".txt", "markdown": ".md", "json": ".json", "pdf": ".txt"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="submit.py", description="OCR files through the queue.",
        epilog="`submit.py wait [--json] ID...` waits for jobs sent with --no-wait; "
               "`submit.py models --help` audits and prunes the model directory.")
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--json", action="store_true", help="one JSON result per line")
    parser.add_argument("--no-wait", action="store_true", help="print job ids and return")
    parser.add_argument("--engine", help="tesseract, mlx-vlm (default: the worker's)")
    parser.add_argument("--pages", help='pages to read, e.g. "1-3,7"')
    parser.add_argument("--password", help="password of an encrypted PDF")
    parser.add_argument("--output", choices=OUTPUT_CHOICES, default="text")
    parser.add_argument("--mode", choices=("auto", "ocr", "text"), default=None,
                        help="PDFs: text layer where present (auto), OCR always, text only")
    parser.add_argument("--out", type=Path, help="also write each result into DIR")
    parser.add_argument("--timeout", type=float, help="stop waiting after S seconds")
    add_job_options(parser)
    parser.add_argument("--callback-task", help="Celery task (by name) that gets the result")
    parser.add_argument("--callback-queue", help="queue of --callback-task")
    parser.add_argument("--callback-url", help="http(s) URL the result summary is POSTed to")
    return parser


def add_job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--priority", choices=tuple(PRIORITIES),
                        help="interactive jobs go before normal (default) and batch ones")
    parser.add_argument("--deadline", type=float, metavar="SECONDS",
                        help="not started within SECONDS: never started; running past "
                             "it: stops, keeping the pages done (deadline_exceeded)")


def build_cancel_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="submit.py cancel",
        description="Cancel jobs: queued ones never start, running ones stop and keep "
                    "the pages they finished (status CANCELLED).")
    parser.add_argument("ids", nargs="+", metavar="ID")
    parser.add_argument("--json", action="store_true")
    return parser


def build_retry_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="submit.py retry",
        description="Re-read the failed pages of PARTIAL jobs; each new job's result is "
                    "complete (it merges the pages the earlier job had).")
    parser.add_argument("--password", help="password of an encrypted PDF")
    parser.add_argument("--priority", choices=tuple(PRIORITIES))
    parser.add_argument("--no-wait", action="store_true")
    add_result_options(parser)
    return parser


def build_wait_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="submit.py wait",
                                     description="Wait for jobs sent earlier.")
    add_result_options(parser)
    return parser


def add_result_options(parser: argparse.ArgumentParser) -> None:
    """Job ids and how their results are shown (wait, retry)."""
    parser.add_argument("ids", nargs="+", metavar="ID")
    parser.add_argument("--json", action="store_true", help="one JSON result per line")
    parser.add_argument("--out", type=Path, help="also write each result into DIR")
    parser.add_argument("--timeout", type=float, help="stop waiting after S seconds")


def build_models_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="submit.py models",
        description="Audit OCR_MODEL_DIR through the queue (task ocr.audit_models), prune "
                    "it, or make the workers release their models.")
    parser.add_argument("--prune", action="store_true",
                        help="remove what the prune policy selects")
    parser.add_argument("--dry-run", action="store_true",
                        help="show what --prune would remove; remove nothing")
    parser.add_argument("--unload", action="store_true",
                        help="make every pool child release its engine (remote control "
                             "unload_model); it reloads on its next task")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="stop waiting for the audit after S seconds")
    return parser


class ProgressLine:
    """One status line on a terminal: pages done per job."""

    def __init__(self, stream: TextIO, names: dict[str, str]) -> None:
        self.stream = stream
        self.names = names
        self.seen: dict[str, JobStatus] = {}
        self.enabled = stream.isatty()

    def __call__(self, job_id: str, status: JobStatus) -> None:
        if not self.enabled:
            return
        self.seen[job_id] = status
        parts = [_bar(self.names.get(job_id, job_id[:8]), s) for job_id, s in
                 self.seen.items()]
        self.stream.write("\r\033[K" + "  ".join(parts)[-200:])
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.seen:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _bar(name: str, status: JobStatus) -> str:
    if status.total:
        filled = int(20 * status.done / status.total)
        return f"{name} [{'#' * filled}{'.' * (20 - filled)}] {status.done}/{status.total}"
    return f"{name} {status.state.lower()}"


def emit(results: list[dict[str, Any]], as_json: bool, out_dir: Path | None,
         output: str, client: OcrClient) -> int:
    """Print results in input order (and write them to `out_dir`); the exit status."""
    failed = False
    for result in results:
        status = result.get("status")
        has_text = status in ("SUCCESS", "PARTIAL")
        failed = failed or status != "SUCCESS"
        name = result.get("filename") or result.get("id")
        if as_json:
            print(json.dumps(result, ensure_ascii=False), flush=True)
        elif has_text:
            if len(results) > 1:
                print(f"==> {name} <==")
            print(result["text"])
        if not has_text and not as_json:
            error = result.get("error", {})
            print(f"{name}: {status} {error.get('code')}: {error.get('message')}",
                  file=sys.stderr)
        for page in result.get("failed_pages", []) if not as_json else []:
            print(f"{name}: page {page['number']} failed: {page['code']}: {page['message']}",
                  file=sys.stderr)
        if out_dir is not None and has_text:
            write_output(result, out_dir, output, client)
    return 1 if failed else 0


def write_output(result: dict[str, Any], out_dir: Path, output: str,
                 client: OcrClient) -> list[Path]:
    """Write the text (or JSON) and, for output=pdf, the searchable PDF."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(result.get("filename") or result["id"]).stem or result["id"]
    path = out_dir / (stem + EXTENSIONS.get(result.get("output", output), ".txt"))
    if path.suffix == ".json":
        path.write_text(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        path.write_text(result["text"])
    written = [path]
    pdf = client.fetch_output(result)
    if pdf is not None:
        written.append(out_dir / f"{stem}.ocr.pdf")
        written[-1].write_bytes(pdf)
    return written


def _failure(filename: str, exc: OcrError) -> dict[str, Any]:
    return {"id": None, "status": "FAILURE", "filename": filename, "error": exc.to_dict()}


def run_submit(args: argparse.Namespace, client: OcrClient) -> int:
    options = {"engine": args.engine, "pages": args.pages, "password": args.password,
               "output": args.output, "mode": args.mode, "priority": args.priority,
               "deadline": args.deadline, "callback_task": args.callback_task,
               "callback_queue": args.callback_queue, "callback_url": args.callback_url}
    order: list[str | dict[str, Any]] = []
    names: dict[str, str] = {}
    for file in args.files:
        try:
            job_id = client.submit(file, **options)
        except OcrError as exc:
            order.append(_failure(Path(file).name, exc))
            continue
        names[job_id] = Path(file).name
        order.append(job_id)
    if args.no_wait:
        for item in order:
            if isinstance(item, dict):
                print(json.dumps(item) if args.json else
                      f"{item['filename']}: FAILURE {item['error']['code']}", flush=True)
            else:
                print(json.dumps({"id": item, "status": "PENDING", "filename": names[item]})
                      if args.json else item, flush=True)
        return 1 if any(isinstance(item, dict) for item in order) else 0
    results = wait_for(client, list(names), names, args.timeout)
    ordered = [item if isinstance(item, dict) else results[item] for item in order]
    return emit(ordered, args.json, args.out, args.output, client)


def run_cancel(args: argparse.Namespace, client: OcrClient) -> int:
    outcome = client.cancel(args.ids)
    for job_id in args.ids:
        print(json.dumps({"id": job_id, "outcome": outcome[job_id]}) if args.json
              else f"{job_id}: {outcome[job_id]}", flush=True)
    return 0


def run_retry(args: argparse.Namespace, client: OcrClient) -> int:
    new_ids: list[str] = []
    for job_id in args.ids:
        try:
            new_ids.append(client.retry(job_id, password=args.password,
                                        priority=args.priority))
        except OcrError as exc:
            print(f"{job_id}: {exc}", file=sys.stderr)
            return 1
    if args.no_wait:
        for new_id in new_ids:
            print(json.dumps({"id": new_id, "status": "PENDING"}) if args.json else new_id)
        return 0
    results = wait_for(client, new_ids, {}, args.timeout)
    return emit([results[i] for i in new_ids], args.json, args.out, "text", client)


def wait_for(client: OcrClient, ids: list[str], names: dict[str, str],
             timeout: float | None) -> dict[str, dict[str, Any]]:
    progress = ProgressLine(sys.stderr, names)
    try:
        return client.wait(ids, on_progress=progress, timeout=timeout)
    finally:
        progress.close()


def run_models(args: argparse.Namespace, client: OcrClient) -> int:
    """`submit.py models`: the audit report, or the replies to `unload_model`."""
    if args.unload:
        replies = client.unload_models()
        if args.json:
            print(json.dumps({"unload": replies}))
        else:
            for worker, reply in sorted(replies.items()):
                print(f"{worker}: {reply.get('ok') or 'error: ' + str(reply.get('error'))}")
        if not replies:
            print("submit.py: no worker answered", file=sys.stderr)
        return 0 if any("ok" in r for r in replies.values()) else 1
    report = client.audit_models(prune=args.prune, dry_run=args.dry_run,
                                 timeout=args.timeout)
    if "models" not in report:  # FAILURE or TIMEOUT
        error = report.get("error", {})
        if args.json:
            print(json.dumps(report))
        print(f"submit.py: audit {report.get('status')}: {error.get('code')}: "
              f"{error.get('message')}", file=sys.stderr)
        return 1
    print(json.dumps(report) if args.json else format_models_report(report), flush=True)
    return 1 if report["errors"] else 0


def format_models_report(report: dict[str, Any]) -> str:
    """The audit report as a table and lists, for people."""
    header = ("NAME", "KIND", "SIZE", "MODIFIED", "LAST USED", "LOADED BY", "INTEGRITY")
    rows = [header]
    for m in report["models"]:
        kind = m["kind"] + (f" ({m['model_type']})" if m["model_type"] else "")
        integrity = m["integrity"]
        state = "ok" if integrity["ok"] else "; ".join(
            [*integrity["problems"], *[f"partial: {p}" for p in integrity["partial"]]])
        rows.append((m["name"] + (f" -> {m['link']}" if m["link"] else ""), kind,
                     _size(m["size_bytes"]), _when(m["modified"]), _when(m["last_used"]),
                     ", ".join(m["loaded_by"]) or "-", state))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1]
             for r in rows]
    label = {"audit": "would go (audit only: nothing removed)", "dry-run": "would be pruned",
             "prune": "pruned"}[report["mode"]]
    pruned = report["pruned"] or [k for k in report["kept"]
                                  if set(k["reasons"]) & {"audit_only", "prune_locked"}]
    lines += ["", f"{label}:"] + [f"  {p['name']}: {p['detail']}" for p in pruned] \
        if pruned else ["", f"{label}: nothing"]
    lines += ["kept:"] + [f"  {k['name']}: {', '.join(k['reasons'])} ({k['detail']})"
                          for k in report["kept"]]
    if report["errors"]:
        lines += ["errors:"] + [f"  {e['code']}: {e['message']}" for e in report["errors"]]
    totals = report["totals"]
    went = "would be pruned" if report["mode"] == "dry-run" else "pruned"
    lines.append(f"{totals['entries']} entries, {_size(totals['size_bytes'])} in "
                 f"{report['model_dir']} on {report['host']}; {totals['pruned']} {went} "
                 f"({_size(totals['pruned_bytes'])})")
    return "\n".join(lines)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _when(iso: str | None) -> str:
    return iso[:16].replace("T", " ") + "Z" if iso else "-"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parsers = {"wait": build_wait_parser, "models": build_models_parser,
               "cancel": build_cancel_parser, "retry": build_retry_parser}
    command = argv[0] if argv and argv[0] in parsers else None
    parser = parsers.get(command or "", build_parser)()
    args = parser.parse_args(argv[1:] if command else argv)
    if command == "models" and args.unload and (args.prune or args.dry_run):
        parser.error("--unload cannot be combined with --prune or --dry-run")
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"submit.py: {exc}", file=sys.stderr)
        return 2
    client = OcrClient(settings)
    try:
        if command == "models":
            return run_models(args, client)
        if command == "cancel":
            return run_cancel(args, client)
        if command == "retry":
            return run_retry(args, client)
        if command == "wait":
            results = wait_for(client, args.ids, {}, args.timeout)
            return emit([results[i] for i in args.ids], args.json, args.out, "text", client)
        return run_submit(args, client)
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
