"""Unit tests of gateway/daemon/listener_tls.py: the listener's TLS files checked (no sockets),
and `mailgate check` reporting them, each problem naming the file and the key."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys

import pytest

from gateway.config.model import Endpoint, ListenEntry, ListenerConfig
from gateway.daemon.listener_tls import ListenerTLS, check_files
from gateway.errors import ConfigError
from gateway.testing.configfile import write_toml
from gateway.testing.pki import ThrowawayCA
from gateway.testing.process import clean_env

NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture
def pki(tmp_path):
    return ThrowawayCA(str(tmp_path))


def listener(cert_file: str, key_file: str, **keys) -> ListenerConfig:
    entry = ListenEntry(Endpoint("127.0.0.1", 0), "smtps")
    return ListenerConfig(listen=(entry,), tls_cert_file=cert_file, tls_key_file=key_file, **keys)


def test_good_files_have_no_problem(pki):
    """A valid certificate, its key (owner-only) and a client CA: no problem, no warning."""
    cert = pki.issue("listener", "localhost")
    checked = check_files(
        listener(cert.cert_file, cert.key_file, client_ca_file=pki.ca_file), "m.toml"
    )
    assert checked.problems == [] and checked.warnings == []


def test_key_readable_by_others_is_refused(pki):
    """tls_key_file readable by group or others is refused, like a secret file."""
    cert = pki.issue("listener", "localhost")
    os.chmod(cert.key_file, 0o644)
    [problem] = check_files(listener(cert.cert_file, cert.key_file), "m.toml").problems
    assert problem.key == "listener.tls_key_file" and cert.key_file in problem.found
    assert "0644" in problem.found and "chmod 600" in problem.expected


def test_key_of_another_certificate_is_refused(pki):
    """A key that is not the certificate's is a problem naming the key file and the certificate."""
    cert, other = pki.issue("listener", "localhost"), pki.issue("other", "localhost")
    [problem] = check_files(listener(cert.cert_file, other.key_file), "m.toml").problems
    assert problem.key == "listener.tls_key_file" and other.key_file in problem.found
    assert cert.cert_file in problem.expected


def test_expired_certificate_is_refused(pki):
    """An expired certificate is a problem of listener.tls_cert_file."""
    cert = pki.issue(
        "old",
        "localhost",
        not_before=NOW - datetime.timedelta(days=90),
        not_after=NOW - datetime.timedelta(days=1),
    )
    [problem] = check_files(listener(cert.cert_file, cert.key_file), "m.toml").problems
    assert problem.key == "listener.tls_cert_file" and "expired on" in problem.found


def test_certificate_expiring_soon_is_a_warning(pki):
    """A certificate expiring within 14 days is a warning, not a problem."""
    cert = pki.issue("soon", "localhost", not_after=NOW + datetime.timedelta(days=3))
    checked = check_files(listener(cert.cert_file, cert.key_file), "m.toml")
    assert checked.problems == []
    [warning] = checked.warnings
    assert "listener.tls_cert_file" in warning and cert.cert_file in warning


def test_unreadable_and_non_pem_files_name_each_key(pki, tmp_path):
    """A missing certificate, a key that is not PEM and a client CA that is not PEM: three problems."""
    junk = tmp_path / "junk.pem"
    junk.write_text("not a pem file\n")
    os.chmod(junk, 0o600)
    config = listener(str(tmp_path / "missing.pem"), str(junk), client_ca_file=str(junk))
    problems = check_files(config, "m.toml").problems
    assert [p.key for p in problems] == [
        "listener.tls_cert_file",
        "listener.tls_key_file",
        "listener.client_ca_file",
    ]
    assert all(p.source == "m.toml" for p in problems)


def test_listener_tls_refuses_a_bad_reload_and_keeps_its_context(pki):
    """`load` with a bad key raises ConfigError and keeps the current context and expiry."""
    cert = pki.issue("listener", "localhost")
    tls = ListenerTLS(listener(cert.cert_file, cert.key_file), "m.toml")
    context, expires = tls._context, tls.expires
    other = pki.issue("other", "localhost")
    with pytest.raises(ConfigError):
        tls.load(listener(cert.cert_file, other.key_file), "m.toml")
    assert tls._context is context and tls.expires == expires


def test_mailgate_check_reports_tls_problems(pki, tmp_path):
    """`mailgate check` names the file and the key of each TLS problem and exits 1."""
    cert = pki.issue("listener", "localhost")
    os.chmod(cert.key_file, 0o640)
    path = tmp_path / "m.toml"
    write_toml(
        {
            "listener": {
                "listen": ["127.0.0.1:2525", "smtps://127.0.0.1:4650"],
                "tls_cert_file": cert.cert_file,
                "tls_key_file": cert.key_file,
            },
            "upstreams": {"up": {"host": "smtp.example.com"}},
            "rules": [{"name": "all", "action": "relay", "upstream": "up"}],
        },
        str(path),
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )
    assert result.returncode == 1
    assert f"listener.tls_key_file: found {cert.key_file} accessible by group" in result.stderr
