"""Who holds a job's end claim, and whether that process is still alive (Linux: /proc).

An end claim names its holder `<host>:<pid>` while the ending runs
(tasks/lifecycle/job_exit.py), `<host>` being the host name and the process's pid
namespace (`node1/4026531836`): containers that share a host name (host networking)
each have their own pids. A holder of this host and namespace is judged by its pid:
gone, or a zombie not yet reaped, is dead. Any other holder is never judged here (its
pid says nothing in this namespace). Pure process checks: runs in pool children and
worker parents.
"""

from __future__ import annotations

import functools
import os
import socket


def holder_name(pid: int | None = None) -> str:
    """How an end claim names the process holding it: `<host>:<pid>` (this one's)."""
    return f"{_host()}:{os.getpid() if pid is None else pid}"


def local_pid(holder: str | None) -> int | None:
    """The pid a claim's holder (`<host>:<pid>`) names, when it is of this host."""
    host, _, pid_text = (holder or "").rpartition(":")
    if host != _host() or not pid_text.isdigit():
        return None
    return int(pid_text)


def _host() -> str:
    """The name and pid namespace of the host this runs on: `<name>/<namespace inode>`.

    The name alone where /proc does not tell the namespace.
    """
    namespace = _pid_namespace()
    return socket.gethostname() if namespace is None else f"{socket.gethostname()}/{namespace}"


@functools.cache
def _pid_namespace() -> int | None:
    """The pid namespace (its inode) of the process, read once: it never changes."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def gone(pid: int) -> bool:
    """Whether process `pid` has exited (a zombie not yet reaped counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: the pid was reused
        return True
    fields = _proc_stat(pid)
    return fields is not None and fields[0] in ("Z", "X")  # no /proc: alive until reaped


def dead_local_holder(holder: str | None) -> bool:
    """Whether `holder` names a process of this host that has exited."""
    pid = local_pid(holder)
    return pid is not None and gone(pid)


def parent_of(pid: int) -> int | None:
    """The parent pid of a live process, from /proc (None where it cannot be read)."""
    fields = _proc_stat(pid)
    return int(fields[1]) if fields is not None and len(fields) > 1 else None


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name; None without them."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
