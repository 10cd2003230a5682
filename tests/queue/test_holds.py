"""Holds without sockets: hold/ and held-upstreams as the runner and the spool see them."""

from __future__ import annotations

import math
import os

import pytest
from twisted.internet import task

from gateway.config.toml import parse
from gateway.outbound.failure import UpstreamFailure
from gateway.outbound.pool import UpstreamPool
from gateway.queue import holds
from gateway.queue.runner import DeliveryRunner
from gateway.queue.spool import (
    ACTIVE,
    DEAD,
    DEFERRED,
    DELIVERED,
    DONE,
    FAILED,
    HOLD,
    PENDING,
    Envelope,
    MessageGone,
    RecipientState,
    Spool,
    new_id,
)
from gateway.queue.writer import SpoolWriter
from gateway.smtp import replies
from gateway.testing.audit import CapturedAudit
from tests.outbound.fakes import FakePool, FakeSession, RecordingConnector

DAY = 86400.0


def config_for(tmp_path, **queue_settings):
    document = {
        "queue": {
            "path": str(tmp_path / "spool"),
            "min_backoff": 60,
            "max_backoff": 600,
            **queue_settings,
        },
        "upstreams": {"up": {"host": "smtp.example.net"}, "other": {"host": "mx.example.org"}},
        "rules": [{"name": "all", "action": "relay", "upstream": "up", "delivery": "queue"}],
    }
    return parse(document, "t.toml")


def setup(tmp_path, now: float = 5000.0, pools=None, **queue_settings):
    config = config_for(tmp_path, **queue_settings)
    spool = Spool(config.queue.path)
    spool.create()
    clock = task.Clock()
    connectors = {name: RecordingConnector(config.upstreams[name]) for name in config.upstreams}
    if pools is None:
        pools = {name: UpstreamPool(c, clock) for name, c in connectors.items()}  # type: ignore[arg-type]
    captured = CapturedAudit()
    runner = DeliveryRunner(clock, spool, config, pools.get, captured.log(), clock=lambda: now)
    runner.recover()
    return runner, connectors, spool, captured


def fake_pools(tmp_path) -> dict[str, FakePool]:
    """Pools whose session the test hands out (`FakePool.hold` / `give`)."""
    upstreams = config_for(tmp_path).upstreams
    return {name: FakePool(c, FakeSession(c)) for name, c in upstreams.items()}


def queue(
    spool: Spool, *routes: list[str], received: float = 4000.0, in_flight: bool = False
) -> str:
    """A committed message with one recipient per route (default: one, on "up")."""
    queue_id = new_id()
    writer = SpoolWriter(spool, queue_id)
    writer.write(b"Subject: x\r\n\r\nbody\r\n")
    recipients = [
        RecipientState(f"r{i}@example.net", route[0], "all", route=list(route), in_flight=in_flight)
        for i, route in enumerate(routes or (["up"],))
    ]
    writer.commit(
        Envelope(id=queue_id, sender="app@example.com", received=received, recipients=recipients)
    )
    return queue_id


def refused() -> UpstreamFailure:
    return UpstreamFailure(replies.UPSTREAM_UNREACHABLE, "up: cannot connect (refused)")


# --- held-upstreams ---------------------------------------------------------------------------


def test_held_upstreams_are_written_read_and_released(tmp_path):
    """hold adds a name once (0600 file), release takes it back, the file goes with the last."""
    spool = Spool(str(tmp_path))
    assert holds.hold(spool, "up") is True
    assert holds.hold(spool, "up") is False
    holds.hold(spool, "other")
    assert holds.held(spool) == {"up", "other"}
    assert os.stat(tmp_path / holds.HELD).st_mode & 0o777 == 0o600
    assert holds.release(spool, ["up", "never"]) == ["up"]
    assert holds.release(spool, ["other"]) == ["other"]
    assert not os.path.lexists(tmp_path / holds.HELD)


