"""The status HTTP server (twisted.web): ``/metrics``, ``/healthz`` and ``/readyz``.

- ``/metrics``: the gateway's Prometheus registry, text exposition format.
- ``/healthz``: 200 while the process runs and its reactor answers.
- ``/readyz``: 200 when `Readiness` has no problem, else 503 listing them
  (one per line); asking also probes upstreams whose last attempt failed.

GET (and HEAD) only; other methods get 405. Bound where ``[metrics] listen`` says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from gateway.config.model import Endpoint
from gateway.daemon.health import Readiness
from gateway.daemon.metrics import CONTENT_TYPE, Metrics

TEXT = b"text/plain; charset=utf-8"


class _Leaf(Resource):
    isLeaf = True  # noqa: N815 (twisted.web's name)

    def __init__(
        self, readiness: Readiness, metrics: Metrics, probe_upstreams: Callable[[], None]
    ) -> None:
        super().__init__()
        self.readiness = readiness
        self.metrics = metrics
        self.probe_upstreams = probe_upstreams

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        raise NotImplementedError


class MetricsPage(_Leaf):
    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        request.setHeader(b"content-type", CONTENT_TYPE.encode("ascii"))
        self.metrics.ready.set(1 if self.readiness.ready else 0)
        return self.metrics.render()


class HealthPage(_Leaf):
    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        request.setHeader(b"content-type", TEXT)
        return b"ok\n"


class ReadyPage(_Leaf):
    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        request.setHeader(b"content-type", TEXT)
        request.setHeader(b"cache-control", b"no-store")
        self.probe_upstreams()
        problems = self.readiness.problems()
        self.metrics.ready.set(0 if problems else 1)
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


def site(readiness: Readiness, metrics: Metrics, probe_upstreams: Callable[[], None]) -> Site:
    """The pages over `readiness` and `metrics`; ``/readyz`` calls `probe_upstreams` first."""
    sources = (readiness, metrics, probe_upstreams)
    root = Index()
    root.putChild(b"metrics", MetricsPage(*sources))
    root.putChild(b"healthz", HealthPage(*sources))
    root.putChild(b"readyz", ReadyPage(*sources))
    factory = Site(root)
    factory.displayTracebacks = False
    factory.noisy = False
    return factory


async def listen(reactor: Any, factory: Site, where: Endpoint) -> Any:
    """Bind the status server (`site`); returns the listening port (``getHost().port`` is the bound port)."""
    endpoint_type = TCP6ServerEndpoint if ":" in where.host else TCP4ServerEndpoint
    endpoint = endpoint_type(reactor, where.port, interface=where.host)
    return await endpoint.listen(factory)
