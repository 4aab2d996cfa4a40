#!/usr/bin/env python3
"""`ocr_admin.py`: the operator's commands, apart from the user's (`submit.py`).

    ocr_admin.py [--redis-url URL] models [--prune | --dry-run | --unload] [--json]
    ocr_admin.py [--redis-url URL] tokens create NAME | set NAME | list | revoke NAME |
                                          rotate-secret NAME  [--json]
    ocr_admin.py [--redis-url URL] backup TARGET | restore SOURCE [--check] [--json]
    ocr_admin.py [--redis-url URL] usage [--from D] [--to D] [--client NAME]
    ocr_admin.py [--redis-url URL] accuracy [--run] [--json]

`models` audits OCR_MODEL_DIR on every host (one table per host), prunes it, or makes
the workers release their engines; `tokens` administers the HTTP API's clients (their
tokens, quotas and webhook secrets); `backup` and `restore` save the service's Redis and
bring it back (tasks/cli/backup.py, docs/deploy.md); `usage` prints the pages each
client had read by day, as JSON (tasks/cli/usage.py); `accuracy` the golden set's
scores, `--run` scoring it now (tasks/cli/accuracy.py).
`submit.py models ...` and `submit.py tokens ...` run the same code with the same words
(submit.py registers these commands from here). Runs on an operator's machine: needs
Redis at REDIS_URL (and workers for `models`).
"""

from __future__ import annotations

if __name__ == "__main__":  # `./ocr_admin.py` by a Python without the service's packages
    from tasks.cli.launch import ensure_packages

    ensure_packages(__file__)

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Any, Protocol, TextIO

from tasks.admission import priority_for
from tasks.api.tokens import ApiClient, TokenStore
from tasks.cli.accuracy import add_accuracy_command, run_accuracy
from tasks.cli.backup import add_backup_commands, run_backup, run_restore
from tasks.cli.core import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    REDIS_URL_HELP,
    Session,
    run_command,
)
from tasks.cli.usage import add_usage_command, run_usage
from tasks.client import OcrClient
from tasks.errors import OcrError
from tasks.operator_console import OperatorConsole
from tasks.queue.routing import PRIORITIES
from tasks.records.clients import ClientRules
from tasks.settings import Settings
from tasks.state.connection import connect
from tasks.state.webhook_secrets import DEFAULT_GRACE_SECONDS

PROG = "ocr_admin.py"
# The exit statuses are submit.py's (tasks/cli/core.py; its `--help` lists them all).
NO_WORKER_HINT = "start a worker (`make run` starts one)"  # submit.py names the queue
MODELS_SUMMARY = ("audit OCR_MODEL_DIR of every host (one table per host), prune it, "
                  "or make the workers release their models")
TOKENS_SUMMARY = "HTTP API clients: make one (its token is printed once), list, revoke"


class Context(Protocol):
    """What a command runs with: settings, and a client whose Redis has answered."""

    @property
    def settings(self) -> Settings: ...

    @property
    def client(self) -> OcrClient: ...


# --- models: the model directory of every host ---------------------------------------

def models_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prune", action="store_true",
                        help="remove what the prune policy selects")
    parser.add_argument("--dry-run", action="store_true",
                        help="show what --prune would remove; remove nothing")
    parser.add_argument("--unload", action="store_true",
                        help="make every pool child release its engine (remote control "
                             "unload_model); it reloads on its next task")


def run_models(args: argparse.Namespace, session: Context, prog: str = PROG) -> int:
    """Print the audit report, or the replies to `unload_model`.

    Exit 1 when an audit failed or reported errors, 5 when no worker answered.
    """
    if args.unload and (args.prune or args.dry_run):
        print(f"{prog} models: --unload cannot be combined with --prune or --dry-run",
              file=sys.stderr)
        return EXIT_USAGE
    client = session.client
    if args.unload:
        replies = OperatorConsole(client).unload_models()
        if args.json:
            print(json.dumps({"unload": replies}))
        else:
            for worker, reply in sorted(replies.items()):
                print(f"{worker}: {reply.get('ok') or 'error: ' + str(reply.get('error'))}")
        if not replies:
            print(f"{prog}: no worker answered; {NO_WORKER_HINT}", file=sys.stderr)
        return EXIT_OK if any("ok" in r for r in replies.values()) else EXIT_FAILURE
    result = OperatorConsole(client).audit_every_host(prune=args.prune, dry_run=args.dry_run,
                                     timeout=300.0 if args.timeout is None else args.timeout)
    reports, failed = result["hosts"], result["failed"]
    if args.json:
        print(json.dumps(result), flush=True)
    elif reports:
        print("\n\n".join(format_models_report(r) for r in reports), flush=True)
    for failure in failed:  # FAILURE or TIMEOUT of one host's audit
        error = failure.get("error", {})
        print(f"{prog}: audit of {failure['model_dir']} on {failure['host']} "
              f"{failure.get('status')}: {error.get('code')}: {error.get('message')}",
              file=sys.stderr)
    if not reports and not failed:
        print(f"{prog}: no worker answered; {NO_WORKER_HINT}", file=sys.stderr)
        return EXIT_UNREACHABLE
    return EXIT_FAILURE if failed or any(r["errors"] for r in reports) else EXIT_OK


