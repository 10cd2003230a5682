"""Provider presets (Microsoft 365, Google) and an upstream's OAuth settings.

``provider = "m365"`` or ``"gmail"`` fills in the host, port, TLS mode, token
URL and scope a provider documents; every value can still be set explicitly.
`read_upstream_auth` validates the ``auth`` and ``oauth_*`` keys of one
``[upstreams.NAME]`` table into an `OAuthConfig`, reporting problems through
the config reader in the same style as every other key. Secrets are only
referenced here (variable or file names), read later by `gateway.outbound.grants`.
Pure: no reactor, no network.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from gateway.config.reader import Reader

AUTH_MODES = ("password", "xoauth2")
GRANTS = ("client_credentials", "refresh_token", "jwt_bearer")
SENDER_PLACEHOLDER = "$sender"

MICROSOFT_TOKEN_URL = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"


@dataclass(frozen=True)
class Preset:
    """What a provider documents for SMTP submission with OAuth 2.0."""

    host: str
    port: int
    tls: str
    token_url: str | None  # None: depends on the tenant (oauth_tenant)
    scope: str


PRESETS: Mapping[str, Preset] = {
    "m365": Preset(
        "smtp.office365.com", 587, "starttls", None, "https://outlook.office365.com/.default"
    ),
    "gmail": Preset(
        "smtp.gmail.com", 587, "starttls", GOOGLE_TOKEN_URL, "https://mail.google.com/"
    ),
}


@dataclass(frozen=True)
class HostBudget:
    """What a provider publishes as the sending budget of one identity (per host)."""

    pace: str | None  # messages per period, as ``pace`` is written
    max_recipients_per_day: int | None
    max_connections_per_identity: int | None  # concurrent connections per mailbox
    source: str  # where it is published, for `mailgate explain` and docs/providers.md


# Budgets per host, as the providers publish them ("per day" is a rolling 24 hours). An
# explicit ``pace``, ``max_recipients_per_day`` or ``max_connections_per_identity`` overrides each.
HOST_BUDGETS: Mapping[str, HostBudget] = {
    "smtp.office365.com": HostBudget(
        "30/minute", 10000, 3, "Exchange Online limits: SMTP AUTH submission"
    ),
    "smtp.gmail.com": HostBudget("2000/day", None, None, "Gmail sending limits"),
    "smtp-relay.gmail.com": HostBudget(
        "10000/day", None, None, "Google Workspace SMTP relay limits"
    ),
}

OAUTH_KEYS = frozenset(
    {
        "oauth_grant",
        "oauth_token_url",
        "oauth_tenant",
        "oauth_client_id",
        "oauth_client_secret_env",
        "oauth_client_secret_file",
        "refresh_token_file",
        "service_account_file",
        "oauth_scope",
        "oauth_ca_file",
    }
)
UPSTREAM_KEYS = frozenset({"provider", "auth", "oauth_client_secret_expires"}) | OAUTH_KEYS


@dataclass(frozen=True)
class OAuthConfig:
    """How to obtain access tokens for one upstream (secrets by reference only)."""

    grant: str
    token_url: str
    scope: str | None = None
    client_id: str | None = None
    client_secret_env: str | None = None
    client_secret_file: str | None = None
    refresh_token_file: str | None = None
    service_account_file: str | None = None
    ca_file: str | None = None


def preset_for(reader: Reader, table: Mapping[str, Any], key: str) -> Preset | None:
    """The preset named by ``provider``, if any (a problem if the name is unknown)."""
    name = reader.string(table, f"{key}.provider", None, choices=tuple(PRESETS))
    return PRESETS.get(name) if name else None


def is_sender_placeholder(username: str | None) -> bool:
    return username == SENDER_PLACEHOLDER


def read_upstream_auth(
    reader: Reader, table: Mapping[str, Any], key: str, preset: Preset | None
) -> tuple[str, OAuthConfig | None]:
    """Validate ``auth`` and the ``oauth_*`` keys; return the auth mode and OAuth settings."""
    auth = reader.string(table, f"{key}.auth", "password", choices=AUTH_MODES) or "password"
    if auth != "xoauth2":
        for name in sorted(OAUTH_KEYS & set(table)):
            reader.problem(f"{key}.{name}", "a value", 'nothing unless auth = "xoauth2"', raw=True)
        return auth, None
    for name in ("password_env", "password_file"):
        if name in table:
            reader.problem(
                f"{key}.{name}",
                "a value",
                'nothing: auth = "xoauth2" authenticates with oauth_* keys, not a password',
                raw=True,
            )
    if table.get("username") is None:
        reader.problem(
            f"{key}.username",
            "nothing",
            f'the mailbox to authenticate as (XOAUTH2 user), or "{SENDER_PLACEHOLDER}"',
            raw=True,
        )

    def text(name: str) -> str | None:
        return reader.string(table, f"{key}.{name}", None)

    def existing_file(name: str, what: str) -> str | None:
        path = text(name)
        if path and not os.path.isfile(path):
            reader.problem(f"{key}.{name}", path, f"an existing file ({what})")
        return path

    secret_env, secret_file = (
        text("oauth_client_secret_env"),
        existing_file("oauth_client_secret_file", "the client secret, mode 600"),
    )
    refresh_file = existing_file("refresh_token_file", "the refresh token, mode 600")
    account_file = existing_file("service_account_file", "the service account's JSON key, mode 600")
    ca_file = existing_file("oauth_ca_file", "PEM CA certificates trusted for the token endpoint")
    inferred = (
        "jwt_bearer" if account_file else "refresh_token" if refresh_file else "client_credentials"
    )
    grant = reader.string(table, f"{key}.oauth_grant", inferred, choices=GRANTS) or inferred
    client_id = text("oauth_client_id")
    scope = text("oauth_scope") or (preset.scope if preset else None)

    if secret_env and secret_file:
        reader.problem(
            f"{key}.oauth_client_secret_file",
            "both oauth_client_secret_env and oauth_client_secret_file",
            "exactly one of the two",
            raw=True,
        )
    if grant in ("client_credentials", "refresh_token") and not client_id:
        reader.problem(
            f"{key}.oauth_client_id",
            "nothing",
            f'the application (client) ID, required by oauth_grant = "{grant}"',
            raw=True,
        )
    if grant == "client_credentials" and not (secret_env or secret_file):
        reader.problem(
            f"{key}.oauth_client_secret_env",
            "nothing",
            "oauth_client_secret_env or "
            'oauth_client_secret_file, required by oauth_grant = "client_credentials"',
            raw=True,
        )
    if grant == "refresh_token" and not refresh_file:
        reader.problem(
            f"{key}.refresh_token_file",
            "nothing",
            'a file holding the refresh token, required by oauth_grant = "refresh_token"',
            raw=True,
        )
    if grant == "jwt_bearer" and not account_file:
        reader.problem(
            f"{key}.service_account_file",
            "nothing",
            'the service account JSON key file, required by oauth_grant = "jwt_bearer"',
            raw=True,
        )
    if grant in ("client_credentials", "jwt_bearer") and not scope:
        reader.problem(
            f"{key}.oauth_scope",
            "nothing",
            f'the scope to request, required by oauth_grant = "{grant}"',
            raw=True,
        )

    token_url = _token_url(reader, table, key, preset)
    return auth, OAuthConfig(
        grant=grant,
        token_url=token_url or "https://invalid/",
        scope=scope,
        client_id=client_id,
        client_secret_env=secret_env,
        client_secret_file=secret_file,
        refresh_token_file=refresh_file,
        service_account_file=account_file,
        ca_file=ca_file,
    )


def _token_url(
    reader: Reader, table: Mapping[str, Any], key: str, preset: Preset | None
) -> str | None:
    url = reader.string(table, f"{key}.oauth_token_url", None)
    tenant = reader.string(table, f"{key}.oauth_tenant", None)
    if url is None and tenant is not None:
        if preset is not PRESETS["m365"]:
            reader.problem(
                f"{key}.oauth_tenant",
                tenant,
                'nothing unless provider = "m365" (elsewhere set oauth_token_url)',
            )
            return None
        return MICROSOFT_TOKEN_URL.format(tenant=quote(tenant, safe=""))
    if url is None:
        if preset is not None and preset.token_url:
            return preset.token_url
        expected = (
            "oauth_tenant (the Entra ID tenant ID or primary domain) or oauth_token_url"
            if preset is PRESETS["m365"]
            else "the token endpoint, an https:// URL"
        )
        reader.problem(f"{key}.oauth_token_url", "nothing", expected, raw=True)
        return None
    if tenant is not None:
        reader.problem(
            f"{key}.oauth_tenant", tenant, "nothing when oauth_token_url is set (one or the other)"
        )
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        reader.problem(
            f"{key}.oauth_token_url", url, "an https:// URL (tokens travel only over verified TLS)"
        )
        return None
    return url
