"""Issue 12 item 2: the From: check (``apps.<name>.check_from_header``) sees every From field.

RFC 5322 3.6 allows exactly one From field. With the check on, a message with more than one is
refused however the second is written or wherever it is, and every address the one field names
(groups, lists, comments, whatever a parser makes of it) must be owned by the app; an empty or
unparsable From is refused. The upstream (aiosmtpd, recording what it got) never sees the dot.
"""

from __future__ import annotations

import smtplib

import pytest

from gateway.inbound.from_header import from_problem
from gateway.policy.passwords import make_hash
from gateway.smtp import replies
from gateway.smtp.data import MessageFacts
from gateway.testing.trace import without_trace
from tests.conftest import relay_all, upstream_table

APP_PASSWORD = "billing-app-password-123"
OWNED = b"From: Billing <invoices@billing.example.com>\r\n"
GOOD = OWNED + b"Subject: fine\r\n\r\nbody\r\n"
FILLER = b"".join(b"X-Filler-%d: %s\r\n" % (n, b"f" * 900) for n in range(80))  # > 64 KiB

SECOND_FROM = {
    "plain": OWNED + b"From: ceo@other.example\r\n",
    "upper case, no space": OWNED + b"FROM:ceo@other.example\r\n",
    "tab after the colon": OWNED + b"from:\tceo@other.example\r\n",
    "folded": OWNED + b"From:\r\n ceo@other.example\r\n",
    "after 64 KiB of headers": OWNED + FILLER + b"From: ceo@other.example\r\n",
    "first after 64 KiB, second owned": FILLER + OWNED + b"From: ceo@other.example\r\n",
    "encoded word": OWNED + b"From: =?utf-8?q?ceo=40other.example?=\r\n",
    "group": OWNED + b"From: Board: ceo@other.example;\r\n",
    "comment": OWNED + b"From: (the boss) ceo@other.example\r\n",
    "the same owned address twice": OWNED + OWNED,
    "after other fields": OWNED + b"Subject: x\r\nTo: a@b.example\r\nFrom: ceo@other.example\r\n",
}

NOT_OWNED_ADDRESSES = {
    "a list with a foreign address": b"invoices@billing.example.com, ceo@other.example",
    "a group with a foreign member": b"Team: invoices@billing.example.com, ceo@other.example;",
    "a foreign address in angle brackets after a name": b'"invoices@billing.example.com" <ceo@x.example>',
    "a foreign address, the owned one in a comment": b"ceo@other.example (invoices@billing.example.com)",
    "a second route-addr": b"<invoices@billing.example.com> <ceo@other.example>",
    "CVE-2023-27043 style": b"invoices@billing.example.com)<ceo@other.example>",
    "semicolon list": b"invoices@billing.example.com;ceo@other.example",
    "encoded word as the address": b"=?utf-8?q?ceo=40other.example?=",
    "empty": b"",
    "white space only": b"   ",
    "an empty group": b"undisclosed-recipients:;",
    "unterminated comment": b"invoices@billing.example.com (ceo",
    "two at signs": b"invoices@billing.example.com@other.example",
    "folded second address": b"invoices@billing.example.com,\r\n ceo@other.example",
}

OWNED_FORMS = {
    "bare": b"invoices@billing.example.com",
    "named": b'"Billing, Inc." <invoices@billing.example.com>',
    "encoded name": b"=?utf-8?q?B=C3=BCro?= <invoices@billing.example.com>",
    "group of owned": b"Billing: invoices@billing.example.com, desk@billing.example.com;",
    "folded": b"Billing\r\n <invoices@billing.example.com>",
    "no space after the colon": b"<invoices@billing.example.com>",
}


@pytest.fixture
def checked_gateway(make_upstream, start_gateway, ca):
    upstream = make_upstream()
    document = relay_all(upstream_table(upstream, ca.ca_file))
    document["apps"] = {
        "billing": {
            "password_hash": make_hash(APP_PASSWORD, "scrypt"),
            "senders": ["*@billing.example.com"],
            "check_from_header": True,
        }
    }
    return start_gateway(document), upstream


