"""Throttling failed app AUTH: growing delays, then ``454 4.7.0`` for a while. Pure (time passed in).

Failures are counted per client address and per (client address, app name), over a sliding
`window`. Before an AUTH is answered — correct or not, so the wait tells nothing — it waits
`delay()` seconds, which doubles with each failure past the free ones up to `max_delay`;
once a count reaches its `refuse_*` threshold, AUTH from that client (or for that name from
that client) is answered ``454 4.7.0`` without a hash check until failures age out of the
window.

Never per app name alone: anyone could then lock an app out by guessing its name from
anywhere. Keyed by client, a correct password from a client that did not fail keeps working,
however many other clients fail. A success clears the (client, app) count only, so one known
password does not buy more guesses at other names from the same address.

An IPv6 client is counted by its /64 (`throttle_key`): a host holds a whole /64, so counting
each address alone would give it unlimited guesses.

A check still running counts as a failure until it ends (`begin` / `end`): guesses sent in
parallel over many connections are throttled like guesses sent one after another.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass


def throttle_key(client: str) -> str:
    """The address AUTH failures are counted under: an IPv6 address's /64, else the address."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass(frozen=True)
class ThrottleSettings:
    free: int = 2  # failures answered without a delay
    base_delay: float = 1.0  # the delay after the first failure past the free ones (seconds)
    max_delay: float = 16.0
    refuse_client: int = 20  # failures from one address in `window`: 454 for that address
    refuse_pair: int = 8  # failures for one name from one address in `window`: 454 for the pair
    window: float = 900.0
    max_tracked: int = 20000  # addresses and pairs remembered (the oldest are forgotten first)


Key = tuple[str, ...]


class AuthThrottle:
    def __init__(self, settings: ThrottleSettings | None = None) -> None:
        self.settings = settings or ThrottleSettings()
        self._failures: OrderedDict[Key, deque[float]] = OrderedDict()
        self._pending: dict[Key, int] = {}  # checks under way, by address and by pair

    def _count(self, key: Key, now: float) -> int:
        times = self._failures.get(key)
        if times is None:
            return 0
        while times and times[0] <= now - self.settings.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0
        return len(times)

    def counts(self, client: str, app: str, now: float) -> tuple[int, int]:
        """Failures in the window from `client`, and for `app` from `client` (checks under way
        included)."""
        client = throttle_key(client)
        by_client, by_pair = ("client", client), ("pair", client, app)
        return (
            self._count(by_client, now) + self._pending.get(by_client, 0),
            self._count(by_pair, now) + self._pending.get(by_pair, 0),
        )

    def begin(self, client: str, app: str) -> None:
        """A password check for `app` from `client` starts: it counts until `end`."""
        client = throttle_key(client)
        for key in (("client", client), ("pair", client, app)):
            self._pending[key] = self._pending.get(key, 0) + 1

    def end(self, client: str, app: str) -> None:
        """The check `begin` announced is over (then `failed` or `succeeded` records it)."""
        client = throttle_key(client)
        for key in (("client", client), ("pair", client, app)):
            left = self._pending.get(key, 0) - 1
            if left > 0:
                self._pending[key] = left
            else:
                self._pending.pop(key, None)

    def refused(self, client: str, app: str, now: float) -> bool:
        """Whether AUTH as `app` from `client` is answered 454 without checking the password."""
        by_client, by_pair = self.counts(client, app, now)
        s = self.settings
        return by_client >= s.refuse_client or by_pair >= s.refuse_pair

    def delay(self, client: str, app: str, now: float) -> float:
        """Seconds to wait before answering AUTH as `app` from `client` (0 when no failures)."""
        s = self.settings
        by_client, by_pair = self.counts(client, app, now)
        excess = max(by_pair, by_client // 2) - s.free
        if excess < 0:
            return 0.0
        return min(s.max_delay, s.base_delay * 2.0 ** min(excess, 32))

    def failed(self, client: str, app: str, now: float) -> None:
        client = throttle_key(client)
        for key in (("client", client), ("pair", client, app)):
            limit = max(self.settings.refuse_client, self.settings.refuse_pair)
            times = self._failures.setdefault(key, deque(maxlen=limit))
            times.append(now)
            self._failures.move_to_end(key)
        while len(self._failures) > self.settings.max_tracked:
            self._failures.popitem(last=False)

    def succeeded(self, client: str, app: str) -> None:
        self._failures.pop(("pair", throttle_key(client), app), None)
