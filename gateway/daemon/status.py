"""The status HTTP server (twisted.web): ``/metrics``, ``/healthz`` and ``/readyz``.

- ``/metrics``: the gateway's Prometheus registry, text exposition format.
- ``/healthz``: 200 while the process runs and its reactor answers.
- ``/readyz``: 200 when `Readiness` has no problem, else 503 listing them
  (one per line); asking also probes upstreams whose last attempt failed.

GET (and HEAD) only; other methods get 405. Bound where ``[metrics] listen`` says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from gateway.config.model import Endpoint
from gateway.daemon.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from gateway.daemon.gateway import Gateway

TEXT = b"text/plain; charset=utf-8"


class _Leaf(Resource):
    isLeaf = True  # noqa: N815 (twisted.web's name)

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self.gateway = gateway

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        raise NotImplementedError


class MetricsPage(_Leaf):
    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        request.setHeader(b"content-type", CONTENT_TYPE.encode("ascii"))
        self.gateway.metrics.ready.set(1 if self.gateway.readiness.ready else 0)
        return self.gateway.metrics.render()


class HealthPage(_Leaf):
    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        request.setHeader(b"content-type", TEXT)
        return b"ok\n"


class ReadyPage(_Leaf):
    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        request.setHeader(b"content-type", TEXT)
        request.setHeader(b"cache-control", b"no-store")
        self.gateway.probe_upstreams()
        problems = self.gateway.readiness.problems()
        self.gateway.metrics.ready.set(0 if problems else 1)
        if problems:
            request.setResponseCode(503)
            return ("not ready\n" + "".join(f"{p}\n" for p in problems)).encode("utf-8", "replace")
        return b"ready\n"


class Index(Resource):
    """``/`` lists the pages; any other unknown path is 404."""

    def getChild(self, path: bytes, request: Request) -> IResource:  # noqa: N802
        return self if path == b"" else notFound()

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        request.setHeader(b"content-type", TEXT)
        return b"mailgate: /metrics /healthz /readyz\n"


def site(gateway: Gateway) -> Site:
    root = Index()
    root.putChild(b"metrics", MetricsPage(gateway))
    root.putChild(b"healthz", HealthPage(gateway))
    root.putChild(b"readyz", ReadyPage(gateway))
    factory = Site(root)
    factory.displayTracebacks = False
    factory.noisy = False
    return factory


async def listen(reactor: Any, gateway: Gateway, where: Endpoint) -> Any:
    """Bind the status server; returns the listening port (``getHost().port`` is the bound port)."""
    endpoint_type = TCP6ServerEndpoint if ":" in where.host else TCP4ServerEndpoint
    endpoint = endpoint_type(reactor, where.port, interface=where.host)
    return await endpoint.listen(site(gateway))
