"""Reading the ``[upstreams.NAME]`` tables: host, TLS, AUTH, pins, timeouts, pool. Pure.

Provider presets and the ``auth`` / ``oauth_*`` keys are read by
`gateway.config.providers`; problems go through the `Reader` with every other key's.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from typing import Any

from gateway.config.model import TLS_MODES, TLS_VERSIONS, UpstreamConfig
from gateway.config.providers import (
    HOST_BUDGETS,
    UPSTREAM_KEYS,
    preset_for,
    read_upstream_auth,
)
from gateway.config.reader import Reader
from gateway.config.values import SHA256_EXPECTED, parse_rate, parse_sha256


def read_upstreams(reader: Reader, document: Mapping[str, Any]) -> dict[str, UpstreamConfig]:
    """The ``[upstreams.NAME]`` tables, by name."""
    section = document.get("upstreams", {})
    if not isinstance(section, dict):
        reader.problem("upstreams", section, "a table of [upstreams.NAME] tables")
        return {}
    return {name: _read_upstream(reader, name, value) for name, value in section.items()}


def _read_upstream(reader: Reader, name: str, value: Any) -> UpstreamConfig:
    key = f"upstreams.{name}"
    if not isinstance(value, dict):
        reader.problem(key, value, "a table")
        return UpstreamConfig(name=name, host="invalid")
    known = {
        "host",
        "port",
        "tls",
        "username",
        "password_env",
        "password_file",
        "ca_file",
        "min_tls_version",
        "pin_sha256",
        "connect_timeout",
        "command_timeout",
        "data_timeout",
        "failover_cooldown",
        "max_connections",
        "max_connections_per_identity",
        "pool_idle_timeout",
        "pool_max_messages",
        "pace",
        "max_recipients_per_day",
    }
    known |= UPSTREAM_KEYS
    reader.unknown_keys(value, key, known)
    t = value
    preset = preset_for(reader, t, key)
    auth, oauth = read_upstream_auth(reader, t, key, preset)
    host = reader.string(t, f"{key}.host", preset.host if preset else None)
    if host is None:
        reader.problem(
            f"{key}.host",
            "nothing",
            "the upstream's host name, as on its certificate",
            raw=True,
        )
        host = "invalid"
    port = reader.integer(t, f"{key}.port", 587, 1, 65535)
    tls = reader.string(
        t, f"{key}.tls", "implicit" if port == 465 else "starttls", choices=TLS_MODES
    )
    username = reader.string(t, f"{key}.username", None)
    password_env = reader.string(t, f"{key}.password_env", None)
    password_file = reader.string(t, f"{key}.password_file", None)
    if password_env and password_file:
        reader.problem(
            f"{key}.password_file",
            "both password_env and password_file",
            "exactly one of the two",
            raw=True,
        )
    if auth == "password" and username and not (password_env or password_file):
        reader.problem(
            f"{key}.password_env",
            "nothing",
            "password_env or password_file when username is set",
            raw=True,
        )
    if (password_env or password_file) and not username:
        reader.problem(
            f"{key}.username", "nothing", "a username when a password is configured", raw=True
        )
    ca_file = reader.string(t, f"{key}.ca_file", None)
    if ca_file and not os.path.isfile(ca_file):
        reader.problem(f"{key}.ca_file", ca_file, "an existing PEM file of trusted CA certificates")
    pins = reader.strings(t, f"{key}.pin_sha256") or ()
    normalised = []
    for i, pin in enumerate(pins):
        hexpin = parse_sha256(pin)
        if hexpin is None:
            reader.problem(f"{key}.pin_sha256[{i}]", pin, SHA256_EXPECTED)
        normalised.append(hexpin or pin)
    budget = HOST_BUDGETS.get(host.lower())
    pace_text = reader.string(t, f"{key}.pace", budget.pace if budget else None)
    pace = parse_rate(pace_text) if pace_text else None
    if pace_text and pace is None:
        reader.problem(
            f"{key}.pace",
            pace_text,
            'messages per period per sending identity, COUNT/UNIT such as "30/minute" '
            "(unit: second, minute, hour, day)",
        )
    recipients = budget.max_recipients_per_day if budget else None
    if "max_recipients_per_day" in t:
        recipients = reader.integer(t, f"{key}.max_recipients_per_day", 1, 1, 100_000_000)
    per_identity = budget.max_connections_per_identity if budget else None
    if "max_connections_per_identity" in t:
        per_identity = reader.integer(t, f"{key}.max_connections_per_identity", 1, 1, 10000)
    return UpstreamConfig(
        name=name,
        host=host,
        port=port,
        tls=tls or "starttls",
        username=username,
        password_env=password_env,
        password_file=password_file,
        ca_file=ca_file,
        min_tls_version=reader.string(t, f"{key}.min_tls_version", "1.2", choices=TLS_VERSIONS)
        or "1.2",
        pin_sha256=tuple(normalised),
        connect_timeout=reader.number(t, f"{key}.connect_timeout", 30, 0.1, 3600),
        command_timeout=reader.number(t, f"{key}.command_timeout", 120, 0.1, 3600),
        data_timeout=reader.number(t, f"{key}.data_timeout", 600, 0.1, 3600),
        failover_cooldown=reader.number(t, f"{key}.failover_cooldown", 60, 0, 86400),
        max_connections=reader.integer(t, f"{key}.max_connections", 10, 1, 10000),
        max_connections_per_identity=per_identity,
        pool_idle_timeout=reader.number(t, f"{key}.pool_idle_timeout", 30, 0, 3600),
        pool_max_messages=reader.integer(t, f"{key}.pool_max_messages", 1000, 1, 1000000),
        auth=auth,
        oauth=oauth,
        pace=pace,
        max_recipients_per_day=recipients,
        oauth_client_secret_expires=_expiry(reader, t, f"{key}.oauth_client_secret_expires"),
    )


def _expiry(reader: Reader, table: Mapping[str, Any], key: str) -> float | None:
    """``oauth_client_secret_expires``: a TOML date or date-time (UTC when without offset)."""
    value = table.get(key.rsplit(".", 1)[1])
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        when = value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
        return when.timestamp()
    if isinstance(value, datetime.date):
        return datetime.datetime(
            value.year, value.month, value.day, tzinfo=datetime.UTC
        ).timestamp()
    reader.problem(key, value, "the client secret's expiry, a TOML date such as 2027-06-30")
    return None
