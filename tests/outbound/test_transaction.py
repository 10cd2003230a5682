"""The shared outbound transaction without sockets: fake pools and scripted sessions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from twisted.internet import defer

from gateway.outbound.classify import final, reflect, reusable
from gateway.outbound.failover import Cooldowns
from gateway.outbound.failure import UpstreamFailure
from gateway.outbound.pool import PoolBusy
from gateway.outbound.transaction import Transaction
from gateway.smtp import replies
from gateway.smtp.replies import POOL_BUSY, Reply
from tests.outbound.fakes import (
    OK,
    QUEUED,
    FakePool,
    FakeSession,
    clock,
    fired,
    lookup,
    upstreams,
)

CONFIGS = upstreams("primary", "backup", failover_cooldown=60)
UNREACHABLE = UpstreamFailure(replies.UPSTREAM_UNREACHABLE, "primary: cannot connect")


def transaction(*pools: FakePool, sender: str = "app@example.com", **kwargs: Any) -> Transaction:
    route = kwargs.pop("route", tuple(p.config.name for p in pools))
    cooldowns = kwargs.pop("cooldowns", Cooldowns())
    return Transaction(
        route, lookup(pools), cooldowns, kwargs.pop("clock", clock()), sender, **kwargs
    )


def pool(name: str = "primary", **script: Any) -> FakePool:
    return FakePool(CONFIGS[name], FakeSession(CONFIGS[name], **script))


def opened(txn: Transaction, *recipients: str) -> list[Reply]:
    return fired(defer.Deferred.fromCoroutine(txn.open(list(recipients))))


def run(coroutine: Any) -> Any:
    return fired(defer.Deferred.fromCoroutine(coroutine))


# --- the reply rules --------------------------------------------------------------------------


def test_reflect_turns_the_upstreams_421_into_451_for_the_app():
    """The upstream closing is not the app's connection closing: 421 becomes 451, text kept."""
    assert reflect(Reply(421, "4.7.0", "Too busy")) == Reply(451, "4.7.0", "Too busy")
    assert reflect(Reply(550, "5.1.1", "No")) == Reply(550, "5.1.1", "No")
    assert reflect(Reply(199, "", "odd")) == replies.UPSTREAM_PROTOCOL


def test_a_session_is_reusable_only_after_a_real_reply_that_is_not_421():
    """A reply `expected` replaced, or a 421, means the session is not handed on."""
    answer = Reply(550, "5.7.1", "No")
    assert reusable(answer, answer)
    assert not reusable(Reply(421, "4.4.2", "Bye"), Reply(421, "4.4.2", "Bye"))
    assert not reusable(Reply(251, "", "odd"), replies.UPSTREAM_PROTOCOL)


def test_only_a_permanent_refusal_with_a_permanent_upstream_reply_is_final():
    """A 5xx the upstream itself gave ends the failover; a gateway-made 5xx does not."""
    refused = Reply(550, "5.7.1", "Sender blocked")
    assert final(UpstreamFailure(refused, "x", refused))
    assert not final(UpstreamFailure(replies.UPSTREAM_NULL_SENDER_OAUTH, "x"))
    assert not final(UpstreamFailure(replies.UPSTREAM_AUTH_FAILED, "x", Reply(535, "5.7.8", "no")))


# --- failover ---------------------------------------------------------------------------------


def test_an_unreachable_upstream_cools_down_and_the_next_delivers():
    """Primary fails to connect: backup takes the message; primary cools for its cool-down."""
    primary, backup = FakePool(CONFIGS["primary"], failure=UNREACHABLE), pool("backup")
    cooldowns, now = Cooldowns(), clock(1000)
    txn = transaction(primary, backup, cooldowns=cooldowns, clock=now)
    assert opened(txn, "ops@example.net") == [OK]
    assert txn.pool is backup and txn.tried == [
        {"upstream": "primary", "reason": "primary: cannot connect"}
    ]
    assert cooldowns.cooling("primary", 1059) and not cooldowns.cooling("primary", 1060)


