"""Issue 11: real servers' per-connection limits, connection-rate limits, and connections kept.

The upstreams are aiosmtpd (`gateway.testing.submission`) taught three habits of real servers:
OpenSMTPD's ``452 4.5.3 ... Too many messages sent`` at MAIL after N messages on a connection,
Exim's ``421 too many messages in this connection`` at MAIL (and the close), and a ``421``
greeting (a connection-rate limit). Each counts its connections and its refusals.
"""

from __future__ import annotations

import smtplib
from typing import Any

import pytest

from gateway.testing.submission import _SMTP, SubmissionServer
from tests.conftest import relay_all, upstream_table
from tests.integration.queueing import message, queue_document, send

N = 3  # messages the limited upstream takes per connection
OPENSMTPD = "452 4.5.3 Too many recipients: Too many messages sent"
EXIM = "421 too many messages in this connection"
BUSY_GREETING = "421 4.7.0 upstream.test Too many connections, try later"


class _Habits(_SMTP):
    """aiosmtpd with a per-connection MAIL limit and a scriptable greeting."""

    mails = 0  # MAIL commands accepted on this connection

    async def _handle_client(self) -> None:
        owner: LimitedServer = self._owner  # type: ignore[assignment]
        if owner.greeting:
            owner.refusals += 1
            await self.push(owner.greeting)
            self.transport.close()
            return
        await super()._handle_client()

    async def smtp_MAIL(self, arg: str) -> None:  # noqa: N802
        owner: LimitedServer = self._owner  # type: ignore[assignment]
        if owner.refusal and self.session.authenticated and self.mails >= owner.max_mails:
            owner.refusals += 1
            await self.push(owner.refusal)
            if owner.refusal.startswith("421"):  # as Exim does: say it and close
                self._handler_coroutine.cancel()
                self.transport.close()
            return
        await super().smtp_MAIL(arg)
        if self.envelope.mail_from is not None:
            self.mails += 1


