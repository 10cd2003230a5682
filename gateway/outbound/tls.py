"""Client TLS toward upstreams: verified chain, hostname check, optional pins.

One `UpstreamTLS` per upstream holds an OpenSSL context (trust roots, minimum
version). Each connection gets a creator that records OpenSSL's verification
errors, so a failure can say *why* (expired, untrusted, wrong name, pin).
The hostname check (service-identity) and the pin check run in OpenSSL's verify
callback, on the server's own certificate (depth 0), while the handshake is still
under way: a refusal ends it with a TLS alert the server sees and logs (OpenSSL's
``certificate unknown``), not with a bare TCP close. `check_peer`, which the upstream
protocol calls from ``handshakeCompleted`` before it writes a single byte over the new
channel, checks both again (belt and braces) and records the TLS facts.

A `TLSFailure` says which of two things went wrong: *verification* (our check of the
server's certificate: chain, dates, name, pins) or the *handshake* itself (protocol
version, no shared cipher, an alert from the server, the connection lost midway).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import Certificate
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from gateway.config.model import UpstreamConfig

if TYPE_CHECKING:
    from OpenSSL.crypto import X509

# OpenSSL X509_V_ERR_* codes an operator is likely to meet, in their words.
VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in chain",
    20: "certificate issuer is not trusted (unable to get local issuer certificate)",
    21: "unable to verify the first certificate",
    26: "certificate not allowed for this purpose",
}

MIN_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}


def cert_sha256(cert: Certificate) -> str:
    """A certificate's fingerprint as pins and ``client_cert_sha256`` spell it: SHA-256 of its DER."""
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def verify_error(errno: int, depth: int) -> str:
    """OpenSSL's verification error `errno` at `depth`, in words."""
    text = VERIFY_ERRORS.get(errno, f"certificate verification error {errno}")
    return f"{text} (depth {depth})"


def ssl_error_detail(error: BaseException) -> str:
    """What an `SSL.Error` says (OpenSSL's reason strings, joined), or the error's type."""
    parts = (
        [p[2] for p in error.args[0] if isinstance(p, tuple) and len(p) == 3]
        if error.args and isinstance(error.args[0], list)
        else []
    )
    return "; ".join(parts) or str(error) or type(error).__name__


@dataclass(frozen=True)
class TLSFacts:
    """What the audit records of a verified TLS session."""

    version: str
    cipher: str
    peer_cert_sha256: str