def test_cool_downs_are_read_on_the_reactors_clock():
    """The order comes from the same clock the cool-down was set on (relay and queue alike)."""
    cooldowns = Cooldowns()
    cooldowns.failed("primary", 1000, 60)
    primary, backup = pool("primary"), pool("backup")
    txn = transaction(primary, backup, cooldowns=cooldowns, clock=clock(1030))
    opened(txn, "ops@example.net")
    assert txn.pool is backup and primary.senders == []


def test_a_busy_pool_is_passed_over_without_a_cool_down():
    """Every connection busy is not the upstream failing: no cool-down."""
    busy = FakePool(CONFIGS["primary"], failure=PoolBusy(POOL_BUSY, "primary: no free connection"))
    cooldowns = Cooldowns()
    txn = transaction(busy, pool("backup"), cooldowns=cooldowns)
    assert opened(txn, "ops@example.net") == [OK]
    assert not cooldowns.cooling("primary", 1000)


def test_a_permanent_refusal_to_give_a_session_stops_the_failover():
    """The upstream's own 5xx, answered 5xx: the next upstream is not tried."""
    refused = Reply(550, "5.7.1", "Account disabled")
    primary = FakePool(CONFIGS["primary"], failure=UpstreamFailure(refused, "primary: no", refused))
    backup = pool("backup")
    txn = transaction(primary, backup)
    assert opened(txn, "ops@example.net") == [refused]
    assert backup.senders == [] and txn.upstream_reply == refused


def test_mail_answered_4xx_on_a_fresh_connection_fails_over_and_keeps_that_session():
    """MAIL 451 on the primary's new connection: the backup delivers; the primary's session
    goes back to its pool (a server that answered is not dropped)."""
    busy = Reply(451, "4.7.0", "Try later")
    primary, backup = pool("primary", MAIL=busy), pool("backup")
    txn = transaction(primary, backup)
    assert opened(txn, "ops@example.net") == [OK]
    assert primary.released == [(primary.session, True)] and primary.fresh_asked == 0
    assert txn.tried == [{"upstream": "primary", "reason": "MAIL answered 451 4.7.0"}]


def test_mail_4xx_on_the_last_upstreams_fresh_connection_keeps_the_session():
    """MAIL 452 on the only upstream's new connection: the app gets it, the session is kept."""
    busy = Reply(452, "4.3.1", "Insufficient system storage")
    txn = transaction(pool("primary", MAIL=busy))
    assert opened(txn, "ops@example.net") == [busy]
    assert txn.pool.released == [(txn.session, True)]


def test_mail_answered_5xx_is_final_and_the_session_stays_reusable():
    """MAIL 550: every recipient gets it, the backup is never asked, the session goes back."""
    refused = Reply(550, "5.7.1", "Sender not allowed")
    primary, backup = pool("primary", MAIL=refused), pool("backup")
    txn = transaction(primary, backup)
    assert opened(txn, "a@example.net", "b@example.net") == [refused, refused]
    assert backup.senders == [] and primary.released == [(primary.session, True)]
    assert txn.audit_fields()["upstream_error"] == "primary: MAIL refused"


def test_mail_4xx_on_the_last_upstream_is_the_answer():
    """No upstream left after a MAIL 4xx: the recipients get that 4xx (raw: 421 stays 421)."""
    closing = Reply(421, "4.7.0", "Too many connections")
    txn = transaction(pool("primary", MAIL=closing))
    assert opened(txn, "ops@example.net") == [closing]
    assert txn.pool.released == [(txn.session, False)]


def test_a_hop_no_longer_configured_is_skipped_and_named():
    """A spooled route may name an upstream a reload removed: the next one is used."""
    backup = pool("backup")
    txn = transaction(backup, route=("gone", "backup"))
    assert opened(txn, "ops@example.net") == [OK]
    assert txn.tried == [{"upstream": "gone", "reason": "not configured"}]


