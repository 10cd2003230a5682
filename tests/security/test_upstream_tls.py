"""Class 4, upstream TLS: no downgrade, no injection, no unverified peer gets AUTH or mail.

Every case runs against the scripted upstream, whose transcript shows what
mailgate really sent: before TLS, after TLS, and whether AUTH or MAIL ever
went out. Each failing case must give the app a 4xx (the message is deferred,
never lost or bounced) and say why in the audit's ``message.result``.
"""

from __future__ import annotations

import datetime
import hashlib
import socket
import ssl
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.testing.pki import ServerCert, ThrowawayCA, write_pem_pair
from tests.conftest import relay_all, upstream_table
from tests.security.conftest import try_recipient
from tests.security.scripted_upstream import Connection

MODES = ["starttls", "implicit"]


def assert_nothing_sent_over_tls(connection: Connection) -> None:
    assert connection.commands("tls") == [], connection.lines
    assert not connection.saw_auth and not connection.saw_mail


def deferred_result(gw) -> dict:
    [result] = gw.audit.wait_for("message.result")
    assert result["outcome"] == "deferred"
    return result


# --- STARTTLS response injection (Poddebniak et al., USENIX Security 2021) -------------

INJECTIONS = [
    b"250-scripted.test\r\n250 AUTH PLAIN\r\n",  # a whole forged post-TLS EHLO reply
    b"250-scripted.test\r\n250 AUTH LOGIN\r\n334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n",  # a forged dialogue
    b"250-AUTH PLAIN",  # a partial line still waiting in the buffer
]


