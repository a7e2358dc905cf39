"""Typed settings from plain dicts (JSON, YAML, ``--set key=value``), with errors that say what is valid.

Every settings object in hinas is a frozen dataclass whose field annotations are
the single description of its keys, types and defaults; this module turns plain
data into such objects and back.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from hinas.errors import ConfigError

T = TypeVar("T")


def _type_name(hint: Any) -> str:
    if get_origin(hint) is Literal:
        return " | ".join(repr(a) for a in get_args(hint))
    if get_origin(hint) is tuple:
        return f"list of {_type_name(get_args(hint)[0])}"
    if get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(hint))
    return getattr(hint, "__name__", str(hint))


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a field annotation; return it in the field's own type."""
    origin = get_origin(hint)
    if origin is Literal:
        if value is False and "off" in get_args(hint):  # YAML 1.1 reads a bare `off` as false
            return "off"
        if value not in get_args(hint):
            raise ConfigError(f"{where}: {value!r} is not valid; choose one of {_type_name(hint)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in get_args(hint):
            return None
        for arm in get_args(hint):
            if arm is type(None):
                continue
            try:
                return coerce(value, arm, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} is not {_type_name(hint)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")
        item = get_args(hint)[0]
        return tuple(coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    raise TypeError(f"unsupported field type {hint!r} at {where}")


def from_dict(cls: type[T], data: Any, where: str | None = None) -> T:
    """Build dataclass ``cls`` from ``data``, refusing unknown keys and wrong types."""
    where = where or cls.__name__
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names), key=str)
    if unknown:
        close = [m for u in unknown for m in difflib.get_close_matches(str(u), names, n=1)]
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}{hint}; "
                          f"valid keys: {', '.join(sorted(names))}")
    kwargs = {k: coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain, JSON-ready data (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(obj))
