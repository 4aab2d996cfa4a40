"""A family of Redis keys, declared by the module that owns its names, with who may touch it.

Each owner of Redis key names declares its families beside them: the broker's in
tasks/broker/layout.py (and layouts 1 and 2's in tasks/broker/stored_layout.py), the
state's in tasks/state/keys.py. A family names its Redis globs, a few keys of it (the
ACL matrix checks each one), and the roles that write it and those that only read it.
tasks/redis_users.py builds every role's Redis user and docs/security.md's matrix
from these declarations alone. Pure: runs in whichever process imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

# The roles of the service's Redis users (tasks/redis_users.py), each a Procfile process
# or a kind of client. `admin` is not here: operators may touch every key.
ROLES = ("worker", "control", "api", "beat", "flower", "metrics", "keda", "client")


@dataclass(frozen=True)
class KeyFamily:
    """Keys that belong together: their globs, some of their names, and who touches them.

    `patterns`: Redis globs (`~` rules of an ACL user), every key of the family.
    `examples`: some keys of the family; each must match one of `patterns`.
    `writers`: the roles that read and write it; `readers`: those that only read it;
    `appenders`: those that write it and read nothing back (`%W~`: a sender's queued
    messages, which it pushes but may not read); `counters`: those that ask only a
    key's length or whether it exists (LLEN, EXISTS: a queue's depth, not its messages).
    """

    name: str
    patterns: tuple[str, ...]
    examples: tuple[str, ...]
    writers: tuple[str, ...] = ()
    readers: tuple[str, ...] = ()
    appenders: tuple[str, ...] = ()
    counters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        groups = (self.writers, self.readers, self.appenders, self.counters)
        unknown = sorted({r for g in groups for r in g} - set(ROLES))
        if unknown:
            raise ValueError(f"{self.name}: no such role {unknown} (ROLES)")
        named = [r for g in groups for r in g]
        both = sorted({r for r in named if named.count(r) > 1})
        if both:
            raise ValueError(f"{self.name}: {both} given more than one access")
        if not self.patterns or not self.examples:
            raise ValueError(f"{self.name}: a family needs patterns and examples")

    def access(self, role: str) -> str:
        """`rw`, `r`, `w`, `len` or `-`: what `role` may do with the family's keys."""
        for cell, roles in (("rw", self.writers), ("r", self.readers),
                            ("w", self.appenders), ("len", self.counters)):
            if role in roles:
                return cell
        return "-"