def start_transaction(port: int) -> socket.socket:
    """As an app over a raw socket: EHLO, MAIL, RCPT pipelined; the replies are left unread."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"EHLO app.test\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<ops@example.net>\r\n")
    return sock


def reply_to_rcpt(sock: socket.socket) -> bytes:
    """The third reply after the greeting (the RCPT's), last line."""
    reader = sock.makefile("rb")
    finals = []
    while len(finals) < 4:
        line = reader.readline()
        assert line, "connection closed"
        if line[3:4] == b" ":
            finals.append(line.rstrip(b"\r\n"))
    return finals[3]


@pytest.mark.parametrize("injected", INJECTIONS)
def test_starttls_response_injection_aborts_before_handshake(injected, scripted, start_gateway, ca):
    """Prevents plaintext bytes sent with the 220 to STARTTLS from being read as if they came over TLS."""
    upstream = scripted(starttls_reply=b"220 2.0.0 Ready\r\n" + injected)
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    with start_transaction(gw.port):
        gw.stop()  # a session kept in the pool ends with the gateway's QUIT
        [connection] = upstream.wait_closed()
    assert connection.handshake != "ok"
    assert_nothing_sent_over_tls(connection)


def test_starttls_response_injection_defers_with_reason(scripted, start_gateway, ca):
    """Prevents a STARTTLS injection from hanging the app: it gets 451 4.7.5 and the audit says why."""
    upstream = scripted(starttls_reply=b"220 2.0.0 Ready\r\n" + INJECTIONS[0])
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    with start_transaction(gw.port) as sock:
        sock.settimeout(5)  # the fixed gateway answers in milliseconds; this bounds the buggy one
        reply = reply_to_rcpt(sock)
        sock.sendall(b"QUIT\r\n")
    assert reply.startswith(b"451 4.7.5")
    assert "STARTTLS response injection" in deferred_result(gw)["upstream_error"]


# --- capabilities: only the post-TLS EHLO counts (RFC 3207 4.2) ---------------------------


def test_auth_mechanism_comes_from_the_post_tls_ehlo(scripted, start_gateway, ca):
    """Prevents a pre-TLS (forgeable) EHLO from choosing the AUTH mechanism."""
    upstream = scripted(
        capabilities_plain=("STARTTLS", "AUTH PLAIN"), capabilities_tls=("AUTH LOGIN",)
    )
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    assert try_recipient(gw.port)[0] == 250
    gw.stop()  # a session kept in the pool ends with the gateway's QUIT
    [connection] = upstream.wait_closed()
    auth = [line for phase, line in connection.lines if line.upper().startswith(b"AUTH")]
    assert auth == [b"AUTH LOGIN"]
    assert connection.commands("plain") == [b"EHLO", b"STARTTLS"]


def test_auth_offered_only_before_tls_is_not_used(scripted, start_gateway, ca):
    """Prevents AUTH when only the plaintext EHLO offered it: no credentials, a 4xx, and the reason."""
    upstream = scripted(
        capabilities_plain=("STARTTLS", "AUTH PLAIN LOGIN"), capabilities_tls=("PIPELINING",)
    )
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    code, text = try_recipient(gw.port)
    assert code == 451 and text.startswith(b"4.7.0")
    gw.stop()  # a session kept in the pool ends with the gateway's QUIT
    [connection] = upstream.wait_closed()
    assert not connection.saw_auth and not connection.saw_mail
    assert "no supported AUTH mechanism offered after TLS" in deferred_result(gw)["upstream_error"]


# --- protocol versions ----------------------------------------------------------------------


def old_tls_context(cert: ServerCert, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 refuses TLS < 1.2 at the default level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # setting TLS 1.0/1.1 is the point here
        context.minimum_version = version
        context.maximum_version = version
    context.load_cert_chain(cert.cert_file, cert.key_file)
    return context


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["1.0", "1.1"]
)
@pytest.mark.parametrize("mode", MODES)
def test_tls_below_1_2_fails_the_handshake(version, mode, scripted, start_gateway, ca, server_cert):
    """Prevents a downgrade to TLS 1.0/1.1: the handshake fails and the message is deferred."""
    upstream = scripted(context=old_tls_context(server_cert, version), tls=mode)
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    code, text = try_recipient(gw.port)
    assert code == 451 and text.startswith(b"4.7.5 Upstream TLS handshake failed"), text
    gw.stop()  # a session kept in the pool ends with the gateway's QUIT
    [connection] = upstream.wait_closed()
    assert connection.handshake is not None and connection.handshake.startswith("failed")
    assert_nothing_sent_over_tls(connection)
    assert "TLS handshake failed" in deferred_result(gw)["upstream_error"]


# --- certificates ----------------------------------------------------------------------------


def self_signed(folder: str) -> ServerCert:
    """A certificate for localhost that is its own issuer."""
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = write_pem_pair(folder, "self", cert, key)
    return ServerCert(cert_file, cert_file, key_file)


def bad_certificate(case: str, ca: ThrowawayCA, folder: str) -> tuple[ServerCert, str]:
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    if case == "self-signed":
        return self_signed(folder), "self-signed certificate"
    if case == "untrusted-ca":
        return ThrowawayCA(folder).issue("stranger", "localhost"), "issuer is not trusted"
    if case == "wrong-name":
        return ca.issue("sec-wrong", "other.example"), "does not match host name"
    if case == "expired":
        return ca.issue(
            "sec-expired", "localhost", not_before=now - 30 * day, not_after=now - day
        ), "expired"
    return ca.issue(
        "sec-future", "localhost", not_before=now + day, not_after=now + 30 * day
    ), "not yet valid"


@pytest.mark.parametrize(
    "case", ["self-signed", "untrusted-ca", "wrong-name", "expired", "not-yet-valid"]
)
@pytest.mark.parametrize("mode", MODES)
def test_unverifiable_certificate_gets_no_byte_over_tls(
    case, mode, scripted, start_gateway, ca, tmp_path
):
    """Prevents AUTH, EHLO or mail going to a peer whose certificate fails verification."""
    cert, reason = bad_certificate(case, ca, str(tmp_path))
    upstream = scripted(context=cert.server_context(), tls=mode)
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    code, text = try_recipient(gw.port)
    assert code == 451 and text.startswith(b"4.7.5 Upstream TLS verification failed"), text
    assert reason.encode() in text
    gw.stop()  # a session kept in the pool ends with the gateway's QUIT
    [connection] = upstream.wait_closed()
    assert_nothing_sent_over_tls(connection)
    assert reason in deferred_result(gw)["upstream_error"]


# --- pin_sha256 ------------------------------------------------------------------------------


def der_sha256(cert: ServerCert) -> str:
    with open(cert.cert_file, "rb") as handle:
        leaf = x509.load_pem_x509_certificate(handle.read())
    return hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()


@pytest.mark.parametrize("mode", MODES)
def test_pin_mismatch_aborts_before_auth(mode, scripted, start_gateway, ca, server_cert):
    """Prevents AUTH to a valid-but-unpinned certificate (a mis-issued one) when pin_sha256 is set."""
    other = ca.issue("sec-pinned", "localhost")  # the certificate the operator pinned
    upstream = scripted(tls=mode)  # serves server_cert, equally valid for localhost
    gw = start_gateway(
        relay_all(upstream_table(upstream, ca.ca_file, pin_sha256=[der_sha256(other)]))
    )
    code, text = try_recipient(gw.port)
    assert code == 451 and text.startswith(b"4.7.5")
    gw.stop()  # a session kept in the pool ends with the gateway's QUIT
    [connection] = upstream.wait_closed()
    assert_nothing_sent_over_tls(connection)
    error = deferred_result(gw)["upstream_error"]
    assert "matches no pin_sha256" in error and der_sha256(server_cert) in error


@pytest.mark.parametrize("spelling", ["hex", "colons-upper"])
def test_matching_pin_passes(spelling, scripted, start_gateway, ca, server_cert):
    """A pin of the served certificate, with or without colons, lets the session reach AUTH and MAIL."""
    digest = der_sha256(server_cert)
    if spelling == "colons-upper":
        digest = ":".join(digest[i : i + 2] for i in range(0, 64, 2)).upper()
    upstream = scripted()
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file, pin_sha256=[digest])))
    assert try_recipient(gw.port)[0] == 250
    gw.stop()  # a session kept in the pool ends with the gateway's QUIT
    [connection] = upstream.wait_closed()
    assert connection.commands("tls")[:3] == [b"EHLO", b"AUTH", b"MAIL"]
