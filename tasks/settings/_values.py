"""Parsing of environment strings into typed setting values; the machine's time zone.

Pure; runs wherever `Settings.from_env()` runs (every process).
"""

from __future__ import annotations

import os
import zoneinfo
from pathlib import Path
from typing import Any

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse(kind: str, raw: str) -> Any:
    """The value of an environment string for a field annotated `kind`."""
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind == "bool":
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ValueError("expected 1/0, true/false, yes/no or on/off")
    if kind == "int | None":
        return int(raw) if raw else None
    if kind == "tuple[float, ...]":
        return tuple(float(p) for p in raw.split(",") if p.strip())
    if kind == "Path":
        return Path(raw)
    if kind == "tuple[Path, ...]":
        return tuple(Path(p).resolve() for p in raw.split(os.pathsep) if p)
    if kind == "tuple[str, ...]":
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    if kind == "Mapping[str, str]":
        pairs = [p.strip() for p in raw.split(",") if p.strip()]
        out: dict[str, str] = {}
        for pair in pairs:
            key, sep, target = pair.partition("=")
            if not sep or ":" not in target:
                raise ValueError(f"{pair!r} is not name=module:Class")
            out[key.strip()] = target.strip()
        return out
    return raw


def local_timezone() -> str:
    """The IANA name of this machine's time zone, or UTC when it cannot be told."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        candidates.append(os.readlink("/etc/localtime").partition("zoneinfo/")[2])
    except OSError:
        pass  # no /etc/localtime link (containers, Windows): fall through to UTC
    for name in candidates:
        if name:
            try:
                zoneinfo.ZoneInfo(name)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                continue
            return name
    return "UTC"
