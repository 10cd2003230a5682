"""The running gateway: config, audit, upstream connectors and the listening port.

`Gateway.start()` binds the listener; `Gateway.stop()` stops accepting, lets
sessions in flight finish within ``listener.shutdown_grace`` seconds, then
closes the rest with ``421 4.3.2``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, threads
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

from gateway.audit import AuditLog
from gateway import passwords
from gateway.config import Config, resolve_password
from gateway.commands import MailFrom
from gateway.credentials import Secret
from gateway.failover import Cooldowns
from gateway.pool import UpstreamPool
from gateway.ratelimit import RateLimits
from gateway.relay import RelayTransaction
from gateway.upstream import UpstreamConnector


class Gateway:
    def __init__(self, reactor: Any, config: Config, audit: AuditLog | None = None) -> None:
        self.reactor = reactor
        self.config = config
        self.audit = audit or AuditLog(config.audit.path)
        self.pools = {
            name: UpstreamPool(UpstreamConnector(reactor, upstream, resolve_password(upstream),
                                                 config.listener.hostname), reactor)
            for name, upstream in config.upstreams.items()
        }
        self.cooldowns = Cooldowns()
        self.sessions: set[Any] = set()
        self.clients: dict[str, int] = {}  # open sessions per client address
        self.rate_limits = RateLimits()
        self.port: Any = None
        self._drained: defer.Deferred[None] | None = None

    def verify_password(self, password_hash: str, password: Secret) -> defer.Deferred[bool]:
        """Check an app password off the reactor thread (the hashes are slow by design)."""
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                         passwords.verify, password_hash, password.reveal())

    def connector(self, name: str) -> UpstreamConnector:
        return self.pools[name].connector

    def relay(self, route: tuple[str, ...], mail: MailFrom) -> RelayTransaction:
        """A cut-through relay of one transaction over `route` (upstream names, failover order)."""
        return RelayTransaction([self.pools[name] for name in route], mail, self.cooldowns, self.reactor)

    async def start(self) -> int:
        from gateway.listener import ListenerFactory

        listen = self.config.listener.listen
        endpoint_type = TCP6ServerEndpoint if ":" in listen.host else TCP4ServerEndpoint
        endpoint = endpoint_type(self.reactor, listen.port, interface=listen.host)
        self.port = await endpoint.listen(ListenerFactory(self))
        bound = self.port.getHost().port
        self.audit.event("gateway.started", listen=f"{listen.host}:{bound}", config=self.config.source,
                         upstreams={n: u.url for n, u in self.config.upstreams.items()})
        return bound

    def session_closed(self) -> None:
        if self._drained is not None and not self.sessions:
            drained, self._drained = self._drained, None
            drained.callback(None)

    async def stop(self) -> None:
        if self.port is not None:
            await self.port.stopListening()
            self.port = None
        if self.sessions:
            self._drained = defer.Deferred()
            timer = self.reactor.callLater(self.config.listener.shutdown_grace, self._force_close)
            await self._drained
            if timer.active():
                timer.cancel()
        for pool in self.pools.values():
            pool.close_idle()
        self.audit.event("gateway.stopped")

    def _force_close(self) -> None:
        for session in list(self.sessions):
            session.shutdown()
