"""Readiness: may a load balancer send this gateway traffic right now?

Ready means: the listener is bound, a configuration is loaded, the spool is not
draining (``mailgate queue drain``), and every
upstream's most recent connection attempt succeeded (an upstream not tried yet
counts as fine). So readiness turns false when the provider becomes
unreachable, and true again at the next successful attempt.

An unready gateway gets no traffic, so it would never try again by itself:
`Readiness.due_probes` names the upstreams whose last attempt failed more than
`PROBE_INTERVAL` seconds ago; the status server opens a probe connection to
each (connect, TLS, AUTH, QUIT) when asked for ``/readyz``.

`WatchedConnector` wraps an `UpstreamConnector` and reports every ``open()``
to the readiness state and to the metrics. Time is passed in; no reactor here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from gateway.daemon.metrics import Metrics

PROBE_INTERVAL = 10.0  # seconds between probes of an upstream whose last attempt failed


@dataclass(frozen=True)
class Attempt:
    """The outcome of one connection attempt to an upstream."""

    ok: bool
    at: float
    reason: str | None = None


class Readiness:
    def __init__(self) -> None:
        self.listening = False
        self.config_loaded = False
        self.draining = False  # `mailgate queue drain`: the balancer should send elsewhere
        self.attempts: dict[str, Attempt] = {}
        self.probing: set[str] = set()

    def attempted(self, upstream: str, attempt: Attempt) -> None:
        """Record an attempt; an older one finishing late does not overwrite a newer one."""
        last = self.attempts.get(upstream)
        if last is None or attempt.at >= last.at:
            self.attempts[upstream] = attempt

    def forget(self, upstreams: Iterable[str]) -> None:
        """Drop what is known of these upstreams (removed or changed by a reload)."""
        for name in upstreams:
            self.attempts.pop(name, None)

    def problems(self) -> list[str]:
        """Why the gateway is not ready; empty when it is."""
        found = []
        if not self.listening:
            found.append("listener not bound")
        if not self.config_loaded:
            found.append("no configuration loaded")
        if self.draining:
            found.append("draining (mailgate queue drain): not accepting queued mail")
        for name, attempt in sorted(self.attempts.items()):
            if not attempt.ok and "token endpoint" in (attempt.reason or ""):
                found.append(f"upstream {name}: no OAuth token can be had: {attempt.reason}")
            elif not attempt.ok:
                found.append(
                    f"upstream {name}: last connection attempt failed: "
                    f"{attempt.reason or 'unknown'}"
                )
        return found

    @property
    def ready(self) -> bool:
        return not self.problems()

    def due_probes(self, now: float) -> list[str]:
        """Upstreams whose last attempt failed `PROBE_INTERVAL` or more ago, not being probed."""
        return sorted(
            name
            for name, a in self.attempts.items()
            if not a.ok and now - a.at >= PROBE_INTERVAL and name not in self.probing
        )


class WatchedConnector:
    """An `UpstreamConnector` whose every ``open()`` is reported to readiness and metrics.

    Everything else (``config``, ``password``, ...) is the wrapped connector's.
    """

    def __init__(
        self, connector: Any, readiness: Readiness, metrics: Metrics, clock: Callable[[], float]
    ) -> None:
        self.connector = connector
        self.readiness = readiness
        self.metrics = metrics
        self.clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self.connector, name)

    def open(self, sender: str | None = None, *, probe: bool = False) -> defer.Deferred[Any]:
        started = self.clock()
        d: defer.Deferred[Any] = self.connector.open(sender, probe=probe)
        return d.addBoth(self._report, started)

    def _report(self, result: Any, started: float) -> Any:
        name = self.connector.config.name
        ok = not isinstance(result, Failure)
        reason = (
            None if ok else str(getattr(result.value, "reason", None) or result.getErrorMessage())
        )
        self.readiness.attempted(name, Attempt(ok, started, reason))
        tls = getattr(getattr(result, "tls", None), "version", None) if ok else None
        self.metrics.upstream_attempt(name, ok, self.clock() - started, tls)
        return result

    def probe(self) -> defer.Deferred[None]:
        """One connection attempt just to learn whether the upstream is back; QUIT at once."""
        name = self.connector.config.name
        self.readiness.probing.add(name)

        def done(result: Any) -> None:
            self.readiness.probing.discard(name)
            if not isinstance(result, Failure):
                result.quit()

        return self.open(probe=True).addBoth(done)
