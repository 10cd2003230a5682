"""Failover order and cool-down for a rule's upstream list. Pure: time is passed in.

An upstream whose session could not be opened (connection, TLS, greeting -- a
``421`` greeting, a connection-rate limit, too --, EHLO, AUTH, 4xx) is put in
cool-down for its ``failover_cooldown`` seconds: while cooling it is tried only
after every upstream that is not, so that a dead primary does not cost every
message its connect timeout.
"""

from __future__ import annotations

from collections.abc import Sequence


class Cooldowns:
    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def failed(self, name: str, now: float, seconds: float) -> None:
        self._until[name] = now + seconds

    def succeeded(self, name: str) -> None:
        self._until.pop(name, None)

    def cooling(self, name: str, now: float) -> bool:
        return self._until.get(name, 0.0) > now

    def order(self, names: Sequence[str], now: float) -> list[str]:
        """`names` in configured order, those in cool-down moved to the end (soonest back first)."""
        ready = [n for n in names if not self.cooling(n, now)]
        cooling = sorted((n for n in names if self.cooling(n, now)), key=lambda n: self._until[n])
        return ready + cooling
