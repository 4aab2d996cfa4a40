"""A RabbitMQ cluster of the tests' own: three nodes of Debian's `rabbitmq-server`.

Each node runs under its own node name (`ocr<tag>-<n>@localhost`), AMQP and
distribution ports, data directory and log, all sharing one Erlang cookie (a HOME of
the cluster's own) and an `epmd` the cluster starts on a port of its own; nodes 2 and
3 join node 1 with `rabbitmqctl join_cluster`, one after the other (two nodes joining
at once can crash the joiner's Mnesia as it starts: `{mnesia_app, start}` from
`start_app`, the race RabbitMQ's own test clusters meet, rabbitmq-server #15502).
Nothing of the machine's own RabbitMQ (its node, its epmd, its ports, its cookie) is
used or touched. The CLI's own distribution port is an ephemeral one, so that
concurrent `rabbitmqctl` calls (other tests') never take a port a node listens on.

Runs in the test or benchmark process; the nodes and epmd run in process groups of
their own, stopped by `stop` (SIGKILL: a module's cluster is thrown away whole).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from devkit.harness import eventually, free_port

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
# The machine RabbitMQ's default ports: its AMQP and distribution ports, and the range
# its CLI takes (RABBITMQ_CTL_DIST_PORT_MIN..+10): never given to a node of ours.
TAKEN = {4369, 5672, 25672, *range(35672, 35683)}


def cluster_missing() -> str | None:
    """Why no cluster can be started here, or None."""
    for tool in ("rabbitmq-server", "rabbitmqctl"):
        if not (RABBIT_BIN / tool).exists():
            return f"{RABBIT_BIN / tool} is missing (make test installs rabbitmq-server)"
    if shutil.which("epmd") is None and not Path("/usr/bin/epmd").exists():
        return "epmd is missing (Debian's erlang-base, a dependency of rabbitmq-server)"
    return None


def _port() -> int:
    while True:
        port = free_port()
        if port not in TAKEN:
            return port


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@dataclass
class RabbitNode:
    """One node: its name, ports and folder, and its process while it runs."""

    name: str
    amqp_port: int
    dist_port: int
    home: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def short(self) -> str:
        return self.name.split("@", 1)[0]

    def url(self, vhost: str) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/{vhost}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class RabbitCluster:
    """Three clustered nodes of this test module's own (see the module's docstring)."""

    workdir: Path
    size: int = 3
    consumer_timeout_ms: int = 3_600_000
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    nodes: list[RabbitNode] = field(default_factory=list)
    epmd: subprocess.Popen[bytes] | None = None
    epmd_port: int = 0
    boot_seconds: float = 0.0  # from the first node's start to the cluster formed

    def __post_init__(self) -> None:
        self.home = self.workdir / "home"
        self.nodes = [RabbitNode(f"ocr{self.tag}-{n}@localhost", _port(), _port(),
                                 self.workdir / f"node{n}") for n in range(1, self.size + 1)]

    # --- environment -------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        """The CLI's and the nodes' shared environment: the cookie's HOME, our epmd."""
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return {**keep, "HOME": str(self.home), "ERL_EPMD_PORT": str(self.epmd_port),
                "ERL_EPMD_ADDRESS": "127.0.0.1", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                # the CLI listens on an ephemeral port, never one a node was given
                "RABBITMQ_CTL_DIST_PORT_MIN": "0", "RABBITMQ_CTL_DIST_PORT_MAX": "0",
                "RABBITMQ_CTL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}"}

    def _node_env(self, node: RabbitNode) -> dict[str, str]:
        home = node.home
        for part in ("mnesia", "log"):
            (home / part).mkdir(parents=True, exist_ok=True)
        (home / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{node.amqp_port}\n"
            "loopback_users = none\n"
            f"consumer_timeout = {self.consumer_timeout_ms}\n"
            "log.console = true\nlog.console.level = warning\nlog.file = false\n"
            # a node of a test, on a loaded machine: no disk or memory alarm stops it
            "disk_free_limit.absolute = 1MB\nvm_memory_high_watermark.relative = 0.9\n")
        (home / "rabbitmq-env.conf").write_text("")  # not the machine's (its NODENAME)
        (home / "enabled_plugins").write_text("[].\n")
        return {**self._env(), "RABBITMQ_NODENAME": node.name,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(node.amqp_port),
                "RABBITMQ_DIST_PORT": str(node.dist_port),
                "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
                "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
                "RABBITMQ_LOG_BASE": str(home / "log"),
                "RABBITMQ_PID_FILE": str(home / "pid"),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                    "-kernel inet_dist_use_interface {127,0,0,1}"}

    # --- the CLI -----------------------------------------------------------------------

    def ctl(self, node: RabbitNode, *args: str, timeout: float = 120) -> str:
        """`rabbitmqctl -n NODE ARGS`; RuntimeError with its output when it fails."""
        done = subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), "-q", "-n", node.name, *args],
                              env=self._env(), capture_output=True, text=True,
                              timeout=timeout, check=False, cwd=self.home)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {node.name} {' '.join(args)}: "
                               f"{done.stdout.strip()} {done.stderr.strip()}"[-3000:])
        return done.stdout

    def any_ctl(self, *args: str, timeout: float = 120) -> str:
        """`rabbitmqctl` on the first node that runs."""
        return self.ctl(next(n for n in self.nodes if n.running()), *args, timeout=timeout)

    # --- the cluster's life ------------------------------------------------------------

    def start(self) -> RabbitCluster:
        began = time.monotonic()
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)
        self.epmd_port = _port()
        self.epmd = subprocess.Popen(
            [shutil.which("epmd") or "/usr/bin/epmd", "-port", str(self.epmd_port),
             "-address", "127.0.0.1"], stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT, start_new_session=True)
        eventually(lambda: _listening(self.epmd_port), 20, "epmd listening")
        for node in self.nodes:
            self._spawn(node)
        for node in self.nodes:
            self.wait_ready(node)
        for node in self.nodes[1:]:
            self._join(node)
        eventually(self._formed, 60, lambda: f"a cluster of {self.size} nodes: "
                   f"{self.any_ctl('cluster_status')}", interval=0.5)
        self.boot_seconds = time.monotonic() - began
        return self

    def _spawn(self, node: RabbitNode) -> None:
        node.starts += 1
        log = open(node.home.parent / f"{node.short}-{node.starts}.log", "ab")  # noqa: SIM115
        with log:
            node.proc = subprocess.Popen([str(RABBIT_BIN / "rabbitmq-server")],
                                         env=self._node_env(node), cwd=node.home,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def log(self, node: RabbitNode) -> str:
        path = node.home.parent / f"{node.short}-{node.starts}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def wait_ready(self, node: RabbitNode, timeout: float = 180) -> None:
        """Until the node's AMQP listener answers (its broker has booted)."""
        def ready() -> bool:
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"{node.name} exited:\n{self.log(node)}")
            return _listening(node.amqp_port)

        eventually(ready, timeout, lambda: f"{node.name} listening:\n{self.log(node)}",
                   interval=0.2)

    def _join(self, node: RabbitNode) -> None:
        self.ctl(node, "stop_app")
        self.ctl(node, "join_cluster", self.nodes[0].name)
        self.ctl(node, "start_app")
        self.wait_ready(node)

    def _formed(self) -> bool:
        status = self.ctl(self.nodes[0], "cluster_status", "--formatter", "json")
        return all(n.name in status.split('"running_nodes"', 1)[-1] for n in self.nodes)

    def kill(self, node: RabbitNode) -> None:
        """SIGKILL the node (its host lost): no graceful hand-over of anything."""
        if node.proc is not None and node.proc.poll() is None:
            os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.wait(30)

    def restart(self, node: RabbitNode) -> None:
        """Start a stopped node again on its own data: it rejoins the cluster."""
        self._spawn(node)
        self.wait_ready(node)

    def stop(self) -> None:
        for node in self.nodes:
            self.kill(node)
        if self.epmd is not None and self.epmd.poll() is None:
            os.killpg(self.epmd.pid, signal.SIGKILL)
            self.epmd.wait(10)

    # --- what the tests ask --------------------------------------------------------------

    def url(self, vhost: str) -> str:
        """BROKER_URL naming every node (kombu fails over between them, in turn)."""
        return ";".join(node.url(vhost) for node in self.nodes)

    def add_vhost(self, name: str) -> None:
        self.any_ctl("add_vhost", name)
        self.any_ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")

    def queues(self, vhost: str) -> dict[str, dict[str, str]]:
        """Each queue's type, leader node and message counts."""
        out = self.any_ctl("list_queues", "-p", vhost, "--no-table-headers", "name", "type",
                           "leader", "messages")
        found = {}
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) == 4:
                found[parts[0]] = {"type": parts[1], "leader": parts[2], "messages": parts[3]}
        return found

    def node(self, name: str) -> RabbitNode:
        return next(n for n in self.nodes if n.name == name)

    def leader_of(self, vhost: str, queue: str) -> RabbitNode:
        return self.node(self.queues(vhost)[queue]["leader"])


def version() -> str:
    """The installed RabbitMQ's version (the package's, no node needed)."""
    base = Path("/usr/lib/rabbitmq/lib")
    found = [re.sub(r"^rabbitmq_server-", "", p.name) for p in base.glob("rabbitmq_server-*")]
    return found[0] if found else ""
