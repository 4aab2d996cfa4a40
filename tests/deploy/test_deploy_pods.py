"""The containers of deploy/kubernetes/ run in the real image as their pods would.

No cluster here, so each container of the rendered `cpu-only` overlay is run with
podman the way its pod runs it: the image `make image` builds (tests/deploy/test_containers.py's
fixture: rebuilt only when its inputs changed), the manifest's command, the ConfigMap's
and the container's environment as the kubelet builds it (each `secretKeyRef` read
from a Secret made by `scripts/make_secrets.py`, `$(VAR)` expanded; only the port in
REDIS_URL moved to this test's own, `ocr-redis` resolving to loopback), the Secret
volumes with the keys they select (a role gets only the CA's certificate), the pod's
user, a read-only root file system with a fresh world-writable folder for each
`emptyDir` (what Kubernetes gives), every capability dropped, no privilege escalation.
Redis is the StatefulSet's: its init container writes the users and TLS config, then
`redis-server` serves TLS only. Then: every role's liveness and readiness commands
pass, each over TLS with its own Redis user (Redis lists them as its clients, and
refused nothing), corpus jobs sent to the workers end SUCCESS (tesseract, the rapidocr
pool, Markdown), and every container stops on SIGTERM with exit 0 well within its
grace period (none waits for SIGKILL).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from scripts.make_secrets import redis_names, secret_values, write_certs
from tasks.client import OcrClient
from tasks.settings import Settings
from tests.deploy.test_containers import Podman, image, podman  # noqa: F401 - fixtures
from tests.deploy.test_deploy_manifests import DEPLOY, container_env
from tests.harness import corpus, eventually, free_port
from tests.kustomize_lite import build

# `make test-long`: the image is built (minutes from a fresh clone) and run.
pytestmark = [pytest.mark.containers, pytest.mark.long, pytest.mark.timeout(3600)]

READY_SECONDS = 600  # a loaded 2-core machine starting eight containers

Obj = dict[str, Any]


def _objects() -> list[Obj]:
    return build(DEPLOY / "overlays" / "cpu-only")


def _find(objects: list[Obj], kind: str, name: str) -> Obj:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _mounts(pod: Obj, container: Obj, folder: Path, secrets_dir: Path) -> list[str]:
    """`-v` options standing for the container's volumes.

    An emptyDir (or a ConfigMap the test fills) is a fresh folder anyone in the pod may
    write; a Secret volume holds the keys it selects (all of them without `items`),
    from `secrets_dir/<secret name>/`, readable by the pod's user.
    """
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    args = []
    for mount in container.get("volumeMounts", []):
        source = folder / mount["name"]
        source.mkdir(parents=True, exist_ok=True)
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret is not None:
            given = secrets_dir / secret["secretName"]
            items = secret.get("items") or [{"key": p.name, "path": p.name}
                                            for p in given.iterdir()]
            for item in items:
                target = source / item["path"]
                target.write_bytes((given / item["key"]).read_bytes())
                target.chmod(0o444)
        else:
            source.chmod(0o1777)
        args += ["-v", f"{source}:{mount['mountPath']}" + (":ro" if mount.get("readOnly")
                                                           else "")]
    return args


def _confined(pod: Obj, container: Obj) -> list[str]:
    context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    args = ["--user", f"{context['runAsUser']}:{context['runAsGroup']}",
            "--cap-drop", "ALL"]
    if context.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if context.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    return args


class Pods:
    """The containers of the rendered overlay, started with podman, and their Secrets."""

    def __init__(self, runner: Podman, folder: Path, built: str) -> None:
        self.podman = runner
        self.folder = folder
        self.built = built  # the tree's image, for the manifests' `ocr-queue:<version>`
        self.prefix = f"ocrpod{secrets.token_hex(3)}"
        self.started: list[tuple[str, Obj, Obj]] = []  # name, pod spec, container
        # The Secrets an operator makes (`scripts/make_secrets.py`), as files per key.
        self.secrets = folder / "secrets"
        self.values = secret_values()
        (self.secrets / "ocr-secrets").mkdir(parents=True)
        for key, value in self.values.items():
            (self.secrets / "ocr-secrets" / key).write_text(value)
        write_certs(self.secrets / "ocr-redis-tls", redis_names("ocr"))
        (self.secrets / "ocr-redis-tls" / "ca.key").unlink()
        self.redis_port = free_port()

    def env(self, objects: list[Obj], container: Obj) -> dict[str, str]:
        """The container's environment as the kubelet builds it; Redis on this test's port."""
        env = container_env(objects, container, lambda name, key: (
            self.secrets / name / key).read_text())
        if "REDIS_URL" in env:
            env["REDIS_URL"] = env["REDIS_URL"].replace("@ocr-redis:6379/",
                                                        f"@ocr-redis:{self.redis_port}/")
        return env

    def url(self, user: str) -> str:
        """The verified rediss:// URL of a Redis user, from the test process."""
        return (f"rediss://{user}:{self.values[f'REDIS_PASSWORD_{user.upper()}']}@127.0.0.1:"
                f"{self.redis_port}/0?ssl_cert_reqs=required&ssl_ca_certs="
                f"{self.secrets / 'ocr-redis-tls' / 'ca.crt'}")

    def run(self, name: str, pod: Obj, container: Obj, *extra: str,
            env: dict[str, str] | None = None, detach: bool = True) -> str:
        full = f"{self.prefix}-{name}"
        args = ["run", *(["-d"] if detach else ["--rm"]), "--name", full,
                *_confined(pod, container),
                *_mounts(pod, container, self.folder / name, self.secrets), *extra]
        for key, value in (env or {}).items():
            args += ["-e", f"{key}={value}"]
        if "command" in container:  # Kubernetes' command replaces the image's entrypoint
            args += ["--entrypoint", json.dumps(container["command"])]
        run_image = (self.built if container["image"].split(":")[0] == "ocr-queue"
                     else container["image"])
        self.podman.run(*args, run_image, *container.get("args", []))
        if detach:
            self.started.append((full, pod, container))
        return full

    def stop_all(self) -> None:
        for name, *_ in self.started:
            self.podman.run("rm", "-f", "-t", "5", name, check=False)


