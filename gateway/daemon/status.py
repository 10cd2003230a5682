"""The status HTTP server (twisted.web): ``/metrics``, ``/healthz`` and ``/readyz``.

- ``/metrics``: the gateway's Prometheus registry, text exposition format.
- ``/healthz``: 200 while the process runs and its reactor answers.
- ``/readyz``: 200 ``ready`` when `Readiness` has no problem, else 503 ``not ready``;
  asking also probes upstreams whose last attempt failed. The reasons (upstream
  names, usernames, errors) are listed only for ``/readyz?verbose=1`` from an
  address in ``[metrics] details_from`` (default: loopback).

Bound where ``[metrics] listen`` says. The port is open to whoever can reach it,
so it holds nothing for long (see `StatusChannel`): at most `MAX_CONNECTIONS`
connections (`MAX_PER_CLIENT` from one address), one request each, `REQUEST_TIMEOUT` seconds from connect to answer,
small headers, GET and HEAD only, and no request body is ever read, let alone
spooled to disk (twisted.web writes bodies over 100 kB to a temporary file).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Protocol

from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from gateway.config.model import Config, Endpoint, Network
from gateway.daemon.health import Readiness
from gateway.daemon.metrics import CONTENT_TYPE, Metrics


class StatusHost(Protocol):
    """What the status pages read (the StatusHost provides it; the pages never import the wiring)."""

    readiness: Readiness
    metrics: Metrics
    config: Config  # the running config: ``metrics.details_from`` may change on reload

    def probe_upstreams(self) -> None: ...


TEXT = b"text/plain; charset=utf-8"
MAX_CONNECTIONS = 32  # open status connections; more are answered 503 and closed at once
MAX_PER_CLIENT = 8  # of those, from one address: one client cannot take every place
REQUEST_TIMEOUT = 10.0  # seconds from connect to the end of the answer, whatever arrives
MAX_HEADER_BYTES = 8192  # request line and headers together
MAX_HEADERS = 40
METHODS = (b"GET", b"HEAD")


def _answer(status: bytes, text: bytes, *extra: bytes) -> bytes:
    """A complete HTTP/1.1 response that closes the connection."""
    head = [b"HTTP/1.1 " + status, b"Content-Type: " + TEXT, *extra]
    head += [b"Content-Length: %d" % len(text), b"Connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + text


BUSY = _answer(b"503 Service Unavailable", b"too many status connections\n")
NOT_ALLOWED = _answer(b"405 Method Not Allowed", b"only GET and HEAD\n", b"Allow: GET, HEAD")
NO_BODY = _answer(b"413 Content Too Large", b"no request body is accepted\n")


class StatusChannel(HTTPChannel):
    """HTTP/1.1 for the status port, with the limits of the module docstring.

    A request that announces a body (``Content-Length`` above 0, or chunked) or uses
    another method than GET/HEAD is answered as soon as its headers are in, and the
    connection closed; nothing after the headers is read into a buffer or a file.
    """

    maxHeaders = MAX_HEADERS  # noqa: N815 (twisted.web's names)
    totalHeadersSize = MAX_HEADER_BYTES  # noqa: N815

    site: StatusSite
    _counted = False
    _client = ""
    _refused = False
    _deadline: Any = None

    def connectionMade(self) -> None:  # noqa: N802
        assert self.transport is not None
        self._client = str(getattr(self.transport.getPeer(), "host", ""))
        if not self.site.admit(self._client):
            self._refuse(BUSY)
            return
        self._counted = True
        self._deadline = self.callLater(self.site.request_timeout, self._too_slow)
        super().connectionMade()

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]  # a TCP transport has it

    def _refuse(self, answer: bytes) -> None:
        self._refused = True
        self.setRawMode()  # whatever else arrives goes to rawDataReceived, which drops it
        assert self.transport is not None
        self.transport.write(answer)
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if not self._refused:
            super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:  # noqa: N802
        if not self._refused:
            super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:  # noqa: N802
        if self._command not in METHODS:
            self._refuse(NOT_ALLOWED)
        elif self.length != 0:  # a Content-Length above 0, or None: chunked
            self._refuse(NO_BODY)
        else:
            super().allHeadersReceived()

    def allContentReceived(self) -> None:  # noqa: N802
        if not self._refused:
            super().allContentReceived()

    def checkPersistence(self, request: Request, version: bytes) -> bool:  # noqa: N802
        request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        return False  # one request per connection

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if self._counted:
            self._counted = False
            self.site.leave(self._client)
        super().connectionLost(reason)


class StatusSite(Site):
    """A `Site` whose channels are `StatusChannel`s, counted against its limits."""

    protocol = StatusChannel  # type: ignore[assignment]

    def __init__(
        self,
        resource: IResource,
        *,
        reactor: Any = None,
        max_connections: int = MAX_CONNECTIONS,
        max_per_client: int = MAX_PER_CLIENT,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        super().__init__(resource, reactor=reactor, timeout=request_timeout)
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.request_timeout = request_timeout
        self.open_channels = 0
        self.per_client: dict[str, int] = {}
        self.displayTracebacks = False
        self.noisy = False

    def admit(self, client: str) -> bool:
        """Count a new connection from `client`, unless the site or that client is full."""
        held = self.per_client.get(client, 0)
        if self.open_channels >= self.max_connections or held >= self.max_per_client:
            return False
        self.open_channels += 1
        self.per_client[client] = held + 1
        return True

    def leave(self, client: str) -> None:
        self.open_channels -= 1
        held = self.per_client.pop(client, 1) - 1
        if held:
            self.per_client[client] = held


class _Leaf(Resource):
    isLeaf = True  # noqa: N815 (twisted.web's name)

    def __init__(self, host: StatusHost) -> None:
        super().__init__()
        self.host = host

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        raise NotImplementedError


class MetricsPage(_Leaf):
    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        request.setHeader(b"content-type", CONTENT_TYPE.encode("ascii"))
        self.host.metrics.ready.set(1 if self.host.readiness.ready else 0)
        return self.host.metrics.render()


class HealthPage(_Leaf):
    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        request.setHeader(b"content-type", TEXT)
        return b"ok\n"


class ReadyPage(_Leaf):
    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        request.setHeader(b"content-type", TEXT)
        request.setHeader(b"cache-control", b"no-store")
        self.host.probe_upstreams()
        problems = self.host.readiness.problems()
        self.host.metrics.ready.set(0 if problems else 1)
        if not problems:
            return b"ready\n"
        request.setResponseCode(503)
        if not wants_details(request, self.host.config.metrics.details_from):
            return b"not ready\n"
        return ("not ready\n" + "".join(f"{p}\n" for p in problems)).encode("utf-8", "replace")


def wants_details(request: Request, allowed: tuple[Network, ...]) -> bool:
    """``?verbose=1`` (or true/yes) from a client inside `allowed`."""
    args: dict[bytes, list[bytes]] = request.args or {}
    asked = args.get(b"verbose") or [b""]
    if asked[-1].lower() not in (b"1", b"true", b"yes"):
        return False
    return client_allowed(getattr(request.getClientAddress(), "host", ""), allowed)


def client_allowed(host: str, allowed: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == net.version and address in net for net in allowed)


class Index(Resource):
    """``/`` lists the pages; any other unknown path is 404."""

    def getChild(self, path: bytes, request: Request) -> IResource:  # noqa: N802
        return self if path == b"" else notFound()

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        request.setHeader(b"content-type", TEXT)
        return b"mailgate: /metrics /healthz /readyz\n"


def site(host: StatusHost, reactor: Any = None) -> StatusSite:
    root = Index()
    root.putChild(b"metrics", MetricsPage(host))
    root.putChild(b"healthz", HealthPage(host))
    root.putChild(b"readyz", ReadyPage(host))
    return StatusSite(
        root,
        reactor=reactor,
        max_connections=MAX_CONNECTIONS,
        max_per_client=MAX_PER_CLIENT,
        request_timeout=REQUEST_TIMEOUT,
    )


async def listen(reactor: Any, factory: Site, where: Endpoint) -> Any:
    """Bind the status server (`site`); returns the listening port (``getHost().port`` is the bound port)."""
    endpoint_type = TCP6ServerEndpoint if ":" in where.host else TCP4ServerEndpoint
    endpoint = endpoint_type(reactor, where.port, interface=where.host)
    return await endpoint.listen(factory)
