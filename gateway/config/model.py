"""Configuration: TOML (or the environment) in, validated frozen values out.

Every problem is collected and reported at once, each naming the file, the key,
what was found and what was expected. Secrets are referenced here
(`password_env` / `password_file`) and read by `resolve_password`, so that
`explain` works without them. Pure: no reactor.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from gateway.config import secrets as credentials
from gateway.config.providers import UPSTREAM_KEYS, OAuthConfig, preset_for, read_upstream_auth
from gateway.config.secrets import Secret
from gateway.errors import ConfigError, Problem, SecretError, UsageError
from gateway.policy.headers import HeaderEdits, read_header_edits

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

TLS_MODES = ("starttls", "implicit")
TLS_VERSIONS = ("1.2", "1.3")
ACTIONS = ("relay", "reject")
DELIVERY_MODES = ("relay", "queue")
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


METRICS_LISTEN = Endpoint("127.0.0.1", 9225)


@dataclass(frozen=True)
class ListenerConfig:
    listen: Endpoint = Endpoint("127.0.0.1", 2525)
    allowed_clients: tuple[Network, ...] = LOOPBACK
    hostname: str = "mailgate.localdomain"
    max_message_size: int = 26214400
    max_recipients: int = 100
    idle_timeout: float = 300.0
    shutdown_grace: float = 30.0
    require_auth: bool = False
    max_connections: int = 1000
    max_connections_per_client: int = 100
    max_errors: int = 20
    data_timeout: float = 300.0
    min_data_rate: int = 256  # bytes/second averaged over DATA, enforced after the first 30 s
    proxy_protocol: bool = False  # the client's address comes from a PROXY v1/v2 header


@dataclass(frozen=True)
class AuditConfig:
    path: str = "-"


@dataclass(frozen=True)
class MetricsConfig:
    """The metrics and health HTTP server; ``listen`` None (no [metrics] section) turns it off.

    ``details_from``: the clients that may ask ``/readyz?verbose=1`` for the reasons
    (upstream names, usernames, errors); every other client gets ready / not ready.
    """

    listen: Endpoint | None = None
    details_from: tuple[Network, ...] = LOOPBACK


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    host: str
    port: int = 587
    tls: str = "starttls"
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    min_tls_version: str = "1.2"
    pin_sha256: tuple[str, ...] = ()
    connect_timeout: float = 30.0
    command_timeout: float = 120.0
    data_timeout: float = 600.0
    failover_cooldown: float = 60.0
    max_connections: int = 10
    pool_idle_timeout: float = 30.0
    pool_max_messages: int = 1000
    auth: str = "password"  # or "xoauth2" (see gateway.providers)
    oauth: OAuthConfig | None = None

    @property
    def url(self) -> str:
        scheme = "smtps" if self.tls == "implicit" else "starttls"
        user = f"{quote(self.username, safe='')}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


@dataclass(frozen=True)
class Rate:
    """A rate limit: `count` messages per `seconds`."""

    count: int
    seconds: float
    text: str


@dataclass(frozen=True)
class App:
    """An app that authenticates to the listener (AUTH PLAIN/LOGIN)."""

    name: str
    password_hash: str
    senders: tuple[str, ...] | None = None
    check_from_header: bool = False


@dataclass(frozen=True)
class Rule:
    name: str
    action: str
    upstreams: tuple[str, ...] = ()  # failover order; empty for reject rules
    clients: tuple[Network, ...] | None = None
    senders: tuple[str, ...] | None = None
    recipients: tuple[str, ...] | None = None
    apps: tuple[str, ...] | None = None
    rate: Rate | None = None
    headers: HeaderEdits | None = None  # rewrite_from / strip_headers (see gateway.headers)
    delivery: str = "relay"  # "relay" (cut-through) or "queue" (store-and-forward)


@dataclass(frozen=True)
class QueueConfig:
    """The spool and its retry schedule (store-and-forward, ``delivery = "queue"``)."""

    path: str = "./var/spool"
    min_backoff: float = 300.0
    max_backoff: float = 4000.0
    max_age: float = 432000.0
    bounce: bool = True


@dataclass(frozen=True)
class Config:
    listener: ListenerConfig
    audit: AuditConfig
    upstreams: Mapping[str, UpstreamConfig]
    rules: tuple[Rule, ...]
    apps: Mapping[str, App] = field(default_factory=dict)
    source: str = "<embedded default>"
    metrics: MetricsConfig = MetricsConfig()
    queue: QueueConfig = field(default_factory=QueueConfig)


def resolve_password(upstream: UpstreamConfig) -> Secret | None:
    """Read the upstream's password from its variable or file (None: no AUTH configured)."""
    try:
        if upstream.password_env:
            return credentials.from_env(upstream.password_env)
        if upstream.password_file:
            return credentials.from_file(upstream.password_file)
    except SecretError as exc:
        raise SecretError(f"upstreams.{upstream.name}: {exc}") from None
    return None


