"""Pinned versions and compose locked down, read from the files (no container runs here).

Pins: every image of every overlay and of compose.yaml is the project's own at
pyproject.toml's version, or a third party's by a version tag and its digest; the
Dockerfile's base by digest; the image's Python packages from requirements-image.lock,
every line pinned with its hashes and in step with the requirement files, installed with
`--require-hashes`; `make image` tags the version and writes the SBOM.
compose: each secret required (`${VAR:?}`, compose refuses to start without it; a
missing one is named), given only to the service it is for, never the whole `.env`;
each role's REDIS_URL its own Redis user over verified TLS; every service with a
read-only root where it is the project's image, no capability, no privilege escalation
and the memory limit of the Kubernetes kit's same container (docs/deploy.md, sizing);
ports published on loopback only.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from scripts.make_secrets import secret_values
from tests.deploy.test_deploy_manifests import DEPLOY, OVERLAYS
from tests.harness import ROOT, VENV_BIN
from tests.kustomize_lite import build
from tests.pss import pod_templates

Obj = dict[str, Any]
DIGEST = re.compile(r"^[a-z0-9./_-]+:([A-Za-z0-9._-]+)@sha256:[0-9a-f]{64}$")
VERSION = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(),
                    re.M).group(1)  # type: ignore[union-attr]
PROJECT_IMAGE = f"ocr-queue:{VERSION}"
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
# compose service -> the Kubernetes container whose memory limit it shares (and the
# overlay it is in: gpu-vllm, or redis-ha for profile ha's members)
SAME_AS = {"redis": ("ocr-redis", "redis"), "api": ("ocr-api", "api"),
           "worker": ("ocr-worker-cpu", "worker"), "beat": ("ocr-beat", "beat"),
           "flower": ("ocr-flower", "flower"), "metrics": ("ocr-metrics", "metrics"),
           "control": ("ocr-control", "control"), "worker-vlm": ("ocr-worker-vlm-api", "worker"),
           **{f"redis-replica-{n}": ("ocr-redis-ha", "redis", "redis-ha") for n in (1, 2)},
           **{f"sentinel-{n}": ("ocr-redis-ha", "sentinel", "redis-ha") for n in (1, 2, 3)}}
# compose's Redis servers: each writes the users' lines, so it reads every password
SERVERS = {"redis", "redis-replica-1", "redis-replica-2"}
ROLE_USER = {"api": "api", "worker": "worker", "worker-vlm": "worker", "beat": "beat",
             "flower": "flower", "metrics": "metrics", "control": "control"}


def _third_party(image: str) -> None:
    found = DIGEST.match(image)
    assert found, f"{image}: not a version tag and digest"
    assert found.group(1) != "latest" and re.search(r"\d", found.group(1)), image


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_image_of_the_kit_is_a_version(name: str) -> None:
    for obj in build(DEPLOY / "overlays" / name):
        for _, pod, _ in pod_templates(obj):
            for container in [*pod.get("initContainers", []), *pod["containers"]]:
                image = container["image"]
                if image.split(":")[0] == "ocr-queue":
                    assert image == PROJECT_IMAGE, image
                else:
                    _third_party(image)


def _default(value: str) -> str:
    """The default of a `${VAR:-default}` (or the value itself)."""
    found = re.fullmatch(r"\$\{[A-Z_]+:-(.+)\}", value)
    return found.group(1) if found else value


def test_compose_images_and_the_base_are_pinned() -> None:
    for name, service in COMPOSE["services"].items():
        image = _default(service["image"])
        if image.startswith("ocr-queue"):
            assert image == PROJECT_IMAGE, name
        else:
            _third_party(image)
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE=(\S+)$", dockerfile, re.M)
    assert base is not None
    _third_party(base.group(1))
    installs = [line for line in dockerfile.splitlines() if re.search(r"\bpip install\b", line)
                and not line.startswith("#") and "vlm-image" not in line]
    assert installs and all("--require-hashes" in line for line in installs), installs
    assert "-r /src/requirements-image.lock" in installs[0]
    dry = subprocess.run(["make", "-n", "image"], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert f"-t {PROJECT_IMAGE}" in dry and "scripts.image_sbom" in dry


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        found = re.match(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s;\\]+)", line)
        if found:
            pins[re.sub(r"[-_.]+", "-", found.group(1)).lower()] = found.group(3)
    return pins


def test_the_lock_pins_every_package_with_hashes() -> None:
    text = (ROOT / "requirements-image.lock").read_text()
    blocks = [b for b in re.split(r"\n(?=[A-Za-z0-9])", text) if not b.startswith("#")]
    assert len(blocks) >= 60
    for block in blocks:
        assert re.match(r"[a-z0-9.-]+==\S+ \\", block), block
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", block), block
    lock = _pins(ROOT / "requirements-image.lock")
    for source in ("requirements.txt", "requirements-rapidocr.txt", "requirements-s3.txt",
                   "requirements-vlm-api.txt"):
        for name, version in _pins(ROOT / source).items():
            assert lock.get(name) == version, f"{source}: {name}=={version}, lock {lock.get(name)}"
    assert "opencv-python" not in lock and "opencv-python-headless" in lock


def test_compose_requires_each_secret_and_gives_it_only_where_it_is_used() -> None:
    text = (ROOT / "compose.yaml").read_text()
    for variable in [*(k for k in secret_values() if k.startswith((
            "REDIS_PASSWORD_", "REDIS_SENTINEL_", "FLOWER_"))), ]:
        uses = re.findall(r"\$\{" + variable + r"(:?[?-])?", text)
        assert uses and all(u == ":?" for u in uses), f"{variable}: {uses}"
    for name in ("minio", "buckets"):
        for value in COMPOSE["services"][name]["environment"].values():
            assert "AWS_" not in value or ":?" in value, (name, value)
    for name, service in COMPOSE["services"].items():
        assert not re.search(r"(^|/)\.env\b", str(service.get("env_file", ""))), name
        environment = service.get("environment", {})
        passwords = {k for k in environment if k.startswith("REDIS_PASSWORD_")}
        assert not passwords or name in SERVERS, name
        if name in ROLE_USER:
            raw = environment["REDIS_URL"]
            assert f"${{REDIS_PASSWORD_{ROLE_USER[name].upper()}:?" in raw, name
            # as .env leaves it (no profile ha: REDIS_SCHEME and REDIS_HOSTS unset)
            url = urlsplit(re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", re.sub(
                r"\$\{([A-Z_]+):\?[^}]*\}", r"\1", raw)))
            assert url.scheme == "rediss" and url.username == ROLE_USER[name], name
            assert url.password == f"REDIS_PASSWORD_{ROLE_USER[name].upper()}", name
            ca = parse_qs(url.query)
            assert ca["ssl_cert_reqs"] == ["required"]
            assert ca["ssl_ca_certs"] == ["/run/secrets/redis_ca"]
            assert "redis_ca" in service["secrets"], name
            others = set(re.findall(r"\$\{(REDIS_PASSWORD_[A-Z]+|FLOWER_PASSWORD)",
                                    str(environment)))
            assert others <= {f"REDIS_PASSWORD_{ROLE_USER[name].upper()}", "FLOWER_PASSWORD"
                              if name == "flower" else ""}, (name, others)


def _k8s_limit(deployment: str, container: str, overlay: str = "gpu-vllm") -> str:
    objects = build(DEPLOY / "overlays" / overlay)
    (obj,) = [o for o in objects if o["metadata"]["name"] == deployment
              and o["kind"] in ("Deployment", "StatefulSet")]
    (found,) = [c for c in obj["spec"]["template"]["spec"]["containers"]
                if c["name"] == container]
    return str(found["resources"]["limits"]["memory"])


def _bytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", size).groups()  # type: ignore[union-attr]
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "Ki": 1024, "Mi": 1024**2,
             "Gi": 1024**3}[unit]
    return int(number) * scale


def test_compose_services_are_locked_down() -> None:
    for name, service in COMPOSE["services"].items():
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert "mem_limit" in service, name
        if _default(service["image"]).startswith("ocr-queue"):
            assert service["read_only"] is True, name
            assert _bytes(service["mem_limit"]) == _bytes(_k8s_limit(*SAME_AS[name])), name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


@pytest.mark.skipif(not (VENV_BIN / "podman-compose").exists() or not shutil.which("podman"),
                    reason="podman-compose or podman is missing (requirements-dev.txt)")
def test_compose_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    values = secret_values()
    del values["REDIS_PASSWORD_METRICS"]
    env = tmp_path / "secrets.env"
    env.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    done = subprocess.run([str(VENV_BIN / "podman-compose"), "-f", str(ROOT / "compose.yaml"),
                           "--env-file", str(env), "config"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 or "REDIS_PASSWORD_METRICS" in done.stderr
    assert "required variable REDIS_PASSWORD_METRICS is missing" in done.stderr, done.stderr
