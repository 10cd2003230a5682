"""Class 4b, upstream certificate names: a name check that cannot be done fails closed, promptly.

service-identity refuses some certificates with exceptions other than its
`VerificationError` (no subjectAltName at all, an IP address or a bare ``*`` as a
DNS name, entries it cannot parse). Each such certificate, signed by the trusted
CA so that only the name check can object, must still end the attempt the way a
wrong name does: the app gets a ``451 4.7.5``, ``message.result`` says why, no
command goes over the TLS channel, and the pool slot is free again. The upstream
allows one connection (``max_connections = 1``): a leaked slot would make the
good message that follows wait and then get ``451 4.4.5 ... busy``.
"""

from __future__ import annotations

import datetime
import smtplib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gateway.outbound.protocol import UpstreamProtocol
from gateway.outbound.tls import TLSFailure
from gateway.testing.pki import ServerCert, ThrowawayCA, write_pem_pair
from tests.conftest import relay_all, upstream_table

BODY = b"Subject: after a bad certificate\r\n\r\nbody\r\n"
SRV_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.7")  # id-on-dnsSRV (RFC 4985)

# name -> the subjectAltName entries (None: no subjectAltName extension at all)
SHAPES: dict[str, list[x509.GeneralName] | None] = {
    "no-subject-alt-name": None,
    "empty-subject-alt-name": [],
    "ip-address-as-dns-name": [x509.DNSName("localhost"), x509.DNSName("127.0.0.1")],
    "bare-star": [x509.DNSName("*")],
    "two-wildcards": [x509.DNSName("*.*.localhost")],
    "wildcard-not-leftmost": [x509.DNSName("mail.*.localhost")],
    "uri-with-two-colons": [x509.DNSName("localhost"), x509.UniformResourceIdentifier("a:b:c")],
    "empty-srv-name": [x509.DNSName("localhost"), x509.OtherName(SRV_OID, b"\x16\x00")],
}


def certificate(ca: ThrowawayCA, folder: str, name: str) -> ServerCert:
    """A leaf for CN=localhost with the SHAPES[name] subjectAltName, signed by the trusted CA."""
    issuer = x509.load_pem_x509_certificate(ca.ca.cert_pem.bytes())
    signer = serialization.load_pem_private_key(ca.ca.private_key_pem.bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    names = SHAPES[name]
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    leaf = builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]
    cert_file, key_file = write_pem_pair(folder, name, leaf, key)
    return ServerCert(ca.ca_file, cert_file, key_file)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
@pytest.mark.parametrize("mode", ["starttls", "implicit"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_unusable_certificate_names_defer_and_free_the_slot(
    shape, mode, host, make_upstream, start_gateway, ca, server_cert, tmp_path
):
    """Prevents a certificate the name check chokes on from hanging the app and leaking a pool slot."""
    bad = certificate(ca, str(tmp_path), shape)
    context = bad.server_context()  # swapped for a good certificate below (load_cert_chain)
    upstream = make_upstream(mode, context=context)
    table = upstream_table(upstream, ca.ca_file, host=host, max_connections=1)
    gw = start_gateway(relay_all(table))
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=10) as client:  # bounds the hang, if any
        client.ehlo("app.test")
        assert client.mail("app@example.com")[0] == 250
        code, text = client.rcpt("ops@example.net")
    assert code == 451 and text.startswith(b"4.7.5"), (code, text)
    [result] = gw.audit.wait_for("message.result")
    assert result["outcome"] == "deferred"
    assert "certificate" in result["upstream_error"], result
    assert upstream.messages == [] and upstream.auth_attempts == []

    context.load_cert_chain(server_cert.cert_file, server_cert.key_file)  # the upstream is fixed
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        assert client.sendmail("app@example.com", ["ops@example.net"], BODY) == {}
    assert len(upstream.wait_for(1)) == 1
    results = gw.audit.wait_for("message.result", 2)
    assert results[1]["outcome"] == "relayed"


def test_certificate_shapes_are_what_they_claim(ca, tmp_path):
    """The test certificates chain to the trusted CA, so only the name check can refuse them."""
    for shape in SHAPES:
        cert = certificate(ca, str(tmp_path), shape)
        with open(cert.cert_file, "rb") as handle:
            leaf = x509.load_pem_x509_certificate(handle.read())
        issuer = x509.load_pem_x509_certificate(ca.ca.cert_pem.bytes())
        leaf.verify_directly_issued_by(issuer)
        try:
            sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            assert SHAPES[shape] is None
        else:
            assert list(sans) == SHAPES[shape]


class _BrokenPolicy:
    """A TLS policy whose peer check fails in a way nobody planned for."""

    def check_peer(self, connection: object) -> None:
        raise RuntimeError("an unplanned failure")


class _TLSTransport(StringTransport):
    def getHandle(self) -> object:  # noqa: N802
        return object()


def test_unexpected_error_in_the_peer_check_fails_the_wait_and_closes():
    """Prevents any exception in handshakeCompleted from leaving the dialogue waiting forever."""
    protocol = UpstreamProtocol(Clock(), 10)
    transport = _TLSTransport()
    protocol.makeConnection(transport)
    ready = protocol.start_tls(_BrokenPolicy(), implicit=True)  # type: ignore[arg-type]
    failures: list[Failure] = []
    ready.addErrback(failures.append)
    protocol.handshakeCompleted()
    [failure] = failures
    assert isinstance(failure.value, TLSFailure)
    assert failure.value.reason == "TLS peer check failed (RuntimeError)"
    assert transport.disconnecting  # a close_notify, no command over the unverified channel
    protocol.send(b"AUTH PLAIN secret").addErrback(failures.append)  # refused at once...
    assert len(failures) == 2 and transport.value() == b""  # ...and nothing was written