class TLSFailure(Exception):
    """TLS with the upstream failed; `reason` is for the audit and the app.

    `verification`: our check of the server's certificate refused it (chain, dates, name,
    pins); otherwise the handshake itself failed (`reason` then starts "TLS handshake failed").
    """

    def __init__(self, reason: str, *, verification: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.verification = verification


class _VerifyRecord:
    """OpenSSL's verification errors for one connection (errno, depth), first first, and
    the refusal of the server's certificate by our own name or pin check, if any.

    Its verify callback is installed through pyOpenSSL's own OpenSSL bindings (as Twisted's
    ``_sslverify`` uses them) rather than `SSL.Connection.set_verify`, because it must set the
    verification error when it refuses: pyOpenSSL's wrapper cannot, and OpenSSL then records
    "unspecified" and sends the server an *internal error* alert. Refusing with
    ``X509_V_ERR_CERT_REJECTED`` sends *bad certificate*, which is what happened.
    """

    __slots__ = ("c_callback", "errors", "policy", "refused")

    def __init__(self, policy: UpstreamTLS) -> None:
        self.policy = policy
        self.errors: list[tuple[int, int]] = []
        self.refused: str | None = None
        self.c_callback = _ffi.callback("int (*)(int, X509_STORE_CTX *)", self._verify)

    def _verify(self, ok: int, store: Any) -> int:
        """OpenSSL's verify callback: 0 ends the handshake with the alert the error maps to."""
        try:
            depth = _lib.X509_STORE_CTX_get_error_depth(store)
            if not ok:
                self.errors.append((_lib.X509_STORE_CTX_get_error(store), depth))
                return 0
            if depth != 0:
                return 1
            # The chain verified up to the server's own certificate: now its name and pins.
            leaf = _lib.X509_STORE_CTX_get_current_cert(store)
            _lib.X509_up_ref(leaf)  # the X509 object below owns this reference
            self.refused = self.policy.refusal(crypto.X509._from_raw_x509_ptr(leaf))
        except Exception as exc:  # noqa: BLE001 - never raise into OpenSSL: fail closed
            self.refused = _unexpected(exc, self.policy.hostname)
        if self.refused is None:
            return 1
        _lib.X509_STORE_CTX_set_error(store, _lib.X509_V_ERR_CERT_REJECTED)
        return 0


class UpstreamTLS:
    """The TLS policy for one upstream: trust roots, minimum version, name and pins."""

    def __init__(self, upstream: UpstreamConfig) -> None:
        self.hostname = upstream.host
        self.pins = frozenset(upstream.pin_sha256)
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(MIN_VERSIONS[upstream.min_tls_version])
        context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
        if upstream.ca_file:
            context.load_verify_locations(upstream.ca_file)
        else:
            context.set_default_verify_paths()
        self._context = context
        self._is_ip = isIPAddress(self.hostname) or isIPv6Address(self.hostname)

    def creator(self) -> ClientConnectionCreator:
        return ClientConnectionCreator(self)

    def _connection(self) -> tuple[SSL.Connection, _VerifyRecord]:
        connection = SSL.Connection(self._context, None)
        record = _VerifyRecord(self)
        mode = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        _lib.SSL_set_verify(connection._ssl, mode, record.c_callback)
        connection.set_app_data(record)  # the C callback lives as long as the connection
        if not self._is_ip:
            connection.set_tlsext_host_name(self.hostname.encode("idna"))
        return connection, record

    def refusal(self, cert: X509) -> str | None:
        """Why the server's certificate (depth 0, chain already verified) is refused, or None.

        Called from OpenSSL's verify callback, which must not raise: every failure,
        whatever raised it, is a refusal.
        """
        try:
            self._check_certificate(cert.to_cryptography())
        except TLSFailure as exc:
            return exc.reason
        except Exception as exc:  # noqa: BLE001 - an unexpected failure must still fail closed
            return _unexpected(exc, self.hostname)
        return None

    def check_peer(self, connection: SSL.Connection) -> TLSFacts:
        """Check name and pins again on a completed handshake; raise `TLSFailure` if they fail.

        Every failure is a `TLSFailure`, whatever raised it: service-identity refuses
        some certificates (no subjectAltName, an IP address or a bare ``*`` as a DNS
        name) with `CertificateError` or plain `ValueError`s rather than a mismatch.
        """
        try:
            return self._check_peer(connection)
        except TLSFailure:
            raise
        except Exception as exc:  # noqa: BLE001 - an unexpected failure must still fail closed
            raise TLSFailure(_unexpected(exc, self.hostname)) from None

    def _check_peer(self, connection: SSL.Connection) -> TLSFacts:
        cert = connection.get_peer_certificate(as_cryptography=True)
        if cert is None:
            raise TLSFailure("no peer certificate")
        digest = self._check_certificate(cert)
        return TLSFacts(
            version=connection.get_protocol_version_name(),
            cipher=connection.get_cipher_name() or "",
            peer_cert_sha256=digest,
        )

    def _check_certificate(self, cert: Certificate) -> str:
        """Name (service-identity) and pins of the server's certificate: its SHA-256, or raise."""
        try:
            if self._is_ip:
                verify_certificate_ip_address(cert, self.hostname)
            else:
                verify_certificate_hostname(cert, self.hostname)
        except VerificationError:
            raise TLSFailure(f"certificate does not match host name {self.hostname}") from None
        except CertificateError as exc:
            raise TLSFailure(_unusable_names(exc, self.hostname)) from None
        digest = cert_sha256(cert)
        if self.pins and digest not in self.pins:
            raise TLSFailure(f"certificate SHA-256 {digest} matches no pin_sha256")
        return digest


def _unexpected(error: Exception, hostname: str) -> str:
    return f"certificate could not be checked for host name {hostname} ({type(error).__name__})"


def _unusable_names(error: CertificateError, hostname: str) -> str:
    """Why a certificate's names cannot be checked, in fixed words (its text is the peer's)."""
    if "subjectAltName" in str(error):
        return f"certificate has no subjectAltName to match host name {hostname}"
    return f"certificate has an invalid subjectAltName entry; cannot match host name {hostname}"


@implementer(IOpenSSLClientConnectionCreator)
class ClientConnectionCreator:
    """Makes the one SSL connection of one upstream connection, and explains its failure."""

    def __init__(self, policy: UpstreamTLS) -> None:
        self._policy = policy
        self._record: _VerifyRecord | None = None

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:  # noqa: N802, N803
        connection, self._record = self._policy._connection()
        return connection

    def explain(self, error: BaseException, lost: str | None = None) -> TLSFailure:
        """Turn a handshake that did not complete into the failure an operator needs.

        Verification (OpenSSL's chain check, or our name or pin check in its callback) is
        told apart from a handshake that failed for another reason: the protocol version,
        no shared cipher, the server's alert, the connection lost or timed out (`lost`:
        our own reason for ending it, if we did).
        """
        record = self._record
        if record and record.errors:
            return TLSFailure(verify_error(*record.errors[0]))
        if record and record.refused:
            return TLSFailure(record.refused)
        if isinstance(error, SSL.Error):
            detail = ssl_error_detail(error)
        else:
            detail = lost or type(error).__name__
        return TLSFailure(f"TLS handshake failed: {detail}", verification=False)
