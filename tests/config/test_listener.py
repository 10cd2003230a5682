"""Unit tests of gateway/config/listener.py and the listen-entry syntax (gateway/config/values.py):
plain, starttls:// and smtps:// entries, the TLS keys, and app client certificates. No sockets."""

from __future__ import annotations

import pytest

from gateway.config.environment import from_environment
from gateway.config.model import Endpoint, ListenEntry
from gateway.config.toml import parse
from gateway.config.values import parse_listen_entry
from tests.config.documents import SOURCE, document, problem_at, problems

TLS_FILES = {"tls_cert_file": "/etc/mailgate/tls/fullchain.pem", "tls_key_file": "/k.pem"}
DIGEST = "ab" * 32


@pytest.mark.parametrize(
    ("text", "entry"),
    [
        ("127.0.0.1:2525", ListenEntry(Endpoint("127.0.0.1", 2525))),
        ("starttls://0.0.0.0:587", ListenEntry(Endpoint("0.0.0.0", 587), "starttls")),
        ("smtps://[::1]:465", ListenEntry(Endpoint("::1", 465), "smtps")),
        ("SMTPS://127.0.0.1:465", ListenEntry(Endpoint("127.0.0.1", 465), "smtps")),
        ("smtp://127.0.0.1:25", None),
        ("starttls://127.0.0.1", None),
        ("starttls://", None),
        ("tls:127.0.0.1:465", None),
    ],
)
def test_listen_entry_syntax(text, entry):
    """HOST:PORT, starttls://HOST:PORT, smtps://HOST:PORT; anything else is not an entry."""
    assert parse_listen_entry(text) == entry


def test_listen_entry_prints_as_written():
    """An entry's text is the one the config uses (audit, reload problems)."""
    assert str(ListenEntry(Endpoint("::1", 465), "smtps")) == "smtps://[::1]:465"
    assert str(ListenEntry(Endpoint("127.0.0.1", 2525))) == "127.0.0.1:2525"


def test_listen_takes_a_list_of_entries():
    """listen = [plain, starttls://, smtps://] with the certificate and key."""
    listen = ["127.0.0.1:2525", "starttls://0.0.0.0:587", "smtps://0.0.0.0:465"]
    config = parse(document(listener={"listen": listen, **TLS_FILES}), SOURCE)
    assert [e.tls for e in config.listener.listen] == ["plain", "starttls", "smtps"]
    assert config.listener.tls_wanted and config.listener.min_tls_version == "1.2"
    assert config.listener.tls_handshake_timeout == 30 and not config.listener.require_tls


def test_bad_entry_in_a_list_is_named_by_index():
    """A bad entry is a problem at listener.listen[i]; an empty list at listener.listen."""
    bad = problem_at(
        document(listener={"listen": ["127.0.0.1:2525", "tls://x:1"]}), "listener.listen[1]"
    )
    assert "starttls://HOST:PORT" in bad.expected
    assert problem_at(document(listener={"listen": []}), "listener.listen")


def test_same_address_twice_is_a_problem():
    """Two entries on one address and port cannot both be bound."""
    listen = ["127.0.0.1:2525", "starttls://127.0.0.1:2525"]
    problem_at(document(listener={"listen": listen, **TLS_FILES}), "listener.listen[1]")


@pytest.mark.parametrize("key", ["tls_cert_file", "tls_key_file"])
def test_tls_entry_needs_certificate_and_key(key):
    """A starttls:// or smtps:// entry without tls_cert_file or tls_key_file is refused."""
    keys = {k: v for k, v in TLS_FILES.items() if k != key}
    problem = problem_at(
        document(listener={"listen": "smtps://127.0.0.1:465", **keys}), f"listener.{key}"
    )
    assert "starttls:// or smtps://" in problem.expected


def test_tls_keys_without_a_tls_entry_are_refused():
    """Certificate, key, client CA or require_tls without a TLS entry: each named."""
    found = problems(
        document(listener={**TLS_FILES, "client_ca_file": "/ca.pem", "require_tls": True})
    )
    assert sorted(p.key for p in found) == [
        "listener.client_ca_file",
        "listener.require_tls",
        "listener.tls_cert_file",
        "listener.tls_key_file",
    ]


@pytest.mark.parametrize(
    ("key", "value"),
    [("min_tls_version", "1.1"), ("tls_handshake_timeout", 0), ("require_tls", "yes")],
)
def test_tls_values_are_checked(key, value):
    """min_tls_version is "1.2" or "1.3"; the timeout is a positive number; require_tls a boolean."""
    doc = document(listener={"listen": "starttls://127.0.0.1:587", **TLS_FILES, key: value})
    problem_at(doc, f"listener.{key}")


def test_app_with_client_certificate_needs_no_password():
    """client_cert_sha256 makes password_hash optional; fingerprints are normalised to hex."""
    doc = document(
        listener={"listen": "smtps://127.0.0.1:465", **TLS_FILES, "client_ca_file": "/ca.pem"},
        apps={"printer": {"client_cert_sha256": [DIGEST.upper()], "senders": ["s@corp.example"]}},
    )
    app = parse(doc, SOURCE).apps["printer"]
    assert app.password_hash == "" and app.client_cert_sha256 == (DIGEST,)


def test_client_cert_sha256_needs_client_ca_file():
    """client_cert_sha256 without listener.client_ca_file is an error (nothing would verify it)."""
    doc = document(
        listener={"listen": "smtps://127.0.0.1:465", **TLS_FILES},
        apps={"printer": {"client_cert_sha256": [DIGEST]}},
    )
    problem = problem_at(doc, "apps.printer.client_cert_sha256")
    assert "listener.client_ca_file" in problem.expected


def test_bad_fingerprint_and_missing_identity():
    """A fingerprint that is not 64 hex digits is named by index; an app needs a hash or a cert."""
    doc = document(
        listener={"listen": "smtps://127.0.0.1:465", **TLS_FILES, "client_ca_file": "/ca.pem"},
        apps={"printer": {"client_cert_sha256": ["abc"]}, "nobody": {"senders": ["x@y.example"]}},
    )
    keys = {p.key for p in problems(doc)}
    assert {"apps.printer.client_cert_sha256[0]", "apps.nobody.password_hash"} <= keys


def test_one_certificate_identifies_one_app():
    """A fingerprint listed under two apps is an error naming the second and the first (which
    app the certificate stands for would otherwise depend on the order of the file)."""
    doc = document(
        listener={"listen": "smtps://127.0.0.1:465", **TLS_FILES, "client_ca_file": "/ca.pem"},
        apps={
            "printer": {"client_cert_sha256": [DIGEST]},
            "scanner": {"client_cert_sha256": ["cd" * 32, DIGEST.upper()]},
        },
    )
    problem = problem_at(doc, "apps.scanner.client_cert_sha256[1]")
    assert "apps.printer" in problem.expected


def test_mailgate_listen_accepts_the_same_forms():
    """MAILGATE_LISTEN takes one entry or several, comma-separated, TLS files from variables."""
    config = from_environment(
        {
            "MAILGATE_UPSTREAM": "starttls://u@smtp.example.com",
            "MAILGATE_LISTEN": "127.0.0.1:2525, starttls://127.0.0.1:587",
            "MAILGATE_TLS_CERT_FILE": "/c.pem",
            "MAILGATE_TLS_KEY_FILE": "/k.pem",
        }
    )
    assert [str(e) for e in config.listener.listen] == [
        "127.0.0.1:2525",
        "starttls://127.0.0.1:587",
    ]
    assert config.listener.tls_cert_file == "/c.pem"
