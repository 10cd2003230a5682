"""The embedded default, from the environment: one upstream URL relays everything. Pure.

``MAILGATE_UPSTREAM=starttls://USER@HOST:587`` (or ``smtps://USER@HOST:465``)
becomes a config document that `gateway.config.toml.parse` validates like a
file, with source "environment". The password is only ever read from
``MAILGATE_UPSTREAM_PASSWORD``; error messages never repeat the user part of
the URL, since it may carry one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from gateway.config.model import Config
from gateway.config.toml import parse
from gateway.errors import UsageError

UPSTREAM_VARIABLE = "MAILGATE_UPSTREAM"
PASSWORD_VARIABLE = "MAILGATE_UPSTREAM_PASSWORD"


def from_environment(environ: Mapping[str, str] | None = None) -> Config:
    """The embedded default: loopback listener, every recipient relayed to $MAILGATE_UPSTREAM.

    Variables: MAILGATE_UPSTREAM (``starttls://USER@HOST:587`` or ``smtps://USER@HOST:465``),
    MAILGATE_UPSTREAM_PASSWORD, and optionally MAILGATE_UPSTREAM_CA_FILE, MAILGATE_LISTEN
    (``HOST:PORT``, ``starttls://HOST:PORT``, ``smtps://HOST:PORT``, several separated by commas;
    TLS entries take MAILGATE_TLS_CERT_FILE, MAILGATE_TLS_KEY_FILE, optionally
    MAILGATE_CLIENT_CA_FILE), MAILGATE_AUDIT, MAILGATE_METRICS (HOST:PORT of /metrics, /healthz, /readyz).
    """
    env = os.environ if environ is None else environ
    url = env.get(UPSTREAM_VARIABLE)
    if not url:
        raise UsageError(
            f"no configuration: pass --config FILE, or set {UPSTREAM_VARIABLE}="
            f"starttls://USER@HOST:587 (or smtps://USER@HOST:465) and {PASSWORD_VARIABLE}"
        )
    document: dict[str, Any] = {
        "listener": {},
        "audit": {"path": env.get("MAILGATE_AUDIT", "-")},
        "upstreams": {"default": upstream_from_url(url)},
        "rules": [{"name": "default", "action": "relay", "upstream": "default"}],
    }
    if env.get("MAILGATE_LISTEN"):  # one entry, or several separated by commas
        entries = [e.strip() for e in env["MAILGATE_LISTEN"].split(",")]
        document["listener"]["listen"] = entries[0] if len(entries) == 1 else entries
    for key in ("TLS_CERT_FILE", "TLS_KEY_FILE", "CLIENT_CA_FILE"):
        if env.get(f"MAILGATE_{key}"):
            document["listener"][key.lower()] = env[f"MAILGATE_{key}"]
    if env.get("MAILGATE_METRICS"):
        document["metrics"] = {"listen": env["MAILGATE_METRICS"]}
    if env.get("MAILGATE_UPSTREAM_CA_FILE"):
        document["upstreams"]["default"]["ca_file"] = env["MAILGATE_UPSTREAM_CA_FILE"]
    return parse(document, "environment")


def _redact_url(url: str) -> str:
    """The URL with anything before the last '@' hidden: it may hold a password."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, sep, _ = head.partition("://")
    return f"{scheme}{sep}<user>@{tail}" if sep else f"<user>@{tail}"


def upstream_from_url(url: str) -> dict[str, Any]:
    """``starttls://user@host:587`` or ``smtps://user@host:465`` to an upstream table.

    Error messages never repeat the user part of the URL: it may carry a password.
    """
    shown = _redact_url(url)
    scheme, sep, rest = url.partition("://")
    modes = {"starttls": ("starttls", 587), "smtps": ("implicit", 465)}
    if not sep or scheme.lower() not in modes or not rest:
        raise UsageError(
            f"{UPSTREAM_VARIABLE}: found {shown!r}, expected starttls://USER@HOST:587 or smtps://USER@HOST:465"
        )
    tls, default_port = modes[scheme.lower()]
    userinfo, at, hostport = rest.rpartition("@")
    if ":" in userinfo:
        raise UsageError(
            f"{UPSTREAM_VARIABLE}: a password in the URL is not accepted; put it in {PASSWORD_VARIABLE}"
        )
    hostport = hostport.rstrip("/")
    if hostport.startswith("["):  # an IPv6 literal: [2001:db8::25] or [2001:db8::25]:465
        host, bracket, after = hostport[1:].partition("]")
        port = after[1:] if after.startswith(":") else str(default_port) if not after else ""
        if not bracket:
            host = ""
    else:
        host, colon, port = hostport.rpartition(":")
        if not colon:
            host, port = hostport, str(default_port)
    if not host or not port.isdigit():
        raise UsageError(f"{UPSTREAM_VARIABLE}: found {shown!r}, expected HOST and a numeric PORT")
    table: dict[str, Any] = {"host": host.strip("[]"), "port": int(port), "tls": tls}
    if at:
        table["username"] = unquote(userinfo)
        table["password_env"] = PASSWORD_VARIABLE
    return table
