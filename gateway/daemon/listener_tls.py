"""The listener's TLS: certificate, key and client CA read, checked and made into a context.

`check_files` reads ``[listener] tls_cert_file``, ``tls_key_file`` and ``client_ca_file``
and says what is wrong with them, each problem naming the file and the key: unreadable,
not PEM, the key readable by group or others (refused, like secrets), the key not the
certificate's, the certificate expired or not yet valid; and, as a warning, a certificate
that expires within `EXPIRY_WARNING` (14 days). ``mailgate check`` prints both; the gateway
refuses to start, or a SIGHUP to reload, on a problem (the old context is kept then).

`ListenerTLS` is the host's `gateway.inbound.host.ListenerTLS`: one pyOpenSSL server
context (the minimum version and the OpenSSL verification-error words are the upstream
side's, `gateway.outbound.tls`), swapped whole by `ListenerTLS.load` on reload, so that new
connections get the renewed certificate while open ones keep theirs. With a client CA the
listener asks for a certificate: none, and the session goes on unidentified; one that does
not verify ends the handshake with OpenSSL's alert (``certificate expired``, ``unknown
CA``) and the reason is recorded for ``session.tls_failed``.
"""

from __future__ import annotations

import datetime
import os
import stat
import weakref
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from gateway.config.model import ListenerConfig
from gateway.errors import ConfigError, Problem
from gateway.inbound.starttls import ClientTLS
from gateway.outbound.tls import MIN_VERSIONS, cert_sha256, ssl_error_detail, verify_error

EXPIRY_WARNING = datetime.timedelta(days=14)


@dataclass
class Checked:
    """What `check_files` found: problems (refused), warnings, and what loaded."""

    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    leaf: x509.Certificate | None = None
    client_cas: list[x509.Certificate] = field(default_factory=list)


def _read(path: str, key: str, what: str, source: str, checked: Checked) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        checked.problems.append(
            Problem(source, key, f"{path} ({exc.strerror})", f"a readable {what}")
        )
        return None


def _certificates(
    path: str, key: str, what: str, source: str, checked: Checked
) -> list[x509.Certificate]:
    data = _read(path, key, what, source, checked)
    if data is None:
        return []
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        checked.problems.append(Problem(source, key, f"{path} (no PEM certificate in it)", what))
        return []


def check_files(
    listener: ListenerConfig, source: str, now: datetime.datetime | None = None
) -> Checked:
    """Problems and warnings of the listener's TLS files (nothing when no entry has TLS)."""
    checked = Checked()
    if not listener.tls_wanted or not listener.tls_cert_file or not listener.tls_key_file:
        return checked
    now = now or datetime.datetime.now(datetime.UTC)
    cert_file, key_file = listener.tls_cert_file, listener.tls_key_file
    cert_key, key_key = "listener.tls_cert_file", "listener.tls_key_file"
    chain = _certificates(cert_file, cert_key, "PEM certificate chain", source, checked)
    if chain:
        leaf = checked.leaf = chain[0]
        until, since = leaf.not_valid_after_utc, leaf.not_valid_before_utc
        if until <= now:
            checked.problems.append(
                Problem(
                    source,
                    cert_key,
                    f"{cert_file} (expired on {until:%Y-%m-%d %H:%M} UTC)",
                    "a certificate that has not expired: renew it",
                )
            )
        elif since > now:
            checked.problems.append(
                Problem(
                    source,
                    cert_key,
                    f"{cert_file} (not valid before {since:%Y-%m-%d %H:%M} UTC)",
                    "a certificate valid now",
                )
            )
        elif until - now < EXPIRY_WARNING:
            checked.warnings.append(
                f"{source}: {cert_key}: {cert_file} expires on {until:%Y-%m-%d %H:%M} UTC,"
                f" in less than {EXPIRY_WARNING.days} days: renew it"
            )
    _check_key(key_file, key_key, source, checked)
    if listener.client_ca_file:
        checked.client_cas = _certificates(
            listener.client_ca_file,
            "listener.client_ca_file",
            "PEM file of CA certificates for client certificates",
            source,
            checked,
        )
    if not checked.problems:
        try:
            build_context(listener)
        except SSL.Error as exc:  # the key is not the certificate's, or OpenSSL refused one
            checked.problems.append(
                Problem(
                    source,
                    key_key,
                    f"{key_file} ({ssl_error_detail(exc)})",
                    f"the private key of the certificate in {cert_file}",
                )
            )
    return checked


