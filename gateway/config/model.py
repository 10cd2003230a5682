"""The configuration model: frozen values, validated once and swapped whole on reload. Pure.

`gateway.config.toml` reads a TOML document into these values and
`gateway.config.environment` builds the embedded default; everything else only
reads them. Secrets are referenced here (``password_env`` / ``password_file``)
and read by `gateway.config.secrets.resolve_password`, so that ``explain``
works without them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

from gateway.config.headers import HeaderEdits
from gateway.config.providers import OAuthConfig

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

TLS_MODES = ("starttls", "implicit")
TLS_VERSIONS = ("1.2", "1.3")
ACTIONS = ("relay", "reject")
DELIVERY_MODES = ("relay", "queue")
ON_UNAVAILABLE = ("local", "defer")  # [cluster]: what a rate decision does while Redis is away
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


METRICS_LISTEN = Endpoint("127.0.0.1", 9225)

LISTEN_TLS = ("plain", "starttls", "smtps")  # HOST:PORT, starttls://HOST:PORT, smtps://HOST:PORT


@dataclass(frozen=True)
class ListenEntry:
    """One address the listener binds, and how TLS is offered there.

    ``plain``: SMTP as it always was; ``starttls``: STARTTLS offered (RFC 3207), AUTH only
    after it; ``smtps``: TLS from the first byte (RFC 8314).
    """

    endpoint: Endpoint
    tls: str = "plain"

    def __str__(self) -> str:
        return str(self.endpoint) if self.tls == "plain" else f"{self.tls}://{self.endpoint}"


DEFAULT_LISTEN = (ListenEntry(Endpoint("127.0.0.1", 2525)),)


@dataclass(frozen=True)
class ListenerConfig:
    listen: tuple[ListenEntry, ...] = DEFAULT_LISTEN
    allowed_clients: tuple[Network, ...] = LOOPBACK
    hostname: str = "mailgate.localdomain"
    max_message_size: int = 26214400
    max_recipients: int = 100  # accepted recipients per transaction (RFC 5321 4.5.3.1.8)
    max_rcpt_commands: int = 1000  # RCPT commands per transaction, accepted or not: then 421
    idle_timeout: float = 300.0
    shutdown_grace: float = 30.0
    require_auth: bool = False
    max_connections: int = 1000
    max_connections_per_client: int = 100
    max_errors: int = 20
    data_timeout: float = 300.0
    min_data_rate: int = 256  # bytes/second averaged over DATA, enforced after the first 30 s
    proxy_protocol: bool = False  # the client's address comes from a PROXY v1/v2 header
    proxy_trusted: tuple[
        Network, ...
    ] = ()  # the balancers: the only peers whose header is believed
    reuse_port: bool = False  # SO_REUSEPORT: several instances on one host share the port
    add_received: bool = True  # prepend a Received field to every message (RFC 5321 4.4)
    # TLS for apps (starttls:// and smtps:// entries): see gateway.config.listener
    tls_cert_file: str | None = None  # the listener's certificate chain (PEM)
    tls_key_file: str | None = None  # its private key (PEM), owner-only like a secret
    min_tls_version: str = "1.2"
    require_tls: bool = False  # starttls:// entries: MAIL before STARTTLS gets 530 5.7.0
    tls_handshake_timeout: float = 30.0
    client_ca_file: str | None = None  # request client certificates, verified against it

    @property
    def tls_wanted(self) -> bool:
        """Whether any entry offers TLS (then the certificate and key are needed)."""
        return any(entry.tls != "plain" for entry in self.listen)


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
class Rate:
    """A rate limit: `count` messages per `seconds`."""

    count: int
    seconds: float
    text: str


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
    # Sessions authenticated as one sending identity at once (the AUTH user; each sender with
    # username = "$sender"); None: only max_connections. M365's preset: 3 per mailbox.
    max_connections_per_identity: int | None = None
    pool_idle_timeout: float = 30.0
    pool_max_messages: int = 1000
    auth: str = "password"  # or "xoauth2" (see gateway.config.providers)
    oauth: OAuthConfig | None = None
    # The provider's budget per sending identity (gateway.policy.budgets): messages per period,
    # recipients per rolling 24 hours; None: no budget. Presets by host fill them in.
    pace: Rate | None = None
    max_recipients_per_day: int | None = None
    oauth_client_secret_expires: float | None = None  # Unix time the operator gave, for metrics

    @property
    def url(self) -> str:
        scheme = "smtps" if self.tls == "implicit" else "starttls"
        user = f"{quote(self.username, safe='')}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


@dataclass(frozen=True)
class App:
    """An app that authenticates to the listener (AUTH PLAIN/LOGIN) or is identified by its
    client certificate (``client_cert_sha256``); ``password_hash`` is "" for a certificate-only app."""

    name: str
    password_hash: str
    senders: tuple[str, ...] | None = None
    check_from_header: bool = False
    client_cert_sha256: tuple[str, ...] = ()


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
    headers: HeaderEdits | None = None  # rewrite_from / strip_headers (see gateway.config.headers)
    delivery: str = "relay"  # "relay" (cut-through) or "queue" (store-and-forward)
    bounce_to_senders: bool = False  # a DSN may go to a sender matching `senders` (queue mode)


@dataclass(frozen=True)
class QueueConfig:
    """The spool and its retry schedule (store-and-forward, ``delivery = "queue"``)."""

    path: str = "./var/spool"
    min_backoff: float = 300.0
    max_backoff: float = 4000.0
    max_age: float = 432000.0
    bounce: bool = True
    # free bytes the spool's file system keeps: below it queue-mode mail gets 452 4.3.1 (0: off,
    # the default: only a failed write answers 452 4.3.1; docs/queue.md recommends a value)
    min_free: int = 0


@dataclass(frozen=True)
class ClusterConfig:
    """``[cluster]``: rule rates, failover cool-downs and the live instances, shared through Redis."""

    redis_url: str  # redis://HOST:PORT/DB or rediss://HOST:PORT/DB (verified TLS); no password
    password_env: str | None = None
    password_file: str | None = None
    ca_file: str | None = None  # the CA that signed a rediss:// server's certificate
    on_unavailable: str = "local"  # "local": this instance's share of each limit; "defer": 451
    instance: str | None = None  # this instance's name; None: the hostname
    timeout: float = 0.25  # seconds one Redis decision may take before it counts as unavailable


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
    cluster: ClusterConfig | None = None
