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
from gateway.config.listener import read_listener
from gateway.config.model import (
    LOOPBACK,
    METRICS_LISTEN,
    App,
    AuditConfig,
    Config,
    Endpoint,
    MetricsConfig,
    Network,
    QueueConfig,
)
from gateway.config.rules import read_rules
from gateway.config.upstreams import read_upstreams
from gateway.config.values import (
    HASH_PREFIXES,
    SHA256_EXPECTED,
    SIZE_EXPECTED,
    parse_endpoint,
    parse_network,
    parse_sha256,
    parse_size,
)
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
        listener = read_listener(self, document)
        audit = self.audit(document)
        upstreams = read_upstreams(self, document)
        apps = self.apps(document)
        rules = read_rules(self, document, upstreams, apps)
        certified = sorted(n for n, a in apps.items() if a.client_cert_sha256)
        if certified and listener.client_ca_file is None:
            self.problem(
                f"apps.{certified[0]}.client_cert_sha256",
                "client certificate fingerprints",
                "listener.client_ca_file as well: only a certificate verified against it"
                " identifies an app",
                raw=True,
            )
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
            document,
            "queue",
            {"path", "min_backoff", "max_backoff", "max_age", "bounce", "min_free"},
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
        min_free = parse_size(t.get("min_free", d.min_free))
        if min_free is None:
            self.problem("queue.min_free", t.get("min_free"), SIZE_EXPECTED)
            min_free = d.min_free
        return QueueConfig(
            path=self.string(t, "queue.path", d.path) or d.path,
            min_backoff=min_backoff,
            max_backoff=max_backoff,
            max_age=self.number(t, "queue.max_age", d.max_age, 1, 365 * 86400),
            bounce=bounce,
            min_free=min_free,
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
        apps: dict[str, App] = {}
        for name, value in section.items():
            key = f"apps.{name}"
            if not isinstance(value, dict):
                self.problem(key, value, "a table")
                continue
            known = {"password_hash", "senders", "check_from_header", "client_cert_sha256"}
            self.unknown_keys(value, key, known)
            password_hash = self.string(value, f"{key}.password_hash", None)
            certs = self.fingerprints(value, f"{key}.client_cert_sha256")
            if password_hash is None and not certs:
                self.problem(
                    f"{key}.password_hash",
                    "nothing",
                    "a hash made by `mailgate hash-password` (or client_cert_sha256)",
                    raw=True,
                )
            elif password_hash is not None and not password_hash.startswith(HASH_PREFIXES):
                self.problem(
                    f"{key}.password_hash",
                    "a value that is not a password hash",
                    "an argon2, bcrypt or scrypt hash made by `mailgate hash-password`",
                    raw=True,
                )
            for i, digest in enumerate(certs):
                other = next((a for a in apps.values() if digest in a.client_cert_sha256), None)
                if other is not None:
                    self.problem(
                        f"{key}.client_cert_sha256[{i}]",
                        digest,
                        f"a certificate no other app lists (apps.{other.name} lists it too:"
                        " one certificate identifies one app)",
                    )
            apps[name] = App(
                name=name,
                password_hash=password_hash or "",
                senders=self.strings(value, f"{key}.senders"),
                check_from_header=self.boolean(value, f"{key}.check_from_header", False),
                client_cert_sha256=certs,
            )
        return apps

    def fingerprints(self, table: Mapping[str, Any], key: str) -> tuple[str, ...]:
        """``client_cert_sha256``: SHA-256 fingerprints of DER certificates, as lower-case hex."""
        found = []
        for i, text in enumerate(self.strings(table, key) or ()):
            digest = parse_sha256(text)
            if digest is None:
                self.problem(f"{key}[{i}]", text, SHA256_EXPECTED)
            else:
                found.append(digest)
        return tuple(found)
