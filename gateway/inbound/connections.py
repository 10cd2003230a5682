"""Connection accounting for the listener: the app connections open now, in all and per client.

The listener asks whether a new connection would go over ``listener.max_connections`` or
``listener.max_connections_per_client`` (`full`, `client_full`), admits the connection
(`admit`), names its client once known (`identify`: at connect, or when a PROXY header
arrives) and releases it when it closes (`release`). On shutdown `drain` waits for the
open connections to close and, after the grace period, shuts down the rest.

Pure: no reactor imports (the timer for the grace period is passed in).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer

from gateway.config.model import ListenerConfig


class Connection(Protocol):
    """An open app connection, as the accounting sees it."""

    def shutdown(self) -> None:
        """The gateway is stopping and the grace period is over: close with ``421``."""


class Connections:
    def __init__(self) -> None:
        self._open: dict[Connection, str | None] = {}  # each connection's counted client, if any
        self._per_client: dict[str, int] = {}
        self._drained: defer.Deferred[None] | None = None

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, connection: object) -> bool:
        return connection in self._open

    def from_client(self, client: str) -> int:
        """How many open connections are counted for the client address `client`."""
        return self._per_client.get(client, 0)

    def full(self, limits: ListenerConfig) -> bool:
        """Whether one more connection would go over ``listener.max_connections``."""
        return len(self._open) >= limits.max_connections

    def client_full(self, limits: ListenerConfig, client: str) -> bool:
        """Whether one more connection from `client` would go over the per-client limit."""
        return self.from_client(client) >= limits.max_connections_per_client

    def admit(self, connection: Connection, client: str | None = None) -> None:
        """Count `connection` as open; and for `client` (None: not known yet, see `identify`)."""
        self._open[connection] = None
        if client is not None:
            self.identify(connection, client)

    def identify(self, connection: Connection, client: str) -> None:
        """`connection` is from `client` (behind a balancer: once the PROXY header named it)."""
        if connection not in self._open or self._open[connection] is not None:
            return
        self._open[connection] = client
        self._per_client[client] = self._per_client.get(client, 0) + 1

    def release(self, connection: Connection) -> None:
        """`connection` closed: it no longer counts; the last one ends a drain."""
        if connection not in self._open:
            return
        client = self._open.pop(connection)
        if client is not None:
            remaining = self._per_client.get(client, 1) - 1
            if remaining > 0:
                self._per_client[client] = remaining
            else:
                self._per_client.pop(client, None)
        if self._drained is not None and not self._open:
            drained, self._drained = self._drained, None
            drained.callback(None)

    def drain(
        self, grace: float, call_later: Callable[[float, Callable[[], None]], Any]
    ) -> defer.Deferred[None]:
        """Fires when no connection is open; after `grace` seconds the rest are shut down."""
        if not self._open:
            return defer.succeed(None)
        self._drained = defer.Deferred()
        timer = call_later(grace, self._shut_down_all)

        def stop_timer(result: None) -> None:
            if timer.active():
                timer.cancel()
            return result

        return self._drained.addBoth(stop_timer)

    def _shut_down_all(self) -> None:
        for connection in list(self._open):
            connection.shutdown()
