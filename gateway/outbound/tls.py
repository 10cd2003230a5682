"""Client TLS toward upstreams: verified chain, hostname check, optional pins.

One `UpstreamTLS` per upstream holds an OpenSSL context (trust roots, minimum
version). Each connection gets a creator that records OpenSSL's verification
errors, so a failure can say *why* (expired, untrusted, wrong name, pin).
The hostname check (service-identity) and pin check run in `check_peer`, which
the upstream protocol calls from ``handshakeCompleted`` — before it writes a
single byte over the new channel.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from service_identity import CertificateError, VerificationError
from service_identity.pyopenssl import verify_hostname, verify_ip_address
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from gateway.config.model import UpstreamConfig

# OpenSSL X509_V_ERR_* codes an operator is likely to meet, in their words.
_VERIFY_ERRORS = {
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

_MIN_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}


@dataclass(frozen=True)
class TLSFacts:
    """What the audit records of a verified TLS session."""

    version: str
    cipher: str
    peer_cert_sha256: str


class TLSFailure(Exception):
    """The upstream's TLS could not be verified; `reason` is for the audit and the app."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _VerifyRecord:
    """OpenSSL's verification errors for one connection (errno, depth), first first."""

    __slots__ = ("errors",)

    def __init__(self) -> None:
        self.errors: list[tuple[int, int]] = []

    def callback(self, conn: SSL.Connection, cert: object, errno: int, depth: int, ok: int) -> bool:
        if not ok:
            self.errors.append((errno, depth))
        return bool(ok)


class UpstreamTLS:
    """The TLS policy for one upstream: trust roots, minimum version, name and pins."""

    def __init__(self, upstream: UpstreamConfig) -> None:
        self.hostname = upstream.host
        self.pins = frozenset(upstream.pin_sha256)
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(_MIN_VERSIONS[upstream.min_tls_version])
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
        record = _VerifyRecord()
        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, record.callback)
        if not self._is_ip:
            connection.set_tlsext_host_name(self.hostname.encode("idna"))
        return connection, record

    def check_peer(self, connection: SSL.Connection) -> TLSFacts:
        """Check name and pins on a completed handshake; raise `TLSFailure` if they fail.

        Every failure is a `TLSFailure`, whatever raised it: service-identity refuses
        some certificates (no subjectAltName, an IP address or a bare ``*`` as a DNS
        name) with `CertificateError` or plain `ValueError`s rather than a mismatch.
        """
        try:
            return self._check_peer(connection)
        except TLSFailure:
            raise
        except Exception as exc:  # noqa: BLE001 - an unexpected failure must still fail closed
            raise TLSFailure(
                f"certificate could not be checked for host name {self.hostname} "
                f"({type(exc).__name__})"
            ) from None

    def _check_peer(self, connection: SSL.Connection) -> TLSFacts:
        cert = connection.get_peer_certificate(as_cryptography=True)
        if cert is None:
            raise TLSFailure("no peer certificate")
        try:
            if self._is_ip:
                verify_ip_address(connection, self.hostname)
            else:
                verify_hostname(connection, self.hostname)
        except VerificationError:
            raise TLSFailure(f"certificate does not match host name {self.hostname}") from None
        except CertificateError as exc:
            raise TLSFailure(_unusable_names(exc, self.hostname)) from None
        digest = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
        if self.pins and digest not in self.pins:
            raise TLSFailure(f"certificate SHA-256 {digest} matches no pin_sha256")
        return TLSFacts(
            version=connection.get_protocol_version_name(),
            cipher=connection.get_cipher_name() or "",
            peer_cert_sha256=digest,
        )


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

    def explain(self, error: BaseException) -> str:
        """Turn a handshake failure into the reason an operator needs."""
        if self._record and self._record.errors:
            errno, depth = self._record.errors[0]
            text = _VERIFY_ERRORS.get(errno, f"certificate verification error {errno}")
            return f"{text} (depth {depth})"
        if isinstance(error, SSL.Error):
            parts = (
                [p[2] for p in error.args[0] if isinstance(p, tuple) and len(p) == 3]
                if error.args and isinstance(error.args[0], list)
                else []
            )
            return "TLS handshake failed: " + (
                "; ".join(parts) or str(error) or type(error).__name__
            )
        return f"TLS handshake failed: {type(error).__name__}"
