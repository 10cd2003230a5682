"""Refresh tokens that go unused expire (Microsoft: 90 days of inactivity; Google: 6 months):
a gateway whose upstream sends rarely would find its refresh token dead at the next message.

`RefreshKeeper` asks every ``oauth_grant = "refresh_token"`` upstream for a token once every
`INTERVAL` (a day), which spends the refresh token and keeps it alive (a rotated one is kept in
the state directory by `gateway.outbound.grants`). A failure is the token cache's usual
``oauth.token_failed`` and metric; nothing else happens here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import task

INTERVAL = 86400.0  # seconds between keep-alive refreshes


class RefreshKeeper:
    def __init__(self, reactor: Any, connectors: Callable[[], Iterable[Any]]) -> None:
        self.connectors = connectors  # the current config's upstream connectors
        self._loop = task.LoopingCall(self.refresh)
        self._loop.clock = reactor

    def start(self) -> None:
        self._loop.start(INTERVAL, now=False).addErrback(lambda _: None)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def refresh(self) -> None:
        for connector in self.connectors():
            tokens = getattr(connector, "tokens", None)
            username = connector.config.username
            if tokens is None or tokens.grant != "refresh_token" or not username:
                continue
            if username == "$sender":
                continue  # a refresh token is one mailbox's: "$sender" has none to keep
            tokens.token(username).addErrback(lambda _: None)  # failures are audited there
