"""Cut-through relay of one mail transaction to one upstream.

The app's MAIL is held until its first recipient passes policy; then the
upstream session is opened (TLS, verification, AUTH) and MAIL is sent, and
each RCPT is forwarded as it comes, so the upstream's verdict on a recipient
reaches the app at that RCPT. The body is streamed through, dot-stuffed, and
the reply after DATA is the upstream's. Nothing is answered 2xx that the
upstream did not accept.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from gateway import replies
from gateway.address import Address
from gateway.commands import MailFrom
from gateway.data import dot_stuff
from gateway.replies import Reply
from gateway.upstream import UpstreamConnector, UpstreamFailure, UpstreamSession


def reflect(reply: Reply) -> Reply:
    """The upstream's reply as the app should see it.

    Codes and enhanced codes are kept; a 421 (the *upstream* closing) becomes
    451, since the app's own connection stays open; nonsense becomes 451.
    """
    if reply.code == 421:
        return Reply(451, reply.enhanced, reply.text)
    if not 200 <= reply.code < 600:
        return replies.UPSTREAM_PROTOCOL
    return reply


class RelayTransaction:
    def __init__(self, connector: UpstreamConnector, mail: MailFrom) -> None:
        self.connector = connector
        self.mail = mail
        self.session: UpstreamSession | None = None
        self.failure: UpstreamFailure | None = None
        self.upstream_reply: Reply | None = None
        self._closed = False

    @property
    def upstream(self) -> Any:
        return self.connector.config

    def rcpt(self, recipient: Address) -> defer.Deferred[Reply]:
        return defer.Deferred.fromCoroutine(self._rcpt(recipient))

    async def _rcpt(self, recipient: Address) -> Reply:
        if self.failure is not None:
            return self.failure.reply
        try:
            if self.session is None:
                await self._open()
                if self.failure is not None:
                    return self.failure.reply
            assert self.session is not None
            reply = await self.session.command(f"RCPT TO:{recipient.path()}".encode("ascii"))
        except UpstreamFailure as failure:
            self._fail(failure)
            return failure.reply
        self.upstream_reply = reply
        return reflect(reply)

    async def _open(self) -> None:
        self.session = await self.connector.open()
        capabilities = self.session.capabilities
        if self.mail.body == "8BITMIME" and "8BITMIME" not in capabilities:
            self._fail(UpstreamFailure(replies.UPSTREAM_NO_8BIT, f"{self.upstream.name}: 8BITMIME not offered"))
            return
        line = f"MAIL FROM:{self.mail.sender.path()}"
        if self.mail.size is not None and "SIZE" in capabilities:
            line += f" SIZE={self.mail.size}"
        if self.mail.body and "8BITMIME" in capabilities:
            line += f" BODY={self.mail.body}"
        reply = await self.session.command(line.encode("ascii"))
        self.upstream_reply = reply
        if reply.code != 250:
            self._fail(UpstreamFailure(reflect(reply), f"{self.upstream.name}: MAIL refused", reply))

    def _fail(self, failure: UpstreamFailure) -> None:
        self.failure = failure
        if failure.upstream_reply is not None:
            self.upstream_reply = failure.upstream_reply
        self.close()

    def data(self) -> defer.Deferred[Reply]:
        return defer.Deferred.fromCoroutine(self._data())

    async def _data(self) -> Reply:
        if self.failure is not None or self.session is None:
            return self.failure.reply if self.failure else replies.UPSTREAM_LOST
        try:
            reply = await self.session.command(b"DATA")
        except UpstreamFailure as failure:
            self._fail(failure)
            return failure.reply
        self.upstream_reply = reply
        if reply.code == 354:
            return replies.START_DATA
        self.close()
        return reflect(reply)

    def write(self, content: bytes) -> None:
        if self.session is not None and self.failure is None:
            self.session.write(dot_stuff(content))

    def finish(self) -> defer.Deferred[Reply]:
        return defer.Deferred.fromCoroutine(self._finish())

    async def _finish(self) -> Reply:
        if self.failure is not None or self.session is None:
            return self.failure.reply if self.failure else replies.UPSTREAM_LOST
        try:
            reply = await self.session.end_data()
        except UpstreamFailure as failure:
            self._fail(failure)
            return failure.reply
        self.upstream_reply = reply
        self.close()
        return reflect(reply)

    @property
    def transport(self) -> Any:
        return self.session.transport if self.session is not None else None

    def abort(self, reason: str) -> None:
        """Drop the upstream connection mid-transaction: without the final dot nothing is delivered."""
        if self.failure is None:
            self.failure = UpstreamFailure(replies.UPSTREAM_LOST, reason)
        if self.session is not None and not self._closed:
            self._closed = True
            self.session.abort()

    def close(self) -> None:
        if self.session is not None and not self._closed:
            self._closed = True
            self.session.quit()