# --- reading TOML -----------------------------------------------------------------


def load(path: str) -> Config:
    """Load and validate a config file; raise `ConfigError` listing every problem."""
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError([Problem(path, "(file)", repr(exc.strerror), "a readable TOML file")])
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem(path, "(syntax)", str(exc), "valid TOML")])
    return parse(document, path)


def parse(document: Mapping[str, Any], source: str) -> Config:
    reader = _Reader(source)
    config = reader.config(document)
    if reader.problems:
        raise ConfigError(reader.problems)
    return config


def _describe(value: object) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string"}.get(type(value))
    if kind is None:
        kind = (
            "table" if isinstance(value, dict) else "array" if isinstance(value, list) else "value"
        )
    text = repr(value)
    return f"{text if len(text) <= 300 else text[:297] + '...'} ({kind})"


class _Reader:
    """Walks the document, converting values and recording problems instead of raising."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def problem(self, key: str, found: object, expected: str, *, raw: bool = False) -> None:
        shown = found if raw and isinstance(found, str) else _describe(found)
        self.problems.append(Problem(self.source, key, str(shown), expected))

    def unknown_keys(self, table: Mapping[str, Any], key: str, known: set[str]) -> None:
        for unknown in sorted(set(table) - known):
            expected = "one of: " + ", ".join(sorted(known))
            where = f"{key}.{unknown}" if key else unknown
            self.problem(where, "an unknown key", expected, raw=True)

    def table(self, document: Mapping[str, Any], key: str, known: set[str]) -> dict[str, Any]:
        value = document.get(key, {})
        if not isinstance(value, dict):
            self.problem(key, value, "a table")
            return {}
        self.unknown_keys(value, key, known)
        return value

    def integer(self, table: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
        value = table.get(key.rpartition(".")[2], default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.problem(key, value, f"an integer from {low} to {high}")
            return default
        return value

    def number(
        self, table: Mapping[str, Any], key: str, default: float, low: float, high: float
    ) -> float:
        value = table.get(key.rpartition(".")[2], default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            self.problem(key, value, f"a number of seconds from {low:g} to {high:g}")
            return default
        return float(value)

    def boolean(self, table: Mapping[str, Any], key: str, default: bool) -> bool:
        value = table.get(key.rpartition(".")[2], default)
        if not isinstance(value, bool):
            self.problem(key, value, "true or false")
            return default
        return value

    def string(
        self,
        table: Mapping[str, Any],
        key: str,
        default: str | None,
        *,
        choices: tuple[str, ...] = (),
    ) -> str | None:
        value = table.get(key.rpartition(".")[2], default)
        if value is None:
            return None
        if not isinstance(value, str) or not value or (choices and value not in choices):
            expected = (
                "one of " + ", ".join(f'"{c}"' for c in choices)
                if choices
                else "a non-empty string"
            )
            self.problem(key, value, expected)
            return default
        return value

    def strings(self, table: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
        value = table.get(key.rpartition(".")[2])
        if value is None:
            return None
        if isinstance(value, str):
            value = [value]
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v for v in value)
        ):
            self.problem(key, value, "a non-empty list of non-empty strings")
            return None
        return tuple(value)

    def networks(self, table: Mapping[str, Any], key: str) -> tuple[Network, ...] | None:
        values = self.strings(table, key)
        if values is None:
            return None
        networks = []
        for i, text in enumerate(values):
            try:
                network = ipaddress.ip_network(text, strict=False)
                if (
                    isinstance(network, ipaddress.IPv6Network)
                    and network.prefixlen >= 96
                    and network.network_address.ipv4_mapped is not None
                ):
                    # Clients arrive as IPv4 (mapped addresses are unmapped), so match them as IPv4.
                    mapped = network.network_address.ipv4_mapped
                    network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
                networks.append(network)
            except ValueError:
                self.problem(
                    f"{key}[{i}]", text, 'a CIDR network such as "10.1.0.0/16" or "::1/128"'
                )
        return tuple(networks)

    # --- sections -------------------------------------------------------------------

    def config(self, document: Mapping[str, Any]) -> Config:
        known = {"listener", "audit", "upstreams", "rules", "apps", "metrics", "queue"}
        self.unknown_keys(document, "", known)
        listener = self.listener(document)
        audit = self.audit(document)
        upstreams = self.upstreams(document)
        apps = self.apps(document)
        rules = self.rules(document, upstreams, apps)
        if listener.require_auth and not apps:
            self.problem(
                "listener.require_auth", True, "at least one [apps.NAME] table to authenticate"
            )
        metrics = self.metrics(document)
        return Config(
            listener,
            audit,
            upstreams,
            rules,
            apps,
            self.source,
            metrics=metrics,
            queue=self.queue(document),
        )

    def queue(self, document: Mapping[str, Any]) -> QueueConfig:
        d = QueueConfig()
        t = self.table(
            document, "queue", {"path", "min_backoff", "max_backoff", "max_age", "bounce"}
        )
        min_backoff = self.number(t, "queue.min_backoff", d.min_backoff, 1, 86400)
        max_backoff = self.number(t, "queue.max_backoff", d.max_backoff, 1, 86400)
        if max_backoff < min_backoff:
            self.problem(
                "queue.max_backoff",
                t.get("max_backoff", max_backoff),
                f"a number of seconds not below queue.min_backoff ({min_backoff:g})",
            )
        bounce = t.get("bounce", d.bounce)
        if not isinstance(bounce, bool):
            self.problem("queue.bounce", bounce, "true or false")
            bounce = d.bounce
        return QueueConfig(
            path=self.string(t, "queue.path", d.path) or d.path,
            min_backoff=min_backoff,
            max_backoff=max_backoff,
            max_age=self.number(t, "queue.max_age", d.max_age, 1, 365 * 86400),
            bounce=bounce,
        )

    def listener(self, document: Mapping[str, Any]) -> ListenerConfig:
        d = ListenerConfig()
        known = {
            "listen",
            "allowed_clients",
            "hostname",
            "max_message_size",
            "max_recipients",
            "idle_timeout",
            "shutdown_grace",
            "require_auth",
            "max_connections",
            "max_connections_per_client",
            "max_errors",
            "data_timeout",
            "min_data_rate",
            "proxy_protocol",
        }
        t = self.table(document, "listener", known)
        listen = self.endpoint(t, "listener.listen", d.listen)
        allowed = self.networks(t, "listener.allowed_clients")
        return ListenerConfig(
            listen=listen,
            allowed_clients=d.allowed_clients if allowed is None else allowed,
            hostname=self.string(t, "listener.hostname", d.hostname) or d.hostname,
            max_message_size=self.integer(
                t, "listener.max_message_size", d.max_message_size, 1024, 2**40
            ),
            max_recipients=self.integer(t, "listener.max_recipients", d.max_recipients, 1, 100000),
            idle_timeout=self.number(t, "listener.idle_timeout", d.idle_timeout, 1, 86400),
            shutdown_grace=self.number(t, "listener.shutdown_grace", d.shutdown_grace, 0, 3600),
            require_auth=self.boolean(t, "listener.require_auth", d.require_auth),
            max_connections=self.integer(
                t, "listener.max_connections", d.max_connections, 1, 1000000
            ),
            max_connections_per_client=self.integer(
                t, "listener.max_connections_per_client", d.max_connections_per_client, 1, 1000000
            ),
            max_errors=self.integer(t, "listener.max_errors", d.max_errors, 1, 10000),
            data_timeout=self.number(t, "listener.data_timeout", d.data_timeout, 1, 86400),
            min_data_rate=self.integer(t, "listener.min_data_rate", d.min_data_rate, 0, 2**30),
            proxy_protocol=self.boolean(t, "listener.proxy_protocol", d.proxy_protocol),
        )

    def endpoint(self, table: Mapping[str, Any], key: str, default: Endpoint) -> Endpoint:
        value = table.get(key.rpartition(".")[2])
        if value is None:
            return default
        parsed = parse_endpoint(value) if isinstance(value, str) else None
        if parsed is None:
            self.problem(key, value, 'HOST:PORT such as "127.0.0.1:2525" or "[::1]:2525"')
            return default
        return parsed

    def metrics(self, document: Mapping[str, Any]) -> MetricsConfig:
        if "metrics" not in document:
            return MetricsConfig()
        t = self.table(document, "metrics", {"listen", "details_from"})
        details = () if t.get("details_from") == [] else self.networks(t, "metrics.details_from")
        return MetricsConfig(
            listen=self.endpoint(t, "metrics.listen", METRICS_LISTEN),
            details_from=LOOPBACK if details is None else details,
        )

    def audit(self, document: Mapping[str, Any]) -> AuditConfig:
        t = self.table(document, "audit", {"path"})
        return AuditConfig(path=self.string(t, "audit.path", "-") or "-")

    def upstreams(self, document: Mapping[str, Any]) -> dict[str, UpstreamConfig]:
        section = document.get("upstreams", {})
        if not isinstance(section, dict):
            self.problem("upstreams", section, "a table of [upstreams.NAME] tables")
            return {}
        return {name: self.upstream(name, value) for name, value in section.items()}

    def upstream(self, name: str, value: Any) -> UpstreamConfig:
        key = f"upstreams.{name}"
        if not isinstance(value, dict):
            self.problem(key, value, "a table")
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
            "pool_idle_timeout",
            "pool_max_messages",
        }
        known |= UPSTREAM_KEYS
        self.unknown_keys(value, key, known)
        t = value
        preset = preset_for(self, t, key)
        auth, oauth = read_upstream_auth(self, t, key, preset)
        host = self.string(t, f"{key}.host", preset.host if preset else None)
        if host is None:
            self.problem(
                f"{key}.host",
                "nothing",
                "the upstream's host name, as on its certificate",
                raw=True,
            )
            host = "invalid"
        port = self.integer(t, f"{key}.port", 587, 1, 65535)
        tls = self.string(
            t, f"{key}.tls", "implicit" if port == 465 else "starttls", choices=TLS_MODES
        )
        username = self.string(t, f"{key}.username", None)
        password_env = self.string(t, f"{key}.password_env", None)
        password_file = self.string(t, f"{key}.password_file", None)
        if password_env and password_file:
            self.problem(
                f"{key}.password_file",
                "both password_env and password_file",
                "exactly one of the two",
                raw=True,
            )
        if auth == "password" and username and not (password_env or password_file):
            self.problem(
                f"{key}.password_env",
                "nothing",
                "password_env or password_file when username is set",
                raw=True,
            )
        if (password_env or password_file) and not username:
            self.problem(
                f"{key}.username", "nothing", "a username when a password is configured", raw=True
            )
        ca_file = self.string(t, f"{key}.ca_file", None)
        if ca_file and not os.path.isfile(ca_file):
            self.problem(
                f"{key}.ca_file", ca_file, "an existing PEM file of trusted CA certificates"
            )
        pins = self.strings(t, f"{key}.pin_sha256") or ()
        normalised = []
        for i, pin in enumerate(pins):
            hexpin = pin.replace(":", "").lower()
            if len(hexpin) != 64 or any(c not in "0123456789abcdef" for c in hexpin):
                self.problem(
                    f"{key}.pin_sha256[{i}]",
                    pin,
                    "64 hex digits (SHA-256 of the DER certificate), colons optional",
                )
            normalised.append(hexpin)
        return UpstreamConfig(
            name=name,
            host=host,
            port=port,
            tls=tls or "starttls",
            username=username,
            password_env=password_env,
            password_file=password_file,
            ca_file=ca_file,
            min_tls_version=self.string(t, f"{key}.min_tls_version", "1.2", choices=TLS_VERSIONS)
            or "1.2",
            pin_sha256=tuple(normalised),
            connect_timeout=self.number(t, f"{key}.connect_timeout", 30, 0.1, 3600),
            command_timeout=self.number(t, f"{key}.command_timeout", 120, 0.1, 3600),
            data_timeout=self.number(t, f"{key}.data_timeout", 600, 0.1, 3600),
            failover_cooldown=self.number(t, f"{key}.failover_cooldown", 60, 0, 86400),
            max_connections=self.integer(t, f"{key}.max_connections", 10, 1, 10000),
            pool_idle_timeout=self.number(t, f"{key}.pool_idle_timeout", 30, 0, 3600),
            pool_max_messages=self.integer(t, f"{key}.pool_max_messages", 1000, 1, 1000000),
            auth=auth,
            oauth=oauth,
        )

    def apps(self, document: Mapping[str, Any]) -> dict[str, App]:
        section = document.get("apps", {})
        if not isinstance(section, dict):
            self.problem("apps", section, "a table of [apps.NAME] tables")
            return {}
        apps = {}
        for name, value in section.items():
            key = f"apps.{name}"
            if not isinstance(value, dict):
                self.problem(key, value, "a table")
                continue
            self.unknown_keys(value, key, {"password_hash", "senders", "check_from_header"})
            password_hash = self.string(value, f"{key}.password_hash", None)
            if password_hash is None:
                self.problem(
                    f"{key}.password_hash",
                    "nothing",
                    "a hash made by `mailgate hash-password`",
                    raw=True,
                )
            elif not password_hash.startswith(HASH_PREFIXES):
                self.problem(
                    f"{key}.password_hash",
                    "a value that is not a password hash",
                    "an argon2, bcrypt or scrypt hash made by `mailgate hash-password`",
                    raw=True,
                )
            apps[name] = App(
                name=name,
                password_hash=password_hash or "",
                senders=self.strings(value, f"{key}.senders"),
                check_from_header=self.boolean(value, f"{key}.check_from_header", False),
            )
        return apps

    def upstream_names(
        self,
        table: Mapping[str, Any],
        key: str,
        upstreams: Mapping[str, UpstreamConfig],
        *,
        required: bool,
    ) -> tuple[str, ...]:
        """``upstream = "NAME"`` or ``upstream = ["primary", "backup"]`` (failover, in order)."""
        value = table.get("upstream")
        if value is None:
            if required:
                self.problem(
                    key,
                    "nothing",
                    "the name of an [upstreams.NAME] table, or a list of them",
                    raw=True,
                )
            return ()
        names = [value] if isinstance(value, str) else value
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) and n for n in names)
        ):
            self.problem(key, value, 'an upstream name or a list such as ["primary", "backup"]')
            return ()
        defined = ", ".join(sorted(upstreams)) or "none defined"
        for i, name in enumerate(names):
            if name not in upstreams:
                where = key if isinstance(value, str) else f"{key}[{i}]"
                self.problem(where, name, f"one of the defined upstreams ({defined})")
        if len(set(names)) != len(names):
            self.problem(key, value, "each upstream at most once")
        return tuple(names)

    def rule_apps(
        self, table: Mapping[str, Any], key: str, apps: Mapping[str, App]
    ) -> tuple[str, ...] | None:
        names = self.strings(table, key)
        for i, name in enumerate(names or ()):
            if name not in apps:
                self.problem(
                    f"{key}[{i}]",
                    name,
                    f"one of the defined apps ({', '.join(sorted(apps)) or 'none defined'})",
                )
        return names

    def rate(self, table: Mapping[str, Any], key: str) -> Rate | None:
        value = table.get("rate")
        if value is None:
            return None
        rate = parse_rate(value) if isinstance(value, str) else None
        if rate is None:
            self.problem(key, value, 'COUNT/UNIT such as "100/minute" (unit: second, minute, hour)')
        return rate

    def rules(
        self,
        document: Mapping[str, Any],
        upstreams: Mapping[str, UpstreamConfig],
        apps: Mapping[str, App],
    ) -> tuple[Rule, ...]:
        section = document.get("rules", [])
        if not isinstance(section, list):
            self.problem("rules", section, "an array of [[rules]] tables")
            return ()
        rules = []
        for i, value in enumerate(section):
            key = f"rules[{i}]"
            if not isinstance(value, dict):
                self.problem(key, value, "a table")
                continue
            known = {
                "name",
                "clients",
                "senders",
                "recipients",
                "action",
                "upstream",
                "apps",
                "rate",
                "delivery",
            }
            known |= {"rewrite_from", "strip_headers"}
            self.unknown_keys(value, key, known)
            name = self.string(value, f"{key}.name", f"rule-{i + 1}") or f"rule-{i + 1}"
            action = self.string(value, f"{key}.action", None, choices=ACTIONS)
            if action is None and "action" not in value:
                self.problem(f"{key}.action", "nothing", '"relay" or "reject"', raw=True)
            delivery = (
                self.string(value, f"{key}.delivery", "relay", choices=DELIVERY_MODES) or "relay"
            )
            if delivery == "queue" and action != "relay":
                self.problem(
                    f"{key}.delivery", delivery, 'delivery = "queue" only with action = "relay"'
                )
            names = self.upstream_names(
                value, f"{key}.upstream", upstreams, required=action == "relay"
            )
            rules.append(
                Rule(
                    name=name,
                    action=action or "reject",
                    upstreams=names,
                    clients=self.networks(value, f"{key}.clients"),
                    senders=self.strings(value, f"{key}.senders"),
                    recipients=self.strings(value, f"{key}.recipients"),
                    apps=self.rule_apps(value, f"{key}.apps", apps),
                    rate=self.rate(value, f"{key}.rate"),
                    headers=read_header_edits(self, value, key),
                    delivery=delivery,
                )
            )
        rule_names = [r.name for r in rules]
        for i, name in enumerate(rule_names):
            if name in rule_names[:i]:
                self.problem(f"rules[{i}].name", name, "a name not used by an earlier rule")
        return tuple(rules)


HASH_PREFIXES = ("$argon2", "$2a$", "$2b$", "$2y$", "$scrypt$")
_RATE_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


def parse_rate(text: str) -> Rate | None:
    """``"100/minute"`` to a `Rate` (units: second, minute, hour, day; plural allowed)."""
    count, slash, unit = text.partition("/")
    unit = unit.strip().lower().removesuffix("s")
    if not slash or not count.strip().isdigit() or int(count) < 1 or unit not in _RATE_UNITS:
        return None
    return Rate(int(count), _RATE_UNITS[unit], text)


def parse_endpoint(text: str) -> Endpoint | None:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        return None
    if host.startswith("["):
        if not host.endswith("]"):
            return None
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            return None
    return Endpoint(host, int(port))


# --- the embedded default, from the environment --------------------------------------

UPSTREAM_VARIABLE = "MAILGATE_UPSTREAM"
PASSWORD_VARIABLE = "MAILGATE_UPSTREAM_PASSWORD"


def from_environment(environ: Mapping[str, str] | None = None) -> Config:
    """The embedded default: loopback listener, every recipient relayed to $MAILGATE_UPSTREAM.

    Variables: MAILGATE_UPSTREAM (``starttls://USER@HOST:587`` or ``smtps://USER@HOST:465``),
    MAILGATE_UPSTREAM_PASSWORD, and optionally MAILGATE_UPSTREAM_CA_FILE, MAILGATE_LISTEN,
    MAILGATE_AUDIT, MAILGATE_METRICS (HOST:PORT of /metrics, /healthz, /readyz).
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
    if env.get("MAILGATE_LISTEN"):
        document["listener"]["listen"] = env["MAILGATE_LISTEN"]
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
