"""The records' JSON codec, generated from their dataclass fields.

A record that inherits `JsonRecord` gets `to_json()` and `from_json()`: each field is one
key of its JSON object, in field order; the few special cases are declared on their
fields (`field(metadata=json_spec(...))`). Pure; runs wherever records are written or read.

Writing: a record gives its own JSON, a tuple or list a list, a dict a dict, an enum its
value; a field whose default is None is left out while it is None (a field left unset
is left out: the public result's contract, docs/tasks.md), unless its `omit` decides.

Reading: a key left out reads as the field's default (or its declared `absent`; with
neither it is required); a required number, string or flag is converted to its type,
a value the field may leave unset (`X | None`) is taken as JSON gives it, and an empty
object or list given for an optional record or pair reads as None.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self

_UNSET: Any = dataclasses.MISSING


class _NoAbsent:
    """`absent` left undeclared: a left-out key reads as the field's default."""


_NO_ABSENT: Any = _NoAbsent()
_SCALARS = (int, float, str, bool)


@dataclass(frozen=True)
class JsonSpec:
    """A field's special case: each part left None follows the rules above."""

    omit: Callable[[Any, Any], bool] | None = None  # (record, value) -> leave the key out
    encode: Callable[[Any], Any] | None = None      # value -> JSON
    decode: Callable[[Any], Any] | None = None      # JSON -> value
    absent: Any = _NO_ABSENT                        # what a left-out key reads as
    then: Callable[[Any], dict[str, Any]] | None = None  # record -> keys written after it
    inline: bool = False  # `encode` gives keys of the record's own object, `decode`
                          # reads the whole object


_PLAIN = JsonSpec()


def json_spec(**parts: Any) -> dict[str, JsonSpec]:
    """A field's metadata declaring its JSON special case: `field(metadata=json_spec(...))`."""
    return {"json": JsonSpec(**parts)}


class JsonRecord:
    """Base of a record (a dataclass) whose JSON codec is generated from its fields."""

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return decode(cls, data)


_Plan = tuple[tuple[dataclasses.Field[Any], Any, JsonSpec], ...]
_PLANS: dict[type, _Plan] = {}


def _plan(cls: type) -> _Plan:
    """Each field of a record class with its resolved type and its special case."""
    plan = _PLANS.get(cls)
    if plan is None:
        hints = typing.get_type_hints(cls)
        plan = _PLANS[cls] = tuple((f, hints[f.name], f.metadata.get("json", _PLAIN))
                                   for f in dataclasses.fields(cls))
    return plan


def encode(record: Any) -> dict[str, Any]:
    """A record's JSON object."""
    out: dict[str, Any] = {}
    for f, _, spec in _plan(type(record)):
        value = getattr(record, f.name)
        omit = spec.omit(record, value) if spec.omit is not None else \
            f.default is None and value is None
        if not omit:
            encoded = spec.encode(value) if spec.encode is not None else _encode(value)
            if spec.inline:
                out.update(encoded)
            else:
                out[f.name] = encoded
        if spec.then is not None:
            out.update(spec.then(record))
    return out


# Values that are their own JSON (most of a record's fields): told by their exact type.
_PLAIN_TYPES = frozenset((str, int, float, bool, type(None)))


def _encode(value: Any) -> Any:
    if type(value) in _PLAIN_TYPES:
        return value
    if isinstance(value, JsonRecord):
        return value.to_json()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def decode(cls: type, data: Mapping[str, Any]) -> Any:
    """The record of class `cls` a JSON object describes."""
    values: dict[str, Any] = {}
    for f, hint, spec in _plan(cls):
        if spec.inline:
            values[f.name] = spec.decode(data) if spec.decode is not None else None
        elif f.name in data:
            raw = data[f.name]
            values[f.name] = spec.decode(raw) if spec.decode is not None else \
                _decode(hint, raw)
        elif spec.absent is not _NO_ABSENT:
            values[f.name] = spec.absent
        elif f.default is _UNSET and f.default_factory is _UNSET:
            raise KeyError(f.name)
    return cls(**values)


def _decode(hint: Any, raw: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # `X | None`
        inner = next(a for a in args if a is not type(None))
        if raw is None:
            return None
        if _is_record(inner) or _is_pair(inner):
            return _decode(inner, raw) if raw else None
        if inner in _SCALARS or inner is Any or typing.get_origin(inner) is dict:
            return raw
        return _decode(inner, raw)
    if _is_record(hint):
        return hint.from_json(raw)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(raw)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v) for v in raw)
        items = list(raw)
        if len(items) != len(args):
            raise ValueError(f"expected {len(args)} values, got {len(items)}")
        return tuple(_decode(a, v) for a, v in zip(args, items, strict=True))
    if origin is list:
        return [_decode(args[0], v) for v in raw]
    if origin is dict:
        return {k: _decode(args[1], v) for k, v in raw.items()}
    if hint in _SCALARS:
        return hint(raw)
    return raw


def _is_record(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, JsonRecord)


def _is_pair(hint: Any) -> bool:
    """A tuple of fixed size (a box, an image size), not one of any length."""
    args = typing.get_args(hint)
    return typing.get_origin(hint) is tuple and not (len(args) == 2 and args[1] is Ellipsis)
