"""Helpers for the listener TLS tests: certificates for the listener and for apps, clients."""

from __future__ import annotations

import datetime
import hashlib
import os
import smtplib
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.testing.pki import ServerCert, ThrowawayCA
from tests.conftest import relay_all, upstream_table

ENTRIES = ["127.0.0.1:0", "starttls://127.0.0.1:0", "smtps://127.0.0.1:0"]
BODY = b"From: scanner@corp.example\r\nSubject: scan\r\n\r\nscanned page\r\n"


def fingerprint(cert_file: str) -> str:
    """SHA-256 of the DER certificate in `cert_file` (its first), as client_cert_sha256 lists it."""
    with open(cert_file, "rb") as handle:
        cert = x509.load_pem_x509_certificates(handle.read())[0]
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


@dataclass
class TLSWorld:
    """The listener's CA and certificate, the apps' CA, and app certificates."""

    folder: str
    listener_ca: ThrowawayCA
    listener: ServerCert
    apps_ca: ThrowawayCA
    printer: ServerCert  # issued by the apps' CA, listed for [apps.printer]
    unlisted: ServerCert  # issued by the apps' CA, listed nowhere
    foreign: ServerCert  # issued by another CA
    expired: ServerCert  # issued by the apps' CA, expired yesterday

    def client_context(self, cert: ServerCert | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.listener_ca.ca_file)
        if cert is not None:
            context.load_cert_chain(cert.cert_file, cert.key_file)
        return context


def make_world(folder: str) -> TLSWorld:
    listener_dir, apps_dir, other_dir = (os.path.join(folder, n) for n in ("l", "a", "o"))
    for d in (listener_dir, apps_dir, other_dir):
        os.makedirs(d, exist_ok=True)
    listener_ca = ThrowawayCA(listener_dir)
    apps_ca, other_ca = ThrowawayCA(apps_dir), ThrowawayCA(other_dir)
    now = datetime.datetime.now(datetime.UTC)
    return TLSWorld(
        folder=folder,
        listener_ca=listener_ca,
        listener=listener_ca.issue("listener", "localhost", "127.0.0.1"),
        apps_ca=apps_ca,
        printer=apps_ca.issue("printer", "printer.corp.example"),
        unlisted=apps_ca.issue("unlisted", "other.corp.example"),
        foreign=other_ca.issue("foreign", "printer.corp.example"),
        expired=apps_ca.issue(
            "expired",
            "printer.corp.example",
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1),
        ),
    )


def tls_document(upstream: Any, ca_file: str, world: TLSWorld, **listener: Any) -> dict[str, Any]:
    """Plain, starttls:// and smtps:// entries on loopback, every recipient relayed."""
    settings: dict[str, Any] = {
        "listen": ENTRIES,
        "tls_cert_file": world.listener.cert_file,
        "tls_key_file": world.listener.key_file,
        **listener,
    }
    return relay_all(upstream_table(upstream, ca_file), **settings)


def ports(gw: Any) -> tuple[int, int, int]:
    """The bound ports of the plain, starttls:// and smtps:// entries."""
    plain, starttls, smtps = (p.getHost().port for p in gw.gateway.ports)
    return plain, starttls, smtps


def starttls_client(port: int, context: ssl.SSLContext) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    client.ehlo("app.test")
    client.starttls(context=context)
    client.ehlo("app.test")
    return client


def read_reply(reader: Any) -> bytes:
    """One complete reply (its last line)."""
    while True:
        line = reader.readline()
        assert line, "connection closed"
        if line[3:4] == b" ":
            return bytes(line.rstrip(b"\r\n"))


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)
