"""The image and compose.yaml with real containers: podman and podman-compose.

Runs in the test process; everything else runs in containers of the image `make image`
builds (tagged `ocr-queue:test-<hash of its inputs>`, rebuilt when they changed, so
checkouts sharing podman's store never take each other's; `make image` also writes its
CycloneDX SBOM, validated here against CycloneDX's schema). One compose project per
session (its own podman network, ports published on 127.0.0.1 only, free ports chosen
here), its secrets and Redis's certificate made by `scripts/make_secrets.py` as an
operator makes them: every role runs with its own Redis user over verified TLS (Redis
serves nothing else, and lists each role's user among its clients, nothing refused);
the API container reads a scanned PDF sent with a token, `submit.py` reads one from
the host, every role answers its health command, a worker stopped with SIGTERM
mid-document hands over without reading a page twice, queued jobs outlive a Redis
restart, a queued job is cancelled, and `down` leaves nothing. `make test` installs
podman, debootstrap and runc (as root) and podman-compose (requirements-dev.txt);
without podman these tests skip and say why. Select them with `-m containers`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymupdf
import pytest
import redis
import requests
import yaml
from PIL import Image

from scripts.make_secrets import secret_values, write_certs
from tasks.client import OcrClient
from tasks.settings import Settings
from tests.cer import cer
from tests.harness import (
    ROOT,
    VENV_BIN,
    corpus,
    eventually,
    free_port,
    ground_truth,
    procfile_command,
)

# `make test-long`: the image is built (minutes from a fresh clone) and run.
pytestmark = [pytest.mark.containers, pytest.mark.long, pytest.mark.timeout(3600)]

INPUTS_LABEL = "ocr-queue.inputs"
SIZE_GOAL = 900_000_000  # bytes, as `podman images` counts MB (10^6)
ROLES = ("api", "worker", "beat", "flower", "metrics", "control")
READY_SECONDS = 600  # generous: a loaded 2-core machine starting seven Python processes
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
runtime = "runc"
"""


def image_inputs_hash() -> str:
    """A hash of every file the image is built from (the Dockerfile's COPY sources)."""
    digest = hashlib.sha256()
    names = ["Dockerfile", ".dockerignore", "Procfile", "pyproject.toml", "LICENSE",
             "submit.py", "ocr_admin.py", "worker_config.py", "requirements-image.lock",
             "requirements.txt", "requirements-vlm.txt"]
    paths = [ROOT / n for n in names]
    for folder in ("tasks", "scripts"):
        paths += sorted(p for p in (ROOT / folder).rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts)
    for path in paths:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:32]


class Podman:
    """podman and podman-compose with the tests' containers.conf."""

    def __init__(self, workdir: Path) -> None:
        conf = workdir / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf),
                    "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}

    def run(self, *args: str, check: bool = True, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["podman", *args], capture_output=True, text=True,
                              timeout=timeout, env={**self.env, **(env or {})})
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} -> {done.returncode}:\n"
                                 f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        return done

    def inspect(self, what: str, name: str) -> Any:
        return json.loads(self.run(what, "inspect", name).stdout)[0]