def format_models_report(report: dict[str, Any]) -> str:
    """One host's audit report as a table and lists, for people."""
    lines = [f"== {report['host']}: {report['model_dir']} (audited by {report['worker']})"]
    lines += report.get("notes", [])
    if not report.get("model_dir_exists", True) and not report["errors"]:
        return "\n".join(lines)
    header = ("NAME", "STATUS", "KIND", "SIZE", "MODIFIED", "LAST USED", "LOADED BY",
              "INTEGRITY")
    rows = [header]
    for m in report["models"]:
        kind = m["kind"] + (f" ({m['model_type']})" if m["model_type"] else "")
        hub = m.get("hub")
        if hub:
            refs = " ".join(f"{ref}={commit[:8]}" for ref, commit in sorted(hub["refs"].items()))
            kind += f", {len(hub['revisions'])} rev, {refs or 'no refs'}"
        integrity = m["integrity"]
        state = "ok" if integrity["ok"] else "; ".join(
            [*integrity["problems"], *[f"partial: {p}" for p in integrity["partial"]]])
        rows.append((m["name"] + (f" -> {m['link']}" if m["link"] else ""),
                     m.get("status", "-"), kind,
                     _size(m["size_bytes"]), _when(m["modified"]), _when(m["last_used"]),
                     ", ".join(m["loaded_by"]) or "-", state))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1]
              for r in rows]
    label = {"audit": "would go (audit only: nothing removed)", "dry-run": "would be pruned",
             "prune": "pruned"}[report["mode"]]
    pruned = report["pruned"] or [k for k in report["kept"]
                                  if set(k["reasons"]) & {"audit_only", "prune_locked"}]
    lines += ["", f"{label}:"] + [f"  {_what(p)}: {p['detail']}" for p in pruned] \
        if pruned else ["", f"{label}: nothing"]
    lines += ["kept:"] + [f"  {_what(k)}: {', '.join(k['reasons'])} ({k['detail']})"
                          for k in report["kept"]]
    if report["errors"]:
        lines += ["errors:"] + [f"  {e['code']}: {e['message']}" for e in report["errors"]]
    totals = report["totals"]
    went = "would be pruned" if report["mode"] == "dry-run" else "pruned"
    lines.append(f"{totals['entries']} entries, {_size(totals['size_bytes'])} in "
                 f"{report['model_dir']} on {report['host']}; {totals['pruned']} {went} "
                 f"({_size(totals['pruned_bytes'])})")
    return "\n".join(lines)


def _what(decision: dict[str, Any]) -> str:
    """An entry's name, or what part of a hub repo a decision is about."""
    scope = decision.get("scope", "entry")
    if scope == "entry":
        return str(decision["name"])
    parts = [p.rsplit("/", 1)[-1][:12] for p in decision.get("parts", [])]
    return f"{decision['name']} [{scope}: {', '.join(parts)}]"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _when(iso: str | None) -> str:
    return iso[:16].replace("T", " ") + "Z" if iso else "-"


# --- tokens: the HTTP API's clients -------------------------------------------------------

