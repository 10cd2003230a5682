"""gateway.config.environment: the embedded default from MAILGATE_UPSTREAM and friends."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.environment import from_environment
from gateway.config.model import LOOPBACK, Endpoint, ListenEntry
from gateway.errors import ConfigError, UsageError


def test_environment_starttls_url() -> None:
    """MAILGATE_UPSTREAM=starttls://USER@HOST:587 makes a STARTTLS upstream with that user."""
    config = from_environment({"MAILGATE_UPSTREAM": "starttls://relay@smtp.example.com:587"})
    upstream = config.upstreams["default"]
    assert (
        upstream.tls,
        upstream.host,
        upstream.port,
        upstream.username,
        upstream.password_env,
    ) == ("starttls", "smtp.example.com", 587, "relay", "MAILGATE_UPSTREAM_PASSWORD")


def test_environment_smtps_url() -> None:
    """MAILGATE_UPSTREAM=smtps://USER@HOST:465 makes an implicit-TLS upstream."""
    upstream = from_environment(
        {"MAILGATE_UPSTREAM": "smtps://relay@smtp.example.com:465"}
    ).upstreams["default"]
    assert (upstream.tls, upstream.port) == ("implicit", 465)


@pytest.mark.parametrize(("scheme", "port"), [("starttls", 587), ("smtps", 465)])
def test_environment_default_port(scheme: str, port: int) -> None:
    """Without a port the scheme's usual port is used (587 for starttls, 465 for smtps)."""
    upstream = from_environment({"MAILGATE_UPSTREAM": f"{scheme}://u@smtp.example.com"}).upstreams[
        "default"
    ]
    assert upstream.port == port


def test_environment_username_with_at() -> None:
    """A username containing '@' is split at the last '@' before the host."""
    upstream = from_environment(
        {"MAILGATE_UPSTREAM": "starttls://relay@example.com@smtp.example.com:587"}
    ).upstreams["default"]
    assert (upstream.username, upstream.host) == ("relay@example.com", "smtp.example.com")


def test_environment_percent_encoded_username() -> None:
    """A percent-encoded username is decoded."""
    upstream = from_environment(
        {"MAILGATE_UPSTREAM": "starttls://relay%40example.com@smtp.example.com"}
    ).upstreams["default"]
    assert upstream.username == "relay@example.com"


def test_environment_ipv6_host_with_port() -> None:
    """A bracketed IPv6 host with a port is understood."""
    upstream = from_environment({"MAILGATE_UPSTREAM": "smtps://u@[2001:db8::25]:465"}).upstreams[
        "default"
    ]
    assert (upstream.host, upstream.port) == ("2001:db8::25", 465)


def test_environment_ipv6_host_without_port() -> None:
    """A bracketed IPv6 host without a port gets the scheme's default port."""
    upstream = from_environment({"MAILGATE_UPSTREAM": "smtps://u@[2001:db8::25]"}).upstreams[
        "default"
    ]
    assert (upstream.host, upstream.port) == ("2001:db8::25", 465)


def test_environment_without_user_has_no_auth() -> None:
    """A URL without user configures no AUTH."""
    upstream = from_environment({"MAILGATE_UPSTREAM": "starttls://smtp.example.com"}).upstreams[
        "default"
    ]
    assert upstream.username is None and upstream.password_env is None


def test_environment_password_in_url_refused() -> None:
    """A password in the URL is refused, and the error does not repeat it."""
    with pytest.raises(UsageError) as raised:
        from_environment({"MAILGATE_UPSTREAM": "starttls://relay:hunter2@smtp.example.com:587"})
    assert "hunter2" not in str(raised.value) and "MAILGATE_UPSTREAM_PASSWORD" in str(raised.value)


def test_environment_bad_scheme_error_hides_password() -> None:
    """A URL with a wrong scheme is refused without echoing a password it contains."""
    with pytest.raises(UsageError) as raised:
        from_environment({"MAILGATE_UPSTREAM": "smtp://relay:hunter2@smtp.example.com:587"})
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        "smtp://u@smtp.example.com",
        "smtp.example.com:587",
        "starttls://",
        "starttls://u@smtp.example.com:port",
        "starttls://u@:587",
    ],
)
def test_environment_bad_url(url: str) -> None:
    """A malformed MAILGATE_UPSTREAM is a UsageError naming the variable and the expected form."""
    with pytest.raises(UsageError) as raised:
        from_environment({"MAILGATE_UPSTREAM": url})
    assert str(raised.value).startswith("MAILGATE_UPSTREAM: ")


@pytest.mark.parametrize("environ", [{}, {"MAILGATE_UPSTREAM": ""}], ids=["unset", "empty"])
def test_environment_missing_variable(environ: dict[str, str]) -> None:
    """Without MAILGATE_UPSTREAM there is no configuration: a UsageError saying what to set."""
    with pytest.raises(UsageError) as raised:
        from_environment(environ)
    assert "--config" in str(raised.value) and "MAILGATE_UPSTREAM=" in str(raised.value)


def test_environment_relays_everything_from_loopback() -> None:
    """The embedded default: 127.0.0.1:2525, loopback clients only, one rule relaying all."""
    config = from_environment({"MAILGATE_UPSTREAM": "starttls://u@smtp.example.com"})
    assert config.listener.listen == (ListenEntry(Endpoint("127.0.0.1", 2525)),)
    assert config.listener.allowed_clients == LOOPBACK
    (rule,) = config.rules
    assert (rule.action, rule.upstreams, rule.clients, rule.senders, rule.recipients) == (
        "relay",
        ("default",),
        None,
        None,
        None,
    )


def test_environment_optional_variables(tmp_path: Path) -> None:
    """MAILGATE_LISTEN, MAILGATE_AUDIT and MAILGATE_UPSTREAM_CA_FILE are applied."""
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    config = from_environment(
        {
            "MAILGATE_UPSTREAM": "starttls://u@smtp.example.com",
            "MAILGATE_LISTEN": "[::1]:2626",
            "MAILGATE_AUDIT": str(tmp_path / "audit.jsonl"),
            "MAILGATE_UPSTREAM_CA_FILE": str(ca),
        }
    )
    assert config.listener.listen == (ListenEntry(Endpoint("::1", 2626)),)
    assert config.audit.path == str(tmp_path / "audit.jsonl")
    assert config.upstreams["default"].ca_file == str(ca)


def test_environment_bad_listen_is_config_error() -> None:
    """A malformed MAILGATE_LISTEN is reported like a config problem, with source "environment"."""
    with pytest.raises(ConfigError) as raised:
        from_environment(
            {"MAILGATE_UPSTREAM": "starttls://u@h.example", "MAILGATE_LISTEN": "everywhere"}
        )
    assert [(p.source, p.key) for p in raised.value.problems] == [
        ("environment", "listener.listen")
    ]
