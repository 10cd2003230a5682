"""The config reader's interface, for the modules that validate their own tables. Pure.

`gateway.config.toml._Reader` provides it. The section modules (`upstreams`,
`rules`) and the feature modules (`providers`, `headers`) take a `Reader`, so
that their problems are reported with everyone else's, at once, and so that
none of them imports the reader that imports them.

Each getter takes the table, the key's full dotted name (its last part is looked
up in the table) and a default; a wrong value is recorded as a problem and the
default returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the model imports modules that import this one
    from gateway.config.model import Network


class Reader(Protocol):
    def problem(self, key: str, found: object, expected: str, *, raw: bool = False) -> None: ...

    def unknown_keys(self, table: Mapping[str, Any], key: str, known: set[str]) -> None: ...

    def table(self, document: Mapping[str, Any], key: str, known: set[str]) -> dict[str, Any]: ...

    def integer(
        self, table: Mapping[str, Any], key: str, default: int, low: int, high: int
    ) -> int: ...

    def number(
        self, table: Mapping[str, Any], key: str, default: float, low: float, high: float
    ) -> float: ...

    def boolean(self, table: Mapping[str, Any], key: str, default: bool) -> bool: ...

    def string(
        self,
        table: Mapping[str, Any],
        key: str,
        default: str | None,
        *,
        choices: tuple[str, ...] = (),
    ) -> str | None: ...

    def strings(self, table: Mapping[str, Any], key: str) -> tuple[str, ...] | None: ...

    def networks(self, table: Mapping[str, Any], key: str) -> tuple[Network, ...] | None: ...