def test_a_link_in_place_of_held_upstreams_holds_nothing(tmp_path):
    """A symbolic link is never followed: not a list of held upstreams."""
    target = tmp_path / "elsewhere"
    target.write_text("up\n")
    (tmp_path / holds.HELD).symlink_to(target)
    assert holds.held(Spool(str(tmp_path))) == frozenset()


# --- the spool: a message held during its round ------------------------------------------------


def test_a_round_held_midway_is_recorded_in_hold_and_stays_held(tmp_path):
    """The CLI moved active/ID to hold/ during a delivery: the save follows it, deferred stays held."""
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    queue_id = queue(spool)
    envelope = spool.load(ACTIVE, queue_id)
    spool.move(queue_id, ACTIVE, HOLD)
    envelope.recipients[0].attempts = 3
    spool.save(ACTIVE, envelope)
    spool.move(queue_id, ACTIVE, DEFERRED)
    assert spool.locate(queue_id) == HOLD
    assert spool.load(HOLD, queue_id).recipients[0].attempts == 3


def test_a_round_that_finishes_a_held_message_takes_it_from_hold(tmp_path):
    """Delivered (done/) or dead (dead/) at the end of the round: nothing is left to hold."""
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    for target in (DONE, DEAD):
        queue_id = queue(spool)
        spool.move(queue_id, ACTIVE, HOLD)
        spool.move(queue_id, ACTIVE, target)
        assert spool.locate(queue_id) == target or os.path.isdir(spool.folder(target, queue_id))


def test_the_body_of_a_message_held_midway_is_still_found(tmp_path):
    """A round's body reads (the DSN's headers) follow the message to hold/."""
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    queue_id = queue(spool)
    spool.move(queue_id, ACTIVE, HOLD)
    assert spool.body_path(ACTIVE, queue_id) == os.path.join(spool.folder(HOLD, queue_id), "body")


def test_a_message_deleted_during_its_round_is_still_gone(tmp_path):
    """Only hold/ is followed: a message moved to trash/ raises MessageGone as before."""
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    queue_id = queue(spool)
    envelope = spool.load(ACTIVE, queue_id)
    spool.move(queue_id, ACTIVE, "trash")
    with pytest.raises(MessageGone):
        spool.save(ACTIVE, envelope)
    with pytest.raises(MessageGone):
        spool.move(queue_id, ACTIVE, DEFERRED)


# --- the runner ---------------------------------------------------------------------------------


def test_a_held_message_is_not_started_and_is_logged_once(tmp_path):
    """hold/ is never delivered: no session opened, one message.held; release delivers it."""
    runner, connectors, spool, captured = setup(tmp_path)
    queue_id = queue(spool)
    spool.move(queue_id, ACTIVE, HOLD)
    runner.scan()
    runner.scan()
    assert connectors["up"].opens == []
    [held] = captured.named("message.held")
    assert held["queue_id"] == queue_id and held["recipients"] == ["r0@example.net"]
    spool.move(queue_id, HOLD, ACTIVE)  # mailgate queue release
    runner.scan()
    assert len(connectors["up"].opens) == 1
    assert captured.named("message.released")[0]["queue_id"] == queue_id


def test_a_held_upstream_parks_its_mail_until_released(tmp_path):
    """A message whose only upstream is held waits in deferred/ without an attempt; released: sent."""
    runner, connectors, spool, captured = setup(tmp_path)
    holds.hold(spool, "up")
    runner.scan()
    queue_id = queue(spool)
    runner.submitted(queue_id)
    for _ in range(3):
        runner.scan()
    assert connectors["up"].opens == []
    assert spool.locate(queue_id) == DEFERRED
    assert spool.load(DEFERRED, queue_id).recipients[0].attempts == 0  # no backoff, no expiry
    assert [e["upstream"] for e in captured.named("upstream.held")] == ["up"]
    holds.release(spool, ["up"])
    runner.scan()
    assert len(connectors["up"].opens) == 1
    assert [e["upstream"] for e in captured.named("upstream.released")] == ["up"]


