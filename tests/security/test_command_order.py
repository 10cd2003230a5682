"""Issue 12 item 15: each out-of-order command gets its own, correct ``503 5.5.1`` text.

The class: a command sent before the step it needs (or inside a transaction it may not
interrupt) is answered ``503 5.5.1`` with a text naming that command and what it lacks,
never another command's text ("Need MAIL before RCPT" to DATA); a command that is not
offered (BDAT: no CHUNKING) is not recognised rather than "out of order".
"""

from __future__ import annotations

import pytest

from gateway.policy.passwords import make_hash
from tests.conftest import relay_all, upstream_table
from tests.security.pipelined import converse, dialogue

MAIL = b"MAIL FROM:<app@example.com>"
RCPT = b"RCPT TO:<ops@example.net>"
REFUSED_RCPT = b"RCPT TO:<ops@example.org>"  # no rule: 550

# (setup commands, the out-of-order command, the reply it must get)
CASES = {
    "RCPT before MAIL": ([b"EHLO a.test"], RCPT, b"503 5.5.1 Need MAIL before RCPT"),
    "DATA before MAIL": ([b"EHLO a.test"], b"DATA", b"503 5.5.1 Need MAIL before DATA"),
    "DATA before EHLO": ([], b"DATA", b"503 5.5.1 Need MAIL before DATA"),
    "DATA before RCPT": ([b"EHLO a.test", MAIL], b"DATA", b"503 5.5.1 Need RCPT before DATA"),
    "MAIL before EHLO": ([], MAIL, b"503 5.5.1 Send EHLO or HELO first"),
    "MAIL inside a transaction": (
        [b"EHLO a.test", MAIL],
        MAIL,
        b"503 5.5.1 Sender already given; RSET first",
    ),
    "RCPT after RSET": ([b"EHLO a.test", MAIL, b"RSET"], RCPT, b"503 5.5.1 Need MAIL before RCPT"),
    "DATA after RSET": (
        [b"EHLO a.test", MAIL, RCPT, b"RSET"],
        b"DATA",
        b"503 5.5.1 Need MAIL before DATA",
    ),
    "DATA with every recipient refused": (
        [b"EHLO a.test", MAIL, REFUSED_RCPT],
        b"DATA",
        b"554 5.5.1 No valid recipients",
    ),
    "AUTH before EHLO": ([], b"AUTH PLAIN", b"503 5.5.1 Send EHLO or HELO first"),
    "AUTH inside a transaction": (
        [b"EHLO a.test", MAIL],
        b"AUTH PLAIN",
        b"503 5.5.1 AUTH not allowed during a mail transaction",
    ),
    "BDAT before MAIL (not offered)": ([b"EHLO a.test"], b"BDAT 10 LAST", b"500 5.5.2"),
    "BDAT inside a transaction (not offered)": (
        [b"EHLO a.test", MAIL, RCPT],
        b"BDAT 10 LAST",
        b"500 5.5.2",
    ),
}


@pytest.fixture(scope="module")
def app_hash() -> str:
    return make_hash("order-test-password-123", "scrypt")


@pytest.mark.parametrize("case", list(CASES))
def test_out_of_order_command_gets_its_own_reply(case, app_hash, make_upstream, start_gateway, ca):
    """The command's own 503 (or the right other reply), and the session goes on."""
    setup, command, expected = CASES[case]
    doc = relay_all(upstream_table(make_upstream(), ca.ca_file))
    doc["rules"][0]["recipients"] = ["*@example.net"]
    doc["apps"] = {"billing": {"password_hash": app_hash, "senders": ["app@example.com"]}}
    gw = start_gateway(doc)
    _, answers = converse(gw.port, dialogue(*setup, command, b"NOOP", b"QUIT"))
    assert len(answers) == len(setup) + 3
    assert answers[len(setup)].startswith(expected), answers[len(setup)]
    assert answers[-2:] == [b"250 2.0.0 OK", b"221 2.0.0 Bye"]


def test_every_need_reply_names_the_command_it_answers():
    """Each "Need X before Y" reply in the catalogue is sent to Y only (by the table above)."""
    texts = {expected for _, _, expected in CASES.values() if b"Need" in expected}
    for text in texts:
        verb = text.rsplit(b" ", 1)[1]
        assert all(command.startswith(verb) for _, command, e in CASES.values() if e == text)
