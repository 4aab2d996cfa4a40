"""`submit.py`'s commands as a registry: each one's help, example, options and runner.

Runs in `submit.py` (a user's machine). Adding a command is one decorated function:
`@command(name, summary, example, shared=..., arguments=...)` on
`def run(args, session) -> int`; the help, the parser and the dispatch come from that
registration (`COMMANDS`). The shared options (`--json`, `--timeout`, `--out`,
`--redis-url`) go before or after the command's name.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.cli.core import EXIT_HELP, REDIS_URL_HELP, Session
from tasks.cli.output import PROG

# --- commands -------------------------------------------------------------------------

Runner = Callable[[argparse.Namespace, Session], int]


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
    "redis_url": SharedOption(("--redis-url",), {"metavar": "URL", "help": REDIS_URL_HELP},
                              None),
    "client": SharedOption(("--client",), {
        "metavar": "NAME", "help": "the client the jobs are sent under (their lane in the "
        "fair shares, and `client` in results); default $OCR_CLIENT, else your login "
        "name"}, None),
}
CLOSE = 0.75  # how alike a word and a command's name must be to ask "did you mean"
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


def mistyped_command(argv: list[str]) -> tuple[str, str] | None:
    """(word, command) for a first word that names no file and looks like a command mistyped.

    `stauts ID` gives ("stauts", "status"). Only the word `with_default_command` would
    read as the first file is asked about; None for any other command line.
    """
    words = with_default_command(argv)
    if len(words) == len(argv):  # a command named, or none
        return None
    at = next((i for i, (a, b) in enumerate(zip(argv, words, strict=False)) if a != b),
              len(argv))
    if at >= len(argv) or Path(argv[at]).exists():
        return None
    close = difflib.get_close_matches(argv[at], list(COMMANDS), n=1, cutoff=CLOSE)
    return (argv[at], close[0]) if close else None


def check_shared(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 cmd: Command) -> None:
    """A shared option given before a command that does not take it is a usage error."""
    for name, option in SHARED.items():
        if name not in cmd.shared and getattr(args, name, option.default) != option.default:
            parser.error(f"{option.flags[0]} does not apply to `{cmd.name}`")
