"""Redis that fails over, for tests and benchmarks: a primary, replicas, Sentinels, a proxy.

`RedisHA` starts a real primary, two real replicas and three real Sentinels
(`redis-server --sentinel`) on free loopback ports; `kill_primary()` SIGKILLs the
primary as a lost host would, `wait_promoted()` waits for the Sentinels to name
another, and `rejoin()` starts the old one again on its port, where the Sentinels
make it a replica of the new primary. `MovingEndpoint` is the fixed address of a
managed Redis: a TCP proxy whose upstream the test switches to the promoted replica
(`switch`) after the primary is gone, so that the primary's unreplicated tail is
lost as in a managed failover. Sentinel's timings are short (`DOWN_AFTER_MS`).

Runs in the test or benchmark process; every server is a process of its own,
stopped by `stop()`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import redis

from devkit.harness import DATABASES, eventually, free_port

MASTER = "mymaster"
# A primary silent this long is down to a Sentinel; two of three must agree (quorum 2).
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


class RedisNode:
    """One redis-server (a primary or a replica) on a port of its own."""

    def __init__(self, workdir: Path, name: str, replica_of: int | None = None,
                 appendonly: bool = False) -> None:
        self.port = free_port()
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.replica_of = replica_of
        self.appendonly = appendonly  # an append-only file, fsynced: a restart keeps data
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisNode:
        replica = ["--replicaof", "127.0.0.1", str(self.replica_of)] if self.replica_of else []
        persist = (["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly
                   else ["--appendonly", "no"])
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--dir", str(self.workdir), "--save", "",
             *persist, "--databases", str(DATABASES),
             "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
             "--logfile", str(self.workdir / "redis.log"), *replica],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        eventually(lambda: _answers(self.client()), 10, f"redis-server on {self.port}",
                   interval=0.05)
        return self

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, db=db, socket_timeout=5, socket_connect_timeout=2)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last words to the replicas."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM: Redis's own shutdown (its append-only file flushed)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def role(self) -> str:
        try:
            return str(self.client().info("replication")["role"])
        except redis.RedisError:
            return "down"

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


class RedisHA:
    """A primary, two replicas and three Sentinels (quorum 2), all real processes."""

    def __init__(self, workdir: Path, replicas: int = 2, sentinels: int = 3,
                 down_after_ms: int = DOWN_AFTER_MS, appendonly: bool = False) -> None:
        self.workdir = workdir
        self.appendonly = appendonly
        self.down_after_ms = down_after_ms
        self.primary = RedisNode(workdir, "node-0", appendonly=appendonly)
        self.nodes = [self.primary]
        self.replica_count = replicas
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    def start(self) -> RedisHA:
        """Every node and Sentinel up and agreed; what started is stopped where one is not."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> RedisHA:
        self.primary.start()
        for i in range(self.replica_count):
            node = RedisNode(self.workdir, f"node-{i + 1}", self.primary.port,
                             appendonly=self.appendonly)
            self.nodes.append(node)  # before its start: a failed start stops it too
            node.start()
        self.wait_replicas(self.replica_count)
        for i, port in enumerate(self.sentinel_ports):
            folder = self.workdir / f"sentinel-{i}"
            folder.mkdir(parents=True, exist_ok=True)
            conf = folder / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\nlogfile {folder}/sentinel.log\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER} 2\n")
            self.sentinels.append(subprocess.Popen(
                [shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                start_new_session=True))
        # A Sentinel learns of the replicas from the primary's INFO (every 10 s) and of
        # the other Sentinels from their hellos (every 2 s): two INFO periods and more on
        # a loaded host.
        eventually(self._sentinels_agree, 40, lambda: "the Sentinels to see the primary "
                   f"and its replicas; each sees {self._sentinel_views()}")
        return self

    def sentinel_url(self, db: int = 0) -> str:
        return ";".join(f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports) \
            + f"/{db}"

    def env(self, db: int = 0) -> dict[str, str]:
        """REDIS_URL through the Sentinels, and the primary's name."""
        return {"REDIS_URL": self.sentinel_url(db), "OCR_REDIS_SENTINEL_MASTER": MASTER}

    def named_primary(self) -> int | None:
        """The primary's port as the Sentinels name it (the first that answers)."""
        named = self.named_primaries()
        return named[0] if named else None

    def named_primaries(self) -> list[int]:
        """The primary's port as each Sentinel that answers names it."""
        named = []
        for port in self.sentinel_ports:
            try:
                answer = redis.Redis(port=port, socket_timeout=2).execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
            except redis.RedisError:
                continue
            if answer:
                named.append(int(answer[1]))
        return named

    def node_at(self, port: int) -> RedisNode:
        return next(node for node in self.nodes if node.port == port)

    def _sentinels_agree(self) -> bool:
        for port in self.sentinel_ports:
            try:
                sentinel = redis.Redis(port=port, socket_timeout=2)
                # the command by its full name: redis-py 6's `sentinel_master` passes its
                # reply parser an argument it does not take
                master: Any = sentinel.execute_command("SENTINEL MASTER", MASTER)
                if int(master["num-slaves"]) < self.replica_count \
                        or int(master["num-other-sentinels"]) < len(self.sentinels) - 1:
                    return False
            except redis.RedisError:
                return False
        return True

    def _sentinel_views(self) -> list[str]:
        """What each Sentinel sees of the primary: its replicas and the other Sentinels."""
        views = []
        for port in self.sentinel_ports:
            try:
                master: Any = redis.Redis(port=port, socket_timeout=2).execute_command(
                    "SENTINEL MASTER", MASTER)
                views.append(f"{port}: {master['num-slaves']} replicas, "
                             f"{master['num-other-sentinels']} other Sentinels, "
                             f"flags {master['flags']}")
            except redis.RedisError as exc:
                views.append(f"{port}: {exc!r}")
        return views

    def wait_replicas(self, count: int, timeout: float = 30) -> None:
        """Until the primary has `count` replicas online and caught up."""
        def synced() -> bool:
            try:
                info = self.primary.client().info("replication")
            except redis.RedisError:
                return False
            online = [v for k, v in info.items() if k.startswith("slave")
                      and isinstance(v, dict) and v.get("state") == "online"]
            return len(online) >= count

        eventually(synced, timeout, f"{count} replicas online")

    def current(self) -> RedisNode:
        """The primary the Sentinels name now (after any failover), as `primary`."""
        port = self.named_primary()
        if port is not None and port != self.primary.port:
            self.primary = self.node_at(port)
        return self.primary

    def restart_primary(self, down_seconds: float) -> None:
        """Stop the primary (SIGTERM) and start it again on its port.

        Shorter than the Sentinels' down-after, a restart: it comes back as the primary
        and the replicas catch up with it. Should the Sentinels have promoted another
        meanwhile, it comes back as that one's replica, as a Sentinel-aware start does.
        """
        node = self.current()
        node.stop()
        time.sleep(down_seconds)
        named = self.named_primary()
        node.replica_of = named if named not in (None, node.port) else None
        node.start()

    def kill_primary(self) -> RedisNode:
        """SIGKILL the primary (the one the Sentinels name now); returns it (its port kept)."""
        old = self.current()
        old.kill()
        return old

    def wait_promoted(self, old: RedisNode, timeout: float = 30) -> RedisNode:
        """Until the Sentinels name a primary other than `old` and it takes writes."""
        def promoted() -> RedisNode | None:
            node = self.agreed_primary()
            return node if node is not None and node.port != old.port else None

        self.primary = eventually(promoted, timeout, "a replica promoted by the Sentinels")
        return self.primary

    def agreed_primary(self) -> RedisNode | None:
        """The primary every Sentinel that answers names, once it takes writes; else None."""
        named = set(self.named_primaries())
        if len(named) != 1:
            return None  # a switch under way
        try:
            node = self.node_at(named.pop())
            return node if node.role() == "master" else None
        except (StopIteration, redis.RedisError):
            return None

    def rejoin(self, old: RedisNode, timeout: float = 60) -> None:
        """Start `old` again on its port, as a replica of the primary the Sentinels name.

        As a Sentinel-aware start does (never as a primary of its own: clients that still
        reach it would write where the Sentinels' switch then throws it away).
        """
        old.replica_of = self.current().port
        old.start()
        eventually(lambda: old.role() == "slave", timeout, "the old primary to rejoin as a "
                   "replica")
        self.wait_replicas(len(self.nodes) - 1, timeout)

    def stop(self) -> None:
        for proc in self.sentinels:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for node in self.nodes:
            node.kill()


class MovingEndpoint:
    """One fixed address in front of Redis whose upstream moves, as a managed endpoint's.

    A TCP proxy on a free loopback port: each connection is forwarded to the current
    upstream. `switch(port)` points new connections at another server and cuts the
    open ones (clients reconnect to the same address and reach the new server).
    """

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._following = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def switch(self, upstream: int) -> None:
        with self._lock:
            self.upstream = upstream
            opened, self._open = self._open, set()
        for sock in opened:
            _close(sock)

    def follow(self, ha: RedisHA, every: float = 0.1) -> None:
        """Point the address at the primary the Sentinels agree on, whenever it changes.

        As a managed endpoint does: after a switch, and after any later one (a loaded
        machine's Sentinels may fail over again), never at a replica for long.
        """
        def run() -> None:
            while self._following:
                node = ha.agreed_primary()
                if node is not None and node.port != self.upstream:
                    self.switch(node.port)
                time.sleep(every)

        self._following = True
        threading.Thread(target=run, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=2)
            except OSError:
                _close(downstream)  # nothing behind the address now: refused
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open |= {downstream, upstream}
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        for end in (source, sink):
            _close(end)
            with self._lock:
                self._open.discard(end)

    def close(self) -> None:
        self._following = False
        _close(self.listener)
        self.switch(self.upstream)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def wait_gone(port: int, timeout: float = 10) -> None:
    """Until nothing answers on `port` (a killed server's socket closed)."""
    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return True
        return False

    eventually(refused, timeout, f"port {port} closed")
    time.sleep(0)