def test_a_route_with_no_configured_upstream_is_unreachable():
    """Nothing of the route is configured: 451 4.4.1, and the audit names the first hop."""
    txn = transaction(route=("gone",))
    assert opened(txn, "ops@example.net") == [replies.UPSTREAM_UNREACHABLE]
    assert txn.audit_fields()["upstream"] == "gone"
    assert txn.failure.reason == "no upstream of the route is configured"


def test_every_upstream_failing_reports_the_last_reason_and_each_tried():
    """All down: the last failure's reply and reason; `upstreams_tried` lists each."""
    down = UpstreamFailure(replies.UPSTREAM_UNREACHABLE, "backup: cannot connect")
    txn = transaction(
        FakePool(CONFIGS["primary"], failure=UNREACHABLE), FakePool(CONFIGS["backup"], failure=down)
    )
    assert opened(txn, "ops@example.net") == [replies.UPSTREAM_UNREACHABLE]
    fields = txn.audit_fields()
    assert fields["upstream_error"] == "backup: cannot connect"
    assert [t["upstream"] for t in fields["upstreams_tried"]] == ["primary", "backup"]


def test_an_abort_while_the_session_opens_returns_it_unused():
    """The app left (or the queue stops) during acquire: the session goes back, nothing is sent."""
    primary = pool("primary")
    primary.hold()
    txn = transaction(primary, pool("backup"))
    d = defer.Deferred.fromCoroutine(txn.open(["ops@example.net"]))
    txn.abort("client sent QUIT", replies.SHUTTING_DOWN)
    primary.give()
    assert fired(d) == [replies.SHUTTING_DOWN]
    assert primary.session.lines == [] and primary.released == [(primary.session, True)]
    assert txn.audit_fields()["gateway_abort"] == "client sent QUIT"


def test_an_abort_while_connecting_fails_over_no_further():
    """Aborted while the primary's connection fails: the backup is not opened."""
    primary, backup = FakePool(CONFIGS["primary"], failure=UNREACHABLE), pool("backup")
    primary.hold()
    txn = transaction(primary, backup)
    d = defer.Deferred.fromCoroutine(txn.open(["ops@example.net"]))
    txn.abort("gateway stopping")
    primary.give()
    assert fired(d) == [replies.UPSTREAM_LOST] and backup.senders == []
    assert txn.audit_fields()["gateway_abort"] == "gateway stopping"


def test_the_null_sender_asks_the_pool_for_the_empty_sender():
    """`<>` is "" for the pool (so username = "$sender" refuses it as the null sender)."""
    primary = pool("primary")
    opened(transaction(primary, sender=""), "ops@example.net")
    assert primary.senders == [""] and primary.session.lines[0] == b"MAIL FROM:<>"


# --- MAIL and RCPT ----------------------------------------------------------------------------


def test_mail_carries_size_and_body_where_offered():
    """SIZE and BODY=8BITMIME go out when the upstream offers them."""
    primary = pool("primary")
    opened(transaction(primary, size=1234, body="8BITMIME"), "ops@example.net")
    assert primary.session.lines == [
        b"MAIL FROM:<app@example.com> SIZE=1234 BODY=8BITMIME",
        b"RCPT TO:<ops@example.net>",
    ]


def test_8bit_mail_to_an_upstream_without_8bitmime_is_refused_unsent():
    """BODY=8BITMIME and no 8BITMIME offered: 554 5.6.3, nothing sent, the session reusable."""
    primary = pool("primary", capabilities={"SIZE": "0"})
    txn = transaction(primary, body="8BITMIME")
    assert opened(txn, "ops@example.net") == [replies.UPSTREAM_NO_8BIT]
    assert primary.session.lines == [] and primary.released == [(primary.session, True)]
    assert txn.failure.reason == "primary: 8BITMIME not offered"


def test_pipelining_sends_mail_and_every_rcpt_before_the_first_reply():
    """With PIPELINING offered, MAIL and all RCPTs go out in one flight (RFC 2920)."""
    primary = pool("primary", capabilities={"PIPELINING": ""})
    primary.session.hold = True
    txn = transaction(primary)
    d = defer.Deferred.fromCoroutine(txn.open(["a@example.net", "b@example.net"]))
    assert [line.split(b":")[0] for line in primary.session.lines] == [
        b"MAIL FROM",
        b"RCPT TO",
        b"RCPT TO",
    ]
    primary.session.answer()
    assert fired(d) == [OK, OK]


