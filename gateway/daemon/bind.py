"""Binding the SMTP listener: Twisted's own listening port, or a socket bound with SO_REUSEPORT.

``[listener] reuse_port = true`` lets several mailgate processes on one host bind the
same address and port (one per core): the kernel spreads new connections over them.
Twisted's ``listenTCP`` cannot set ``SO_REUSEPORT``, so the socket is made, bound and
put in listening state here and handed to the reactor with ``adoptStreamPort``. Linux
lets only processes of the same effective user share a port this way.

Without it, a port already taken fails the start with `MailgateError` naming the key.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError

from gateway.config.model import Endpoint
from gateway.errors import MailgateError

BACKLOG = 511  # pending connections; listenTCP's default (50) is small for a busy gateway


def _in_use(listen: Endpoint, reuse_port: bool) -> MailgateError:
    hint = (
        "every instance sharing it needs listener.reuse_port = true and the same user"
        if reuse_port
        else "another process (a second mailgate?) holds it; to run several instances on one "
        "port set listener.reuse_port = true in each"
    )
    return MailgateError(
        f"listener.listen: cannot listen on {listen.host}:{listen.port}: address in use ({hint})"
    )


def reuse_port_socket(listen: Endpoint) -> socket.socket:
    """A non-blocking socket bound to `listen` with SO_REUSEADDR and SO_REUSEPORT, listening."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise MailgateError("listener.reuse_port: this system has no SO_REUSEPORT")
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((listen.host, listen.port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise _in_use(listen, True) from None
        raise MailgateError(
            f"listener.listen: cannot listen on {listen.host}:{listen.port}: {exc.strerror}"
        ) from None
    return sock


async def listen_smtp(reactor: Any, listen: Endpoint, factory: Any, *, reuse_port: bool) -> Any:
    """Bind the SMTP listener; returns the listening port (``getHost().port`` is the bound port)."""
    if reuse_port:
        sock = reuse_port_socket(listen)
        try:
            return reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
        finally:
            sock.close()  # the reactor holds its own duplicate of the descriptor
    endpoint_type = TCP6ServerEndpoint if ":" in listen.host else TCP4ServerEndpoint
    endpoint = endpoint_type(reactor, listen.port, interface=listen.host)
    try:
        return await endpoint.listen(factory)
    except CannotListenError as exc:
        if isinstance(exc.socketError, OSError) and exc.socketError.errno == errno.EADDRINUSE:
            raise _in_use(listen, False) from None
        raise
