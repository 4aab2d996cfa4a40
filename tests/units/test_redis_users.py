"""The Redis users and their matrix, built from the key families' declarations alone.

Each family's declared access (tasks/broker/layout.py, tasks/broker/stored_layout.py,
tasks/state/keys.py) is what the users' own key patterns allow on each of its keys,
for every role; docs/security.md shows the matrix as generated; no module but the
owners of key names spells an `ocr:` key. The server's own answers, with `ACL DRYRUN`:
tests/deploy/test_redis_acl_matrix.py.
"""

from __future__ import annotations

import ast
import fnmatch
from dataclasses import replace

import pytest

from tasks.records.key_families import ROLES, KeyFamily
from tasks.redis_users import (
    COUNT,
    END,
    FAMILIES,
    NONE,
    READ_WRITE,
    START,
    USERS,
    declared_access,
    key_access,
    markdown,
    user,
)
from tests.harness import ROOT

# The modules that own Redis key names: the only ones whose code spells one.
OWNERS = {"tasks/broker/layout.py", "tasks/broker/stored_layout.py", "tasks/state/keys.py"}


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_each_family_is_declared_as_the_users_patterns_allow(family: KeyFamily) -> None:
    wrong = [f"{u.name} on {key!r}: the patterns allow {key_access(u, key)}, "
             f"the declaration says {declared_access(u, family)}"
             for u in USERS for key in family.examples
             if key_access(u, key) != declared_access(u, family)]
    assert not wrong, "\n".join(wrong)


def test_every_example_is_a_key_of_its_family() -> None:
    for family in FAMILIES:
        for key in family.examples:
            assert any(fnmatch.fnmatchcase(key, p.replace("[^", "[!"))
                       for p in family.patterns), (family.name, key)


def test_family_names_are_unique_and_every_role_has_a_user() -> None:
    assert len({f.name for f in FAMILIES}) == len(FAMILIES)
    assert {u.name for u in USERS} == {*ROLES, "admin"}


def test_a_role_added_to_a_family_changes_its_user_and_its_cell() -> None:
    family = next(f for f in FAMILIES if f.name == "unacknowledged messages")
    assert declared_access(user("flower"), family) == NONE
    widened = replace(family, writers=(*family.writers, "flower"))
    assert widened.access("flower") == READ_WRITE
    assert family.access("metrics") == COUNT  # held messages counted, never read


def test_a_family_with_an_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="no such role"):
        KeyFamily("x", ("ocr:x:*",), ("ocr:x:1",), writers=("wroker",))


def test_the_security_page_shows_the_matrix() -> None:
    text = (ROOT / "docs" / "security.md").read_text()
    shown = text[text.index(START):text.index(END) + len(END)]
    assert shown == markdown(), \
        "docs/security.md's matrix is stale: paste `python -m tasks.redis_users`"


def _prefixed(node: ast.AST) -> bool:
    """Whether `node` names a key prefix or a key (`X_PREFIX`, `keys.ROOT`, `X_KEY`)."""
    name = node.id if isinstance(node, ast.Name) else \
        node.attr if isinstance(node, ast.Attribute) else ""
    return name.endswith(("PREFIX", "ROOT", "_KEY"))


def _key_strings(path: str) -> list[str]:
    """The keys a module's code spells, docstrings left out.

    `ocr:` strings, and a literal part added to a key prefix (`PREFIX + "x"`,
    `f"{PREFIX}x:{...}"`).
    """
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                          | ast.AsyncFunctionDef)
            and node.body and isinstance(node.body[0], ast.Expr)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docs and node.value.startswith("ocr:") \
                and not node.value.startswith("ocr: "):
            found.append(node.value)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) \
                and _prefixed(node.left) and isinstance(node.right, ast.Constant) \
                and node.right.value != "*":
            found.append(f"+{node.right.value}")
        elif isinstance(node, ast.JoinedStr) and len(node.values) > 1 \
                and isinstance(node.values[0], ast.FormattedValue) \
                and _prefixed(node.values[0].value) \
                and isinstance(node.values[1], ast.Constant):
            found.append(f"f{node.values[1].value}")
    return found


def test_only_the_owners_spell_a_key() -> None:
    spelled = {str(p.relative_to(ROOT)): found
               for p in (*(ROOT / "tasks").rglob("*.py"), *(ROOT / "scripts").rglob("*.py"))
               if (found := _key_strings(str(p.relative_to(ROOT))))}
    # not keys: a job's escalation id is a UUID's name; Flower's `ocr:<password>` login;
    # the console's paths under its URL prefix; kombu's `keyprefix_queue` template
    # (`_kombu.binding.%s`), made of layout.py's name
    for other in ("tasks/records/jobs.py", "scripts/run_flower.py", "tasks/console/_web.py",
                  "tasks/console/__init__.py", "tasks/console/_views.py",
                  "tasks/broker/channel.py"):
        spelled.pop(other, None)
    assert set(spelled) <= OWNERS, {k: v for k, v in spelled.items() if k not in OWNERS}
