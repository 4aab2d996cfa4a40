"""The containers of deploy/kubernetes/ run in the real image as their pods would.

No cluster here, so each container of the rendered `cpu-only` overlay is run with
podman the way its pod runs it: the image `make image` builds (tests/deploy/test_containers.py's
fixture: rebuilt only when its inputs changed), the manifest's command, the ConfigMap's
and the container's environment (REDIS_URL and the ports pointed at this test's own),
the pod's user, a read-only root file system with a fresh world-writable folder for
each `emptyDir` (what Kubernetes gives), every capability dropped, no privilege
escalation. Redis is the StatefulSet's: its init container writes the config (with a
password full of quotes), then `redis-server` reads it. Then: every role's liveness and
readiness commands pass, corpus jobs sent to the workers end SUCCESS (tesseract, the
rapidocr pool, Markdown), and every container stops on SIGTERM with exit 0 well within
its grace period (none waits for SIGKILL).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tasks.client import OcrClient
from tasks.settings import Settings
from tests.deploy.test_containers import Podman, image, podman  # noqa: F401 - fixtures
from tests.deploy.test_deploy_manifests import DEPLOY
from tests.harness import corpus, eventually, free_port
from tests.kustomize_lite import build

pytestmark = [pytest.mark.containers, pytest.mark.timeout(3600)]

READY_SECONDS = 600  # a loaded 2-core machine starting eight containers
# A password that a naive config line or URL would break.
PASSWORD = 'p"a\\s$s w\'' + secrets.token_hex(4)

Obj = dict[str, Any]


def _objects() -> list[Obj]:
    return build(DEPLOY / "overlays" / "cpu-only")


def _find(objects: list[Obj], kind: str, name: str) -> Obj:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _mounts(container: Obj, folder: Path) -> list[str]:
    """`-v` options standing for the container's emptyDir and ConfigMap volumes."""
    args = []
    for mount in container.get("volumeMounts", []):
        source = folder / mount["name"]
        source.mkdir(parents=True, exist_ok=True)
        source.chmod(0o1777)  # an emptyDir: a fresh folder anyone in the pod may write
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
    """The containers of the rendered overlay, started with podman."""

    def __init__(self, runner: Podman, folder: Path) -> None:
        self.podman = runner
        self.folder = folder
        self.prefix = f"ocrpod{secrets.token_hex(3)}"
        self.started: list[tuple[str, Obj, Obj]] = []  # name, pod spec, container

    def run(self, name: str, pod: Obj, container: Obj, *extra: str,
            env: dict[str, str] | None = None, detach: bool = True) -> str:
        full = f"{self.prefix}-{name}"
        args = ["run", *(["-d"] if detach else ["--rm"]), "--name", full,
                *_confined(pod, container), *_mounts(container, self.folder / name), *extra]
        for key, value in (env or {}).items():
            args += ["-e", f"{key}={value}"]
        if "command" in container:  # Kubernetes' command replaces the image's entrypoint
            args += ["--entrypoint", json.dumps(container["command"])]
        self.podman.run(*args, container["image"], *container.get("args", []))
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
    pods = Pods(podman, tmp_path_factory.mktemp("pods"))
    try:
        redis_url = _start_redis(pods, objects)
        config = _find(objects, "ConfigMap", "ocr-config")["data"]
        for deployment in (o for o in objects if o["kind"] == "Deployment"):
            pod = deployment["spec"]["template"]["spec"]
            for container in pod["containers"]:
                env = {**config, **{e["name"]: e["value"] for e in container.get("env", [])},
                       "REDIS_URL": redis_url,
                       "FLOWER_BASIC_AUTH": "ocr:" + secrets.token_hex(6),
                       "API_PORT": str(free_port()), "METRICS_PORT": str(free_port()),
                       "FLOWER_PORT": str(free_port())}
                name = deployment["metadata"]["name"]
                pods.run(name, pod, container, "--network", "host",
                         "--hostname", f"{name}-{secrets.token_hex(3)}", env=env)
        yield pods, redis_url
    finally:
        pods.stop_all()


def _start_redis(pods: Pods, objects: list[Obj]) -> str:
    """The StatefulSet's two steps: the init container's config, then redis-server."""
    pod = _find(objects, "StatefulSet", "ocr-redis")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (server,) = pod["containers"]
    config = pods.folder / "redis" / "config"
    config.mkdir(parents=True)
    config.joinpath("redis.conf").write_text(
        _find(objects, "ConfigMap", "ocr-redis-config")["data"]["redis.conf"])
    # The init container and the server share the `run` emptyDir: one folder for both.
    pods.run("redis", pod, init, detach=False, env={"REDIS_PASSWORD": PASSWORD})
    port = free_port()
    pods.run("redis", pod, server, "-p", f"127.0.0.1:{port}:6379",
             env={"REDISCLI_AUTH": PASSWORD})
    return f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/0"


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
