"""Issue 12 item 4: a long pipeline is answered in a loop, never one call deeper per command.

The class: replies that are ready at once (here: every RCPT after the upstream refused the
session gets an already-fired Deferred; also whole pipelined messages after 354) must not
grow the stack. Every command gets exactly one reply, in order, and the transaction its
``message.result``.
"""

from __future__ import annotations

import pytest

from tests.conftest import relay_all, upstream_table
from tests.security.pipelined import converse, dialogue
from tests.security.scripted_upstream import Script


@pytest.fixture
def failed_upstream_gateway(scripted, start_gateway, ca):
    """A gateway whose upstream refuses every session (so each RCPT is answered at once)."""
    upstream = scripted(Script(greeting=b"554 5.3.2 not today\r\n"))
    table = upstream_table(upstream, ca.ca_file)
    doc = relay_all(table, max_errors=10000, max_rcpt_commands=10000, max_recipients=10000)
    return start_gateway(doc)


@pytest.mark.parametrize("count", [300, 5000])
def test_pipelined_rcpts_after_the_upstream_failed_get_one_reply_each(
    count, failed_upstream_gateway
):
    """EHLO, MAIL, `count` RCPTs and QUIT in one write: count + 3 replies, in order, one result."""
    gw = failed_upstream_gateway
    rcpts = [b"RCPT TO:<r%d@example.net>" % i for i in range(count)]
    payload = dialogue(b"EHLO app.test", b"MAIL FROM:<app@example.com>", *rcpts, b"QUIT")
    greeting, answers = converse(gw.port, payload)
    assert greeting.startswith(b"220 ")
    assert len(answers) == count + 3
    assert answers[0].startswith(b"250 ") and answers[1].startswith(b"250 2.1.0")
    refusals = answers[2:-1]
    assert all(a[:1] in (b"4", b"5") and not a.startswith(b"421") for a in refusals)
    assert len(set(refusals[1:])) == 1  # after the first, the same remembered failure
    assert answers[-1] == b"221 2.0.0 Bye"
    [result] = gw.audit.wait_for("message.result")
    assert len(result["recipients"]) + result.get("recipients_omitted", 0) == count
    gw.audit.wait_for("session.closed")
    assert gw.audit.named("gateway.error") == []


def test_pipelined_transactions_are_answered_in_a_loop(scripted, start_gateway, ca):
    """Thousands of MAIL/RSET pairs written at once: each answered at once, in order."""
    upstream = scripted(Script(greeting=b"554 5.3.2 not today\r\n"))
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file), max_errors=10000))
    count = 2000
    message = dialogue(b"MAIL FROM:<app@example.com>", b"RSET")
    payload = dialogue(b"HELO app.test") + message * count + dialogue(b"QUIT")
    _, answers = converse(gw.port, payload)
    assert len(answers) == 2 + 2 * count and answers[-1] == b"221 2.0.0 Bye"
    assert answers[1:-1:2] == [b"250 2.1.0 Sender OK"] * count
    assert answers[2:-1:2] == [b"250 2.0.0 Reset OK"] * count
    assert gw.audit.named("gateway.error") == []