def test_without_pipelining_each_rcpt_waits_for_the_previous_reply():
    """No PIPELINING: one command at a time."""
    primary = pool("primary", capabilities={})
    primary.session.hold = True
    d = defer.Deferred.fromCoroutine(transaction(primary).open(["a@example.net", "b@example.net"]))
    assert len(primary.session.lines) == 1
    primary.session.answer()
    assert len(primary.session.lines) == 2
    primary.session.answer()
    primary.session.answer()
    assert fired(d) == [OK, OK]


def test_a_recipient_with_a_control_character_is_refused_and_the_rest_go():
    """A hand-edited spool address with CR LF is never sent; the other recipients are."""
    primary = pool("primary")
    answers = opened(transaction(primary), "ops@example.net\r\nRSET", "b@example.net")
    assert answers == [replies.BAD_SPOOLED_ADDRESS, OK]
    assert b"RSET" not in b"".join(primary.session.lines)


def test_a_sender_with_a_control_character_takes_no_session():
    """The whole transaction is refused before any upstream is asked."""
    primary = pool("primary")
    txn = transaction(primary, sender="app@example.com\r\nRCPT TO:<x@evil>")
    assert opened(txn, "ops@example.net") == [replies.BAD_SPOOLED_ADDRESS]
    assert primary.senders == []


def test_a_non_ascii_address_needs_smtputf8_offered():
    """Non-ASCII goes out as UTF-8 with SMTPUTF8 only where offered; otherwise 553 5.6.7."""
    plain = pool("primary")
    assert opened(transaction(plain), "jörg@example.net", "b@example.net") == [
        replies.UPSTREAM_NO_SMTPUTF8,
        OK,
    ]
    assert plain.session.lines == [b"MAIL FROM:<app@example.com>", b"RCPT TO:<b@example.net>"]
    utf8 = pool("primary", capabilities={"SMTPUTF8": ""})
    assert opened(transaction(utf8), "jörg@example.net") == [OK]
    assert utf8.session.lines == [
        b"MAIL FROM:<app@example.com> SMTPUTF8",
        "RCPT TO:<jörg@example.net>".encode(),
    ]


def test_a_session_that_can_take_no_recipient_goes_back_unused():
    """Every recipient refused before MAIL: the session returns to the pool and is not kept."""
    primary = pool("primary", capabilities={})
    txn = transaction(primary)
    assert run(txn.rcpt("jörg@example.net")) == replies.UPSTREAM_NO_SMTPUTF8
    assert txn.session is None and primary.released == [(primary.session, True)]
    assert run(txn.rcpt("b@example.net")) == OK  # the next recipient opens a transaction of its own
    assert primary.session.lines[0] == b"MAIL FROM:<app@example.com>"


def test_a_later_rcpt_is_forwarded_on_the_open_session():
    """Cut-through: the second recipient goes on the session the first one opened."""
    primary = pool("primary", RCPT=[OK, Reply(550, "5.1.1", "No such user")])
    txn = transaction(primary)
    assert run(txn.rcpt("a@example.net")) == OK
    assert run(txn.rcpt("b@example.net")) == Reply(550, "5.1.1", "No such user")
    assert txn.upstream_reply == Reply(550, "5.1.1", "No such user")


def test_a_lost_connection_during_rcpts_answers_the_rest_with_the_loss():
    """The connection breaks after the first RCPT: the others get 451, the session is dropped."""
    lost = UpstreamFailure(replies.UPSTREAM_LOST, "primary: upstream closed the connection")
    primary = pool("primary", capabilities={}, RCPT=[OK, lost])
    txn = transaction(primary)
    answers = opened(txn, "a@example.net", "b@example.net", "c@example.net")
    assert answers == [OK, replies.UPSTREAM_LOST, replies.UPSTREAM_LOST]
    assert primary.released == [(primary.session, False)]


