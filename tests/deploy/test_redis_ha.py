"""The replicated Redis of the deployment kits: deploy/redis-ha/start.sh with real processes.

compose's `ha` profile and the Kubernetes overlay `redis-ha` start each Redis server and
Sentinel with deploy/redis-ha/start.sh. Here it starts three redis-servers and three
Sentinels on loopback ports (the machine's redis-server, as the overlay's Redis image
and the service's image carry it): the seed becomes the primary, the others its
replicas, the Sentinels agree; the service's own connection factory reaches the primary
through them (`sentinel://`); the primary is SIGKILLed, a replica is promoted and the
service writes again; the old primary, started again by the same script, asks the
Sentinels and rejoins as a replica of the new one; a primary's planned stop hands over
first (`start.sh handover`, the pod's preStop). The same in the kits' locked mode: TLS
only, the users of tasks/redis_users.py (a role logs in as its own user through the
Sentinels; `default` cannot), replication and Sentinel as their own users, and nothing
any of them does refused. The kits' files: test_redis_ha_kits.py.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

from tasks.redis_users import HA_USERS, USERS
from tasks.settings import Settings
from tasks.state.connection import connect
from tests.harness import ROOT, eventually, free_port
from tests.redis_tls import make_certificates

SCRIPT = ROOT / "deploy" / "redis-ha" / "start.sh"
PASSWORD = 'pa"ss\\word $x'  # quotes, a backslash and a dollar: escaped in the configs
MASTER = "ocr"


class Member:
    """One `start.sh redis|sentinel` process and its ports and folders."""

    def __init__(self, role: str, index: int, workdir: Path, env: dict[str, str],
                 auth: dict[str, Any] | None = None) -> None:
        self.role, self.index = role, index
        self.auth = auth or {"password": PASSWORD}  # how the test logs in to it
        self.port = free_port()
        self.workdir = workdir / f"{role}-{index}"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Member:
        self.workdir.mkdir(parents=True, exist_ok=True)
        own = {"REDIS_PORT" if self.role == "redis" else "SENTINEL_PORT": str(self.port),
               "DATA_DIR": str(self.workdir / "data"), "CONF_DIR": str(self.workdir / "conf")}
        with open(self.workdir / "log", "ab") as log:
            self.proc = subprocess.Popen(["sh", str(SCRIPT), self.role],
                                         env={**os.environ, **self.env, **own},
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        eventually(self.answers, 30, lambda: f"{self.role} {self.index} up: "
                   f"{(self.workdir / 'log').read_text()[-1500:]}")
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **self.auth)

    def answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def members(tmp_path: Path) -> Iterator[tuple[list[Member], list[Member]]]:
    env = {"REDIS_PASSWORD": PASSWORD, "ANNOUNCE_HOST": "127.0.0.1", "SEED_HOST": "127.0.0.1",
           "MASTER_NAME": MASTER, "BIND": "127.0.0.1", "DOWN_AFTER_MS": "2000"}
    servers = [Member("redis", i, tmp_path, env) for i in range(3)]
    sentinels = [Member("sentinel", i, tmp_path, env) for i in range(3)]
    env["SEED_PORT"] = str(servers[0].port)
    env["SENTINELS"] = " ".join(f"127.0.0.1:{s.port}" for s in sentinels)
    try:
        yield servers, sentinels
    finally:
        for member in (*servers, *sentinels):
            member.kill()


def role(member: Member) -> dict[str, Any]:
    return member.client().info("replication")


def named(sentinel: Member) -> tuple[str, int] | None:
    try:
        host, port = sentinel.client().execute_command("SENTINEL", "get-master-addr-by-name",
                                                        MASTER)
    except (redis.RedisError, TypeError, ValueError):
        return None
    return host.decode(), int(port)


@pytest.mark.slow
def test_seed_leads_a_replica_is_promoted_and_the_old_primary_rejoins(
        members: tuple[list[Member], list[Member]]) -> None:
    servers, sentinels = members
    for member in (*servers, *sentinels):
        member.start()
    first = servers[0]
    eventually(lambda: role(first)["connected_slaves"] == 2, 30, "two replicas")
    assert {role(s)["role"] for s in servers[1:]} == {"slave"}
    eventually(lambda: {named(s) for s in sentinels} == {("127.0.0.1", first.port)}, 30,
               "every Sentinel naming the seed")
    eventually(lambda: all(_master(s)["num-other-sentinels"] == 2 for s in sentinels),
               30, lambda: f"the Sentinels know each other: {[_master(s) for s in sentinels]}")
    # The service reaches the primary through the Sentinels (its connection factory).
    settings = Settings.from_env({
        "REDIS_URL": ";".join(f"sentinel://:{quote(PASSWORD, safe='')}@127.0.0.1:{s.port}"
                              if i == 0 else f"sentinel://127.0.0.1:{s.port}"
                              for i, s in enumerate(sentinels)) + "/0",
        "OCR_REDIS_SENTINEL_MASTER": MASTER, "OCR_REDIS_SENTINEL_PASSWORD": PASSWORD})
    service = connect(settings.redis_target)
    service.set("ocr:test:before", "1")
    eventually(lambda: all(s.client().get("ocr:test:before") == b"1" for s in servers[1:]),
               10, "the write on both replicas")

    first.kill()
    promoted = eventually(lambda: (lambda n: n if n and n[1] != first.port else None)(
        named(sentinels[1])), 60, "a replica promoted")
    new_primary = next(s for s in servers if s.port == promoted[1])
    assert role(new_primary)["role"] == "master"
    eventually(lambda: _writes(service), 30, "the service writing again")
    assert new_primary.client().get("ocr:test:before") == b"1"

    first.start()  # the same script: it asks the Sentinels, who name the new primary
    again = role(first)
    assert again["role"] == "slave" and int(again["master_port"]) == new_primary.port, again
    eventually(lambda: first.client().get("ocr:test:after") == b"1", 30,
               "the old primary holding the new primary's writes")
    assert "replicaof 127.0.0.1" in (first.workdir / "conf" / "redis.conf").read_text()

    # A planned stop (the pod's preStop): the primary hands over before it goes.
    handover = subprocess.run(["sh", str(SCRIPT), "handover"], capture_output=True,
                              text=True, timeout=60, env={
                                  **os.environ, **new_primary.env,
                                  "REDIS_PORT": str(new_primary.port)})
    assert handover.returncode == 0, handover.stderr
    assert role(new_primary)["role"] == "slave"
    eventually(lambda: (lambda n: n and n[1] != new_primary.port)(named(sentinels[0])), 30,
               "the Sentinels naming the replica that took over")
    eventually(lambda: _writes(service), 30, "the service writing after the handover")
    service.close()


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[tuple[list[Member], list[Member], dict[str, str]]]:
    """Two servers and three Sentinels as the kits run them: TLS only, a user per role.

    The users file is `scripts.redis_acl --replicated`'s, as the kits' init container
    writes it; the test logs in to the servers as `admin`, to the Sentinels with their
    own password. Yields the servers, the Sentinels and the service's settings.
    """
    certs = make_certificates(tmp_path / "tls")
    passwords = {u.password_variable: secrets.token_urlsafe(18) for u in (*USERS, *HA_USERS)}
    passwords["REDIS_PASSWORD_REPLICA"] += '"\\$'  # escaped in the servers' config
    users_file = tmp_path / "users.acl"
    done = subprocess.run([sys.executable, "-m", "scripts.redis_acl", "--replicated", "--out",
                           str(users_file)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={"PATH": os.environ["PATH"], **passwords})
    assert done.returncode == 0, done.stderr
    env = {"USERS_FILE": str(users_file), "TLS_DIR": str(certs.ca.parent),
           "REPLICA_PASSWORD": passwords["REDIS_PASSWORD_REPLICA"],
           "SENTINEL_AUTH_PASSWORD": passwords["REDIS_PASSWORD_SENTINEL"],
           "SENTINEL_PASSWORD": PASSWORD, "ANNOUNCE_HOST": "127.0.0.1",
           "SEED_HOST": "127.0.0.1", "MASTER_NAME": MASTER, "BIND": "127.0.0.1",
           # A second of silence is too short on a loaded host: a Sentinel then calls
           # the primary it just promoted down (its TLS checks unanswered while it
           # rewrites its config) and fails over again, to the old one as it restarts.
           "DOWN_AFTER_MS": "3000"}
    tls = {"ssl": True, "ssl_cert_reqs": "required", "ssl_ca_certs": str(certs.ca)}
    admin = {"username": "admin", "password": passwords["REDIS_PASSWORD_ADMIN"], **tls}
    servers = [Member("redis", i, tmp_path, env, admin) for i in range(2)]
    sentinels = [Member("sentinel", i, tmp_path, env, {"password": PASSWORD, **tls})
                 for i in range(3)]
    env["SEED_PORT"] = str(servers[0].port)
    env["SENTINELS"] = " ".join(f"127.0.0.1:{s.port}" for s in sentinels)
    for sentinel in sentinels:  # as the overlay's: no users file, no replica's password
        sentinel.env = {k: v for k, v in env.items()
                        if k not in ("USERS_FILE", "REPLICA_PASSWORD")}
    api = quote(passwords["REDIS_PASSWORD_API"], safe="")
    service = {"REDIS_URL": ";".join(f"sentinel://api:{api}@127.0.0.1:{s.port}" if i == 0
                                     else f"sentinel://127.0.0.1:{s.port}"
                                     for i, s in enumerate(sentinels)) + "/0",
               "OCR_REDIS_SENTINEL_MASTER": MASTER, "OCR_REDIS_SENTINEL_PASSWORD": PASSWORD,
               "OCR_REDIS_SENTINEL_TLS": "1", "OCR_REDIS_TLS_CA_FILE": str(certs.ca)}
    try:
        yield servers, sentinels, service
    finally:
        for member in (*servers, *sentinels):
            member.kill()


def _refused(server: Member) -> list[dict[str, Any]]:
    """What a server's ACL refused its users (a command, key or channel), not logins."""
    return [e for e in server.client().acl_log(count=1000) if e["reason"] != "auth"]


