"""A stored body pulled to the upstream, without sockets: a fake transport and a fake clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.internet import defer, task

from gateway.outbound.body import pull
from gateway.outbound.failure import UpstreamFailure
from tests.outbound.fakes import FakeSession, fired, upstreams

CONFIG = upstreams("primary", data_timeout=120)["primary"]


def regions(*chunks: bytes, error: OSError | None = None) -> Iterator[bytes]:
    yield from chunks
    if error is not None:
        raise error


def test_each_region_is_pulled_and_dot_stuffed():
    """The transport pulls (a non-streaming producer) until the regions end; dots are doubled."""
    session = FakeSession(CONFIG)
    fired(defer.Deferred.fromCoroutine(pull(session, regions(b"a\r\n", b".b\r\n"), task.Clock())))  # type: ignore[arg-type]
    assert session.transport.streaming is False and session.transport.producer is None
    assert session.body == b"a\r\n..b\r\n"


def test_a_spool_read_error_fails_the_body():
    """An I/O error reading the file: `UpstreamFailure` naming it, the producer unregistered."""
    session = FakeSession(CONFIG)
    body = regions(b"a\r\n", error=OSError(5, "Input/output error"))
    with pytest.raises(UpstreamFailure) as caught:
        fired(defer.Deferred.fromCoroutine(pull(session, body, task.Clock())))  # type: ignore[arg-type]
    assert caught.value.reason == "spool read failed: Input/output error"
    assert session.transport.producer is None


class Stalled:
    """A transport whose buffer never drains: it registers the producer and pulls nothing."""

    producer = None

    def registerProducer(self, producer: object, streaming: bool) -> None:  # noqa: N802
        self.producer = producer

    def unregisterProducer(self) -> None:  # noqa: N802
        self.producer = None


def test_a_body_that_does_not_go_within_data_timeout_aborts_the_connection():
    """Nothing pulled for data_timeout seconds: the connection is aborted."""
    session, clock = FakeSession(CONFIG), task.Clock()
    session.transport = Stalled()  # type: ignore[assignment]
    d = defer.Deferred.fromCoroutine(pull(session, regions(b"a\r\n"), clock))  # type: ignore[arg-type]
    clock.advance(119)
    assert session.protocol.aborted is None
    clock.advance(1)
    assert session.protocol.aborted == "timeout sending the body"
    session.protocol.closed.callback(None)  # the abort closes the connection
    with pytest.raises(UpstreamFailure) as caught:
        fired(d)
    assert caught.value.reason == "primary: connection lost while sending the body"