# --- DATA, the body, the final dot ------------------------------------------------------------


def delivered(txn: Transaction, body: bytes = b".dot\r\nline\r\n") -> Reply:
    opened(txn, "ops@example.net")
    assert run(txn.data()).code == 354
    txn.write(body)
    return run(txn.end())


def test_a_delivered_message_is_dot_stuffed_and_the_session_goes_back():
    """The body goes out dot-stuffed, then the final dot; the 250 hands the session back."""
    primary = pool("primary")
    assert delivered(transaction(primary)) == QUEUED
    assert primary.session.body == b"..dot\r\nline\r\n.\r\n"
    assert primary.released == [(primary.session, True)]


def test_a_421_after_the_dot_closes_the_session():
    """The upstream's 421 after the body: its reply stands, the session is not reused."""
    closing = Reply(421, "4.4.2", "Closing")
    primary = pool("primary", END=closing)
    txn = transaction(primary)
    assert delivered(txn) == closing and txn.dot_sent
    assert primary.released == [(primary.session, False)]


def test_data_refused_with_a_real_reply_keeps_the_session():
    """DATA answered 554: that refusal is the answer, the session may carry the next message."""
    refused = Reply(554, "5.7.0", "No DATA for you")
    primary = pool("primary", DATA=refused)
    txn = transaction(primary)
    opened(txn, "ops@example.net")
    assert run(txn.data()) == refused
    assert primary.released == [(primary.session, True)]


def test_data_answered_with_nonsense_is_a_protocol_error_and_closes():
    """DATA answered 250 (not 354): 451 4.5.0, and the session is not reused."""
    primary = pool("primary", DATA=Reply(250, "2.0.0", "Sure"))
    txn = transaction(primary)
    opened(txn, "ops@example.net")
    assert run(txn.data()).enhanced == "4.5.0"
    assert primary.released == [(primary.session, False)]


def regions(*chunks: bytes, error: OSError | None = None) -> Iterator[bytes]:
    yield from chunks
    if error is not None:
        raise error


def test_a_body_that_cannot_be_read_fails_without_the_final_dot():
    """A spool read error while sending: no final dot, a 451, the session dropped."""
    primary = pool("primary")
    txn = transaction(primary)
    opened(txn, "ops@example.net")
    run(txn.data())
    run(txn.send_body(regions(b"Subject: x\r\n", error=OSError(5, "Input/output error"))))
    assert run(txn.end()) == replies.UPSTREAM_LOST and not txn.dot_sent
    assert txn.failure.reason == "spool read failed: Input/output error"
    assert not primary.session.body.endswith(b".\r\n")


# --- the record -------------------------------------------------------------------------------


def test_audit_fields_name_the_upstream_its_tls_and_who_we_were():
    """The upstream, its TLS session, the AUTH user and the upstream's last reply."""
    primary = pool("primary")
    primary.session.oauth_grant = "client_credentials"
    txn = transaction(primary)
    delivered(txn)
    assert txn.audit_fields() == {
        "upstream": "primary",
        "upstream_host": "primary.example.net",
        "upstream_port": CONFIGS["primary"].port,
        "tls_mode": CONFIGS["primary"].tls,
        "tls_version": "TLSv1.3",
        "tls_cipher": "TLS_AES_256_GCM_SHA384",
        "peer_cert_sha256": "ab" * 32,
        "auth_user": "relay@example.test",
        "oauth_grant": "client_credentials",
        "auth_mechanism": "PLAIN",
        "upstream_code": 250,
        "upstream_enhanced": "2.0.0",
        "upstream_reply": "Queued as 42",
    }


def test_an_abort_after_an_upstream_error_keeps_the_upstreams_reason():
    """`abort` after a failure changes nothing the audit says."""
    txn = transaction(FakePool(CONFIGS["primary"], failure=UNREACHABLE))
    opened(txn, "ops@example.net")
    txn.abort("client sent RSET")
    fields = txn.audit_fields()
    assert fields["upstream_error"] == "primary: cannot connect" and "gateway_abort" not in fields