@pytest.mark.slow
@pytest.mark.long  # the kit's second failover; its users over TLS: test_redis_acl.py
def test_locked_members_fail_over_over_tls_with_a_user_per_role(
        locked: tuple[list[Member], list[Member], dict[str, str]]) -> None:
    """The kits' mode: TLS only, the users file, `replica` and `sentinel` logins."""
    servers, sentinels, env = locked
    for member in (*servers, *sentinels):
        member.start()
    first, second = servers
    eventually(lambda: role(first)["connected_slaves"] == 1, 30, "the replica linked")
    eventually(lambda: all(_master(s)["num-other-sentinels"] == 2 for s in sentinels), 30,
               lambda: f"the Sentinels know each other: {[_master(s) for s in sentinels]}")
    tls = {k: v for k, v in first.auth.items() if k.startswith("ssl")}
    for port in (first.port, second.port):  # `default` is off, plaintext is refused
        for auth in ({}, {"username": "default", "password": PASSWORD}):
            with pytest.raises(redis.AuthenticationError):
                redis.Redis(port=port, socket_timeout=5, **tls, **auth).ping()
        with pytest.raises(redis.ConnectionError):
            redis.Redis(port=port, socket_timeout=2, password=PASSWORD).ping()
    target = Settings.from_env(env).redis_target
    assert target.username == "api" and target.tls
    service = connect(target)  # the service's own factory, through the Sentinels
    service.set("ocr:job:ha", "before")
    eventually(lambda: second.client().get("ocr:job:ha") == b"before", 10, "replicated")

    first.kill()
    promoted = eventually(lambda: (lambda n: n if n and n[1] == second.port else None)(
        named(sentinels[1])), 60, "the replica promoted")
    assert promoted and role(second)["role"] == "master"
    eventually(lambda: _writes(service, "ocr:job:ha"), 30, "the service writing again")
    assert second.client().get("ocr:job:ha") == b"1"

    first.start()  # asks the Sentinels (TLS, their password): rejoins as a replica
    # Its full sync waits Redis's diskless-sync delay (5 s); on a busy host the link, or
    # the Sentinels turning a server that started as primary, takes longer.
    eventually(lambda: role(first).get("master_link_status") == "up", 60,
               lambda: f"rejoined: {_state(first)}; the Sentinels: "
               f"{[_events(s) for s in sentinels]}")
    assert int(role(first)["master_port"]) == second.port
    handover = subprocess.run(["sh", str(SCRIPT), "handover"], capture_output=True,
                              text=True, timeout=60, env={**os.environ, **second.env,
                                                          "REDIS_PORT": str(second.port)})
    assert handover.returncode == 0, handover.stderr
    assert role(second)["role"] == "slave", "the handover read INFO as `sentinel`"
    eventually(lambda: _writes(service, "ocr:job:ha"), 30, "writing after the handover")
    assert _refused(first) == [] and _refused(second) == []
    service.close()


def _state(server: Member) -> str:
    """A server's replication as it reports it, and its log's last lines (a failure's)."""
    try:
        told = {k: v for k, v in role(server).items() if "master" in k or k == "role"}
    except redis.RedisError as exc:
        told = {"error": repr(exc)}
    return f"{told}, log: {(server.workdir / 'log').read_text()[-1500:]}"


def _events(sentinel: Member) -> str:
    """A Sentinel's events (its log's `+`/`-` lines) since it started, the last ones."""
    lines = (sentinel.workdir / "log").read_text().splitlines()
    return "\n".join(line for line in lines if " +" in line or " -" in line)[-1500:]


def _master(sentinel: Member) -> dict[str, Any]:
    """What a Sentinel knows of the primary (`SENTINEL MASTER`, parsed by redis-py)."""
    return dict(sentinel.client().sentinel_master(MASTER))


def _writes(client: redis.Redis, key: str = "ocr:test:after") -> bool:
    try:
        return bool(client.set(key, "1"))
    except redis.RedisError:
        return False
