"""Cut-through relay of one mail transaction over a rule's route of upstreams.

The app's MAIL is held until its first recipient passes policy; then the shared
`gateway.outbound.transaction.Transaction` takes a session from the first usable upstream of
the route and sends MAIL, failing over as it describes. Each RCPT is then forwarded as it
comes, so the upstream's verdict on a recipient reaches the app at that RCPT. The body is
streamed through, dot-stuffed, and the reply after DATA is the upstream's. Nothing is answered
2xx that the upstream did not accept; every upstream reply reaches the app through `reflect`.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from gateway.config.model import UpstreamConfig
from gateway.outbound.classify import reflect
from gateway.outbound.connector import UpstreamSession
from gateway.outbound.failover import Cooldowns
from gateway.outbound.failure import UpstreamFailure
from gateway.outbound.pacing import Budgets
from gateway.outbound.pool import UpstreamPool
from gateway.outbound.transaction import Transaction
from gateway.smtp import replies
from gateway.smtp.address import Address
from gateway.smtp.commands import MailFrom
from gateway.smtp.replies import Reply


class RelayTransaction:
    """Cut-through delivery of one transaction (implements `gateway.inbound.delivery.Delivery`)."""

    mode = "relay"

    def __init__(
        self,
        pools: list[UpstreamPool],
        mail: MailFrom,
        cooldowns: Cooldowns,
        clock: Any,
        budgets: Budgets | None = None,
    ) -> None:
        self.pools = pools
        self.route = tuple(p.config.name for p in pools)
        self.mail = mail
        self.cooldowns = cooldowns
        self.clock = clock
        self.handed_over = False  # the final dot went upstream
        by_name = {p.config.name: p for p in pools}
        self.transaction = Transaction(
            self.route,
            by_name.get,
            cooldowns,
            clock,
            mail.sender.text,
            size=mail.size,
            body=mail.body,
            budgets=budgets,
        )

    # --- what tests and the audit read ------------------------------------------------------

    @property
    def upstream(self) -> UpstreamConfig:
        """The upstream in use (or, before one was chosen, the first of the route)."""
        return (self.transaction.pool or self.pools[0]).config

    @property
    def pool(self) -> UpstreamPool | None:
        return self.transaction.pool

    @property
    def session(self) -> UpstreamSession | None:
        return self.transaction.session

    @property
    def failure(self) -> UpstreamFailure | None:
        return self.transaction.failure

    @property
    def upstream_reply(self) -> Reply | None:
        return self.transaction.upstream_reply

    @property
    def tried(self) -> list[dict[str, str]]:
        return self.transaction.tried

    @property
    def aborted(self) -> bool:
        return self.transaction.aborted

    # --- the Delivery interface -------------------------------------------------------------

    def rcpt(
        self, recipient: Address, route: tuple[str, ...] = (), rule: str | None = None
    ) -> defer.Deferred[Reply]:
        """Forward one RCPT (the session keeps a relay transaction to one route)."""
        return defer.Deferred.fromCoroutine(self._rcpt(recipient))

    async def _rcpt(self, recipient: Address) -> Reply:
        return reflect(await self.transaction.rcpt(recipient.text))

    def data(self) -> defer.Deferred[Reply]:
        return defer.Deferred.fromCoroutine(self._data())

    async def _data(self) -> Reply:
        reply = await self.transaction.data()
        return replies.START_DATA if reply.code == 354 else reflect(reply)

    def write(self, content: bytes) -> None:
        self.transaction.write(content)

    def finish(self, facts: object = None, origin: object = None) -> defer.Deferred[Reply]:
        """The final dot; the upstream's reply (the message facts and origin are the queue's)."""
        self.handed_over = True
        return defer.Deferred.fromCoroutine(self._finish())

    async def _finish(self) -> Reply:
        return reflect(await self.transaction.end())

    def throttle(self, producer: Any) -> None:
        """Let the upstream's send buffer pause `producer` (the app's side) while the body streams."""
        self.transaction.throttle(producer)

    def unthrottle(self) -> None:
        """Undo `throttle` before any close (or the upstream would stop the app's connection),
        and resume the app's side in case the upstream left it paused."""
        self.transaction.unthrottle()

    def abort(self, reason: str) -> None:
        """Drop the upstream mid-transaction: without the final dot nothing is delivered."""
        self.transaction.abort(reason)

    def settled(self) -> None:
        """Nothing follows a relayed message."""

    def audit_fields(self) -> dict[str, Any]:
        """The upstream, its TLS session and its own words, for ``message.result``."""
        return self.transaction.audit_fields()
