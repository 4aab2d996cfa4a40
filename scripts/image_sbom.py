#!/usr/bin/env python3
"""The image's software bill of materials, CycloneDX JSON: `python -m scripts.image_sbom IMAGE`.

`make image` runs it after the build and writes the file beside the image's tag,
`var/sbom/<name>-<tag>.cdx.json`. What is listed is read from the built image itself
(a container of it, no network): every Debian package dpkg knows (name, version,
architecture: `pkg:deb/debian/...` package URLs), every Python distribution of its
environment (`pkg:pypi/...`, with the file's SHA-256 from requirements-image.lock
where the lock names one for this architecture), and the operating system; the
metadata names the image (its tag, id and the project's version).

Runs on the build machine, with podman (or `--engine docker`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
SPEC = "1.6"
# Run inside the image: its OS, its Debian packages, its Python distributions.
PROBE = r"""
import importlib.metadata as m, json, subprocess
debs = subprocess.run(["dpkg-query", "-W", "-f=${Package}\t${Version}\t${Architecture}\n"],
                      capture_output=True, text=True, check=True).stdout.split("\n")
osr = dict(line.split("=", 1) for line in open("/etc/os-release").read().split("\n") if "=" in line)
print(json.dumps({
    "os": {k: v.strip('"') for k, v in osr.items()},
    "debs": [d.split("\t") for d in debs if d],
    "python": sorted({(d.metadata["Name"], d.version, d.metadata.get("License-Expression")
                       or d.metadata.get("License") or "") for d in m.distributions()})}))
"""


def inspect(engine: str, image: str) -> dict[str, Any]:
    done = subprocess.run([engine, "run", "--rm", "--network", "none", "--entrypoint",
                           "python3", image, "-c", PROBE], capture_output=True, text=True,
                          check=True, timeout=300)
    return dict(json.loads(done.stdout))


def lock_hashes() -> dict[str, list[str]]:
    """The lock's SHA-256s of each release's files (every architecture's), by name."""
    text = (ROOT / "requirements-image.lock").read_text()
    found: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        head = re.match(r"([A-Za-z0-9_.-]+)==", block)
        if head:
            found[_normal(head.group(1))] = re.findall(r"sha256:([0-9a-f]{64})", block)
    return found


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def sbom(image: str, image_id: str, found: dict[str, Any], version: str) -> dict[str, Any]:
    os_release = found["os"]
    distro = f"{os_release.get('ID', 'debian')}-{os_release.get('VERSION_ID', '')}"
    components: list[dict[str, Any]] = [{
        "type": "operating-system", "bom-ref": f"os:{distro}",
        "name": os_release.get("ID", "debian"), "version": os_release.get("VERSION_ID", ""),
        "description": os_release.get("PRETTY_NAME", "")}]
    for name, deb_version, arch in found["debs"]:
        components.append({
            "type": "library", "bom-ref": f"deb:{name}@{deb_version}", "name": name,
            "version": deb_version,
            "purl": f"pkg:deb/{os_release.get('ID', 'debian')}/{name}@{quote(deb_version)}"
                    f"?arch={arch}&distro={distro}"})
    hashes = lock_hashes()
    for name, py_version, license_text in found["python"]:
        component: dict[str, Any] = {
            "type": "library", "bom-ref": f"pypi:{_normal(name)}@{py_version}", "name": name,
            "version": py_version, "purl": f"pkg:pypi/{_normal(name)}@{py_version}"}
        if license_text and len(license_text) < 200:
            component["licenses"] = [{"license": {"name": license_text}}]
        if hashes.get(_normal(name)):
            # the lock's hashes of this release's files (one of them is the one installed)
            component["properties"] = [{"name": "ocr-queue:lock-sha256", "value": h}
                                       for h in hashes[_normal(name)]]
        components.append(component)
    name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
    return {
        "bomFormat": "CycloneDX", "specVersion": SPEC,
        "serialNumber": f"urn:uuid:{uuid.uuid4()}", "version": 1,
        "metadata": {
            "timestamp": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [{"type": "application", "name": "scripts/image_sbom.py",
                                      "version": version}]},
            "component": {"type": "container", "bom-ref": f"image:{image_id}",
                          "name": name, "version": tag or version,
                          "hashes": [{"alg": "SHA-256", "content": image_id}]}},
        "components": components}


def project_version() -> str:
    found = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    return found.group(1) if found else "0"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.image_sbom",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("image")
    parser.add_argument("--out", type=Path, help="the file (default: stdout)")
    parser.add_argument("--engine", default="podman")
    args = parser.parse_args(argv)
    image_id = subprocess.run([args.engine, "image", "inspect", "--format", "{{.Id}}",
                               args.image], capture_output=True, text=True, check=True,
                              timeout=120).stdout.strip().removeprefix("sha256:")
    text = json.dumps(sbom(args.image, image_id, inspect(args.engine, args.image),
                           project_version()), indent=1) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"image_sbom: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
