"""Reading ``[listener]``: the entries it binds, its limits, and TLS for apps. Pure.

``listen`` is one entry or a list of them: ``HOST:PORT`` (plain SMTP, as always),
``starttls://HOST:PORT`` (STARTTLS offered, RFC 3207) or ``smtps://HOST:PORT`` (TLS from
the first byte, RFC 8314). An entry with TLS needs ``tls_cert_file`` and ``tls_key_file``;
what is *in* those files (readable, the key matches, not expired, owner-only) is checked
where the TLS context is made (`gateway.daemon.listener_tls`), at start, on reload and by
``mailgate check``, each problem naming the file and the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.config.model import TLS_VERSIONS, ListenEntry, ListenerConfig
from gateway.config.reader import Reader
from gateway.config.values import parse_listen_entry

LISTEN_EXPECTED = (
    'HOST:PORT, starttls://HOST:PORT or smtps://HOST:PORT (such as "127.0.0.1:2525" or'
    ' "starttls://[::1]:587"), or a non-empty list of them'
)

KNOWN = {
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
    "tls_cert_file",
    "tls_key_file",
    "min_tls_version",
    "require_tls",
    "tls_handshake_timeout",
    "client_ca_file",
}


def read_listen(
    reader: Reader, value: object, default: tuple[ListenEntry, ...]
) -> tuple[ListenEntry, ...]:
    """``listen``: a string or a list of strings, each an entry; the default when absent."""
    if value is None:
        return default
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts:
        reader.problem("listener.listen", value, LISTEN_EXPECTED)
        return default
    entries: list[ListenEntry] = []
    for i, text in enumerate(texts):
        key = "listener.listen" if isinstance(value, str) else f"listener.listen[{i}]"
        entry = parse_listen_entry(text) if isinstance(text, str) else None
        if entry is None:
            reader.problem(key, text, LISTEN_EXPECTED)
        elif any(e.endpoint == entry.endpoint and entry.endpoint.port for e in entries):
            reader.problem(key, text, "an address and port not listed twice")
        else:
            entries.append(entry)
    return tuple(entries) or default


def read_listener(reader: Reader, document: Mapping[str, Any]) -> ListenerConfig:
    d = ListenerConfig()
    t = reader.table(document, "listener", KNOWN)
    listen = read_listen(reader, t.get("listen"), d.listen)
    allowed = reader.networks(t, "listener.allowed_clients")
    proxy_protocol = reader.boolean(t, "listener.proxy_protocol", d.proxy_protocol)
    trusted = None
    if proxy_protocol and not t.get("proxy_trusted"):
        reader.problem(
            "listener.proxy_trusted",
            t.get("proxy_trusted", "nothing"),
            "the balancers' networks (CIDRs), required with listener.proxy_protocol = true:"
            " a PROXY header is believed only from them",
            raw=True,
        )
    else:
        trusted = reader.networks(t, "listener.proxy_trusted")
    config = ListenerConfig(
        listen=listen,
        allowed_clients=d.allowed_clients if allowed is None else allowed,
        hostname=reader.string(t, "listener.hostname", d.hostname) or d.hostname,
        max_message_size=reader.integer(
            t, "listener.max_message_size", d.max_message_size, 1024, 2**40
        ),
        max_recipients=reader.integer(t, "listener.max_recipients", d.max_recipients, 1, 100000),
        max_rcpt_commands=reader.integer(
            t, "listener.max_rcpt_commands", d.max_rcpt_commands, 1, 1000000
        ),
        idle_timeout=reader.number(t, "listener.idle_timeout", d.idle_timeout, 1, 86400),
        shutdown_grace=reader.number(t, "listener.shutdown_grace", d.shutdown_grace, 0, 3600),
        require_auth=reader.boolean(t, "listener.require_auth", d.require_auth),
        max_connections=reader.integer(
            t, "listener.max_connections", d.max_connections, 1, 1000000
        ),
        max_connections_per_client=reader.integer(
            t, "listener.max_connections_per_client", d.max_connections_per_client, 1, 1000000
        ),
        max_errors=reader.integer(t, "listener.max_errors", d.max_errors, 1, 10000),
        data_timeout=reader.number(t, "listener.data_timeout", d.data_timeout, 1, 86400),
        min_data_rate=reader.integer(t, "listener.min_data_rate", d.min_data_rate, 0, 2**30),
        proxy_protocol=proxy_protocol,
        proxy_trusted=trusted or (),
        reuse_port=reader.boolean(t, "listener.reuse_port", d.reuse_port),
        add_received=reader.boolean(t, "listener.add_received", d.add_received),
        tls_cert_file=reader.string(t, "listener.tls_cert_file", None),
        tls_key_file=reader.string(t, "listener.tls_key_file", None),
        min_tls_version=reader.string(
            t, "listener.min_tls_version", d.min_tls_version, choices=TLS_VERSIONS
        )
        or d.min_tls_version,
        require_tls=reader.boolean(t, "listener.require_tls", d.require_tls),
        tls_handshake_timeout=reader.number(
            t, "listener.tls_handshake_timeout", d.tls_handshake_timeout, 1, 3600
        ),
        client_ca_file=reader.string(t, "listener.client_ca_file", None),
    )
    _check_tls(reader, config)
    return config


def _check_tls(reader: Reader, config: ListenerConfig) -> None:
    """The certificate and key are needed by a TLS entry, and mean nothing without one."""
    tls_keys = ("tls_cert_file", "tls_key_file")
    if config.tls_wanted:
        for key in tls_keys:
            if getattr(config, key) is None:
                reader.problem(
                    f"listener.{key}",
                    "nothing",
                    "a PEM file, required when a listener.listen entry is starttls:// or smtps://",
                    raw=True,
                )
        return
    for key in (*tls_keys, "client_ca_file"):
        if getattr(config, key) is not None:
            reader.problem(
                f"listener.{key}",
                getattr(config, key),
                "no value: no listener.listen entry is starttls:// or smtps://",
            )
    if config.require_tls:
        reader.problem(
            "listener.require_tls",
            True,
            "a starttls:// entry in listener.listen (require_tls applies to those)",
        )
