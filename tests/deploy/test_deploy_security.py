"""deploy/kubernetes/: restricted pods, secrets with no values, a user per role over TLS.

For every pod of every overlay (those added later too): the namespace enforces the Pod
Security Standards' `restricted` profile and each pod meets it (tests/pss.py, with a
control that breaks each kind of rule); no Secret in the kit has a value and no
container takes a whole Secret (`envFrom`), each takes only its own keys, every key is
one `scripts/make_secrets.py` makes, and the secrets' kustomizations render the two
Secrets from files git ignores; each role's REDIS_URL names its own user, speaks
verified TLS to a name Redis's certificate carries, with only the CA mounted; a
placeholder or empty key stops the role (its settings refuse it); worker pods whose
grace period exceeds the cluster autoscaler's 600 s tell it not to evict them.
"""

from __future__ import annotations

import base64
import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from scripts.make_secrets import redis_names, secret_values, write_certs, write_env
from tasks.redis_users import HA_USERS, USERS
from tasks.settings import Settings, SettingsError
from tests.deploy.test_deploy_manifests import DEPLOY, OVERLAYS, container_env
from tests.harness import ROOT
from tests.kustomize_lite import build
from tests.pss import pod_templates, violations

Obj = dict[str, Any]
SECRETS, TLS_SECRET = "ocr-secrets", "ocr-redis-tls"
AUTOSCALER_GRACE = 600  # the cluster autoscaler's default --max-graceful-termination-sec
# Component -> the Redis user its REDIS_URL names, and the keys of `ocr-secrets` it reads.
USER_OF = {"api": "api", "worker": "worker", "control": "control", "beat": "beat",
           "flower": "flower", "metrics": "metrics", "backup": "admin"}
# The Sentinels' own password: a replicated Redis's members, and a client whose
# REDIS_URL is sentinel:// (OCR_REDIS_SENTINEL_PASSWORD).
SENTINEL_KEY = "REDIS_SENTINEL_PASSWORD"
EXTRA_KEYS = {"flower": {"FLOWER_PASSWORD"},
              "redis": {u.password_variable for u in (*USERS, *HA_USERS)} | {SENTINEL_KEY},
              "rabbitmq": {"RABBITMQ_PASSWORD"},
              "backup": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}}
BROKER_KEYS = {"RABBITMQ_PASSWORD"}  # any Celery role, on the RabbitMQ broker


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> list[Obj]:
    return build(DEPLOY / "overlays" / request.param)


def _workloads(objects: list[Obj]) -> list[tuple[Obj, str, Obj, Obj]]:
    return [(o, name, pod, notes) for o in objects for name, pod, notes in pod_templates(o)]


