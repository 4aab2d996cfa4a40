"""Model-directory fixtures for the audit tests: model folders and hub cache repos.

Small valid and damaged model folders, and Hugging Face hub cache repos in the layout
`huggingface_hub` writes (`write_hub_repo`).

Safetensors files are written by hand (8-byte little-endian header length, JSON header,
data), so the tests need no MLX and no safetensors package.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from pathlib import Path

DAY = 86400


def write_safetensors(path: Path, tensors: dict[str, list[int]] | None = None,
                      truncate_to: int | None = None) -> Path:
    """Write F32 tensors of the given shapes (zeros); optionally cut the file short."""
    tensors = tensors or {"w": [4, 4], "b": [4]}
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors.items():
        size = 4
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    data = struct.pack("<Q", len(raw)) + raw + b"\0" * offset
    path.write_bytes(data[:truncate_to] if truncate_to is not None else data)
    return path


def write_model(folder: Path, model_type: str = "qwen2_vl", config: str | None = None,
                **safetensors: object) -> Path:
    """A model folder: config.json (or the raw `config` text) and model.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(config if config is not None else
                                        json.dumps({"model_type": model_type}))
    write_safetensors(folder / "model.safetensors", **safetensors)  # type: ignore[arg-type]
    return folder


def age(path: Path, seconds: float) -> None:
    """Set the mtime of `path` and everything in it `seconds` into the past (no links)."""
    when = time.time() - seconds
    paths = [path]
    if path.is_dir() and not path.is_symlink():
        for folder, dirs, files in os.walk(path):
            paths += [Path(folder) / n for n in dirs + files]
    for p in paths:
        os.utime(p, (when, when), follow_symlinks=False)


def build_lifecycle_dir(models: Path, outside: Path) -> None:
    """The audit scenario of tests/models/test_model_lifecycle.py (see EXPECTED_* there).

    `outside` holds what links point to; it must survive every prune.
    """
    if models.exists():
        shutil.rmtree(models)
    models.mkdir(parents=True)
    if not (outside / "shared-model").exists():
        write_model(outside / "shared-model")
        (outside / "precious.bin").write_bytes(b"not in the model directory")
    write_model(models / "current-model")
    age(models / "current-model", 60 * DAY)  # unused for 60 days, but configured
    write_model(models / "old_model")
    os.symlink(outside / "precious.bin", models / "old_model" / "weights-link")
    write_model(models / "old_in_use")  # a live worker has it loaded
    write_model(models / "stale")
    age(models / "stale", 60 * DAY)
    write_model(models / "stale-used")  # old on disk, but a worker used it recently
    age(models / "stale-used", 60 * DAY)
    write_model(models / "broken-config", config="{not json")
    age(models / "broken-config", 2 * DAY)
    write_model(models / "truncated", truncate_to=-20)  # the data is cut short
    age(models / "truncated", 2 * DAY)
    write_model(models / "partial")
    (models / "partial" / "model-00002-of-00002.safetensors.incomplete").write_bytes(b"x")
    age(models / "partial", 2 * DAY)
    write_model(models / "downloading")  # partial, but written a moment ago
    (models / "downloading" / "model-00002-of-00002.safetensors.incomplete").write_bytes(b"x")
    os.symlink(outside / "shared-model", models / "old_linked")
    os.symlink(outside / "shared-model", models / "linked-model")
    os.symlink(outside / "missing-model", models / "dangling")
    age(models / "dangling", 2 * DAY)
    (models / "notes.txt").write_text("which model is which\n")


def write_hub_repo(cache: Path, repo_id: str, revisions: dict[str, dict[str, bytes]],
                   refs: dict[str, str] | None = None,
                   incomplete: dict[str, bytes] | None = None) -> Path:
    """A repo of a Hugging Face hub cache in the layout `huggingface_hub` writes.

    `models--org--name/blobs/<sha256>` holds each file once; `snapshots/<commit>/<file>`
    are relative links into the blobs; `refs/<ref>` holds a commit hash (no newline);
    `blobs/<hash>.incomplete` are partial downloads; `.locks/models--org--name/` at the
    top of the cache. `refs` defaults to `main` -> the first revision.
    """
    import hashlib

    folder = cache / ("models--" + repo_id.replace("/", "--"))
    blobs = folder / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    (cache / ".locks" / folder.name).mkdir(parents=True, exist_ok=True)
    for commit, files in revisions.items():
        for name, data in files.items():
            digest = hashlib.sha256(data).hexdigest()
            (blobs / digest).write_bytes(data)
            link = folder / "snapshots" / commit / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink():
                link.unlink()
            os.symlink(os.path.relpath(blobs / digest, link.parent), link)
    for ref, commit in (refs if refs is not None else {"main": next(iter(revisions))}).items():
        (folder / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(commit)
    for name, data in (incomplete or {}).items():
        (blobs / f"{name}.incomplete").write_bytes(data)
        (cache / ".locks" / folder.name / f"{name}.lock").write_bytes(b"")
    return folder


def model_files(model_type: str = "qwen2_vl", **safetensors: object) -> dict[str, bytes]:
    """The files of a small model (config.json and model.safetensors) as bytes."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_model(Path(tmp) / "m", model_type, **safetensors)
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def copy_into_hub(source: Path, cache: Path, repo_id: str, commit: str) -> Path:
    """A model folder (e.g. the tiny VLM) stored as a hub repo at `commit`, ref main."""
    files = {str(p.relative_to(source)): p.read_bytes()
             for p in sorted(source.rglob("*")) if p.is_file()}
    return write_hub_repo(cache, repo_id, {commit: files})
