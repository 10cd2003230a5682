"""Class 4c, how TLS with an upstream ends when it fails: an alert, and words that say which side.

A certificate the gateway refuses (wrong name, no matching pin, untrusted issuer) ends the
handshake with a TLS alert the server receives — it logs "alert bad certificate", not a
connection reset — because the name and pins are checked in OpenSSL's verify callback, while
an alert can still be sent. A handshake that fails for another reason (the server's
protocol-version alert, a version below 1.2) is reported as a handshake failure, not as
verification: the app's reply text and the audit's reason say which it was. The servers are
Python's ``ssl`` module on loopback (the scripted upstream), whose handshake error names the
alert it received.
"""

from __future__ import annotations

import re
import ssl

import pytest

from tests.conftest import relay_all, upstream_table
from tests.security.conftest import try_recipient
from tests.security.test_upstream_cert_names import certificate
from tests.security.test_upstream_tls import der_sha256

MODES = ["starttls", "implicit"]
REFUSED_CERTIFICATE = re.compile(r"ALERT_(BAD_CERTIFICATE|CERTIFICATE_UNKNOWN)")


def refused(case: str, ca, server_cert, tmp_path) -> tuple[object, dict, str]:
    """(certificate served, upstream settings, the reason in the audit) for a refused certificate."""
    if case == "wrong-name":
        return ca.issue("alert-wrong", "other.example"), {}, "does not match host name localhost"
    if case == "no-subject-alt-name":  # service-identity raises CertificateError, not a mismatch
        return certificate(ca, str(tmp_path), case), {}, "no subjectAltName"
    other = ca.issue("alert-pinned", "localhost")
    return server_cert, {"pin_sha256": [der_sha256(other)]}, "matches no pin_sha256"


@pytest.mark.parametrize("case", ["wrong-name", "no-subject-alt-name", "pin-mismatch"])
@pytest.mark.parametrize("mode", MODES)
def test_refused_certificate_ends_with_an_alert_to_the_server(
    case, mode, scripted, start_gateway, ca, server_cert, tmp_path
):
    """Prevents a failed name or pin check from ending in a bare close the server logs as a reset."""
    cert, settings, _ = refused(case, ca, server_cert, tmp_path)
    upstream = scripted(context=cert.server_context(), tls=mode)
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file, **settings)))
    assert try_recipient(gw.port)[0] == 451
    gw.stop()  # a session kept in the pool ends with the gateway's QUIT
    [connection] = upstream.wait_closed()
    assert connection.handshake is not None
    assert REFUSED_CERTIFICATE.search(connection.handshake), connection.handshake
    assert connection.commands("tls") == []


@pytest.mark.parametrize("case", ["wrong-name", "no-subject-alt-name", "pin-mismatch"])
def test_refused_certificate_is_reported_as_verification(
    case, scripted, start_gateway, ca, server_cert, tmp_path
):
    """A certificate we refused: "verification failed" to the app, and in the audit's reason."""
    cert, settings, reason = refused(case, ca, server_cert, tmp_path)
    upstream = scripted(context=cert.server_context())
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file, **settings)))
    code, text = try_recipient(gw.port)
    assert code == 451 and text.startswith(b"4.7.5 Upstream TLS verification failed: "), text
    assert reason.encode() in text
    [result] = gw.audit.wait_for("message.result")
    assert result["upstream_error"].startswith("up: TLS verification failed: "), result
    assert reason in result["upstream_error"]


@pytest.mark.parametrize("mode", MODES)
def test_server_protocol_version_alert_is_a_handshake_failure(
    mode, scripted, start_gateway, ca, server_cert
):
    """min_tls_version = "1.3" against a TLS 1.2 server: its alert is reported as the handshake's."""
    context = server_cert.server_context(maximum=ssl.TLSVersion.TLSv1_2)
    upstream = scripted(context=context, tls=mode)
    table = upstream_table(upstream, ca.ca_file, min_tls_version="1.3")
    gw = start_gateway(relay_all(table))
    code, text = try_recipient(gw.port)
    assert code == 451 and text.startswith(b"4.7.5 Upstream TLS handshake failed: "), text
    assert b"protocol version" in text and b"verification" not in text
    [result] = gw.audit.wait_for("message.result")
    assert result["upstream_error"].startswith("up: TLS handshake failed: "), result
    assert "verification" not in result["upstream_error"]
    gw.stop()  # a session kept in the pool ends with the gateway's QUIT
    [connection] = upstream.wait_closed()
    assert connection.handshake is not None and connection.handshake.startswith("failed")
    assert connection.commands("tls") == []