def test_an_upstream_held_since_the_last_scan_is_not_contacted(tmp_path):
    """`hold --upstream` then, before the runner's next scan, a new message: its round reads
    held-upstreams itself, opens no connection to the held upstream and parks the message
    (tried by hand: it was attempted, counted and backed off for minutes)."""
    runner, connectors, spool, _ = setup(tmp_path)
    runner.scan()
    holds.hold(spool, "up")
    queue_id = queue(spool)
    runner.submitted(queue_id)
    assert connectors["up"].opens == []
    assert spool.locate(queue_id) == DEFERRED
    assert spool.load(DEFERRED, queue_id).recipients[0].attempts == 0


def test_a_held_upstream_does_not_fail_over(tmp_path):
    """Route [up, other] with up held: the recipient waits, other is not used in its place."""
    runner, connectors, spool, _ = setup(tmp_path)
    holds.hold(spool, "up")
    runner.scan()
    runner.submitted(queue(spool, ["up", "other"]))
    assert connectors["up"].opens == [] and connectors["other"].opens == []


def test_only_the_held_upstreams_recipients_wait(tmp_path):
    """One message for up and other, other held: up's recipient is delivered, other's waits."""
    runner, connectors, spool, _ = setup(tmp_path)
    holds.hold(spool, "other")
    runner.scan()
    queue_id = queue(spool, ["up"], ["other"])
    runner.submitted(queue_id)
    assert len(connectors["up"].opens) == 1 and connectors["other"].opens == []
    connectors["up"].opens[0].errback(refused())
    envelope = spool.load(DEFERRED, queue_id)
    attempts = {r.address: r.attempts for r in envelope.recipients}
    assert attempts == {"r0@example.net": 1, "r1@example.net": 0}
    assert all(r.status != DELIVERED for r in envelope.recipients)


def test_queue_started_counts_what_is_held(tmp_path):
    """queue.started says how many messages are held and which upstreams."""
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    spool.move(queue(spool), ACTIVE, HOLD)
    holds.hold(spool, "other")
    _, _, _, captured = setup(tmp_path)
    [started] = captured.named("queue.started")
    assert (started["held"], started["held_upstreams"]) == (1, ["other"])


# --- a hold that came while the round waited for its session (before MAIL) ---------------------


def test_a_message_held_while_its_round_waits_for_a_session_is_not_sent(tmp_path):
    """Held after the round started but before MAIL: the session comes back unused, nothing is
    sent, the message stays in hold/ with no attempt counted and no in-flight mark."""
    pools = fake_pools(tmp_path)
    runner, _, spool, captured = setup(tmp_path, pools=pools)
    pools["up"].hold()  # the round waits for its session (slots, pool, connect, AUTH)
    queue_id = queue(spool)
    runner.submitted(queue_id)
    spool.move(queue_id, ACTIVE, HOLD)  # mailgate queue hold ID
    runner.scan()
    assert [e["queue_id"] for e in captured.named("message.held")] == [queue_id]
    pools["up"].give()
    assert pools["up"].session.lines == []
    assert pools["up"].released == [(pools["up"].session, True)]
    assert spool.locate(queue_id) == HOLD and queue_id not in runner.in_flight
    [recipient] = spool.load(HOLD, queue_id).recipients
    assert (recipient.status, recipient.attempts, recipient.in_flight) == (PENDING, 0, False)
    spool.move(queue_id, HOLD, ACTIVE)  # mailgate queue release ID: delivered now
    runner.scan()
    assert pools["up"].session.lines[0].startswith(b"MAIL")


def test_a_message_marked_in_flight_already_and_held_before_mail_is_not_sent(tmp_path):
    """Its recipients are in flight from an earlier round (no new mark to write): the folder is
    still looked at before MAIL."""
    pools = fake_pools(tmp_path)
    runner, _, spool, _ = setup(tmp_path, pools=pools)
    pools["up"].hold()
    queue_id = queue(spool, in_flight=True)
    runner.submitted(queue_id)
    spool.move(queue_id, ACTIVE, HOLD)
    pools["up"].give()
    assert pools["up"].session.lines == [] and spool.locate(queue_id) == HOLD