def _send(gw, upstream, content: bytes) -> tuple[int, bytes]:
    """As the app: send `content`, then GOOD on the same session; the upstream gets only GOOD."""
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo("app.test")
        client.login("billing", APP_PASSWORD)
        client.mail("invoices@billing.example.com")
        client.rcpt("ops@example.net")
        answer = client.data(content)
        if answer[0] != 250:
            client.rset()
            client.sendmail("invoices@billing.example.com", ["ops@example.net"], GOOD)
    upstream.wait_for(1)
    return answer


@pytest.mark.parametrize("name", sorted(SECOND_FROM))
def test_a_second_from_field_is_refused(name, checked_gateway):
    """Prevents a second From (any spelling, anywhere in the header section) from riding
    past a check that read only the first: 550 5.6.0, and the dot never goes upstream."""
    gw, upstream = checked_gateway
    code, text = _send(gw, upstream, SECOND_FROM[name] + b"Subject: x\r\n\r\nbody\r\n")
    assert (code, text) == (550, b"5.6.0 " + replies.FROM_NOT_SINGLE.text.encode())
    [message] = upstream.messages
    assert without_trace(message.content) == GOOD
    result = gw.audit.wait_for("message.result")[0]
    assert result["limit"] == "apps.billing.check_from_header"
    assert "more than one From field" in result["reason"] and result["outcome"] == "rejected"


@pytest.mark.parametrize("name", sorted(NOT_OWNED_ADDRESSES))
def test_every_address_of_the_one_from_field_is_checked(name, checked_gateway):
    """Prevents a foreign, empty or unparsable address in the one From field from passing
    because another address in it (or one reading of it) is owned: 550 5.7.1."""
    gw, upstream = checked_gateway
    content = b"From: " + NOT_OWNED_ADDRESSES[name] + b"\r\nSubject: x\r\n\r\nbody\r\n"
    code, text = _send(gw, upstream, content)
    assert (code, text) == (550, b"5.7.1 " + replies.FROM_NOT_OWNED.text.encode())
    assert [without_trace(m.content) for m in upstream.messages] == [GOOD]
    result = gw.audit.wait_for("message.result")[0]
    assert result["limit"] == "apps.billing.check_from_header" and result["reason"]


@pytest.mark.parametrize("name", sorted(OWNED_FORMS))
def test_owned_from_in_any_well_formed_shape_passes(name, checked_gateway):
    """The control: an owned From written any RFC 5322 way is relayed unchanged."""
    gw, upstream = checked_gateway
    content = b"From: " + OWNED_FORMS[name] + b"\r\nSubject: x\r\n\r\nbody\r\n"
    assert _send(gw, upstream, content)[0] == 250
    [message] = upstream.messages
    assert without_trace(message.content) == content


def test_header_section_over_the_cap_is_refused_not_skipped(checked_gateway):
    """Prevents a From hidden past a scan limit: past 1 MiB of headers the message is refused."""
    gw, upstream = checked_gateway
    huge = OWNED + FILLER * 16 + b"From: ceo@other.example\r\n\r\nbody\r\n"
    code, text = _send(gw, upstream, huge)
    assert (code, text[:5]) == (552, b"5.3.4")
    assert [without_trace(m.content) for m in upstream.messages] == [GOOD]


@pytest.mark.parametrize(
    "content",
    [SECOND_FROM[n] + b"\r\nbody\r\n" for n in sorted(SECOND_FROM)],
    ids=sorted(SECOND_FROM),
)
def test_facts_count_every_from_field_in_any_split(content):
    """The pure part: MessageFacts counts the From fields however the content is split."""
    for size in (1, 7, 1000, len(content)):
        facts = MessageFacts()
        for start in range(0, len(content), size):
            facts.update(content[start : start + size])
        assert facts.from_count >= 2 and facts.section.problem is None
        assert facts.header_from is not None and "billing.example.com" in facts.header_from


def test_from_problem_names_no_address_and_no_secret():
    """The reason names the rule broken, not the attacker's text (it goes to the audit)."""
    from gateway.config.model import App

    app = App("billing", "hash", senders=("*@billing.example.com",), check_from_header=True)
    reason = from_problem(app, "ceo@other.example\x1b[31m", 1)
    assert reason is not None and "ceo" not in reason and "\x1b" not in reason
