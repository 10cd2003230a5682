"""In-memory stand-ins for upstream pools and sessions: the transaction core without sockets.

A `FakeSession` answers each command from its `script` (by verb) at once, or holds the replies
when `hold` is set so a test sees what was written before any reply came (pipelining).
A `FakePool` hands out its session (or raises its failure), or its `fresh` session when asked
for a new connection, and records each release and what it learned about messages per connection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from twisted.internet import defer, task

from gateway.config import toml as configuration
from gateway.config.model import UpstreamConfig
from gateway.outbound.failure import UpstreamFailure
from gateway.outbound.tls import TLSFacts
from gateway.smtp.replies import Reply

OK = Reply(250, "2.0.0", "OK")
GO_AHEAD = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
QUEUED = Reply(250, "2.0.0", "Queued as 42")
TLS = TLSFacts("TLSv1.3", "TLS_AES_256_GCM_SHA384", "ab" * 32)
CAPABILITIES = {"SIZE": "10000000", "8BITMIME": "", "AUTH": "PLAIN"}


def upstreams(*names: str, **settings: Any) -> dict[str, UpstreamConfig]:
    document = {
        "upstreams": {n: {"host": f"{n}.example.net", **settings} for n in names},
        "rules": [{"name": "r", "action": "relay", "upstream": list(names)}],
    }
    return configuration.parse(document, "t.toml").upstreams


class Transport:
    """Pulls a registered non-streaming producer until it unregisters (a fast socket)."""

    def __init__(self) -> None:
        self.producer: Any = None
        self.streaming: bool | None = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802
        self.producer, self.streaming = producer, streaming
        while not streaming and self.producer is producer:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:  # noqa: N802
        self.producer = None


class Protocol:
    def __init__(self) -> None:
        self._lost_reason: str | None = None
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.aborted: str | None = None

    @property
    def ended(self) -> bool:
        return self._lost_reason is not None

    def abort(self, reason: str = "aborted by gateway") -> None:
        self.aborted = reason


class FakeSession:
    """An `UpstreamSession` whose replies come from `script`: verb -> reply (or list of replies)."""

    def __init__(
        self,
        config: UpstreamConfig,
        capabilities: dict[str, str] | None = None,
        auth_user: str | None = "relay@example.test",
        **script: Reply | list[Reply],
    ) -> None:
        self.config = config
        self.capabilities = dict(CAPABILITIES if capabilities is None else capabilities)
        self.tls = TLS
        self.auth_user = auth_user
        self.auth_mechanism = "PLAIN"
        self.oauth_grant: str | None = None
        self.protocol = Protocol()
        self.transport = Transport()
        self.script: dict[str, Any] = {
            "MAIL": OK,
            "RCPT": OK,
            "DATA": GO_AHEAD,
            "END": QUEUED,
            "RSET": OK,
        }
        self.script.update(script)
        self.lines: list[bytes] = []  # each command line, in order
        self.body = b""  # what was written after DATA, dot-stuffed, with the final dot
        self.hold = False  # keep replies back until `answer()`
        self.batches: list[list[bytes]] = []  # each pipelined write, as its command lines
        self.reset_due = False  # the pool handed it out without its RSET
        self._batching = False
        self.held: list[tuple[defer.Deferred[Reply], Reply | UpstreamFailure]] = []

    def _reply(self, verb: str) -> defer.Deferred[Reply]:
        entry = self.script[verb]
        reply = entry.pop(0) if isinstance(entry, list) else entry
        d: defer.Deferred[Reply] = defer.Deferred()
        self.held.append((d, reply))
        if not self.hold:
            self.answer()
        return d

    def answer(self) -> None:
        held, self.held = self.held, []
        for d, reply in held:
            if isinstance(reply, UpstreamFailure):
                d.errback(reply)
            else:
                d.callback(reply)

    def command(self, line: bytes, timeout: float | None = None) -> defer.Deferred[Reply]:
        self.lines.append(line)
        if self._batching:
            self.batches[-1].append(line)
        return self._reply(line.split(b" ", 1)[0].split(b":", 1)[0].decode())

    @contextlib.contextmanager
    def batched(self) -> Iterator[None]:
        """Commands sent inside are one pipelined write: recorded together in `batches`."""
        self.batches.append([])
        self._batching = True
        try:
            yield
        finally:
            self._batching = False

    def write(self, data: bytes) -> None:
        self.body += data

    def end_data(self) -> defer.Deferred[Reply]:
        self.body += b".\r\n"
        return self._reply("END")

    def abort(self) -> None:
        self.protocol.abort()


class FakePool:
    """An `UpstreamPool` with one session (or one failure) to hand out."""

    def __init__(
        self,
        config: UpstreamConfig,
        session: FakeSession | None = None,
        failure: UpstreamFailure | None = None,
    ) -> None:
        self.config = config
        self.session = session
        self.failure = failure
        self.senders: list[str | None] = []  # each acquire's sender
        self.released: list[tuple[FakeSession, bool]] = []
        self.spent: list[FakeSession] = []  # released as spent (QUIT: its per-connection limit)
        self.staled: list[tuple[FakeSession, bool]] = []  # failed a pipelined RSET: (it, usable)
        self.pending: defer.Deferred[Any] | None = None  # set by `hold()`
        self.fresh: FakeSession | None = None  # handed out by acquire(fresh=True)
        self.fresh_asked = 0
        self.counts: dict[int, int] = {}  # session id -> messages carried (MAIL sent)
        self.learned: int | None = None
        self.fruitless = False

    @property
    def parallel(self) -> int:
        return self.config.max_connections

    def hold(self) -> None:
        """The next acquire waits until `give()`."""
        self.pending = defer.Deferred()

    def give(self) -> None:
        pending, self.pending = self.pending, None
        assert pending is not None
        pending.callback(None)

    def acquire(self, sender: str | None = None, *, fresh: bool = False) -> defer.Deferred[Any]:
        self.senders.append(sender)
        return defer.Deferred.fromCoroutine(self._acquire(fresh))

    async def _acquire(self, fresh: bool = False) -> FakeSession:
        if self.pending is not None:
            await self.pending
        if fresh:
            self.fresh_asked += 1
            assert self.fresh is not None
            return self.fresh
        if self.failure is not None:
            raise self.failure
        assert self.session is not None
        return self.session

    def release(
        self, session: FakeSession, reusable: bool, *, mailed: bool = True, spent: bool = False
    ) -> None:
        self.released.append((session, reusable))
        if spent:
            self.spent.append(session)
        if mailed:
            self.counts[id(session)] = self.carried(session) + 1

    def stale(self, session: FakeSession, *, usable: bool = True) -> None:
        self.staled.append((session, usable))

    def carried(self, session: FakeSession) -> int:
        return self.counts.get(id(session), 0)

    def learn_limit(self, carried: int) -> None:
        self.learned = carried

    def may_retry(self) -> bool:
        return not self.fruitless

    def retry_fruitless(self) -> None:
        self.fruitless = True


def lookup(pools: Iterable[FakePool]) -> Any:
    """A `Pools` function over `pools`, by upstream name."""
    return {p.config.name: p for p in pools}.get


def fired(d: defer.Deferred[Any]) -> Any:
    """What `d` fired with; raises what it failed with; fails if it has not fired."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def clock(now: float = 1000.0) -> task.Clock:
    c = task.Clock()
    c.advance(now)
    return c


class RecordingConnector:
    """An upstream connector that records each open(); the test decides when and how it ends."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.opens: list[defer.Deferred[Any]] = []

    def user_for(self, sender: str | None) -> str | None:
        return self.config.username

    def open(self, sender: str | None = None) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.opens.append(d)
        return d
