"""The config reader's interface, for modules that validate their own keys. Pure.

`gateway.config.model._Reader` provides it; feature modules (`providers`, `headers`)
take a `Reader` so that their problems are reported with everyone else's, at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class Reader(Protocol):
    def problem(self, key: str, found: object, expected: str, *, raw: bool = False) -> None: ...

    def string(
        self,
        table: Mapping[str, Any],
        key: str,
        default: str | None,
        *,
        choices: tuple[str, ...] = (),
    ) -> str | None: ...

    def strings(self, table: Mapping[str, Any], key: str) -> tuple[str, ...] | None: ...
