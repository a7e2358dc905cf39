"""Typed settings from plain dicts (JSON, YAML, ``--set key=value``), with errors that say what is valid.

Every settings object in hinas is a frozen dataclass whose field annotations are
the single description of its keys, types and defaults; this module turns plain
data into such objects and back.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from hinas.errors import ConfigError

T = TypeVar("T")

MAX_YAML_VALUES = 100_000
"""Values a settings document may hold once its aliases are expanded; real ones hold a few hundred."""


def load_yaml(text: str, source: str) -> Any:
    """YAML as ``yaml.safe_load`` reads it, refusing aliases that expand past ``MAX_YAML_VALUES`` or refer to themselves.

    Anchors and aliases let a few hundred bytes stand for billions of values ("billion
    laughs"); the document is sized on its node graph before anything is built from it.
    Errors quote the first line of the parser's message only.
    """
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _expanded(node, {}, set(), source)
        return None if node is None else loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} is not valid YAML ({str(err).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"{source} is YAML nested too deeply to be settings") from None
    finally:
        loader.dispose()


def _expanded(node: Any, sizes: dict[int, int], open_nodes: set[int], source: str) -> int:
    """Values under ``node`` with every alias expanded, each shared node sized once."""
    import yaml

    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise ConfigError(f"{source} holds an alias to a node that contains it; settings cannot be recursive")
    open_nodes.add(key)
    children = ([part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode)
                else node.value if isinstance(node, yaml.SequenceNode) else [])
    total = 1 + sum(_expanded(child, sizes, open_nodes, source) for child in children)
    if total > MAX_YAML_VALUES:
        raise ConfigError(f"{source} expands, through its anchors and aliases, to more than {MAX_YAML_VALUES} values; refused")
    open_nodes.discard(key)
    sizes[key] = total
    return total


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
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(names)}")
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
