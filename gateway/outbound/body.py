"""A body sent to an upstream: a stored one pulled by its transport, a streamed one throttled.

The queue's body is on disk; `pull` registers a pull producer with the upstream connection, so
a region is read only when the transport wants more (memory stays bounded whatever the size),
and the whole body must go within the upstream's ``data_timeout``. A relayed body streams from
the app as it arrives; `Throttle` lets the upstream's send buffer pause the app's connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPullProducer
from zope.interface import implementer

from gateway.outbound.connector import UpstreamSession
from gateway.outbound.failure import UpstreamFailure
from gateway.smtp import replies
from gateway.smtp.data import dot_stuff


async def pull(session: UpstreamSession, regions: Iterator[bytes], clock: Any) -> None:
    """Write every region of `regions` dot-stuffed (not the final dot); `UpstreamFailure` if the
    connection broke, the deadline passed or a region could not be read; our own error as itself
    (raised in the transport's call for more, it would only be logged there and the body
    would wait for the deadline)."""
    producer = _PulledBody(session, regions)
    session.protocol.closed.addCallback(
        lambda _: producer.lost("connection lost while sending the body")
    )
    timer = clock.callLater(
        session.config.data_timeout, session.protocol.abort, "timeout sending the body"
    )
    try:
        session.transport.registerProducer(producer, False)
        await producer.done
    finally:
        if timer.active():
            timer.cancel()


@implementer(IPullProducer)
class _PulledBody:
    """Feeds a stored body to the upstream transport as it asks for more (bounded memory)."""

    def __init__(self, session: UpstreamSession, regions: Iterator[bytes]) -> None:
        self.session = session
        self.regions = regions
        self.done: defer.Deferred[None] = defer.Deferred()

    def resumeProducing(self) -> None:  # noqa: N802
        if self.done.called:
            return
        try:
            region = next(self.regions)
        except StopIteration:
            self._end(None)
            return
        except OSError as exc:
            self._end(UpstreamFailure(replies.UPSTREAM_LOST, f"spool read failed: {exc.strerror}"))
            return
        except Exception as exc:  # noqa: BLE001 - our bug: the transport would only log it
            self._end(exc)
            return
        try:
            self.session.write(dot_stuff(region))
        except Exception as exc:  # noqa: BLE001 - the same
            self._end(exc)

    def stopProducing(self) -> None:  # noqa: N802
        self.lost("connection lost while sending the body")

    def lost(self, reason: str) -> None:
        if not self.done.called:
            self.done.errback(
                UpstreamFailure(replies.UPSTREAM_LOST, f"{self.session.config.name}: {reason}")
            )

    def _end(self, error: Exception | None) -> None:
        transport = self.session.transport
        if transport is not None and transport.producer is not None:
            transport.unregisterProducer()
        if not self.done.called:
            if error is None:
                self.done.callback(None)
            else:
                self.done.errback(error)


class Throttle:
    """The app's connection (a push producer) registered with the upstream's transport while a
    relayed body streams, so a slow upstream pauses the app instead of filling memory."""

    def __init__(self) -> None:
        self._producer: Any = None
        self._transport: Any = None  # the upstream transport the producer is registered with

    def start(self, transport: Any, producer: Any) -> None:
        if transport is not None:
            self._producer, self._transport = producer, transport
            transport.registerProducer(producer, True)

    def stop(self) -> None:
        """Unregister before any close (or the upstream would stop the app's connection), and
        resume the app's side in case the upstream left it paused."""
        producer, self._producer = self._producer, None
        transport, self._transport = self._transport, None
        if producer is None:
            return
        if transport is not None:  # a TLS transport wraps the producer: compare nothing, it is ours
            try:
                transport.unregisterProducer()
            except (AttributeError, RuntimeError):
                pass  # the upstream connection is already gone (a closed TLS layer cannot unregister)
        producer.resumeProducing()