class LimitedServer(SubmissionServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refusal: str | None = None  # said at MAIL once a connection carried `max_mails`
        self.max_mails = N
        self.greeting: str | None = None  # said instead of 220 (then the close)
        self.refusals = 0

    def _factory(self) -> Any:
        smtp = super()._factory()
        smtp.__class__ = _Habits
        smtp._smtp_methods["MAIL"] = smtp.smtp_MAIL  # aiosmtpd binds its commands at __init__
        return smtp


@pytest.fixture
def limited(server_cert, reactor):
    servers: list[LimitedServer] = []

    def make(refusal: str | None = None, greeting: str | None = None) -> LimitedServer:
        from tests.conftest import PASSWORD, USER

        server = LimitedServer("starttls", server_cert.server_context(), {USER: PASSWORD})
        server.refusal, server.greeting = refusal, greeting
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def relay_messages(port: int, count: int) -> list[int]:
    codes = []
    for number in range(count):
        codes.append(send(port, message(number))[0])
    return codes


@pytest.mark.parametrize("refusal", [OPENSMTPD, EXIM], ids=["opensmtpd-452", "exim-421"])
def test_relay_retries_on_a_fresh_connection_and_learns_the_limit(
    limited, start_gateway, ca, refusal
):
    """3N relayed messages: every app gets 250; 3 connections, one refused MAIL, no failure."""
    upstream = limited(refusal)
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    assert relay_messages(gw.port, 3 * N) == [250] * (3 * N)
    assert len(upstream.wait_for(3 * N)) == 3 * N
    assert (upstream.connections, upstream.refusals) == (3, 1)
    results = gw.audit.wait_for("message.result", 3 * N)
    assert [r["outcome"] for r in results] == ["relayed"] * (3 * N)
    assert not any("upstream_error" in r for r in results)
    retried = [r["connection_retried"] for r in results if "connection_retried" in r]
    assert retried == [{"carried": N, "reply": retried[0]["reply"], "learned_limit": N}]


@pytest.mark.parametrize("refusal", [OPENSMTPD, EXIM], ids=["opensmtpd-452", "exim-421"])
def test_queue_retries_on_a_fresh_connection_and_learns_the_limit(
    limited, start_gateway, ca, tmp_path, refusal
):
    """3N queued messages: all delivered at the first attempt; 3 connections, one refused MAIL."""
    upstream = limited(refusal)
    table = upstream_table(upstream, ca.ca_file, max_connections=1)
    gw = start_gateway(queue_document(table, str(tmp_path / "spool")))
    assert relay_messages(gw.port, 3 * N) == [250] * (3 * N)
    assert len(upstream.wait_for(3 * N)) == 3 * N
    attempts = gw.audit.wait_for("delivery.attempt", 3 * N)
    assert all(a["recipients"][0]["result"] == "delivered" for a in attempts)
    assert not any("upstream_error" in a for a in attempts)
    assert (upstream.connections, upstream.refusals) == (3, 1)
    assert len(gw.audit.wait_for("message.result", 3 * N)) == 3 * N


@pytest.mark.parametrize("budget", [{}, {"pace": "100/minute"}], ids=["no-budget", "paced"])
def test_a_421_greeting_cools_the_upstream_down_and_fails_over(limited, start_gateway, ca, budget):
    """Primary greets 421: the backup delivers, the audit says why, the next message skips it.
    With a provider budget too: a 421 at the greeting (before AUTH) limits us as a client, so
    the upstream cools down; it is not read as the throttling of a sending identity."""
    primary, backup = limited(greeting=BUSY_GREETING), limited()
    document = relay_all(upstream_table(primary, ca.ca_file, failover_cooldown=300, **budget))
    document["upstreams"]["backup"] = upstream_table(backup, ca.ca_file)
    document["rules"][0]["upstream"] = ["up", "backup"]
    gw = start_gateway(document)
    assert relay_messages(gw.port, 2) == [250, 250]
    assert len(backup.wait_for(2)) == 2
    assert primary.connections == 1, "the primary was tried again during its cool-down"
    first, second = gw.audit.wait_for("message.result", 2)
    assert first["upstream"] == "backup"
    assert first["upstreams_tried"] == [
        {"upstream": "up", "reason": "up: greeting answered 421 4.7.0"}
    ]
    # cooling down, the primary is tried last (not at all, the backup took it): nothing to record
    assert second["upstream"] == "backup" and "upstreams_tried" not in second, second


def test_a_421_greeting_on_the_only_upstream_is_451_for_the_app(limited, start_gateway, ca):
    """No upstream left after the 421 greeting: the app gets 451 4.4.0, never the 421."""
    upstream = limited(greeting=BUSY_GREETING)
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo("app.test")
        client.mail("app@example.com")
        code, text = client.rcpt("ops@example.net")
    assert (code, text[:5]) == (451, b"4.4.0")


REFUSALS = {
    "recipient-550": ("rcpt", {"ops@example.net": "550 5.1.1 No such user"}),
    "mail-550": ("mail", "550 5.7.1 Sender not allowed"),
    "mail-451-fresh": ("mail", "451 4.3.0 Try again later"),
    "data-554": ("data", "554 5.6.0 Message refused"),
}


@pytest.mark.parametrize("what", sorted(REFUSALS))
def test_a_refused_message_does_not_cost_a_new_connection(limited, start_gateway, ca, what):
    """A refusal at RCPT, MAIL or after the body, then a good message: one upstream connection."""
    upstream = limited()
    attribute, value = REFUSALS[what]
    setattr(upstream.script, attribute, value)
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo("app.test")
        client.mail("app@example.com")
        code, _ = client.rcpt("ops@example.net")
        if code == 250:
            code, _ = client.data(message(0))
        assert code >= 400
        client.rset()
    setattr(upstream.script, attribute, type(value)())  # the upstream takes mail again
    assert send(gw.port, message(1))[0] == 250
    assert len(upstream.wait_for(1)) == 1
    assert upstream.connections == 1