@pytest.fixture(scope="module")
def pods(podman: Podman, image: str,  # noqa: F811 - the imported fixtures
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pods, str]]:
    objects = _objects()
    pods = Pods(podman, tmp_path_factory.mktemp("pods"), image)
    try:
        _start_redis(pods, objects)
        for deployment in (o for o in objects if o["kind"] == "Deployment"):
            pod = deployment["spec"]["template"]["spec"]
            for container in pod["containers"]:
                env = {**pods.env(objects, container), "API_PORT": str(free_port()),
                       "METRICS_PORT": str(free_port()), "FLOWER_PORT": str(free_port())}
                name = deployment["metadata"]["name"]
                pods.run(name, pod, container, "--network", "host",
                         "--add-host", "ocr-redis:127.0.0.1",
                         "--hostname", f"{name}-{secrets.token_hex(3)}", env=env)
        yield pods, pods.url("client")
    finally:
        pods.stop_all()


def _start_redis(pods: Pods, objects: list[Obj]) -> None:
    """The StatefulSet's two steps: the init container's config, then redis-server."""
    pod = _find(objects, "StatefulSet", "ocr-redis")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (server,) = pod["containers"]
    config = pods.folder / "redis" / "config"
    config.mkdir(parents=True)
    config.joinpath("redis.conf").write_text(
        _find(objects, "ConfigMap", "ocr-redis-config")["data"]["redis.conf"])
    # The init container and the server share the `run` emptyDir: one folder for both.
    pods.run("redis", pod, init, detach=False, env=pods.env(objects, init))
    pods.run("redis", pod, server, "-p", f"127.0.0.1:{pods.redis_port}:6379",
             env=pods.env(objects, server))


def _healthy(runner: Podman, name: str, container: Obj) -> str | None:
    """None when the container's liveness and readiness commands both pass, else why."""
    for probe in ("livenessProbe", "readinessProbe"):
        spec = container[probe]
        command = spec["exec"]["command"] if "exec" in spec else None
        if command is None:
            continue  # a tcpSocket probe: the readiness command covers Redis
        done = runner.run("exec", name, *command, check=False)
        if done.returncode != 0:
            return f"{probe}: {done.stderr.strip()[-300:]}"
    return None


def test_every_container_is_healthy_reads_jobs_and_stops_on_sigterm(
        pods: tuple[Pods, str]) -> None:
    runner, redis_url = pods
    waiting = {name: container for name, _, container in runner.started}
    why: dict[str, str | None] = {}

    def all_healthy() -> bool:
        for name, container in list(waiting.items()):
            state = runner.podman.inspect("container", name)["State"]
            logs = "" if state["Running"] else runner.podman.run("logs", name).stderr
            assert state["Running"], f"{name} exited: {logs[-2000:]}"
            why[name] = _healthy(runner.podman, name, container)
            if why[name] is None:
                del waiting[name]
        return not waiting

    # Each round runs the health commands (Python starts in the containers) of the
    # containers not yet healthy: a round a second at most.
    eventually(all_healthy, READY_SECONDS,
               lambda: str({name: why.get(name) for name in waiting}), interval=1)
    admin = redis.Redis.from_url(runner.url("admin"))
    try:  # each role connected as its own user, over TLS; nothing refused (beat connects
        # only to send, as its readiness check did)
        users = {c["user"] for c in admin.client_list()}
        assert {"api", "worker", "control", "flower", "metrics"} <= users, users
        assert admin.acl_log(count=100) == []
    finally:
        admin.close()

    client = OcrClient(Settings.from_env({"REDIS_URL": redis_url}))
    try:
        jobs = {client.submit(corpus("scan_linn.png")): "tesseract",
                client.submit(corpus("lang_chi_sim_page.jpg"), engine="rapidocr"): "rapidocr",
                client.submit(corpus("dig_multicolumn_3p.pdf"), output="markdown"): "tesseract"}
        results = client.wait(list(jobs), timeout=600)
    finally:
        client.close()
    for job_id, engine in jobs.items():
        result = results[job_id]
        assert result["status"] == "SUCCESS", json.dumps(result)[:1000]
        assert result["engine"]["name"] == engine

    for name, pod, _ in reversed(runner.started):
        grace = pod.get("terminationGracePeriodSeconds", 30)
        runner.podman.run("stop", "-t", str(min(grace, 120)), name, timeout=300)
        state = runner.podman.inspect("container", name)["State"]
        # It stopped by itself on SIGTERM (137 would be podman's SIGKILL after -t): 0, or
        # 143 from the API, whose uvicorn shuts down gracefully and then raises the
        # signal it caught again (uvicorn >= 0.29), which tini reports as 128 + 15.
        assert state["ExitCode"] in ((0, 143) if name.endswith("-api") else (0,)), (
            name, state["ExitCode"])