def build_tokens_parser(parser: argparse.ArgumentParser) -> None:
    """`tokens create NAME | set NAME | list | revoke NAME`, with --json on each."""
    commands = parser.add_subparsers(dest="tokens_command", required=True, metavar="COMMAND")
    create = commands.add_parser("create", help="make a client and print its token once")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--jobs-in-flight", type=int, metavar="N",
                        help="most unfinished jobs at once (0: no limit; default "
                             "OCR_API_JOBS_IN_FLIGHT)")
    create.add_argument("--requests-per-minute", type=int, metavar="N",
                        help="most requests a minute (0: no limit; default "
                             "OCR_API_REQUESTS_PER_MINUTE)")
    create.add_argument("--max-bytes", type=int, metavar="N",
                        help="most bytes stored in Redis: inputs waiting, line "
                             "corrections and jobs' results (0: no limit; default "
                             "OCR_API_CLIENT_MAX_BYTES)")
    for flag, period in (("--pages-per-day", "a day"), ("--pages-per-month", "a month")):
        create.add_argument(flag, type=int, metavar="N",
                            help=f"most pages read {period} (UTC; a job that would pass "
                                 "it is refused: page_quota_exceeded; default: no cap)")
    _engine_caps_flag(create)
    _share_flags(create)
    create.add_argument("--batches", type=int, metavar="N",
                        help="most batches the client runs at once (0: no limit; default "
                             "4); another is refused, 429 batch_quota_exceeded")
    create.add_argument("--allowed-url", action="append", metavar="PREFIX",
                        dest="allowed_urls",
                        help="a URL prefix (s3://bucket/folder/, https://host/path/) the "
                             "client reads `url` inputs and writes `result_url` under, "
                             "within OCR_ALLOWED_URLS; repeat for several (default: it "
                             "reads only OCR_SHARED_READ_URLS and writes no result_url)")
    create.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help='print {"name": …, "token": …}')
    quotas = commands.add_parser("set", help="change a client's own quotas (-1: back to "
                                             "the service-wide default)")
    quotas.add_argument("name", metavar="NAME")
    for flag in ("--jobs-in-flight", "--requests-per-minute", "--max-bytes",
                 "--pages-per-day", "--pages-per-month", "--batches"):
        quotas.add_argument(flag, type=int, metavar="N",
                            help="0: no limit; -1: the service-wide default (pages: none)")
    _engine_caps_flag(quotas)
    _share_flags(quotas)
    quotas.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    listing = commands.add_parser("list", help="list clients (never their tokens)")
    listing.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                         help="one JSON object per client")
    revoke = commands.add_parser("revoke", help="remove a client and its token")
    revoke.add_argument("name", metavar="NAME")
    revoke.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    rotate = commands.add_parser("rotate-secret",
                                 help="a new webhook signing secret, printed once; the old "
                                      "one still signs (X-OCR-Signature-Previous) during "
                                      "--grace")
    rotate.add_argument("name", metavar="NAME")
    rotate.add_argument("--grace", type=float, default=DEFAULT_GRACE_SECONDS, metavar="S",
                        help="seconds the previous secret still signs (default 86400)")
    rotate.add_argument("--json", action="store_true", default=argparse.SUPPRESS)


def _engine_cap(text: str) -> tuple[str, int]:
    """`ENGINE=N` of --engine-pages-per-day."""
    engine, sep, cap = text.partition("=")
    if not sep or not engine or not cap.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give ENGINE=N, e.g. vlm-api=500")
    return engine, int(cap)


def _engine_caps_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine-pages-per-day", type=_engine_cap, action="append",
                        metavar="ENGINE=N",
                        help="most pages ENGINE reads for the client a day (UTC): a job "
                             "naming it is refused past it, page_quota_exceeded, and an "
                             "escalated page keeps its first reading; repeat for several "
                             "engines (0: no cap on that engine)")


def _share_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weight", type=int, metavar="W",
                        help="the client's share of the workers beside other clients' "
                             "(1-1000; default 1)")
    parser.add_argument("--max-priority", choices=(*PRIORITIES, "any"), metavar="P",
                        help="the highest priority its jobs may have: interactive, normal "
                             "or batch (any: no limit; default any)")


QUOTA_FLAGS = ("jobs_in_flight", "requests_per_minute", "max_bytes",  # `tokens set`
               "pages_per_day", "pages_per_month", "batches")