def _component(workload: Obj) -> str:
    spec = workload["spec"]
    template = (spec["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else spec)[
        "template"]
    return str(template["metadata"]["labels"]["app.kubernetes.io/component"])


def test_the_namespace_enforces_restricted(overlay: list[Obj]) -> None:
    (namespace,) = [o for o in overlay if o["kind"] == "Namespace"]
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {o["metadata"]["namespace"] for o in overlay
            if o["kind"] != "Namespace"} == {namespace["metadata"]["name"]}


def test_every_pod_meets_the_restricted_profile(overlay: list[Obj]) -> None:
    workloads = _workloads(overlay)
    assert len(workloads) >= 7
    for _, name, pod, notes in workloads:
        assert violations(pod, notes) == [], name


@pytest.mark.parametrize("breach, expected", [
    (lambda p: p["securityContext"].pop("seccompProfile"), "seccompProfile None"),
    (lambda p: p["securityContext"].update(runAsNonRoot=False), "runAsNonRoot"),
    (lambda p: p["containers"][0]["securityContext"].update(runAsUser=0), "runAsUser 0"),
    (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
     "capabilities added"),
    (lambda p: p["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
     "allowPrivilegeEscalation"),
    (lambda p: p["volumes"].append({"name": "host", "hostPath": {"path": "/"}}), "hostPath"),
    (lambda p: p.update(hostNetwork=True), "hostNetwork"),
    (lambda p: p["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}]),
     "hostPort"),
])
def test_the_profile_check_sees_each_breach(breach: Any, expected: str) -> None:
    """The control: one rule broken in the API's pod is reported."""
    objects = build(DEPLOY / "overlays" / "cpu-only")
    (api,) = [o for o in objects if o["metadata"]["name"] == "ocr-api"
              and o["kind"] == "Deployment"]
    pod = copy.deepcopy(api["spec"]["template"]["spec"])
    assert violations(pod) == []
    breach(pod)
    assert any(expected in v for v in violations(pod)), violations(pod)


def _secret_refs(container: Obj) -> set[tuple[str, str]]:
    return {(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}


def test_no_secret_has_a_value_in_the_kit() -> None:
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            if obj and obj.get("kind") == "Secret":
                assert not obj.get("data") and not obj.get("stringData"), path


def test_each_container_reads_only_its_own_keys(overlay: list[Obj]) -> None:
    known = set(secret_values())
    for workload, name, pod, _ in _workloads(overlay):
        component = _component(workload)
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            assert not any("secretRef" in s for s in container.get("envFrom", [])), name
            refs = _secret_refs(container)
            assert {secret for secret, _ in refs} <= {SECRETS}, name
            keys = {key for _, key in refs}
            assert keys <= known, f"{name}: keys make_secrets does not make: {keys - known}"
            user = USER_OF.get(component)
            own = {f"REDIS_PASSWORD_{user.upper()}"} | BROKER_KEYS if user else set()
            allowed = own | EXTRA_KEYS.get(component, set())
            env = {e["name"]: e for e in container.get("env", [])}
            if env.get("REDIS_URL", {}).get("value", "").startswith("sentinel://"):
                allowed.add(SENTINEL_KEY)
                assert env["OCR_REDIS_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"][
                    "key"] == SENTINEL_KEY, name
            assert keys <= allowed, f"{name}/{container['name']}: {keys - allowed}"
            if "REDIS_URL" in env and user is not None:
                assert urlsplit(env["REDIS_URL"]["value"]).username == user, name
                assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == \
                    f"REDIS_PASSWORD_{user.upper()}"
    for obj in overlay:
        for ref in obj.get("spec", {}).get("secretTargetRef", []):  # KEDA's
            assert ref["name"] == SECRETS and ref["key"] in known


def test_every_role_reaches_redis_over_verified_tls(overlay: list[Obj]) -> None:
    certificate = yaml.safe_load_all((DEPLOY / "cert-manager" /
                                      "redis-certificate.yaml").read_text())
    (cert,) = [o for o in certificate if o["kind"] == "Certificate"
               and o["spec"]["secretName"] == TLS_SECRET]
    roles = 0
    for workload, name, pod, _ in _workloads(overlay):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            # (a StatefulSet's claim templates are not among the pod's volumes)
            mounts = {m["mountPath"]: volumes.get(m["name"], {}) for m in
                      container.get("volumeMounts", [])}
            for volume in mounts.values():  # only Redis holds its certificate's key
                if volume.get("secret", {}).get("secretName") == TLS_SECRET and \
                        _component(workload) != "redis":
                    assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            if "REDIS_URL" not in env:
                continue
            url = urlsplit(env["REDIS_URL"])
            if url.scheme == "sentinel":  # every Sentinel, and the servers, over TLS
                target = Settings.from_env(container_env(
                    overlay, container, lambda _secret, _key: "pw")).redis_target
                assert target.tls and target.ca_file, name
                ca, hosts = Path(target.ca_file), [h for h, _ in target.sentinels]
            else:
                query = parse_qs(url.query)
                assert url.scheme == "rediss" and query["ssl_cert_reqs"] == ["required"], name
                assert "ssl_check_hostname" not in query  # redis-py checks the name
                ca, hosts = Path(query["ssl_ca_certs"][0]), [str(url.hostname)]
            assert mounts[str(ca.parent)]["secret"]["secretName"] == TLS_SECRET, name
            for host in hosts:
                assert _named(host, cert["spec"]["dnsNames"]), (name, host)
                assert _named(host, redis_names("ocr")), (name, host)
            roles += 1
    assert roles >= 6
    config = next((o for o in overlay if o["metadata"]["name"] == "ocr-redis-config"), None)
    if config is not None:
        lines = dict(line.split(None, 1) for line in config["data"]["redis.conf"].splitlines()
                     if line and not line.startswith("#"))
        assert lines["port"] == "0" and lines["tls-port"] == "6379"
    for workload, name, pod, _ in _workloads(overlay):  # a replicated Redis: TLS_DIR
        for container in pod["containers"] if _component(workload) == "redis" else []:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            if config is None:
                tls = next(m for m in container["volumeMounts"]
                           if m["mountPath"] == env["TLS_DIR"])
                volume = next(v for v in pod["volumes"] if v["name"] == tls["name"])
                assert volume["secret"]["secretName"] == TLS_SECRET, name


def _named(host: str, names: list[str]) -> bool:
    """Whether a certificate for `names` names `host` (a `*.` name: one label)."""
    return host in names or f"*.{host.partition('.')[2]}" in names


@pytest.mark.parametrize("value", ["CHANGE-ME", ""])
def test_a_placeholder_or_empty_key_stops_every_role(value: str) -> None:
    objects = build(DEPLOY / "overlays" / "cpu-only")
    checked = 0
    for workload, _name, pod, _ in _workloads(objects):
        for container in pod["containers"]:
            if not _secret_refs(container) or _component(workload) == "redis":
                continue
            env = container_env(objects, container, lambda _secret, _key: value)
            with pytest.raises(SettingsError, match="REDIS_URL"):
                Settings.from_env(env)
            checked += 1
    (redis,) = [w for w in objects if w["kind"] == "StatefulSet"
                and w["metadata"]["name"] == "ocr-redis"]
    (init,) = redis["spec"]["template"]["spec"]["initContainers"]
    with pytest.raises(SettingsError, match="REDIS_PASSWORD_"):
        Settings.from_env(container_env(objects, init, lambda _secret, _key: value))
    assert checked >= 6


def test_the_secrets_render_from_ignored_files(tmp_path: Path) -> None:
    """Both secrets' kustomizations, with files made by make_secrets, give the keys."""
    folder = tmp_path / "secrets"
    shutil.copytree(DEPLOY / "secrets", folder)
    write_env(folder / "ocr-secrets.env", "ocr")
    write_certs(folder / "redis-tls", redis_names("ocr"))
    (secrets,) = build(folder)
    assert secrets["metadata"] == {"name": SECRETS, "namespace": "ocr"}
    assert set(secrets["data"]) == set(secret_values())
    (tls,) = build(folder / "redis-tls")
    assert tls["type"] == "kubernetes.io/tls"
    assert set(tls["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    for kustomization in (folder, folder / "redis-tls"):
        generator = yaml.safe_load((kustomization / "kustomization.yaml").read_text())
        for generated in generator["secretGenerator"]:
            for name in [*generated.get("envs", []), *generated.get("files", [])]:
                path = (kustomization / name).relative_to(tmp_path / "secrets")
                ignored = subprocess.run(["git", "check-ignore", "-q",
                                          str(DEPLOY.relative_to(ROOT) / "secrets" / path)],
                                         cwd=ROOT, check=False)
                assert ignored.returncode == 0, f"{path} is not git-ignored"
        if shutil.which("kubectl"):
            out = subprocess.run(["kubectl", "kustomize", str(kustomization)], check=True,
                                 capture_output=True, text=True, timeout=120).stdout
            (theirs,), (mine,) = list(yaml.safe_load_all(out)), build(kustomization)
            decoded = {k: base64.b64decode(v) for k, v in theirs.pop("data").items()}
            assert decoded == {k: base64.b64decode(v) for k, v in mine.pop("data").items()}
            assert theirs == mine


def test_long_grace_worker_pods_are_not_evicted_by_the_autoscaler(
        overlay: list[Obj]) -> None:
    long_grace = 0
    for _, name, pod, notes in _workloads(overlay):
        if pod.get("terminationGracePeriodSeconds", 30) > AUTOSCALER_GRACE:
            assert notes.get("cluster-autoscaler.kubernetes.io/safe-to-evict") == "false", name
            long_grace += 1
    assert long_grace >= 2
