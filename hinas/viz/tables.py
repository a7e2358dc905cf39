"""Short tables for notebooks: what a reader needs from a settings object, instead of its wrapped repr."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any


def changed_settings(cfg: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(key, value, default)`` for every setting of a settings dataclass that differs from its class default."""
    default = type(cfg)()
    rows = []
    for f in fields(cfg):
        value, base = getattr(cfg, f.name), getattr(default, f.name)
        if is_dataclass(value):
            rows += changed_settings(value, f"{prefix}{f.name}.")
        elif value != base:
            rows.append((f"{prefix}{f.name}", value, base))
    return rows


def settings_markdown(cfg: Any) -> str:
    """A Markdown table of the settings that differ from the defaults; ``hinas config show`` prints them all."""
    def cell(v: Any) -> str:
        return ", ".join(map(str, v)) if isinstance(v, tuple) else str(v) if v != "" else "(empty)"

    rows = [f"| `{key}` | {cell(value)} | {cell(base)} |" for key, value, base in changed_settings(cfg)]
    return "\n".join([f"**{type(cfg).__name__}**: the settings that differ from the defaults", "",
                      "| setting | value | default |", "|---|---|---|", *rows])
