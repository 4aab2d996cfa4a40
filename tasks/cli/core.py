"""Exit codes, the session and the error handling both command lines share.

Runs in `submit.py` and `ocr_admin.py` (a user's or operator's machine). A command is
`run(args, session) -> int`; `run_command` runs it and turns the service's errors into
one line on stderr and an exit code, the same for both programs.

Which Redis: `--redis-url`, else `REDIS_URL`, else the URL `make run` wrote into
`var/redis-url` when it started the project's own Redis (looked for under the current
directory, then beside this checkout's `submit.py`). While that checkout's `make run`
is starting (`var/starting` names make's pid, from before its installs until its
Redis is up), a command waits for it, up to START_WAIT seconds, saying so once on
stderr. With none of these a command that needs Redis says how to start one (exit 5):
never a Redis the project did not start (the settings' default, 127.0.0.1:6379).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from tasks.client import CONNECTION_ERRORS, OcrClient
from tasks.errors import (
    AmbiguousId,
    EngineUnavailable,
    JobNotFound,
    OcrError,
    ServiceUnreachable,
)
from tasks.records.status import JobStatus, WaitStatus
from tasks.settings import Settings, SettingsError

# Exit status; with several jobs the most severe one wins (this order, top first).
EXIT_UNREACHABLE = 5  # Redis did not answer, or no live worker consumes a job's queue
EXIT_FAILURE = 1      # a job failed (its error code is printed)
EXIT_TIMEOUT = 6      # --timeout passed with jobs still running (they go on)
EXIT_CANCELLED = 4    # a job was cancelled
EXIT_PARTIAL = 3      # a job finished with some pages failed (PARTIAL)
EXIT_OK = 0           # every job succeeded
EXIT_USAGE = 2        # bad command line or settings (nothing was sent)
EXIT_NOT_FOUND = 7    # a job id with no record (never sent, or its records expired)
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # the reader of stdout went away (`| head`): as a shell says SIGPIPE
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
  2  usage error (bad option, file list or setting, a short id that begins several
     jobs: ambiguous_id; nothing was sent)
  7  not_found: no job has that id (never sent, or its records expired)
`status` exits as `wait` for jobs that ended or wait with no worker; 0 while they run"""
UNREACHABLE_HINT = ("start the service with `make run`, or point REDIS_URL (or "
                    "--redis-url) at the broker's Redis")
REDIS_URL_HELP = ("the broker's Redis (default: $REDIS_URL, else the one `make run` "
                  "started (var/redis-url), waiting while it starts)")
NO_REDIS = ("no Redis named: no --redis-url, no REDIS_URL, and no var/redis-url (`make "
            "run` writes it when it starts the project's own)")
# Written by `make run` (scripts/supervise.py) when it starts the project's own Redis.
RUN_URL_FILE = Path("var") / "redis-url"
# make's pid, written by `make run` before its installs; gone once its Redis is up.
STARTING_FILE = Path("var") / "starting"
START_WAIT = 300.0  # seconds a command waits for a starting `make run`
CHECKOUT = Path(__file__).resolve().parents[2]


def exit_status(statuses: list[str]) -> int:
    """The most severe exit code of these job statuses (unknown ones: a failure)."""
    codes = {EXIT_BY_STATUS.get(status, EXIT_FAILURE) for status in statuses}
    return next((code for code in SEVERITY if code in codes), EXIT_OK)


def starting_pid(base: Path) -> int | None:
    """The pid of `make run` while it starts in checkout `base`; None: not starting."""
    try:
        pid = int((base / STARTING_FILE).read_text().strip())
        os.kill(pid, 0)
    except PermissionError:  # alive, another user's
        return pid
    except (OSError, ValueError):  # no file, no such process (a run that failed)
        return None
    return pid


def wait_started(base: Path, prog: str, wait: float) -> None:
    """Wait while `make run` starts in `base`; ServiceUnreachable after `wait` s."""
    pid = starting_pid(base)
    if pid is None:
        return
    print(f"{prog}: `make run` (pid {pid}) is starting in {base}; waiting for its Redis "
          f"(up to {wait:g} s)", file=sys.stderr, flush=True)
    deadline = time.monotonic() + wait
    while starting_pid(base) is not None:
        if time.monotonic() >= deadline:
            raise ServiceUnreachable(f"`make run` (pid {pid}) was still starting after "
                                     f"{wait:g} s; nothing was sent")
        time.sleep(0.2)


def run_url(cwd: Path | None = None, wait: float = START_WAIT) -> str | None:
    """The Redis URL `make run` recorded (var/redis-url), once it has started; or None."""
    for base in dict.fromkeys([cwd or Path.cwd(), CHECKOUT]):
        wait_started(base, Path(sys.argv[0]).name, wait)
        try:
            url = (base / RUN_URL_FILE).read_text().strip()
        except OSError:
            continue
        if url:
            return url
    return None


def redis_url_of(flag: str | None, environ: Mapping[str, str]) -> str | None:
    """The Redis a command line uses: --redis-url, $REDIS_URL, `make run`'s; None: none."""
    return flag or environ.get("REDIS_URL") or run_url()


class Session:
    """What a command runs with: settings, and a client whose Redis has answered."""

    def __init__(self, redis_url: str | None = None, client: str | None = None) -> None:
        self.redis_url = redis_url
        self.client_name = client  # --client: the name jobs are sent under (OCR_CLIENT)
        self._settings: Settings | None = None
        self._client: OcrClient | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            env = dict(os.environ)
            url = redis_url_of(self.redis_url, env)
            if not url:  # never a Redis nobody named (the settings' default)
                raise ServiceUnreachable(NO_REDIS)
            env["REDIS_URL"] = url
            if self.client_name is not None:
                env["OCR_CLIENT"] = self.client_name
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


Runner = Callable[[argparse.Namespace, Session], int]


def run_command(prog: str, run: Runner, args: argparse.Namespace, session: Session) -> int:
    """Run a command; the service's errors become one line on stderr and an exit code.

    A reader that stops reading (`submit.py --json wait ID | head -c 600`) ends the
    command quietly, exit 141 as for a command SIGPIPE ended: no traceback, also not
    from the interpreter's own last flush.
    """
    try:
        code = run(args, session)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except SettingsError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ServiceUnreachable as exc:
        print(f"{prog}: {exc.message}: {UNREACHABLE_HINT}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except JobNotFound as exc:  # a mistyped id, or one whose records expired
        print(f"{prog}: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except AmbiguousId as exc:  # a short id that begins several jobs
        print(f"{prog}: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except CONNECTION_ERRORS as exc:  # Redis went away mid-run
        url = session.settings.redis_target.masked
        print(f"{prog}: lost Redis at {url} ({str(exc).strip().rstrip('.')}): "
              f"{UNREACHABLE_HINT}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        session.close()


def door_refusal(exc: OcrError, prog: str) -> int:
    """A job refused at the door, said on stderr; the exit status.

    An engine no live worker runs is unreachable (the message names its make target);
    anything else the gate refuses is a usage error. Nothing was sent either way.
    """
    print(f"{prog}: {exc.code}: {exc.message}", file=sys.stderr)
    return EXIT_UNREACHABLE if isinstance(exc, EngineUnavailable) else EXIT_USAGE
