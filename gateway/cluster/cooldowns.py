"""Failover cool-downs that the instances share: one that finds an upstream down tells the rest.

`SharedCooldowns` is the outbound side's `Cooldowns` (pure, time passed in) with two additions:
a failure or a recovery seen here is handed to `publish` / `clear` (the cluster's
`SharedState.cool` / `uncool`, which write it to Redis off the reactor thread), and `learn` takes
in one the others found (from each heartbeat) without echoing it back.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.outbound.failover import Cooldowns


class SharedCooldowns(Cooldowns):
    def __init__(
        self,
        clock: Callable[[], float],
        publish: Callable[[str, float], None],
        clear: Callable[[str], None],
    ) -> None:
        super().__init__()
        self.clock = clock
        self.publish = publish
        self.clear = clear
        self._shared: set[str] = set()  # names cooling in Redis as far as this instance knows

    def failed(self, name: str, now: float, seconds: float) -> None:
        super().failed(name, now, seconds)
        self._shared.add(name)
        self.publish(name, seconds)

    def succeeded(self, name: str) -> None:
        super().succeeded(name)
        if name in self._shared:
            self._shared.discard(name)
            self.clear(name)

    def learn(self, name: str, seconds: float) -> None:
        """Another instance found `name` down: cool it here for the `seconds` left."""
        now = self.clock()
        if self.cooling(name, now + seconds - 0.001):
            return  # already cooling here at least as long
        super().failed(name, now, seconds)
        self._shared.add(name)
