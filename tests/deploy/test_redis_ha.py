"""The replicated Redis of the deployment kits: deploy/redis-ha/start.sh with real processes.

compose's `ha` profile and the Kubernetes overlay `redis-ha` start each Redis server and
Sentinel with deploy/redis-ha/start.sh. Here it starts three redis-servers and three
Sentinels on loopback ports (the machine's redis-server, as the overlay's Redis image
and the service's image carry it): the seed becomes the primary, the others its
replicas, the Sentinels agree; the service's own connection factory reaches the primary
through them (`sentinel://`); the primary is SIGKILLed, a replica is promoted and the
service writes again; the old primary, started again by the same script, asks the
Sentinels and rejoins as a replica of the new one; a primary's planned stop hands over
first (`start.sh handover`, the pod's preStop). Also: the overlay's ConfigMap holds
this very script, and compose's `ha` services run it.
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
import yaml

from tasks.settings import Settings
from tasks.state.connection import connect
from tasks.state.redis_acl import HA_USERS, USERS
from tests.deploy.test_deploy_manifests import container_env
from tests.harness import ROOT, eventually, free_port
from tests.kustomize_lite import build
from tests.pss import pod_templates
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
           "DOWN_AFTER_MS": "1000"}
    tls = {"ssl": True, "ssl_cert_reqs": "required", "ssl_ca_certs": str(certs.ca)}
    admin = {"username": "admin", "password": passwords["REDIS_PASSWORD_ADMIN"], **tls}
    servers = [Member("redis", i, tmp_path, env, admin) for i in range(2)]
    sentinels = [Member("sentinel", i, tmp_path, env, {"password": PASSWORD, **tls})
                 for i in range(3)]
    env["SEED_PORT"] = str(servers[0].port)
    env["SENTINELS"] = " ".join(f"127.0.0.1:{s.port}" for s in sentinels)
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
    eventually(lambda: role(first).get("master_link_status") == "up", 30, "rejoined")
    assert int(role(first)["master_port"]) == second.port
    handover = subprocess.run(["sh", str(SCRIPT), "handover"], capture_output=True,
                              text=True, timeout=60, env={**os.environ, **second.env,
                                                          "REDIS_PORT": str(second.port)})
    assert handover.returncode == 0, handover.stderr
    assert role(second)["role"] == "slave", "the handover read INFO as `sentinel`"
    eventually(lambda: _writes(service, "ocr:job:ha"), 30, "writing after the handover")
    assert _refused(first) == [] and _refused(second) == []
    service.close()


def _master(sentinel: Member) -> dict[str, Any]:
    """What a Sentinel knows of the primary (`SENTINEL MASTER`, parsed by redis-py)."""
    return dict(sentinel.client().sentinel_master(MASTER))


def _writes(client: redis.Redis, key: str = "ocr:test:after") -> bool:
    try:
        return bool(client.set(key, "1"))
    except redis.RedisError:
        return False


def test_the_overlay_and_compose_run_this_script() -> None:
    objects = build(ROOT / "deploy" / "kubernetes" / "overlays" / "redis-ha")
    config = next(o for o in objects if o["kind"] == "ConfigMap"
                  and o["metadata"]["name"] == "ocr-redis-ha")
    assert config["data"]["start.sh"] == SCRIPT.read_text()
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    ha = {name: s for name, s in services.items() if "ha" in s.get("profiles", [])}
    roles = sorted(s["command"][-1] for s in ha.values())
    assert roles == ["redis", "redis", "sentinel", "sentinel", "sentinel"], roles
    for service in ha.values():
        assert service["command"][:2] == ["sh", "/ha/start.sh"]
        assert "./deploy/redis-ha/start.sh:/ha/start.sh:ro" in service["volumes"]


def _overlay() -> list[dict[str, Any]]:
    return build(ROOT / "deploy" / "kubernetes" / "overlays" / "redis-ha")


def _restricted(pod: dict[str, Any]) -> list[str]:
    """What breaks the restricted pod security standard in a pod spec (its checks)."""
    wrong = []
    context = pod.get("securityContext", {})
    if not context.get("runAsNonRoot") or context.get("seccompProfile", {}).get(
            "type") != "RuntimeDefault":
        wrong.append("pod: runAsNonRoot and seccomp RuntimeDefault")
    for container in [*pod["containers"], *pod.get("initContainers", [])]:
        own = container.get("securityContext", {})
        if own.get("allowPrivilegeEscalation") is not False:
            wrong.append(f"{container['name']}: allowPrivilegeEscalation")
        if own.get("capabilities", {}).get("drop") != ["ALL"]:
            wrong.append(f"{container['name']}: drop ALL")
        if not own.get("readOnlyRootFilesystem"):
            wrong.append(f"{container['name']}: read-only root")
    return wrong


def test_the_overlay_replicates_redis_on_three_nodes() -> None:
    objects = _overlay()
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("StatefulSet", "ocr-redis") not in kinds  # the base's single Redis is gone
    assert ("ConfigMap", "ocr-redis-config") not in kinds
    (redis_set,) = [o for o in objects if o["kind"] == "StatefulSet"]
    spec = redis_set["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 3
    images = {c["image"] for c in pod["containers"]}
    assert len(images) == 1 and not images.pop().startswith("ocr-queue")  # Redis's own
    assert sorted(c["command"][-1] for c in pod["containers"]) == ["redis", "sentinel"]
    (term,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    budget = next(o for o in objects if o["kind"] == "PodDisruptionBudget"
                  and o["metadata"]["name"] == "ocr-redis-ha")
    assert budget["spec"]["minAvailable"] == 2
    assert budget["spec"]["selector"] == spec["selector"]
    assert _restricted(pod) == []
    redis_container = next(c for c in pod["containers"] if c["name"] == "redis")
    assert redis_container["lifecycle"]["preStop"]["exec"]["command"][-1] == "handover"
    assert pod["terminationGracePeriodSeconds"] > 30  # the handover's wait fits


def test_every_role_reaches_redis_through_the_sentinels() -> None:
    """Each role and the backup: its own user, at the three pods' Sentinels, over TLS.

    Each with only its own key and the Sentinels' password; the members locked down.
    """
    objects = _overlay()
    clients = 0
    for obj in objects:
        for _, pod, _ in pod_templates(obj):
            for container in pod["containers"]:
                env = {e["name"]: e for e in container.get("env", [])}
                if "REDIS_URL" not in env:
                    continue
                target = Settings.from_env(container_env(
                    objects, container, lambda _secret, key: f"pw-{key}")).redis_target
                key = env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"]
                assert target.is_sentinel and target.tls and target.min_replicas == 1
                assert key == f"REDIS_PASSWORD_{str(target.username).upper()}"
                assert target.password == f"pw-{key}", "expanded: REDIS_PASSWORD before"
                assert target.sentinel_password == "pw-REDIS_SENTINEL_PASSWORD"
                assert set(target.sentinels) == {(f"ocr-redis-ha-{i}.ocr-redis-ha", 26379)
                                                 for i in range(3)}
                clients += 1
    assert clients >= 8  # api, control, beat, flower, metrics, two pools, the backup
    (redis_set,) = [o for o in objects if o["kind"] == "StatefulSet"]
    pod = redis_set["spec"]["template"]["spec"]
    members = {c["name"]: {e["name"]: e for e in c["env"]} for c in pod["containers"]}
    for env in members.values():
        assert env.get("MASTER_NAME", {}).get("value", "mymaster") == target.master
        assert {s.split(":")[0] for s in env["SENTINELS"]["value"].split()} == {
            h for h, _ in target.sentinels}
        assert env["TLS_DIR"]["value"] == "/etc/ocr/redis-tls"  # TLS only
        assert env["SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == \
            "REDIS_SENTINEL_PASSWORD"
    # the servers read the users file (with `replica` and `sentinel`) an init container
    # of the service's image writes
    assert members["redis"]["USERS_FILE"]["value"].startswith("/run/redis/")
    (init,) = pod["initContainers"]
    assert init["image"].startswith("ocr-queue") and "--replicated" in init["command"][-1]
    assert "REDIS_PASSWORD_REPLICA" in {e["name"] for e in init["env"]}
    # The pools scale on the exporter's figure, which it reads through the same
    # Sentinels: no ScaledObject names Redis.
    for scaled in (o for o in objects if o["kind"] == "ScaledObject"):
        assert {t["type"] for t in scaled["spec"]["triggers"]} == {"metrics-api"}


def test_a_cronjob_backs_redis_up() -> None:
    objects = _overlay()
    (job,) = [o for o in objects if o["kind"] == "CronJob"]
    spec = job["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("ocr-queue")
    assert "python ocr_admin.py backup" in container["args"][-1]
    assert {"ocr-config", "ocr-backup"} == {s["configMapRef"]["name"]
                                            for s in container["envFrom"]}
    env = {e["name"]: e for e in container["env"]}
    assert env["REDIS_URL"]["value"].startswith("sentinel://admin:$(REDIS_PASSWORD)@")
    assert _restricted(pod) == []
    labels = spec["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "backup"  # its own network policies


def test_compose_ha_profile_points_the_fleet_at_the_sentinels(tmp_path: Path) -> None:
    """`podman-compose --profile ha config` with .env.example's `ha` lines set."""
    compose = ROOT / ".venv" / "bin" / "podman-compose"
    if not compose.exists():
        pytest.skip("podman-compose is missing (requirements-dev.txt)")
    lines = (ROOT / ".env.example").read_text().splitlines()
    ha = [line[2:] for line in lines if line.startswith(("# QUEUE_REDIS_URL=",
                                                          "# OCR_REDIS_SENTINEL_PASSWORD="))]
    env_file = tmp_path / "ha.env"
    env_file.write_text("\n".join([*lines, *ha]) + "\n")
    done = subprocess.run([str(compose), "-f", str(ROOT / "compose.yaml"), "--env-file",
                           str(env_file), "--profile", "ha", "config"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    url = dict(line.split("=", 1) for line in ha)["QUEUE_REDIS_URL"]
    for role in ("api", "worker", "beat", "flower", "metrics"):
        assert services[role]["environment"]["REDIS_URL"] == url, role
    settings = Settings.from_env({"REDIS_URL": url})
    assert {h for h, _ in settings.redis_target.sentinels} == {
        name for name, s in services.items() if s["command"][-1:] == ["sentinel"]}
    assert {"redis-replica-1", "redis-replica-2", "sentinel-1", "sentinel-2",
            "sentinel-3"} <= set(services)
