"""Typed records kept as JSON in one column (a pod's and a container's `info`).

`load` reads what any crispy wrote, older or newer: a missing key takes the field's
default, a value of the wrong type is dropped for the default (and logged), and a key
this crispy does not know is kept in the record's `extra` and written back unchanged, so
a rollback and a roll-forward lose nothing. `dump` is the inverse.

Supported field types: str, int, float, bool, `X | None`, list[...] and dict[str, ...] of
those, and nested record dataclasses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import types
import typing
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
EXTRA = "extra"  # the field that keeps unknown keys


class _Invalid(Exception):
    pass


def load(cls: type[T], doc: Any) -> T:
    """The record of type `cls` that `doc` (a decoded JSON object) describes."""
    if not isinstance(doc, dict):
        doc = {}
    hints, names = _fields(cls)  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for name in names - {EXTRA}:
        if name not in doc:
            continue
        try:
            values[name] = _convert(hints[name], doc[name])
        except _Invalid:
            log.warning("%s.%s: ignoring the recorded %r", cls.__name__, name, doc[name])
    if EXTRA in names:
        values[EXTRA] = {k: v for k, v in doc.items() if k not in names}
    return cls(**values)


@functools.cache
def _fields(cls: type) -> tuple[dict[str, Any], frozenset[str]]:
    """A record class's field types and names (resolving the hints costs; rows are many)."""
    names = frozenset(f.name for f in dataclasses.fields(cls))
    return typing.get_type_hints(cls), names


def dump(record: Any) -> dict[str, Any]:
    """The JSON object of a record (its unknown keys from `extra` included)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        if f.name != EXTRA:
            out[f.name] = _plain(getattr(record, f.name))
    out.update(getattr(record, EXTRA, None) or {})
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dump(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _convert(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                with contextlib.suppress(_Invalid):
                    return _convert(arg, value)
        raise _Invalid
    if origin is list:
        if not isinstance(value, list):
            raise _Invalid
        (item,) = typing.get_args(hint)
        return [_convert(item, v) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise _Invalid
        _, item = typing.get_args(hint)
        return {str(k): _convert(item, v) for k, v in value.items()}
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise _Invalid
        return load(hint, value)  # type: ignore[arg-type]
    if hint is bool:
        if not isinstance(value, bool):
            raise _Invalid
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _Invalid
        return value
    raise TypeError(f"jsonrecord: unsupported field type {hint!r}")
