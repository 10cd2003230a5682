"""Class 8b, audit fidelity: the audit records the upstream's reply codes as the server sent them.

A reply without an RFC 3463 enhanced code (a ``334`` has none by nature; Exim
sends none at all) is recorded with ``upstream_enhanced`` null, never with a
generic ``X.0.0`` the server did not say; the reason text does not invent one
either. The app's own reply may still get the generic code of its class: it was
promised ENHANCEDSTATUSCODES.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import relay_all, upstream_table
from tests.security.conftest import try_recipient
from tests.security.scripted_upstream import Script

AUTH_PLAIN = ("PIPELINING", "AUTH PLAIN")

# case -> (script, the app's reply code and enhanced code, the audit's upstream code)
CASES = {
    "334-after-cancel": (
        Script(capabilities_tls=AUTH_PLAIN, auth_reply=b"334 \r\n", other_reply=b"334 \r\n"),
        (451, b"4.7.0"),
        334,
    ),
    "334-text-after-cancel": (
        Script(
            capabilities_tls=AUTH_PLAIN,
            auth_reply=b"334 eyJzdGF0dXMiOiI0MDEifQ==\r\n",
            other_reply=b"334 UGFzc3dvcmQ6\r\n",
        ),
        (451, b"4.7.0"),
        334,
    ),
    "535-without-code": (
        Script(capabilities_tls=AUTH_PLAIN, auth_reply=b"535 Authentication failed\r\n"),
        (451, b"4.7.0"),
        535,
    ),
    "mail-451-without-code": (
        Script(mail_reply=b"451 Try again later\r\n"),
        (451, b"4.0.0"),
        451,
    ),
    "rcpt-550-without-code": (
        Script(rcpt_reply=b"550 No such user here\r\n"),
        (550, b"5.0.0"),
        550,
    ),
    "rcpt-550-other-class-code": (
        Script(rcpt_reply=b"550 2.1.5 contradicts itself\r\n"),
        (550, b"5.0.0"),
        550,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_audit_keeps_the_enhanced_code_the_upstream_sent(case, scripted, start_gateway, ca):
    """Prevents the audit from recording an enhanced code (say 3.0.0) the upstream never sent."""
    script, (app_code, app_enhanced), upstream_code = CASES[case]
    upstream = scripted(script)
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    code, text = try_recipient(gw.port)
    assert (code, text.split(b" ")[0]) == (app_code, app_enhanced), text
    [result] = gw.audit.wait_for("message.result")
    assert result["upstream_code"] == upstream_code
    assert result["upstream_enhanced"] is None, result
    said = json.dumps({k: v for k, v in result.items() if k.startswith("upstream")})
    assert not any(made_up in said for made_up in ("3.0.0", "4.0.0", "5.0.0")), said


@pytest.mark.parametrize(
    "field,wire,code,enhanced",
    [
        ("mail_reply", b"251 2.1.0 ok, sort of\r\n", 251, "2.1.0"),
        ("mail_reply", b"354 go on\r\n", 354, None),
        ("rcpt_reply", b"354 go ahead\r\n", 354, None),
        ("rcpt_reply", b"220 2.0.0 hello again\r\n", 220, "2.0.0"),
    ],
)
def test_audit_keeps_a_nonsense_reply_as_the_upstream_sent_it(
    field, wire, code, enhanced, scripted, start_gateway, ca
):
    """The app gets 451 4.5.0 for a reply that makes no sense; the audit keeps the upstream's own."""
    upstream = scripted(**{field: wire})
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    reply = try_recipient(gw.port)
    assert reply[0] == 451 and reply[1].startswith(b"4.5.0")
    [result] = gw.audit.wait_for("message.result")
    assert (result["upstream_code"], result["upstream_enhanced"]) == (code, enhanced)
    assert "4.5.0" not in json.dumps({k: v for k, v in result.items() if k.startswith("upstream")})


def test_audit_keeps_an_enhanced_code_that_was_sent(scripted, start_gateway, ca):
    """The control: an enhanced code the upstream did send is recorded as sent."""
    upstream = scripted(rcpt_reply=b"550 5.1.1 No such user here\r\n")
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    assert try_recipient(gw.port) == (550, b"5.1.1 No such user here")
    [result] = gw.audit.wait_for("message.result")
    assert (result["upstream_code"], result["upstream_enhanced"]) == (550, "5.1.1")