def test_an_upstream_held_while_the_round_waits_for_its_session_is_not_sent_to(tmp_path):
    """hold --upstream after the round started but before MAIL (no scan in between): nothing is
    sent, the message is parked without an attempt; released, it goes."""
    pools = fake_pools(tmp_path)
    runner, _, spool, captured = setup(tmp_path, pools=pools)
    pools["up"].hold()
    queue_id = queue(spool)
    runner.submitted(queue_id)
    holds.hold(spool, "up")
    pools["up"].give()
    assert pools["up"].session.lines == []
    assert spool.locate(queue_id) == DEFERRED and runner.schedule[queue_id] == math.inf
    [recipient] = spool.load(DEFERRED, queue_id).recipients
    assert (recipient.attempts, recipient.in_flight) == (0, False)
    [deferred] = captured.named("message.deferred")
    assert deferred["next_attempt"] is None and deferred["held_upstream"] is True
    assert captured.named("delivery.attempt") == []
    runner.scan()
    assert pools["up"].session.lines == []  # still held: still parked
    holds.release(spool, ["up"])
    runner.scan()
    assert pools["up"].session.lines[0].startswith(b"MAIL")
    assert spool.locate(queue_id) is None  # delivered (done/ is emptied)


# --- no backoff, no expiry for the recipients of a held upstream --------------------------------


def test_recipients_of_a_held_upstream_do_not_expire_with_the_others(tmp_path):
    """other held; a message 10 days old (max_age 5 days), one recipient on up (refused) and one
    on other: up's expires, other's waits, parked in deferred/ (not dead/)."""
    now = 4000.0 + 10 * DAY
    runner, connectors, spool, captured = setup(tmp_path, now=now, max_age=5 * DAY)
    holds.hold(spool, "other")
    runner.scan()
    queue_id = queue(spool, ["up"], ["other"])
    runner.submitted(queue_id)
    connectors["up"].opens[0].errback(refused())
    assert spool.locate(queue_id) == DEFERRED
    up, other = spool.load(DEFERRED, queue_id).recipients
    assert (up.status, up.expired) == (FAILED, True)
    assert (other.status, other.expired, other.attempts) == (PENDING, False, 0)
    assert runner.schedule[queue_id] == math.inf and queue_id in runner.parked
    assert captured.named("message.dead") == []


def test_the_attempts_of_a_held_upstreams_recipients_set_no_backoff(tmp_path):
    """The backoff follows the recipients that were tried: other's 20 earlier attempts (before
    it was held) do not push up's next attempt to max_backoff."""
    runner, connectors, spool, _ = setup(tmp_path)
    queue_id = queue(spool, ["up"], ["other"])
    envelope = spool.load(ACTIVE, queue_id)
    envelope.recipients[1].attempts = 20
    spool.save(ACTIVE, envelope)
    holds.hold(spool, "other")
    runner.scan()  # starts the message too
    connectors["up"].opens[0].errback(refused())
    assert spool.load(DEFERRED, queue_id).next_attempt == 5000.0 + 60  # min_backoff, not 600


# --- held-upstreams: root writes it for the daemon; unreadable is not "nothing held" -----------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files away")
def test_held_upstreams_written_by_root_belongs_to_the_spool_user(tmp_path):
    """sudo mailgate queue hold --upstream: the file is the spool user's (the daemon reads it)."""
    Spool(str(tmp_path / "spool")).create()
    os.chown(tmp_path / "spool", 4321, 4321)
    spool = Spool(str(tmp_path / "spool"))  # as the command sees it
    holds.hold(spool, "up")
    info = os.stat(os.path.join(spool.path, holds.HELD))
    assert (info.st_uid, info.st_mode & 0o777) == (4321, 0o600)


