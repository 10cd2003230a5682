"""The delivery runner without sockets: a fake clock and fake upstream connectors."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task

from gateway.config.toml import parse
from gateway.outbound.failure import UpstreamFailure
from gateway.outbound.pool import UpstreamPool
from gateway.queue.runner import DeliveryRunner
from gateway.queue.spool import ACTIVE, DEFERRED, Envelope, RecipientState, Spool, new_id
from gateway.queue.writer import SpoolWriter
from gateway.smtp import replies
from gateway.testing.audit import CapturedAudit
from tests.outbound.fakes import RecordingConnector


def make_runner(
    tmp_path, now: list[float], **upstream: Any
) -> tuple[DeliveryRunner, RecordingConnector, Spool]:
    document = {
        "queue": {"path": str(tmp_path / "spool"), "min_backoff": 60, "max_backoff": 600},
        "upstreams": {"up": {"host": "smtp.example.net", **upstream}},
        "rules": [{"name": "all", "action": "relay", "upstream": "up", "delivery": "queue"}],
    }
    config = parse(document, "t.toml")
    spool = Spool(config.queue.path)
    spool.create()
    connector = RecordingConnector(config.upstreams["up"])
    clock = task.Clock()
    pools = {"up": UpstreamPool(connector, clock)}  # type: ignore[arg-type]
    runner = DeliveryRunner(
        clock, spool, config, pools.get, CapturedAudit().log(), clock=lambda: now[0]
    )
    return runner, connector, spool


def queue(spool: Spool, received: float = 1000.0) -> str:
    queue_id = new_id()
    writer = SpoolWriter(spool, queue_id)
    writer.write(b"Subject: x\r\n\r\nbody\r\n")
    writer.commit(
        Envelope(
            id=queue_id,
            sender="app@example.com",
            received=received,
            recipients=[RecipientState("ops@example.net", "up", "all")],
        )
    )
    return queue_id


def refused() -> UpstreamFailure:
    return UpstreamFailure(replies.UPSTREAM_UNREACHABLE, "up: cannot connect (refused)")


def test_parallel_deliveries_are_capped_by_max_connections(tmp_path):
    """With max_connections = 2, five due messages open two sessions; a third starts when one ends."""
    runner, connector, spool = make_runner(tmp_path, [1000.0], max_connections=2)
    for _ in range(5):
        runner.submitted(queue(spool))
    assert len(connector.opens) == 2
    connector.opens[0].errback(refused())
    assert len(connector.opens) == 3


def test_one_username_with_a_per_identity_cap_runs_that_many_deliveries(tmp_path):
    """max_connections 10, max_connections_per_identity 2, one AUTH user: two at once (the rest
    would only wait in the pool), a third starts when one ends."""
    runner, connector, spool = make_runner(
        tmp_path,
        [1000.0],
        max_connections_per_identity=2,
        username="relay@example.net",
        password_env="PW",
    )
    for _ in range(5):
        runner.submitted(queue(spool))
    pool = runner.pools("up")
    assert len(connector.opens) == 2 and not pool._waiters  # none waits in the pool
    connector.opens[0].errback(refused())
    assert len(connector.opens) == 3 and not pool._waiters


def test_refused_connection_defers_with_min_backoff(tmp_path):
    """A refused connection moves the message to deferred/, due min_backoff seconds later."""
    runner, connector, spool = make_runner(tmp_path, [5000.0])
    queue_id = queue(spool)
    runner.submitted(queue_id)
    connector.opens[0].errback(refused())
    envelope = spool.load(DEFERRED, queue_id)
    assert envelope.next_attempt == 5060.0 and envelope.recipients[0].attempts == 1
    assert envelope.recipients[0].last_reply == str(replies.UPSTREAM_UNREACHABLE)
    assert runner.schedule == {queue_id: 5060.0}


def test_due_deferred_message_is_tried_again_at_scan(tmp_path):
    """At the scan after next_attempt the message is back in active/ and a session is opened."""
    now = [5000.0]
    runner, connector, spool = make_runner(tmp_path, now)
    queue_id = queue(spool)
    runner.submitted(queue_id)
    connector.opens[0].errback(refused())
    now[0] = 5059.0
    runner.scan()
    assert spool.locate(queue_id) == DEFERRED and len(connector.opens) == 1
    now[0] = 5060.0
    runner.scan()
    assert spool.locate(queue_id) == ACTIVE and len(connector.opens) == 2


def test_route_with_an_unconfigured_first_hop_uses_the_next(tmp_path):
    """A spooled route whose first upstream is gone (reload) is delivered through the next one."""
    runner, connector, spool = make_runner(tmp_path, [5000.0])
    queue_id = new_id()
    writer = SpoolWriter(spool, queue_id)
    writer.write(b"Subject: x\r\n\r\nbody\r\n")
    writer.commit(
        Envelope(
            id=queue_id,
            sender="app@example.com",
            received=4000.0,
            recipients=[RecipientState("ops@example.net", "gone", "all", route=["gone", "up"])],
        )
    )
    runner.submitted(queue_id)
    assert len(connector.opens) == 1


def test_a_busy_pool_does_not_cool_down_a_healthy_upstream(tmp_path):
    """Waiting in vain for a pooled connection defers the message but leaves the upstream usable."""

    class Protocol:
        ended = False

        def __init__(self) -> None:
            self.closed: defer.Deferred[None] = defer.Deferred()

    class Session:
        auth_user = None

        def __init__(self) -> None:
            self.protocol = Protocol()

    runner, connector, spool = make_runner(tmp_path, [5000.0], max_connections=1)
    pool = runner.pools("up")
    held = pool.acquire("app@example.com")  # a relay transaction holds the only connection
    connector.opens[0].callback(Session())
    assert held.called
    queue_id = queue(spool, received=4999.0)
    runner.submitted(queue_id)
    runner.reactor.advance(pool.config.command_timeout + 1)
    assert spool.locate(queue_id) == DEFERRED
    assert not runner.cooldowns.cooling("up", runner.reactor.seconds())
