"""Integrity checks of model files: safetensors headers, shard indexes, configs, partial files.

Pure file reading (no Redis, no Celery): the audit's scan (tasks/models/inventory.py)
calls these in the worker pool child that runs `ocr.audit_models`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PARTIAL_SUFFIXES = (".incomplete", ".part", ".partial")


MAX_SAFETENSORS_HEADER = 100 * 2**20


# Bytes per element of the safetensors dtypes with a whole number of bytes; tensors of
# other dtypes (packed 4/6-bit types) are only checked to lie inside the file.
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
               "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
               "I64": 8, "U64": 8, "F64": 8, "C64": 8}


@dataclass(frozen=True)
class Integrity:
    """What is wrong with an entry: broken files, and partial-download files."""

    problems: tuple[str, ...] = ()
    partial: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems and not self.partial

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": list(self.problems), "partial": list(self.partial)}


def check_safetensors(path: Path) -> str | None:
    """None when the header parses and every tensor fits the file, else the problem.

    The format: 8-byte little-endian header length N, N bytes of JSON mapping tensor
    names to {dtype, shape, data_offsets: [begin, end]} (relative to the data that
    follows the header), then the data.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"{path.name}: shorter than the 8-byte header length"
            length = int.from_bytes(head, "little")
            if length == 0 or length > MAX_SAFETENSORS_HEADER or 8 + length > size:
                return f"{path.name}: header length {length} does not fit the file ({size} B)"
            raw = handle.read(length)
    except OSError as exc:
        return f"{path.name}: cannot be read ({exc.strerror or type(exc).__name__})"
    try:
        header = json.loads(raw)
    except ValueError:
        return f"{path.name}: header is not valid JSON"
    if not isinstance(header, dict):
        return f"{path.name}: header is not a JSON object"
    data_bytes = size - 8 - length
    for name, info in header.items():
        if name == "__metadata__":
            continue
        problem = _tensor_problem(info, data_bytes)
        if problem:
            return f"{path.name}: tensor {name[:80]!r} {problem}"
    return None


def _tensor_problem(info: Any, data_bytes: int) -> str | None:
    if not isinstance(info, dict):
        return "has no description"
    offsets = info.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
        return "has invalid data_offsets"
    begin, end = offsets
    if end > data_bytes:
        return f"ends at data byte {end} of {data_bytes} (truncated)"
    shape, width = info.get("shape"), DTYPE_BYTES.get(str(info.get("dtype")))
    if width is None or not isinstance(shape, list) \
            or not all(isinstance(d, int) and d >= 0 for d in shape):
        return None  # a packed dtype, or no shape to check the size against
    needed = math.prod(shape) * width
    return None if needed == end - begin else f"needs {needed} bytes but has {end - begin}"


def check_index(path: Path) -> str | None:
    """A `*.safetensors.index.json`: parses, and every shard it lists exists."""
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError):
        return f"{path.name}: does not parse"
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        return f"{path.name}: has no weight_map"
    for shard in sorted({str(v) for v in weight_map.values()}):
        if "/" in shard or shard in (".", "..") or not (path.parent / shard).is_file():
            return f"{path.name}: shard {shard[:80]!r} is missing"
    return None


def read_config(folder: Path) -> tuple[bool, str | None, str | None]:
    """(has config.json, its model_type, the problem when it does not parse)."""
    config = folder / "config.json"
    if not config.exists() and not config.is_symlink():
        return False, None, None
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return True, None, "config.json does not parse"
    if not isinstance(data, dict):
        return True, None, "config.json is not a JSON object"
    model_type = data.get("model_type")
    return True, model_type if isinstance(model_type, str) else None, None


def check_file(path: Path, rel: str) -> tuple[list[str], list[str]]:
    problems: list[str] = []
    partial: list[str] = []
    if path.name.endswith(PARTIAL_SUFFIXES):
        partial.append(rel)
    elif path.is_symlink() and not path.exists():
        problems.append(f"{rel}: dangling symbolic link")
    elif path.name.endswith(".safetensors"):
        problem = check_safetensors(path)
        if problem:
            problems.append(problem if rel == path.name else f"{rel}: {problem}")
    elif path.name.endswith(".safetensors.index.json"):
        problem = check_index(path)
        if problem:
            problems.append(problem)
    return problems, partial
