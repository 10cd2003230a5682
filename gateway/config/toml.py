"""Reading a TOML config document into the frozen model, validating every key.

Every problem is collected and reported at once, each naming the file, the key,
what was found and what was expected. `_Reader` holds the problems and the typed
getters (the `gateway.config.reader.Reader` interface) and reads the small
sections itself; `gateway.config.upstreams` and `gateway.config.rules` read the
``[upstreams.NAME]`` and ``[[rules]]`` tables through it. Pure: no reactor.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

from gateway.config.cluster import read_cluster
from gateway.config.model import (
    LOOPBACK,
    METRICS_LISTEN,
    App,
    AuditConfig,
    Config,
    Endpoint,
    ListenerConfig,
    MetricsConfig,
    Network,
    QueueConfig,
)
from gateway.config.rules import read_rules
from gateway.config.upstreams import read_upstreams
from gateway.config.values import HASH_PREFIXES, parse_endpoint, parse_network
from gateway.errors import ConfigError, Problem


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
        value: object = table.get(key.rpartition(".")[2], default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.problem(key, value, f"an integer from {low} to {high}")
            return default
        return value

    def number(
        self, table: Mapping[str, Any], key: str, default: float, low: float, high: float
    ) -> float:
        value: object = table.get(key.rpartition(".")[2], default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            self.problem(key, value, f"a number of seconds from {low:g} to {high:g}")
            return default
        return float(value)

    def boolean(self, table: Mapping[str, Any], key: str, default: bool) -> bool:
        value: object = table.get(key.rpartition(".")[2], default)
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
        value: object = table.get(key.rpartition(".")[2], default)
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
                networks.append(parse_network(text))
            except ValueError:
                self.problem(
                    f"{key}[{i}]", text, 'a CIDR network such as "10.1.0.0/16" or "::1/128"'
                )
        return tuple(networks)

    def endpoint(self, table: Mapping[str, Any], key: str, default: Endpoint) -> Endpoint:
        value = table.get(key.rpartition(".")[2])
        if value is None:
            return default
        parsed = parse_endpoint(value) if isinstance(value, str) else None
        if parsed is None:
            self.problem(key, value, 'HOST:PORT such as "127.0.0.1:2525" or "[::1]:2525"')
            return default
        return parsed

    # --- sections -------------------------------------------------------------------

    def config(self, document: Mapping[str, Any]) -> Config:
        known = {"listener", "audit", "upstreams", "rules", "apps", "metrics", "queue", "cluster"}
        self.unknown_keys(document, "", known)
        listener = self.listener(document)
        audit = self.audit(document)
        upstreams = read_upstreams(self, document)
        apps = self.apps(document)
        rules = read_rules(self, document, upstreams, apps)
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
            cluster=read_cluster(self, document),
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
            "max_rcpt_commands",
            "idle_timeout",
            "shutdown_grace",
            "require_auth",
            "max_connections",
            "max_connections_per_client",
            "max_errors",
            "data_timeout",
            "min_data_rate",
            "proxy_protocol",
            "proxy_trusted",
            "reuse_port",
            "add_received",
        }
        t = self.table(document, "listener", known)
        listen = self.endpoint(t, "listener.listen", d.listen)
        allowed = self.networks(t, "listener.allowed_clients")
        proxy_protocol = self.boolean(t, "listener.proxy_protocol", d.proxy_protocol)
        trusted = None
        if proxy_protocol and not t.get("proxy_trusted"):
            self.problem(
                "listener.proxy_trusted",
                t.get("proxy_trusted", "nothing"),
                "the balancers' networks (CIDRs), required with listener.proxy_protocol = true:"
                " a PROXY header is believed only from them",
                raw=True,
            )
        else:
            trusted = self.networks(t, "listener.proxy_trusted")
        return ListenerConfig(
            listen=listen,
            allowed_clients=d.allowed_clients if allowed is None else allowed,
            hostname=self.string(t, "listener.hostname", d.hostname) or d.hostname,
            max_message_size=self.integer(
                t, "listener.max_message_size", d.max_message_size, 1024, 2**40
            ),
            max_recipients=self.integer(t, "listener.max_recipients", d.max_recipients, 1, 100000),
            max_rcpt_commands=self.integer(
                t, "listener.max_rcpt_commands", d.max_rcpt_commands, 1, 1000000
            ),
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
            proxy_protocol=proxy_protocol,
            proxy_trusted=trusted or (),
            reuse_port=self.boolean(t, "listener.reuse_port", d.reuse_port),
            add_received=self.boolean(t, "listener.add_received", d.add_received),
        )

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
