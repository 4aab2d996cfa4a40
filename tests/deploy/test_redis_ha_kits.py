"""The replicated Redis's files in both kits: the overlay redis-ha and compose's `ha`.

The overlay's ConfigMap holds deploy/redis-ha/start.sh itself and compose's `ha`
services run it; the overlay replicates Redis on three nodes (anti-affinity, a PDB,
Redis's own image, restricted pods), every role and the backup reach it through the
Sentinels as their own user over TLS, its members are locked down like the base's Redis
(a users file with `replica` and `sentinel`, TLS only); compose's `ha` profile, as
`podman-compose config` renders it, points every role at the Sentinels the same way.
The script run with real processes: test_redis_ha.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts.make_secrets import secret_values
from tasks.settings import Settings
from tests.deploy.test_deploy_manifests import container_env
from tests.harness import ROOT
from tests.kustomize_lite import build
from tests.pss import pod_templates

SCRIPT = ROOT / "deploy" / "redis-ha" / "start.sh"


def test_the_overlay_and_compose_run_this_script() -> None:
    objects = build(ROOT / "deploy" / "kubernetes" / "overlays" / "redis-ha")
    config = next(o for o in objects if o["kind"] == "ConfigMap"
                  and o["metadata"]["name"] == "ocr-redis-ha")
    assert config["data"]["start.sh"] == SCRIPT.read_text()
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    ha = {name: s for name, s in services.items() if "ha" in s.get("profiles", [])}
    roles = sorted(s["command"][-1].split()[-1] for s in ha.values())
    assert roles == ["redis", "redis", "sentinel", "sentinel", "sentinel"], roles
    for service in ha.values():
        assert "sh /ha/start.sh" in " ".join(service["command"])
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
    """`podman-compose --profile ha config`, make_secrets' values, .env.example's `ha` lines.

    Every role through the Sentinels as its own user, over TLS, with their password.
    """
    compose = ROOT / ".venv" / "bin" / "podman-compose"
    if not compose.exists():
        pytest.skip("podman-compose is missing (requirements-dev.txt)")
    values = secret_values()
    ha = [line[2:] for line in (ROOT / ".env.example").read_text().splitlines()
          if line.startswith(("# COMPOSE_PROFILES=", "# REDIS_SCHEME=", "# REDIS_HOSTS="))]
    assert len(ha) == 3, ha
    env_file = tmp_path / "ha.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()) + "\n".join(ha) + "\n")
    done = subprocess.run([str(compose), "-f", str(ROOT / "compose.yaml"), "--env-file",
                           str(env_file), "--profile", "ha", "config"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert {"redis-replica-1", "redis-replica-2", "sentinel-1", "sentinel-2",
            "sentinel-3"} <= set(services)
    sentinels = {name for name, s in services.items() if s["command"][-1] == "sentinel"}
    for role in ("api", "worker", "beat", "flower", "metrics"):
        target = Settings.from_env(services[role]["environment"]).redis_target
        assert target.is_sentinel and target.username == role, role
        assert target.password == values[f"REDIS_PASSWORD_{role.upper()}"], role
        assert target.tls and target.ca_file == "/run/secrets/redis_ca", role
        assert target.sentinel_password == values["REDIS_SENTINEL_PASSWORD"], role
        assert {h for h, _ in target.sentinels} == sentinels, role
    for name in ("redis-replica-1", "redis-replica-2", *sentinels):
        env = services[name]["environment"]
        assert env["SENTINEL_AUTH_PASSWORD"] == values["REDIS_PASSWORD_SENTINEL"], name
        assert env["SENTINEL_PASSWORD"] == values["REDIS_SENTINEL_PASSWORD"], name
        assert env["TLS_CA"] == "/run/secrets/redis_ca", name
        if name.startswith("redis-"):  # a server: the users, with `replica`, `sentinel`
            assert env["REPLICA_PASSWORD"] == values["REDIS_PASSWORD_REPLICA"], name
            assert "scripts.redis_acl --replicated" in services[name]["command"][-1]
    # the first primary: the servers' users, and a replica's login once it is one
    seed = services["redis"]["command"][-1]
    assert "--replicated" in seed and "masteruser replica" in seed
