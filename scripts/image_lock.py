#!/usr/bin/env python3
"""The image's lock file, requirements-image.lock: `python -m scripts.image_lock` (`make lock`).

Every Python package the image installs, pinned to one version with the SHA-256 of each
file pip may install, so the Dockerfile installs with `pip install --require-hashes
--no-deps` and a changed file on the index stops the build. Resolved by pip itself
(`pip install --dry-run --report`, wheels only) for the image's Python, Debian
bookworm's CPython 3.11.2, on Linux x86_64 and aarch64 (both architectures' wheels are
hashed, so `docker build` works on either), from the engines' requirement files, with
two changes the image needs: OpenCV's headless build instead of opencv-python (a slim
image has no libGL; same version), and async-timeout, which redis-py needs below Python
3.11.3 (its marker is not evaluated for the target here).

`--download DIR` (`make wheels`) fetches the lock's files for this machine into DIR,
each checked against its hash, for `make image`'s offline build (`WHEELS=local`).

Runs on the developer's machine (it asks the package index); the lock is committed.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements-image.lock"
SOURCES = ("requirements-rapidocr.txt", "requirements-s3.txt", "requirements-vlm-api.txt")
EXTRA = ("async-timeout>=4.0.3",)
PYTHON = "3.11.2"
MACHINES = ("x86_64", "aarch64")
SWAPPED = ("opencv-python", "opencv-python-headless")
Package = tuple[str, str]  # version, sha256


def _platforms(machine: str) -> list[str]:
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(36, 16, -1)]
    return [*tags, f"manylinux2014_{machine}"]


def resolve(requirements: list[str], machine: str, deps: bool = True) -> dict[str, Package]:
    """Each package pip installs for `requirements` on `machine`: name -> (version, sha256)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        args = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                "--quiet", "--report", str(report), "--only-binary=:all:",
                "--python-version", PYTHON, "--implementation", "cp", "--abi", "cp311",
                "--abi", "abi3", "--abi", "none", "--target", str(Path(tmp) / "unused"),
                *(f"--platform={p}" for p in _platforms(machine)),
                *([] if deps else ["--no-deps"]), *requirements]
        subprocess.run(args, check=True, cwd=ROOT, timeout=1800)
        installs = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"].lower().replace("_", "-"): (
        i["metadata"]["version"], i["download_info"]["archive_info"]["hashes"]["sha256"])
        for i in installs}


def lock_lines() -> list[str]:
    """The lock file's requirement lines, every architecture's hashes merged."""
    requirements = [arg for source in SOURCES for arg in ("-r", source)] + list(EXTRA)
    hashes: dict[str, tuple[str, set[str]]] = {}
    for machine in MACHINES:
        packages = resolve(requirements, machine)
        old, new = SWAPPED
        version, _ = packages.pop(old)
        packages.update(resolve([f"{new}=={version}"], machine, deps=False))
        for name, (version, digest) in packages.items():
            known_version, digests = hashes.setdefault(name, (version, set()))
            if known_version != version:
                raise SystemExit(f"image_lock: {name} resolves to {known_version} and "
                                 f"{version} on different machines")
            digests.add(digest)
    lines = []
    for name in sorted(hashes):
        version, digests = hashes[name]
        lines.append(f"{name}=={version} \\\n" + " \\\n".join(
            f"    --hash=sha256:{d}" for d in sorted(digests)))
    return lines


def download(folder: Path) -> None:
    """The lock's files for this machine, each checked against its hash, into `folder`."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--require-hashes", "--only-binary=:all:", "--python-version", PYTHON,
                    "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi",
                    "none", *(f"--platform={p}" for p in _platforms(platform.machine())),
                    "--dest", str(folder), "-r", str(LOCK)], check=True, cwd=ROOT,
                   timeout=3600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.image_lock",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--download", type=Path, metavar="DIR",
                        help="fetch the lock's files for this machine into DIR")
    args = parser.parse_args(argv)
    if args.download is not None:
        download(args.download)
        return 0
    header = [
        "# The image's Python packages, each with the hashes of its files: generated by",
        "# `make lock` (scripts/image_lock.py) from " + ", ".join(SOURCES) + ",",
        f"# for CPython {PYTHON} on Linux {' and '.join(MACHINES)}. Do not edit: change a",
        "# requirements file and run `make lock`. The Dockerfile installs it with",
        "# `pip install --require-hashes --no-deps`.",
    ]
    LOCK.write_text("\n".join([*header, *lock_lines()]) + "\n")
    print(f"image_lock: wrote {LOCK.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
