"""Never a 2xx to the app unless the upstream accepted: odd upstream codes are not passed on as success."""

from __future__ import annotations

import smtplib

import pytest

from tests.conftest import relay_all, upstream_table

BODY = b"Subject: t\r\n\r\nbody\r\n"


@pytest.mark.parametrize(
    "field,reply",
    [
        ("mail_reply", b"251 2.1.0 ok, sort of\r\n"),
        ("rcpt_reply", b"354 go ahead\r\n"),
        ("data_reply", b"250 2.0.0 ok\r\n"),
        ("data_end_reply", b"354 more please\r\n"),
    ],
)
def test_unexpected_positive_upstream_code_is_not_success(
    field, reply, scripted, start_gateway, ca
):
    """Prevents an upstream's wrong-but-positive code (251 to MAIL, 354 to RCPT, 250 to DATA, 3xx after
    the body) from reaching the app as acceptance: the app gets 451 4.5.0 and the audit says not relayed."""
    upstream = scripted(**{field: reply})
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    codes = []
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo("app.test")
        client.mail("app@example.com")
        codes.append(client.rcpt("ops@example.net")[0])
        if codes[-1] == 250:
            codes.append(client.docmd("DATA")[0])
            if codes[-1] == 354:
                client.send(BODY + b".\r\n")
                codes.append(client.getreply()[0])
    assert codes[-1] == 451, codes
    [result] = gw.audit.wait_for("message.result")
    assert result["outcome"] != "relayed"