def run_tokens(args: argparse.Namespace, store: TokenStore, out: TextIO) -> int:
    """Carry out a parsed `tokens` command; returns the exit status."""
    as_json = bool(getattr(args, "json", False))
    if args.tokens_command == "create":
        token, secret = store.create_client(args.name, args.jobs_in_flight,
                                            args.requests_per_minute,
                                            max_bytes=args.max_bytes,
                                            pages_per_day=args.pages_per_day,
                                            pages_per_month=args.pages_per_month,
                                            allowed_urls=args.allowed_urls,
                                            weight=1 if args.weight is None else args.weight,
                                            max_priority=_max_priority(args.max_priority),
                                            batches=args.batches,
                                            engine_pages_per_day=_engine_caps(args))
        if as_json:
            print(json.dumps({"name": args.name, "token": token, "webhook_secret": secret}),
                  file=out)
        else:
            print(f"token for {args.name} (shown once; only its hash is stored):\n{token}\n"
                  f"webhook signing secret (shown once):\n{secret}\n"
                  f"{plain_priority(_max_priority(args.max_priority))}", file=out)
        return 0
    if args.tokens_command == "rotate-secret":
        rotated = store.webhook_secrets.rotate(args.name, args.grace)
        if as_json:
            print(json.dumps({"name": args.name, "webhook_secret": rotated}), file=out)
        elif rotated is None:
            print(f"no client {args.name}", file=out)
        else:
            print(f"new webhook signing secret for {args.name} (shown once; the previous "
                  f"one signs too for {args.grace:g} s):\n{rotated}", file=out)
        return 0 if rotated is not None else 1
    if args.tokens_command == "set":
        given = {name: (None if value == -1 else value) for name in QUOTA_FLAGS
                 if (value := getattr(args, name)) is not None}
        share: dict[str, Any] = {} if args.weight is None else {"weight": args.weight}
        if args.engine_pages_per_day is not None:
            share["engine_pages_per_day"] = _engine_caps(args)
        if args.max_priority is not None:
            share["max_priority"] = _max_priority(args.max_priority)
        updated = store.set_limits(args.name, **given, **share)
        if as_json:
            print(json.dumps(None if updated is None else asdict(updated)), file=out)
        else:
            print(f"no client {args.name}" if updated is None else
                  f"{args.name}\t{_limits(updated)}", file=out)
        return 0 if updated is not None else 1
    if args.tokens_command == "list":
        clients = store.clients()
        for client in clients:
            if as_json:
                print(json.dumps(asdict(client)), file=out)
            else:
                print(f"{client.name}\t{_limits(client)}\tcreated "
                      f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(client.created))} UTC"
                      f"\tsha256 {client.token_sha256[:12]}", file=out)
        if not clients and not as_json:
            print("no clients", file=out)
        return 0
    revoked = store.revoke(args.name)
    if as_json:
        print(json.dumps({"name": args.name, "revoked": revoked}), file=out)
    else:
        print(f"revoked {args.name}" if revoked else f"no client {args.name}", file=out)
    return 0 if revoked else 1


def _engine_caps(args: argparse.Namespace) -> dict[str, int] | None:
    """The --engine-pages-per-day flags given, by engine (the last of one engine's)."""
    return None if args.engine_pages_per_day is None else dict(args.engine_pages_per_day)


def _limits(client: ApiClient) -> str:
    parts: list[Any] = []
    if client.jobs_in_flight is not None:
        parts.append(f"jobs-in-flight={client.jobs_in_flight}")
    if client.requests_per_minute is not None:
        parts.append(f"requests-per-minute={client.requests_per_minute}")
    if client.max_bytes is not None:
        parts.append(f"max-bytes={client.max_bytes}")
    parts += [f"{name.replace('_', '-')}={value}" for name in ("pages_per_day",
              "pages_per_month") if (value := getattr(client, name))]
    parts += [f"engine-pages-per-day={engine}={cap}"
              for engine, cap in (client.engine_pages_per_day or {}).items()]
    if client.allowed_urls is not None:
        parts.append(f"allowed-urls={','.join(client.allowed_urls)}")
    if client.weight != 1:
        parts.append(f"weight={client.weight}")
    if client.max_priority is not None:
        parts.append(f"max-priority={client.max_priority}")
    if client.batches is not None:
        parts.append(f"batches={client.batches}")
    return " ".join(parts) or "default limits"


def plain_priority(max_priority: str | None) -> str:
    """What a job that names no priority gets under this --max-priority, in words."""
    plain = priority_for(ClientRules("", max_priority=max_priority), None)
    why = "this token's --max-priority" if plain == max_priority else "the default"
    return (f"plain jobs run at priority {plain} ({why}); priorities outrank weights: "
            "a waiting page of a higher priority goes first, whatever the weights")


def _max_priority(value: str | None) -> str | None:
    return None if value in (None, "any") else value


def run_tokens_command(args: argparse.Namespace, session: Context, prog: str = PROG) -> int:
    """Carry out `tokens ...` against the Redis of the session's settings."""
    redis_client = connect(session.settings.redis_target)
    try:
        return run_tokens(args, TokenStore(redis_client), sys.stdout)
    except OcrError as exc:
        print(f"{prog}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        redis_client.close()


# --- main ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="The OCR service's operator commands (submit.py: the user's).")
    parser.add_argument("--redis-url", metavar="URL", help=REDIS_URL_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models = commands.add_parser("models", help=MODELS_SUMMARY, description=MODELS_SUMMARY)
    models_arguments(models)
    models.add_argument("--json", action="store_true", help="one JSON record")
    models.add_argument("--timeout", type=float, metavar="S",
                        help="stop waiting for the audits after S seconds (default 300)")
    build_tokens_parser(commands.add_parser("tokens", help=TOKENS_SUMMARY,
                                            description=TOKENS_SUMMARY))
    add_backup_commands(commands)
    add_usage_command(commands)
    add_accuracy_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # usage errors exit 2
    run = {"models": run_models, "backup": run_backup, "restore": run_restore,
           "usage": run_usage, "accuracy": run_accuracy}.get(args.command, run_tokens_command)
    return run_command(PROG, run, args, Session(args.redis_url))


if __name__ == "__main__":
    sys.exit(main())
