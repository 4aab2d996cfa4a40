"""One setting's declaration: its environment variable, default and meaning.

Pure; runs in every process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, default and meaning."""

    env: str
    default: str
    doc: str


def setting(env: str, default: str, doc: str, secret: bool = False) -> Any:
    """A setting's field; a `secret` one is left out of the settings' repr (logs)."""
    return field(metadata={"setting": Setting(env, default, doc)}, repr=not secret)