def _check_key(path: str, key: str, source: str, checked: Checked) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        checked.problems.append(
            Problem(source, key, f"{path} ({exc.strerror})", "a readable PEM private key")
        )
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        checked.problems.append(
            Problem(
                source,
                key,
                f"{path} accessible by group or others (mode {stat.S_IMODE(mode):04o})",
                f"a file only its owner can read: run chmod 600 {path}",
            )
        )
        return
    data = _read(path, key, "PEM private key", source, checked)
    if data is None:
        return
    try:
        load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        checked.problems.append(
            Problem(
                source, key, f"{path} (not an unencrypted PEM private key)", "a PEM private key"
            )
        )


def build_context(listener: ListenerConfig) -> SSL.Context:
    """The server context; raises `SSL.Error` when OpenSSL refuses a file (checked first)."""
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(MIN_VERSIONS[listener.min_tls_version])
    context.set_options(
        SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE
    )
    assert listener.tls_cert_file and listener.tls_key_file
    context.use_certificate_chain_file(listener.tls_cert_file)
    context.use_privatekey_file(listener.tls_key_file)
    context.check_privatekey()
    # Without a session id context OpenSSL refuses every resumption once it verifies peers
    # ("session id context uninitialized": an internal-error alert on the app's 2nd connection).
    context.set_session_id(b"mailgate-listener")
    if listener.client_ca_file:
        context.load_verify_locations(listener.client_ca_file)
        context.load_client_ca(listener.client_ca_file.encode())  # the CA names the app is sent
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE, _verify)
        # No resumption: a client certificate is an identity, so every connection verifies it
        # again (its expiry, the CA of the moment) in a full handshake.
        context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        context.set_options(SSL.OP_NO_TICKET)
    return context


class _Record:
    """OpenSSL's verification errors for one connection's client certificate, first first."""

    __slots__ = ("errors",)

    def __init__(self) -> None:
        self.errors: list[tuple[int, int]] = []


# Each connection's record, found from OpenSSL's verify callback (Twisted keeps the app data
# for its own protocol object); gone with the connection.
_RECORDS: weakref.WeakKeyDictionary[SSL.Connection, _Record] = weakref.WeakKeyDictionary()


def _verify(connection: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
    """OpenSSL's verdict on the client's chain, recorded; the alert is OpenSSL's own."""
    if not ok:
        record = _RECORDS.get(connection)
        if record is not None:
            record.errors.append((errno, depth))
    return bool(ok)


@implementer(IOpenSSLServerConnectionCreator)
class ListenerTLS:
    """The listener's current server context and what it knows of a handshake."""

    def __init__(self, listener: ListenerConfig, source: str) -> None:
        self.expires: float = 0.0  # the certificate's notAfter, seconds since the epoch
        self._context: SSL.Context
        self.warnings = self.load(listener, source)  # at start: `mailgate run` prints them

    def load(self, listener: ListenerConfig, source: str) -> list[str]:
        """Check and take the files (new connections use them); raise `ConfigError` and keep
        the current context on a problem. Returns the warnings (expiry within 14 days)."""
        checked = check_files(listener, source)
        if checked.problems:
            raise ConfigError(checked.problems)
        assert checked.leaf is not None
        self._context = build_context(listener)
        self.expires = checked.leaf.not_valid_after_utc.timestamp()
        return checked.warnings

    def creator(self) -> ListenerTLS:
        return self

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:  # noqa: N802, N803
        connection = SSL.Connection(self._context, None)
        _RECORDS[connection] = _Record()
        return connection

    def facts(self, connection: SSL.Connection) -> ClientTLS:
        cert = connection.get_peer_certificate(as_cryptography=True)
        return ClientTLS(
            version=connection.get_protocol_version_name(),
            cipher=connection.get_cipher_name() or "",
            cert_sha256=cert_sha256(cert) if cert is not None else None,
        )

    def failure(self, connection: SSL.Connection | None, error: BaseException | None) -> str:
        record = _RECORDS.get(connection) if connection is not None else None
        if record is not None and record.errors:
            return "client certificate refused: " + verify_error(*record.errors[0])
        if isinstance(error, SSL.Error):
            return "TLS handshake failed: " + ssl_error_detail(error)
        return "connection lost during the TLS handshake"
