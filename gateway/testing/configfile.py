"""Write a config document (the dict `gateway.config.toml.parse` takes) as a TOML file, for tests
that run `mailgate` as a process. Enough TOML for mailgate: tables, [[rules]], strings,
numbers, booleans, lists and inline tables."""

from __future__ import annotations

import json
from typing import Any


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value)


def to_toml(document: dict[str, Any]) -> str:
    lines: list[str] = []
    for section, body in document.items():
        if isinstance(body, list):  # [[rules]]
            for item in body:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in item.items()]
        elif section in ("upstreams", "apps"):
            for name, table in body.items():
                lines.append(f"[{section}.{name}]")
                lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        else:
            lines.append(f"[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def write_toml(document: dict[str, Any], path: str) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(to_toml(document))
    return path