def test_an_unreadable_held_upstreams_keeps_what_was_held(tmp_path, monkeypatch):
    """The file is there but cannot be read: the upstreams held stay held (no upstream.released),
    one gateway.error says so; readable again, the runner goes on from it."""
    runner, connectors, spool, captured = setup(tmp_path)
    holds.hold(spool, "up")
    runner.scan()
    real_open = os.open
    path = os.path.join(spool.path, holds.HELD)

    def denied(name, *args, **kwargs):
        if name == path:
            raise PermissionError(13, "Permission denied", name)
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    queue_id = queue(spool)
    runner.scan()
    runner.scan()
    assert connectors["up"].opens == [] and spool.locate(queue_id) == DEFERRED
    assert captured.named("upstream.released") == []
    [error] = captured.named("gateway.error")
    assert error["type"] == "HoldsUnreadable" and "up" in error["error"]
    with pytest.raises(holds.HoldsUnreadable, match="held-upstreams: cannot be read"):
        holds.held(spool)  # the CLI says so (exit 1) instead of "nothing held"
    monkeypatch.setattr(os, "open", real_open)
    holds.release(spool, ["up"])
    runner.scan()
    assert [e["upstream"] for e in captured.named("upstream.released")] == ["up"]
    assert len(connectors["up"].opens) == 1


# --- restart and reload ---------------------------------------------------------------------------


def test_a_held_message_in_its_duplicate_window_is_flagged_at_start(tmp_path):
    """Stopped during a round, then held: delivery.duplicate_risk at the next start, and the
    attempt after its release is logged with possible_duplicate."""
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    queue_id = queue(spool, in_flight=True)
    spool.move(queue_id, ACTIVE, HOLD)
    runner, _, _, captured = setup(tmp_path)
    [risk] = captured.named("delivery.duplicate_risk")
    assert (risk["queue_id"], risk["recipients"]) == (queue_id, ["r0@example.net"])
    assert runner.duplicates == {queue_id: {"r0@example.net"}}


def test_a_parked_message_goes_when_a_reload_takes_its_held_upstream_away(tmp_path):
    """Route [up, other], up held: parked. A reload removes up from the config: other is its next
    upstream now, not held: the next scan delivers it there."""
    upstreams = config_for(tmp_path).upstreams
    connectors = {name: RecordingConnector(c) for name, c in upstreams.items()}
    pools = {n: UpstreamPool(c, task.Clock()) for n, c in connectors.items()}  # type: ignore[arg-type]
    runner, _, spool, _ = setup(tmp_path, pools=pools)
    holds.hold(spool, "up")
    runner.scan()
    queue_id = queue(spool, ["up", "other"])
    runner.submitted(queue_id)
    runner.scan()
    assert queue_id in runner.parked and connectors["other"].opens == []
    del pools["up"]  # a reload without [upstreams.up] (the held name stays in the file)
    runner.scan()
    assert len(connectors["other"].opens) == 1 and connectors["up"].opens == []
    assert queue_id not in runner.parked


def test_a_round_held_before_one_groups_mail_ends_with_its_other_group(tmp_path):
    """Two routes: up's group is past MAIL, other's waits for its session when the message is
    held. other sends nothing; the round ends only when up's group has written its record into
    hold/ (released meanwhile, it is not started twice)."""
    pools = fake_pools(tmp_path)
    runner, _, spool, _ = setup(tmp_path, pools=pools)
    pools["up"].session.hold = True  # up's replies wait
    pools["other"].hold()
    queue_id = queue(spool, ["up"], ["other"])
    runner.submitted(queue_id)
    assert pools["up"].session.lines[0].startswith(b"MAIL")
    spool.move(queue_id, ACTIVE, HOLD)
    pools["other"].give()
    assert pools["other"].session.lines == []
    assert queue_id in runner.in_flight  # up's group still talks to its upstream
    while pools["up"].session.held:
        pools["up"].session.answer()
    assert queue_id not in runner.in_flight and spool.locate(queue_id) == HOLD
    up, other = spool.load(HOLD, queue_id).recipients
    assert (up.status, up.in_flight) == (DELIVERED, False)
    assert (other.status, other.attempts, other.in_flight) == (PENDING, 0, False)
