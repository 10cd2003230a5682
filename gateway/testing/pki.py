"""A throwaway CA and server certificates (trustme), written to a folder as PEM files."""

from __future__ import annotations

import datetime
import os
import ssl
from dataclasses import dataclass

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes


@dataclass
class ServerCert:
    """A server certificate as files, and the CA that signed it."""

    ca_file: str
    cert_file: str
    key_file: str

    def server_context(
        self,
        *,
        minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
        maximum: ssl.TLSVersion | None = None,
    ) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = minimum
        if maximum is not None:
            context.maximum_version = maximum
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


class ThrowawayCA:
    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.ca = trustme.CA(organization_name="mailgate throwaway CA")
        self.ca_file = os.path.join(folder, "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)

    def issue(
        self,
        name: str,
        *hosts: str,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> ServerCert:
        leaf = self.ca.issue_cert(
            *(hosts or ("localhost", "127.0.0.1")), not_before=not_before, not_after=not_after
        )
        cert_file = os.path.join(self.folder, f"{name}.crt")
        key_file = os.path.join(self.folder, f"{name}.key")
        leaf.cert_chain_pems[0].write_to_path(cert_file)
        for pem in leaf.cert_chain_pems[1:]:
            pem.write_to_path(cert_file, append=True)
        leaf.private_key_pem.write_to_path(key_file)
        os.chmod(key_file, 0o600)
        return ServerCert(self.ca_file, cert_file, key_file)


def write_pem_pair(
    folder: str, name: str, cert: x509.Certificate, key: CertificateIssuerPrivateKeyTypes
) -> tuple[str, str]:
    """A certificate and its key (PKCS#8, unencrypted, owner-only) as FOLDER/NAME.crt and .key."""
    cert_file, key_file = os.path.join(folder, f"{name}.crt"), os.path.join(folder, f"{name}.key")
    with open(cert_file, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_file, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    os.chmod(key_file, 0o600)
    return cert_file, key_file