class Stack:
    """One compose project of compose.yaml, on free loopback ports, with secrets of its own."""

    def __init__(self, podman: Podman, workdir: Path, image: str) -> None:
        self.podman = podman
        self.project = f"ocrtest{os.getpid()}"
        self.secrets = secret_values()
        self.ports = {name: free_port() for name in ("redis", "api", "flower", "metrics")}
        self.tls = workdir / "tls"
        write_certs(self.tls, ["redis", "localhost", "127.0.0.1"])
        self.env_file = workdir / "secrets.env"  # compose's substitutions (`.env`)
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in self.secrets.items()))
        self.settings_file = workdir / "settings.env"  # every service's settings
        self.settings_file.write_text("\n".join([
            "OCR_CONCURRENCY=2",
            "OCR_CACHE_RESULTS=0",  # the SIGTERM test reads one page 20 times
            "LOG_LEVEL=INFO", ""]))
        self.compose_env = {"QUEUE_ENV_FILE": str(self.settings_file), "QUEUE_IMAGE": image,
                            "REDIS_TLS_DIR": str(self.tls),
                            **{f"PUBLISH_{k.upper()}_PORT": str(v)
                               for k, v in self.ports.items()}}

    def url(self, user: str, host: str = "127.0.0.1", ca: str | None = None) -> str:
        """The verified rediss:// URL of a Redis user, from the host (or `host`)."""
        port = self.ports["redis"] if host == "127.0.0.1" else 6379
        return (f"rediss://{user}:{self.secrets[f'REDIS_PASSWORD_{user.upper()}']}@{host}:"
                f"{port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca or self.tls / 'ca.crt'}")

    @property
    def redis_url(self) -> str:
        """A client's (submit.py, the Python client): the `client` user."""
        return self.url("client")

    @property
    def admin_url(self) -> str:
        """An operator's (ocr_admin.py, inspecting Redis): the `admin` user."""
        return self.url("admin")

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(VENV_BIN / "podman-compose"), "-p", self.project, "-f",
             str(ROOT / "compose.yaml"), "--env-file", str(self.env_file),
             "--profile", "control", *args],
            capture_output=True, text=True, timeout=timeout, cwd=ROOT,
            env={**self.podman.env, **self.compose_env})
        if done.returncode != 0:
            raise AssertionError(f"podman-compose {' '.join(args)} -> {done.returncode}:\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def left_over(self) -> dict[str, list[str]]:
        """Containers, volumes and networks of this project that still exist."""
        label = f"label=io.podman.compose.project={self.project}"
        found = {
            "containers": self.podman.run("ps", "-a", "-q", "--filter", label).stdout.split(),
            "volumes": [v for v in self.podman.run("volume", "ls", "-q").stdout.split()
                        if v.startswith(f"{self.project}_")],
            "networks": [n for n in self.podman.run("network", "ls", "-q", "--format",
                                                    "{{.Name}}").stdout.split()
                         if n.startswith(f"{self.project}_")]}
        return {k: v for k, v in found.items() if v}

    def logs(self, service: str) -> str:
        """The container's output, stdout and stderr in the order written, every run."""
        done = subprocess.run(["podman", "logs", self.container(service)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=120, env=self.podman.env, check=True)
        return done.stdout

    def exec(self, service: str, *command: str, check: bool = True,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.podman.run("exec", self.container(service), *command, check=check,
                               timeout=timeout)

    def start_worker(self) -> None:
        """Start the stopped worker container; return once its health says ready."""
        self.podman.run("start", self.container("worker"))
        self.wait_healthy(self.container("worker"))

    def wait_healthy(self, name: str) -> None:
        """Until container `name`'s worker health command says ready; fail if it exits."""
        last = ""

        def ready() -> bool:
            nonlocal last
            done = self.podman.run("exec", name, "python", "-m", "scripts.health", "worker",
                                   "ready", check=False)
            if done.returncode == 0:
                return True
            last = done.stderr
            state = self.podman.inspect("container", name)["State"]
            assert state["Running"], self.podman.run("logs", name, check=False).stderr[-3000:]
            return False

        # A health command is a Python start in the container: one a second at most.
        eventually(ready, READY_SECONDS, lambda: f"{name} ready: {last}", interval=1)

    def wait_ready(self) -> None:
        """Until the API says Redis answers and a worker consumes `ocr`."""
        last = ""

        def ready() -> bool:
            nonlocal last
            try:
                answer = requests.get(f"{self.api}/readyz", timeout=5)
                if answer.status_code == 200:
                    return True
                last = answer.text
            except requests.RequestException as exc:
                last = type(exc).__name__
            for service in ("api", "worker", "redis"):
                state = self.podman.inspect("container", self.container(service))["State"]
                assert state["Running"], f"{service} exited:\n{self.logs(service)[-3000:]}"
            return False

        eventually(ready, READY_SECONDS, lambda: f"the API ready: {last}\n"
                   f"{self.logs('worker')[-3000:]}", interval=1)


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    if shutil.which("podman") is None:
        pytest.skip("podman is missing (make test installs it as root: apt-get install "
                    "podman debootstrap runc)")
    if not (VENV_BIN / "podman-compose").exists():
        pytest.skip("podman-compose is missing (requirements-dev.txt)")
    return Podman(tmp_path_factory.mktemp("podman"))


def sbom_path(image: str) -> Path:
    """Where `make image` writes the image's SBOM."""
    return ROOT / "var" / "sbom" / f"{image.replace(':', '-')}.cdx.json"


@pytest.fixture(scope="module")
def image(podman: Podman) -> str:
    """The image of this tree, `ocr-queue:test-<inputs hash>` (reused while they are)."""
    wanted = image_inputs_hash()
    tag = f"ocr-queue:test-{wanted[:16]}"
    found = podman.run("image", "inspect", tag, check=False)
    if found.returncode == 0 and sbom_path(tag).exists():
        labels = json.loads(found.stdout)[0].get("Labels") or {}
        if labels.get(INPUTS_LABEL) == wanted:
            return tag
    done = subprocess.run(
        ["make", "image", f"IMAGE={tag}",
         f"IMAGE_BUILD_ARGS=--label={INPUTS_LABEL}={wanted}"],
        cwd=ROOT, capture_output=True, text=True, timeout=3000,
        env={**podman.env, "MAKEFLAGS": ""})
    assert done.returncode == 0, f"make image:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return tag


@pytest.fixture(scope="module")
def stack(podman: Podman, image: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(podman, tmp_path_factory.mktemp("compose"), image)
    try:
        stack.compose("up", "-d")
        stack.wait_ready()
        yield stack
    finally:
        if stack.left_over():
            subprocess.run([str(VENV_BIN / "podman-compose"), "-p", stack.project, "-f",
                            str(ROOT / "compose.yaml"), "--env-file", str(stack.env_file),
                            "--profile", "control", "down", "-v", "-t", "10"],
                           capture_output=True, timeout=300, cwd=ROOT,
                           env={**podman.env, **stack.compose_env})


def client_for(stack: Stack) -> OcrClient:
    return OcrClient(Settings.from_env({"REDIS_URL": stack.redis_url}))


def submit_py(stack: Stack, *args: str, timeout: float = 600, script: str = "submit.py",
              url: str | None = None) -> subprocess.CompletedProcess[str]:
    """submit.py (or ocr_admin.py) from the host, as the `client` user (or `url`'s)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OCR_", "REDIS_"))}
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout,
                          env={**env, "REDIS_URL": url or stack.redis_url})


def queued(stack: Stack) -> int:
    """Messages waiting in the `ocr` queue, every priority list and client's lane included.

    Waits for Redis to answer first (it may be loading its append-only file); an
    operator's look, with the `admin` user (a client's may not list keys).
    """
    client = redis.Redis.from_url(stack.admin_url)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.BusyLoadingError):
            return False

    try:
        eventually(answers, 120, "redis to come back", interval=0.2)
        names = [k for k in client.scan_iter(match=b"*ocr*", count=1000)
                 if k == b"ocr" or k.startswith((b"ocr\x06\x16", b"ocr:lane:ocr:",
                                                  b"ocr:lane:ocr\x06\x16", b"{ocr}:lane:"))
                 or (k.startswith(b"{ocr\x06\x16") and b"}:lane:" in k)]
        return sum(int(client.llen(k)) for k in names)
    finally:
        client.close()


def test_compose_runs_the_procfile_lines() -> None:
    """Each role's command is `sh -c "exec LINE"`, LINE the Procfile's with `$` as `$$`."""
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    for role in ROLES:
        expected = "exec " + procfile_command(role).replace("$", "$$")
        assert services[role]["command"] == ["sh", "-c", expected], role
    assert services["worker-vlm"]["command"] == services["worker"]["command"]
    assert services["worker-vlm"]["environment"]["OCR_ENGINE"] == "vlm-api"


def test_compose_declares_the_gpu_pool_to_who_admits_and_marks() -> None:
    """The API, the CPU pool and the control worker queue vlm-api work with no GPU worker."""
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    for role in ("api", "worker", "control"):
        assert services[role]["environment"]["OCR_ENGINES_FROM_ZERO"] == "vlm-api", role


def test_image_is_slim_and_serves_every_engine(podman: Podman, image: str) -> None:
    """...and its SBOM lists what it holds, valid CycloneDX."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    text = sbom_path(image).read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    sbom = json.loads(text)
    purls = {c.get("purl", "").split("@")[0] for c in sbom["components"]}
    assert {"pkg:pypi/celery", "pkg:pypi/tesserocr", "pkg:pypi/opencv-python-headless",
            "pkg:deb/debian/redis-server", "pkg:deb/debian/tini"} <= purls
    assert "pkg:pypi/opencv-python" not in purls and "pkg:pypi/pip" not in purls
    info = podman.inspect("image", image)
    assert sbom["metadata"]["component"]["hashes"][0]["content"] == \
        info["Id"].removeprefix("sha256:")
    assert info["Size"] <= SIZE_GOAL, f"{info['Size'] / 1e6:.0f} MB"
    config = info["Config"]
    assert config["User"] == "10001:10001"
    labels = info["Labels"]
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert labels["org.opencontainers.image.version"]
    probe = (
        "import importlib, shutil, sys, pathlib\n"
        "import cv2, tesserocr, pymupdf, rapidocr_onnxruntime, boto3, openai\n"
        "print('compilers', [c for c in ('cc', 'gcc', 'g++', 'clang', 'make') "
        "if shutil.which(c)])\n"
        "print('langs', sorted(p.stem for p in pathlib.Path('/usr/share/tesseract-ocr')"
        ".glob('*/tessdata/*.traineddata')))\n"
        "weights = [str(p) for root in ('/opt', '/app', '/usr', '/root', '/home') "
        "for pat in ('*.safetensors', '*.gguf', '*.npz') "
        "for p in pathlib.Path(root).rglob(pat)]\n"
        "print('weights', weights)\n")
    done = podman.run("run", "--rm", "--network", "none", image, "python", "-c", probe)
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert lines["compilers"] == "[]"
    assert lines["weights"] == "[]"
    for lang in ("eng", "vie", "ell", "chi_sim"):
        assert f"'{lang}'" in lines["langs"], lines["langs"]


def test_every_role_uses_its_own_redis_user_over_tls(stack: Stack) -> None:
    """Redis serves only TLS; each role's connection is its own user's; nothing refused."""
    port = stack.ports["redis"]
    with pytest.raises(redis.ConnectionError):  # no plaintext port
        redis.Redis(port=port, socket_timeout=5).ping()
    with pytest.raises(redis.AuthenticationError):  # `default` is off
        redis.Redis.from_url(stack.url("client").replace(
            f"client:{stack.secrets['REDIS_PASSWORD_CLIENT']}@", "default:x@")).ping()
    for role in ROLES:
        env = stack.podman.inspect("container", stack.container(role))["Config"]["Env"]
        (url,) = [e.split("=", 1)[1] for e in env if e.startswith("REDIS_URL=")]
        assert url.startswith(f"rediss://{role}:") and "ssl_cert_reqs=required" in url
        assert not [e for e in env if e.startswith(("REDIS_PASSWORD_", "FLOWER_PASSWORD"))]
    # a worker never reads the API's tokens
    denied = stack.exec("worker", "python", "-c", "import os, redis; redis.Redis.from_url("
                        "os.environ['REDIS_URL']).get('ocr:api:token:probe')", check=False)
    assert "NoPermissionError" in denied.stderr, denied.stderr
    scraped = requests.get(f"http://127.0.0.1:{stack.ports['metrics']}/metrics", timeout=30)
    assert scraped.status_code == 200  # the exporter read Redis, as its user
    admin = redis.Redis.from_url(stack.admin_url)
    try:  # those that hold a connection (beat connects only to send, as its health does)
        users = {_text(c["user"]) for c in admin.client_list()}
        assert set(ROLES) - {"beat"} <= users, users
        # all but this test's own: the worker's look at a token, `default`'s login
        refused = [e for e in admin.acl_log(count=100)
                   if (_text(e["username"]), _text(e["object"])) != ("worker",
                                                                    "ocr:api:token:probe")
                   and _text(e["username"]) != "default"]
        assert refused == [], refused
    finally:
        admin.close()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def test_every_role_answers_its_health_commands(stack: Stack) -> None:
    for role in ROLES:
        for probe in ("live", "ready"):
            done = stack.exec(role, "python", "-m", "scripts.health", role, probe,
                              check=False)
            assert done.returncode == 0, f"{role} {probe}: {done.stderr}"
    refused = stack.exec("worker", "python", "-m", "scripts.health", "worker", "ready",
                         "--node", "nobody@nowhere", check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "worker not ready: no live presence record for worker nobody@nowhere"]


def test_scanned_pdf_through_the_api_container(stack: Stack) -> None:
    made = submit_py(stack, "tokens", "create", "tests", "--json", script="ocr_admin.py",
                     url=stack.admin_url)  # an operator on the host, the admin user
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)["token"]
    auth = {"Authorization": f"Bearer {token}"}
    pdf = corpus("scan_dh_lorem_ipsum.pdf")
    assert requests.post(f"{stack.api}/v1/jobs", files={"file": (pdf.name, b"x")},
                         timeout=30).status_code == 401
    sent = requests.post(f"{stack.api}/v1/jobs", headers=auth, timeout=60,
                         files={"file": (pdf.name, pdf.read_bytes(), "application/pdf")})
    assert sent.status_code == 202, sent.text
    job = sent.json()["id"]
    status: dict[str, Any] = {}

    def ended() -> bool:
        status.update(requests.get(f"{stack.api}/v1/jobs/{job}", headers=auth,
                                   timeout=30).json())
        return status["status"] not in ("QUEUED", "RUNNING")

    eventually(ended, 300, lambda: f"job {job} to end: {status}", interval=0.5)
    assert status["status"] == "SUCCESS", status
    text = requests.get(f"{stack.api}/v1/jobs/{job}/result?format=text", headers=auth,
                        timeout=30).text
    assert cer(pdf.with_suffix(".gt.txt").read_text(), text) < 0.1, text


def test_submit_py_from_the_host(stack: Stack) -> None:
    pdf = corpus("scan_linn_skew.pdf")
    done = submit_py(stack, "--json", str(pdf))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["status"] == "SUCCESS"
    assert cer(pdf.with_suffix(".gt.txt").read_text(), result["text"]) < 0.1


SCAN = "scan_tess_phototest.tif"


def worker_args(stack: Stack) -> list[str]:
    """`podman run` options of a worker of the compose network: its user, the CA, locked."""
    ca = "/run/secrets/redis_ca"
    return ["-e", f"REDIS_URL={stack.url('worker', host='redis', ca=ca)}",
            "-v", f"{stack.tls / 'ca.crt'}:{ca}:ro", "--read-only", "--tmpfs",
            "/app/var:rw,mode=1777", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]


def test_other_engines_run_in_the_image(stack: Stack) -> None:
    """The rapidocr engine reads a page in the compose worker; a vlm-api worker comes up.

    The vlm-api worker is a container of the default command (the Procfile's worker
    line) with only variables set, on the project's own network; its server does not
    exist, which it tolerates (pages would wait for it); it must come up and publish
    its presence.
    """
    scan = corpus(SCAN)
    done = submit_py(stack, "--json", "--engine", "rapidocr", str(scan))
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["engine"]["name"] == "rapidocr", result["engine"]
    assert cer(scan.with_suffix(".gt.txt").read_text(), result["text"]) < 0.2
    name = f"{stack.project}_vlm_worker"
    stack.podman.run(
        "run", "-d", "--name", name, "--network", f"{stack.project}_default",
        *worker_args(stack),
        "-e", "OCR_ENGINE=vlm-api", "-e", "OCR_VLM_API_URL=http://127.0.0.1:9/v1",
        "-e", "OCR_VLM_API_MODEL=none", "-e", "WORKER_NAME=vlm",
        "-e", "OCR_QUEUES=ocr-vlm-api", "-e", "OCR_CONCURRENCY=1",
        stack.compose_env["QUEUE_IMAGE"])
    try:
        stack.wait_healthy(name)
        logs = stack.podman.run("logs", name)
        assert "serves engine queue ocr-vlm-api" in logs.stdout + logs.stderr
    finally:
        stack.podman.run("rm", "-f", "-t", "10", name, check=False)


def test_a_booting_worker_stops_on_sigterm(stack: Stack) -> None:
    """SIGTERM right after start ends the worker; it is not left to the SIGKILL.

    Before Celery installs its handlers a PID 1 would ignore SIGTERM; tini, the image's
    entrypoint, is PID 1 and passes the signal on. Exit 137 would mean SIGKILL.
    """
    name = f"{stack.project}_booting_worker"
    stack.podman.run(
        "run", "-d", "--name", name, "--network", f"{stack.project}_default",
        *worker_args(stack), "-e", "WORKER_NAME=booting", "-e", "OCR_QUEUES=ocr-booting",
        stack.compose_env["QUEUE_IMAGE"])
    try:
        stack.podman.run("stop", "-t", "300", name, timeout=600)
        state = stack.podman.inspect("container", name)["State"]
        assert state["ExitCode"] in (0, 143), state
    finally:
        stack.podman.run("rm", "-f", name, check=False)


def twenty_page_scan() -> bytes:
    """20 pages, each the corpus's scan of tesseract's test page (no text layer)."""
    scan = Image.open(corpus(SCAN))
    dpi = int(scan.info.get("dpi", (300, 300))[0]) or 300
    buffer = io.BytesIO()
    scan.save(buffer, "PNG")
    doc = pymupdf.open()
    for _ in range(20):
        page = doc.new_page(width=scan.width * 72 / dpi, height=scan.height * 72 / dpi)
        page.insert_image(page.rect, stream=buffer.getvalue())
    return bytes(doc.tobytes(garbage=3, deflate=True))


PAGE_DONE = re.compile(r"Task ocr\.pdf_page\[([0-9a-f-]+)\] succeeded")
PAGE_SEEN = re.compile(r"Task ocr\.pdf_page\[([0-9a-f-]+)\] received")


def _page_trail(log: str, earlier: set[str]) -> str:
    """Each page task's lines whose success is missing or doubled (a failure's evidence)."""
    done = Counter(PAGE_DONE.findall(log))
    odd = [i for i in dict.fromkeys(PAGE_SEEN.findall(log))
           if i not in earlier and done[i] != 1]
    marks = ("pdf_page[", "Warm shutdown", "ready.", "ocr.job", "restor", "ERROR", "WARNING",
             "Traceback", "Error")
    lines = [line for line in log.splitlines()
             if any(i in line for i in odd) or any(m in line for m in marks)]
    return f"{len(done)} succeeded; odd tasks {odd}:\n" + "\n".join(lines[-120:])


WARM = "Warm shutdown"


def test_worker_stopped_mid_document_reads_every_page_once(stack: Stack,
                                                           tmp_path: Path) -> None:
    """SIGTERM to the worker container mid-document: warm shutdown, then a new start.

    The pages in hand finish (exit 0: nothing was killed), the rest wait in the queue
    for the restarted worker; each page task succeeds exactly once across both runs'
    logs, and the job is SUCCESS with all 20 pages read.
    """
    pdf = tmp_path / "twenty.pdf"
    pdf.write_bytes(twenty_page_scan())
    client = client_for(stack)
    worker = stack.container("worker")
    before = stack.logs("worker")
    try:
        job = client.submit(pdf.read_bytes(), filename=pdf.name)
        eventually(lambda: client.status(job).done >= 1, 600, "a page read", interval=0.2)
        stack.podman.run("stop", "-t", "600", worker, timeout=900)  # SIGTERM, waits
        state = stack.podman.inspect("container", worker)["State"]
        stopped_at = client.status(job)
        first_run = stack.logs("worker")  # complete: the container has exited
        assert state["ExitCode"] == 0 and not state["OOMKilled"], state
        assert 1 <= stopped_at.done < 20, stopped_at  # mid-document
        stack.start_worker()
        results = client.wait([job], timeout=900)
    finally:
        client.close()
    result = results[job]
    assert result["status"] == "SUCCESS"
    pages = result["pages"]
    assert sorted(p["number"] for p in pages) == list(range(1, 21))
    reference = ground_truth(SCAN)
    assert all(cer(reference, p["text"]) < 0.1 for p in pages)
    # Page tasks of this job: those that succeeded after `before` was read. The logs are
    # compared as sets of task ids per run, not by line order (podman writes a
    # container's stdout and stderr apart).
    # The last page's task ends the job before its own "succeeded" line is logged: the
    # log is read once that line is there too (or after a minute, to show what is not).
    earlier = set(PAGE_DONE.findall(before))

    def pages_logged() -> str | None:
        text = stack.logs("worker")
        return text if len(set(PAGE_DONE.findall(text)) - earlier) >= 20 else None

    try:
        log = eventually(pages_logged, 60, "every page's succeeded line", interval=1)
    except AssertionError:
        log = stack.logs("worker")
    succeeded = Counter(i for i in PAGE_DONE.findall(log) if i not in earlier)
    in_first = {i for i in PAGE_DONE.findall(first_run) if i not in earlier}
    assert first_run.count(WARM) > before.count(WARM), first_run[-3000:]
    assert len(succeeded) == 20 and set(succeeded.values()) == {1}, _page_trail(log, earlier)
    assert 1 <= len(in_first) < 20, in_first  # both runs read pages: the stop came mid-document
    assert "WorkerLostError" not in log and "SIGKILL" not in log


def test_queued_jobs_outlive_a_redis_restart_and_one_is_cancelled(stack: Stack) -> None:
    worker = stack.container("worker")
    stack.podman.run("stop", "-t", "600", worker, timeout=900)
    scan = str(corpus(SCAN))
    sent = submit_py(stack, "--no-wait", scan, scan, scan)
    assert sent.returncode == 0, sent.stderr
    jobs = [line.split()[0] for line in sent.stdout.splitlines()]
    assert len(jobs) == 3 and queued(stack) == 3
    stack.podman.run("restart", "-t", "30", stack.container("redis"))
    assert queued(stack) == 3  # the append-only file on its volume kept them
    cancelled = submit_py(stack, "cancel", jobs[2])
    assert cancelled.returncode == 0, cancelled.stderr
    stack.start_worker()
    done = submit_py(stack, "--json", "wait", *jobs[:2])
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["status"] for line in done.stdout.splitlines()] == [
        "SUCCESS", "SUCCESS"]
    ended = submit_py(stack, "--json", "wait", jobs[2])
    assert ended.returncode == 4, ended.stdout + ended.stderr
    assert json.loads(ended.stdout.splitlines()[-1])["status"] == "CANCELLED"


def test_down_leaves_nothing_running(stack: Stack) -> None:
    assert stack.left_over()["containers"]
    stack.compose("down", "-v", "-t", "30")
    assert stack.left_over() == {}
