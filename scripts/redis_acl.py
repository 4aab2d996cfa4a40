#!/usr/bin/env python3
"""The Redis users' lines for a Redis configuration: `python -m scripts.redis_acl`.

Runs in the Redis container as it starts (deploy/kubernetes/base/redis.yaml's init
container, compose.yaml's `redis`), before `redis-server` reads the file: prints (or
appends to `--out`) a `user` line for each user of tasks/redis_users.py, its
password hashed, the `default` user off. Each password comes from the environment,
`REDIS_PASSWORD_<USER>` (REDIS_PASSWORD_WORKER, ..._API, ...); a missing, empty or
placeholder password stops it with one line naming the variable (exit 2), so Redis never
starts with a user nobody set a password for.

`--probe-password-file FILE` also adds the `probe` user (PING only) with a password made
here and written to FILE (mode 0600), for the container's own readiness probe.
`--replicated` also adds the servers' own users of a replicated Redis (`replica`,
`sentinel`: tasks/redis_users.py HA_USERS; REDIS_PASSWORD_REPLICA,
REDIS_PASSWORD_SENTINEL), for deploy/redis-ha/start.sh's servers.
`--redis-version 7.2` names the server's version when no `redis-server` is on PATH (a
managed Redis: apply the printed lines there).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from tasks.redis_users import HA_USERS, PROBE, USERS, acl_lines
from tasks.settings import Settings, SettingsError


def server_version() -> tuple[int, int]:
    """The major and minor version of the `redis-server` on PATH; 7.0 when there is none."""
    server = shutil.which("redis-server")
    if server is None:
        return (7, 0)
    out = subprocess.run([server, "--version"], capture_output=True, text=True,
                         timeout=30, check=False).stdout
    found = re.search(r"v=(\d+)\.(\d+)", out)
    return (int(found.group(1)), int(found.group(2))) if found else (7, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="append the lines to this file")
    parser.add_argument("--probe-password-file", type=Path,
                        help="add the probe user; write its password here (0600)")
    parser.add_argument("--redis-version", help="the server's MAJOR.MINOR (default: "
                        "`redis-server --version`, else 7.0)")
    parser.add_argument("--replicated", action="store_true",
                        help="also the users of replication and Sentinel (HA_USERS)")
    args = parser.parse_args(argv)
    users = (*USERS, *HA_USERS) if args.replicated else USERS
    missing = [u.password_variable for u in users if u.password_variable not in os.environ]
    if missing:
        print(f"redis-acl: {missing[0]} is not set (one password per Redis user: "
              "docs/deploy.md)", file=sys.stderr)
        return 2
    try:
        Settings.from_env()  # refuses an empty or placeholder REDIS_PASSWORD_<USER>
    except SettingsError as exc:
        print(f"redis-acl: {exc}", file=sys.stderr)
        return 2
    passwords = {u.name: os.environ[u.password_variable] for u in users}
    if args.probe_password_file is not None:
        probe = secrets.token_hex(24)
        fd = os.open(args.probe_password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(probe)
        passwords[PROBE.name] = probe
    version = (tuple(int(p) for p in args.redis_version.split(".")[:2])
               if args.redis_version else server_version())
    text = "\n".join(acl_lines(passwords, (version[0], version[1]))) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        with args.out.open("a") as out:
            out.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
