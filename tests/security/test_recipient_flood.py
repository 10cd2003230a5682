"""Issue 12 item 8: refused recipients are bounded, in commands, in errors and in the audit.

The class: a transaction may not grow without bound through RCPTs that are not accepted.
``max_recipients`` still counts accepted ones (RFC 5321 4.5.3.1.8); RCPT commands are capped
by ``listener.max_rcpt_commands`` (then ``421 4.7.0`` and the connection closes); a 4xx to
RCPT counts toward ``max_errors`` like a 5xx (except ``452 4.5.3``, RFC 5321 4.5.3.1.10's
"send the rest in another transaction", which a compliant client acts on); and
``message.result`` lists a bounded number of recipients, counting the rest in
``recipients_omitted``. Sizes are asserted, not times.
"""

from __future__ import annotations

import json

from gateway.inbound.transaction import UNACCEPTED_LISTED
from tests.conftest import relay_all, upstream_table
from tests.security.pipelined import converse, dialogue
from tests.security.scripted_upstream import Script

FLOOD = 60_000
MAX_RESULT_LINE = 32 * 1024  # bytes: a bounded message.result, whatever the flood


def flood(count: int = FLOOD) -> bytes:
    rcpts = [b"RCPT TO:<r%d@example.net>" % i for i in range(count)]
    return dialogue(b"EHLO app.test", b"MAIL FROM:<app@example.com>", *rcpts, b"QUIT")


def result_line(gw) -> str:
    gw.audit.wait_for("message.result")
    gw.audit.wait_for("session.closed")
    [line] = [line for line in gw.audit.lines if '"event":"message.result"' in line]
    return line


def test_rcpt_commands_are_capped_with_421(make_upstream, start_gateway, ca):
    """60,000 RCPTs, one accepted, the rest 452: cut off at max_rcpt_commands, audit line small."""
    upstream = make_upstream()
    doc = relay_all(upstream_table(upstream, ca.ca_file), max_recipients=1, max_errors=10000)
    gw = start_gateway(doc)
    _, answers = converse(gw.port, flood())
    cap = 1000  # the default listener.max_rcpt_commands
    assert len(answers) == 2 + cap + 1
    assert answers[2].startswith(b"250 ")
    assert all(a.startswith(b"452 4.5.3") for a in answers[3 : 2 + cap])
    assert answers[-1].startswith(b"421 4.7.0 Too many RCPT commands")
    line = result_line(gw)
    assert len(line.encode()) < MAX_RESULT_LINE
    result = json.loads(line)
    assert result["limit"] == "listener.max_rcpt_commands"
    assert len(result["recipients"]) == 1 + UNACCEPTED_LISTED
    assert result["recipients_omitted"] == cap - 1 - UNACCEPTED_LISTED
    assert upstream.messages == []
    assert len(gw.audit.text.encode()) < 4 * MAX_RESULT_LINE  # the whole session's audit


def test_max_rcpt_commands_is_a_setting(make_upstream, start_gateway, ca):
    """listener.max_rcpt_commands = 5: the sixth RCPT ends the session with 421 4.7.0."""
    upstream = make_upstream()
    doc = relay_all(upstream_table(upstream, ca.ca_file), max_rcpt_commands=5)
    gw = start_gateway(doc)
    _, answers = converse(gw.port, flood(50))
    assert [a[:3] for a in answers] == [b"250"] * 7 + [b"421"]
    result = json.loads(result_line(gw))
    assert result["limit"] == "listener.max_rcpt_commands" and "recipients_omitted" not in result
    assert [r["result"] for r in result["recipients"]] == ["deferred"] * 5


def test_4xx_to_rcpt_counts_toward_max_errors(scripted, start_gateway, ca):
    """With the default max_errors (20), 451s to RCPT close the session after 20, not 60,000."""
    upstream = scripted(Script(greeting=b"554 5.3.2 not today\r\n"))
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    _, answers = converse(gw.port, flood())
    assert len(answers) == 2 + 20 + 1
    assert all(a.startswith(b"451 4.4.0") for a in answers[2:-1])
    assert answers[-1].startswith(b"421 4.7.0 Too many errors")
    assert len(result_line(gw).encode()) < MAX_RESULT_LINE


def test_a_client_splitting_at_452_is_not_cut_off(make_upstream, start_gateway, ca):
    """150 recipients, max_recipients 100: 50 x 452 4.5.3 do not end the session; 100 get it."""
    upstream = make_upstream()
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    rcpts = [b"RCPT TO:<r%d@example.net>" % i for i in range(150)]
    body = b"DATA", b"Subject: split", b"", b"body", b"."
    payload = dialogue(b"EHLO app.test", b"MAIL FROM:<app@example.com>", *rcpts, *body, b"QUIT")
    _, answers = converse(gw.port, payload)
    assert [a[:3] for a in answers[2:152]] == [b"250"] * 100 + [b"452"] * 50
    assert answers[152:] == [answers[152], answers[153], b"221 2.0.0 Bye"]
    assert answers[152].startswith(b"354") and answers[153].startswith(b"250 ")
    [message] = upstream.wait_for(1)
    assert len(message.recipients) == 100


def test_refused_recipients_beyond_the_listed_ones_are_counted(make_upstream, start_gateway, ca):
    """No rule for the flood's domain (550 each): the audit lists the first ones and counts the rest."""
    upstream = make_upstream()
    doc = relay_all(upstream_table(upstream, ca.ca_file), max_errors=10000, max_rcpt_commands=5000)
    doc["rules"][0]["recipients"] = ["*@example.org"]
    gw = start_gateway(doc)
    _, answers = converse(gw.port, flood(3000))
    assert len(answers) == 3 + 3000 and answers[-1] == b"221 2.0.0 Bye"
    line = result_line(gw)
    assert len(line.encode()) < MAX_RESULT_LINE
    result = json.loads(line)
    assert len(result["recipients"]) == UNACCEPTED_LISTED
    assert result["recipients_omitted"] == 3000 - UNACCEPTED_LISTED
    assert result["outcome"] == "rejected"
