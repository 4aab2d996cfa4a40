"""`ocr_admin.py backup TARGET` and `restore SOURCE`: the service's Redis saved and restored.

Runs in the operator's process (a shell, or the Kubernetes CronJob of
deploy/kubernetes/overlays/redis-ha). `backup` writes Redis's RDB snapshot
(tasks/state/snapshot.py: one consistent point in time, every database) to a file or
an `s3://` key. `restore` loads a backup into a throwaway `redis-server` of its own (a
unix socket in a temporary folder: Redis itself reads the file) and copies its keys
into the Redis at REDIS_URL (`--redis-url`), which must be empty unless `--replace`;
`--check` only reports what the backup holds. The target is reached through the
connection factory (Sentinel, TLS), and the copy is kept on OCR_REDIS_MIN_REPLICAS
replicas before the command says it is done.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import redis

from tasks.broker.reads import is_held_hash, is_lane
from tasks.cli.core import EXIT_FAILURE, EXIT_OK
from tasks.errors import OcrError, RestoreRefused
from tasks.lifecycle import backup_files
from tasks.records.redis_target import RedisTarget
from tasks.settings import Settings
from tasks.state.connection import connect
from tasks.state.replicas import check_kept, kept
from tasks.state.snapshot import copy_database, inventory, read_snapshot

BACKUP_SUMMARY = "write a consistent snapshot of the service's Redis to a file or s3:// key"
RESTORE_SUMMARY = ("bring a backup back into a fresh Redis (queued jobs, tokens, results); "
                   "--check: only say what it holds")
LOADER_DATABASES = 1024  # any database number a backup may hold
LOAD_SECONDS = 1800  # a large backup takes Redis a while to read


class Context(Protocol):
    @property
    def settings(self) -> Settings: ...


def add_backup_commands(commands: Any) -> None:
    """The `backup` and `restore` subcommands of ocr_admin.py."""
    backup = commands.add_parser("backup", help=BACKUP_SUMMARY, description=BACKUP_SUMMARY)
    backup.add_argument("target", metavar="TARGET",
                        help="a file (written as TARGET.part, then renamed) or s3://bucket/key")
    backup.add_argument("--json", action="store_true", help="one JSON record")
    restore = commands.add_parser("restore", help=RESTORE_SUMMARY,
                                  description=RESTORE_SUMMARY)
    restore.add_argument("source", metavar="SOURCE", help="a backup file or s3://bucket/key "
                         "(any RDB file: a managed Redis's export too)")
    restore.add_argument("--from-db", type=int, metavar="N",
                         help="the backup's database to restore (default: the number of "
                              "REDIS_URL's own)")
    restore.add_argument("--replace", action="store_true",
                         help="overwrite keys the target already has (default: refuse a "
                              "target that is not empty)")
    restore.add_argument("--check", action="store_true",
                         help="load the backup and report what each database holds; "
                              "write nothing")
    restore.add_argument("--json", action="store_true", help="one JSON record")


def run_backup(args: argparse.Namespace, session: Context, prog: str = "ocr_admin.py") -> int:
    """Take the snapshot, write it whole under TARGET; exit 1 when it failed."""
    settings = session.settings
    began = time.monotonic()
    client = connect(settings.redis_target, patient=False)
    with tempfile.TemporaryDirectory(prefix="ocr-backup-") as tmp:
        written = (Path(tmp) / "backup.rdb" if backup_files.is_object(args.target)
                   else backup_files.partial_path(args.target))
        try:
            with open(written, "wb") as out:
                snapshot = read_snapshot(client, out)
            backup_files.keep(written, args.target)
        except OcrError as exc:
            written.unlink(missing_ok=True)
            print(f"{prog} backup: {exc.message}", file=sys.stderr)
            return EXIT_FAILURE
        finally:
            client.close()
    record = {"target": args.target, "redis": settings.redis_target.masked,
              "bytes": snapshot.bytes, "seconds": round(time.monotonic() - began, 2)}
    print(json.dumps(record) if args.json else
          f"backup of {record['redis']}: {snapshot.bytes} bytes written to {args.target} "
          f"in {record['seconds']} s")
    return EXIT_OK


def run_restore(args: argparse.Namespace, session: Context, prog: str = "ocr_admin.py") -> int:
    """Load the backup, copy one database into the target (or only report: --check)."""
    settings = session.settings
    target = settings.redis_target
    began = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="ocr-restore-") as tmp:
            folder = Path(tmp)
            path = backup_files.fetch(args.source, folder / "fetched.rdb")
            with Loader(path, folder) as loader:
                databases = {n: loader.inventory(n) for n in loader.databases()}
                if args.check:
                    return _report({"source": args.source, "databases": {
                        str(n): inv.as_json() for n, inv in databases.items()}}, args.json)
                number = target.db if args.from_db is None else args.from_db
                source = loader.client(number)
                destination = connect(target)
                try:
                    copied = copy_database(source, destination, replace=args.replace)
                    # kept on OCR_REDIS_MIN_REPLICAS replicas before it is called done
                    check_kept(kept(destination.pipeline(), target).execute(), target,
                               "the restored keys")
                    restored = inventory(destination, is_lane, is_held_hash)
                finally:
                    source.close()
                    destination.close()
    except OcrError as exc:
        print(f"{prog} restore: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    return _report({"source": args.source, "redis": target.masked, "from_db": number,
                    "keys": copied, "restored": restored.as_json(),
                    "other_databases": sorted(n for n in databases if n != number),
                    "seconds": round(time.monotonic() - began, 2)}, args.json)


def _report(record: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(record))
    elif "databases" in record:
        for number, counts in record["databases"].items():
            print(f"database {number}: " + ", ".join(f"{v} {k.replace('_', ' ')}"
                                                     for k, v in counts.items()))
    else:
        held = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in record["restored"].items())
        print(f"restored {record['keys']} keys of database {record['from_db']} into "
              f"{record['redis']} in {record['seconds']} s: {held}")
        if record["other_databases"]:
            print(f"the backup also holds databases {record['other_databases']}: restore "
                  "them with --from-db N into that database's URL")
    return EXIT_OK


class Loader:
    """A throwaway redis-server that reads a backup file (a unix socket, no TCP port)."""

    def __init__(self, path: Path, folder: Path) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise RestoreRefused("restore reads the backup with redis-server, which is not "
                                 "installed here (apt-get install redis-server)")
        self.folder = folder
        self.socket = folder / "loader.sock"
        data = folder / "loader.rdb"
        if path.resolve() != data.resolve():
            data.symlink_to(path.resolve())
        self.log = folder / "loader.log"
        self.command = [server, "--port", "0", "--unixsocket", str(self.socket),
                        "--unixsocketperm", "700", "--dir", str(folder), "--dbfilename",
                        data.name, "--appendonly", "no", "--save", "", "--databases",
                        str(LOADER_DATABASES), "--logfile", str(self.log)]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Loader:
        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        probe = self.client(0)
        deadline = time.monotonic() + LOAD_SECONDS
        try:
            while True:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RestoreRefused(f"redis-server had not loaded the backup within "
                                         f"{LOAD_SECONDS} s")
                if self.proc.poll() is not None:
                    tail = self.log.read_text(errors="replace")[-600:] if self.log.exists() else ""
                    raise RestoreRefused(f"redis-server could not load the backup: {tail}")
                try:
                    if probe.ping():
                        return self
                except redis.ConnectionError:  # not listening yet, or LOADING the file
                    time.sleep(0.1)
        finally:
            probe.close()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def client(self, db: int) -> redis.Redis:
        return connect(RedisTarget(f"unix://{self.socket}?db={db}", db=db), patient=False)

    def databases(self) -> list[int]:
        info = self.client(0)
        try:
            keyspace = info.info("keyspace")
        finally:
            info.close()
        return sorted(int(name[2:]) for name in keyspace if name.startswith("db"))

    def inventory(self, db: int) -> Any:
        client = self.client(db)
        try:
            return inventory(client, is_lane, is_held_hash)
        finally:
            client.close()
