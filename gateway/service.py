"""The running gateway: config, audit, upstream connectors and the listening port.

`Gateway.start()` binds the listener; `Gateway.stop()` stops accepting, lets
sessions in flight finish within ``listener.shutdown_grace`` seconds, then
closes the rest with ``421 4.3.2``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

from gateway.audit import AuditLog
from gateway.config import Config, resolve_password
from gateway.delivery import DeliveryRunner
from gateway.errors import MailgateError
from gateway.spool import Spool
from gateway.upstream import UpstreamConnector


class Gateway:
    def __init__(self, reactor: Any, config: Config, audit: AuditLog | None = None) -> None:
        self.reactor = reactor
        self.config = config
        self.audit = audit or AuditLog(config.audit.path)
        self._connectors = {
            name: UpstreamConnector(reactor, upstream, resolve_password(upstream), config.listener.hostname)
            for name, upstream in config.upstreams.items()
        }
        self.sessions: set[Any] = set()
        self.port: Any = None
        self._drained: defer.Deferred[None] | None = None
        # Store-and-forward: a spool and its runner when a rule queues, or the spool holds mail.
        spool = Spool(config.queue.path)
        queueing = any(rule.delivery == "queue" for rule in config.rules)
        self.spool: Spool | None = spool if queueing or spool.exists() else None
        self.runner: DeliveryRunner | None = None
        if self.spool is not None:
            self.runner = DeliveryRunner(reactor, self.spool, config, self._connectors, self.audit)

    def connector(self, name: str) -> UpstreamConnector:
        return self._connectors[name]

    async def start(self) -> int:
        from gateway.listener import ListenerFactory

        if self.runner is not None:
            try:
                self.runner.start()
            except OSError as exc:
                raise MailgateError(f"queue.path: cannot use {self.config.queue.path}: {exc.strerror}") from None
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
        if self.runner is not None:
            await self.runner.stop(self.config.listener.shutdown_grace)
        self.audit.event("gateway.stopped")

    def _force_close(self) -> None:
        for session in list(self.sessions):
            session.shutdown()
