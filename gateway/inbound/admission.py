"""Whether a client may use the gateway: ``listener.allowed_clients`` and the PROXY header. Pure.

A session decides once, when the client's address is known: at connect, or behind a
balancer (``listener.proxy_protocol``) at its first command, once the PROXY header
named the client. A proxied connection whose header was missing or invalid is denied,
and so is one from a peer outside ``listener.proxy_trusted``: only a balancer's header
is believed (`proxy_trusted`), whatever it claims.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.audit.events import Event
from gateway.config.model import Config, ListenerConfig
from gateway.policy.rules import IPAddress, client_allowed, parse_client
from gateway.smtp import replies
from gateway.smtp.replies import Reply

if TYPE_CHECKING:
    from gateway.inbound.session import Session


NO_TLS_STARTED = (
    "closed at connect, no TLS handshake started (smtps://: no reply can be sent in clear)"
)


@dataclass(frozen=True)
class Admission:
    """The decision on one client, with what ``session.opened`` and ``session.denied`` record."""

    allowed: bool
    address: IPAddress | None  # the client's address, None when it is not an IP address
    limit: str  # the setting that denies the client (when not `allowed`)
    proxy: dict[str, Any] = field(default_factory=dict)  # the PROXY header's part of the event
    refusal: Reply | None = None  # the reply to a denied client's greeting or command


def client_key(host: str) -> str:
    """The one spelling of a client's address (``::ffff:a.b.c.d`` is a.b.c.d), as limits count it."""
    try:
        return str(parse_client(host))
    except ValueError:
        return host


def proxy_trusted(listener: ListenerConfig, peer: str) -> bool:
    """Whether the TCP peer `peer` is a balancer in ``listener.proxy_trusted`` (its header counts)."""
    try:
        address = parse_client(peer)
    except ValueError:
        return False
    return any(address.version == n.version and address in n for n in listener.proxy_trusted)


def admit(
    config: Config,
    client: str,
    *,
    proxied: bool = False,
    proxy_peer: tuple[str, int] | None = None,
    proxy_rejected: bool = False,
    proxy_untrusted: bool = False,
) -> Admission:
    """Decide on `client` (behind a balancer: `proxy_peer` is the balancer, None without a header).

    `proxy_untrusted`: `client` is the TCP peer, outside ``listener.proxy_trusted``, and sent bytes
    where a balancer's header belongs.
    """
    limit = "listener.allowed_clients"
    address = None
    try:
        address = parse_client(client)
        allowed = client_allowed(config, address)
    except ValueError:
        allowed = False
    proxy: dict[str, Any] = {}
    if proxied:
        if proxy_untrusted:
            allowed, limit = False, "listener.proxy_trusted"
            proxy["proxy_header"] = "untrusted"
        elif proxy_peer is None:
            allowed, limit = False, "listener.proxy_protocol"
            proxy["proxy_header"] = "invalid" if proxy_rejected else "missing"
        else:
            proxy.update(proxy_ip=proxy_peer[0], proxy_port=proxy_peer[1])
    refusal = None
    if proxy_untrusted:
        refusal = replies.PROXY_UNTRUSTED
    elif not allowed:
        refusal = replies.PROXY_HEADER_INVALID if proxy_rejected else replies.GREETING_DENIED
    return Admission(allowed, address, limit, proxy, refusal)


def open_session(session: Session, *, before_tls: bool = False) -> Reply | None:
    """Decide on a session's client address and write ``session.opened`` (and
    ``session.denied``); the refusal if the client is denied.

    `before_tls`: an ``smtps://`` connection closed at accept (`gateway.inbound.smtps`): the
    refusal is never sent, and ``session.denied`` says so instead of naming a reply.
    """
    session.opened = True
    admission = admit(
        session.config,
        session.client,
        proxied=session.proxied,
        proxy_peer=session.proxy_peer,
        proxy_rejected=session.proxy_rejected,
        proxy_untrusted=session.proxy_untrusted,
    )
    session.address, session.allowed = admission.address, admission.allowed
    session.log.info(
        Event.SESSION_OPENED,
        client_ip=session.client,
        client_port=session.client_port,
        allowed=session.allowed,
        **admission.proxy,
    )
    session.host.metrics.session_opened(session.allowed)
    if admission.refusal is not None:
        told = {"reason": NO_TLS_STARTED} if before_tls else {"reply": str(admission.refusal)}
        session.log.info(
            Event.SESSION_DENIED, client_ip=session.client, limit=admission.limit, **told
        )
    return admission.refusal
