"""gateway.config.providers through the config reader: presets, auth modes and OAuth key validation."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import toml
from gateway.errors import ConfigError


def parse(upstream: dict[str, Any]) -> Any:
    document = {
        "upstreams": {"up": upstream},
        "rules": [{"name": "r", "action": "relay", "upstream": "up"}],
    }
    return toml.parse(document, "t.toml").upstreams["up"]


def problems(upstream: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse(upstream)
    return {p.key.removeprefix("upstreams.up."): p.expected for p in caught.value.problems}


APP = {
    "auth": "xoauth2",
    "username": "relay@corp.example",
    "oauth_client_id": "id",
    "oauth_client_secret_env": "SECRET",
}


def test_m365_preset_fills_host_port_tls_token_url_and_scope():
    """provider = "m365" with a tenant gives Microsoft's host, port, TLS mode, token URL and scope."""
    up = parse({"provider": "m365", "oauth_tenant": "corp.example", **APP})
    assert (up.host, up.port, up.tls) == ("smtp.office365.com", 587, "starttls")
    assert up.oauth.token_url == "https://login.microsoftonline.com/corp.example/oauth2/v2.0/token"
    assert up.oauth.scope == "https://outlook.office365.com/.default"
    assert up.oauth.grant == "client_credentials"


def test_gmail_preset_fills_google_values(tmp_path):
    """provider = "gmail" gives smtp.gmail.com, Google's token URL and https://mail.google.com/."""
    rt = tmp_path / "rt"
    rt.write_text("x")
    up = parse(
        {
            "provider": "gmail",
            "auth": "xoauth2",
            "username": "a@corp.example",
            "oauth_client_id": "id",
            "refresh_token_file": str(rt),
        }
    )
    assert (up.host, up.port) == ("smtp.gmail.com", 587)
    assert up.oauth.token_url == "https://oauth2.googleapis.com/token"
    assert (up.oauth.scope, up.oauth.grant) == ("https://mail.google.com/", "refresh_token")


def test_every_preset_value_can_be_overridden():
    """Explicit host, port, tls, token URL and scope win over the preset."""
    up = parse(
        {
            "provider": "m365",
            "host": "localhost",
            "port": 465,
            "tls": "implicit",
            "oauth_token_url": "https://127.0.0.1:8443/token",
            "oauth_scope": "other",
            **APP,
        }
    )
    assert (up.host, up.port, up.tls) == ("localhost", 465, "implicit")
    assert (up.oauth.token_url, up.oauth.scope) == ("https://127.0.0.1:8443/token", "other")


def test_password_auth_stays_the_default_with_a_preset():
    """A preset alone does not switch to OAuth: username + password_env still work."""
    up = parse({"provider": "gmail", "username": "a@corp.example", "password_env": "APP_PASSWORD"})
    assert (up.auth, up.oauth, up.host) == ("password", None, "smtp.gmail.com")


def test_m365_without_tenant_or_token_url_is_a_problem():
    """Microsoft's token URL needs the tenant: the problem says which keys can give it."""
    assert "oauth_tenant" in problems({"provider": "m365", **APP})["oauth_token_url"]


@pytest.mark.parametrize(
    "table,key,expected",
    [
        (
            {
                "host": "h",
                "auth": "xoauth2",
                "oauth_token_url": "https://t/x",
                "oauth_scope": "s",
                "oauth_client_id": "id",
                "oauth_client_secret_env": "S",
            },
            "username",
            '"$sender"',
        ),
        (
            {"host": "h", **APP, "oauth_token_url": "http://t/x", "oauth_scope": "s"},
            "oauth_token_url",
            "https://",
        ),
        ({"host": "h", **APP, "oauth_token_url": "https://t/x"}, "oauth_scope", "required by"),
        (
            {
                "host": "h",
                **APP,
                "oauth_token_url": "https://t/x",
                "oauth_scope": "s",
                "password_env": "P",
            },
            "password_env",
            "oauth_* keys",
        ),
        (
            {
                "host": "h",
                **APP,
                "oauth_token_url": "https://t/x",
                "oauth_scope": "s",
                "oauth_grant": "implicit",
            },
            "oauth_grant",
            '"client_credentials"',
        ),
        (
            {
                "host": "h",
                **APP,
                "oauth_token_url": "https://t/x",
                "oauth_scope": "s",
                "oauth_grant": "refresh_token",
            },
            "refresh_token_file",
            "refresh token",
        ),
        (
            {
                "host": "h",
                **APP,
                "oauth_token_url": "https://t/x",
                "oauth_scope": "s",
                "oauth_grant": "jwt_bearer",
            },
            "service_account_file",
            "JSON key",
        ),
        (
            {"host": "h", "username": "u", "password_env": "P", "oauth_scope": "s"},
            "oauth_scope",
            'auth = "xoauth2"',
        ),
        (
            {"provider": "yahoo", "username": "u", "password_env": "P"},
            "provider",
            '"m365", "gmail"',
        ),
        (
            {
                "host": "h",
                **APP,
                "oauth_token_url": "https://t/x",
                "oauth_scope": "s",
                "oauth_ca_file": "/nonexistent/ca.pem",
            },
            "oauth_ca_file",
            "an existing file",
        ),
    ],
)
def test_problems_name_the_key_and_what_was_expected(table, key, expected):
    """Each invalid OAuth setting is reported at its own key, with what was expected."""
    found = problems(table)
    assert key in found and expected in found[key], found


def test_password_not_required_with_xoauth2():
    """username without password_env is fine when auth = "xoauth2"."""
    up = parse({"host": "h", **APP, "oauth_token_url": "https://t/x", "oauth_scope": "s"})
    assert up.auth == "xoauth2" and up.password_env is None
