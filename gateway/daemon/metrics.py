"""Metrics: what the gateway did, as Prometheus counters, gauges and histograms.

Each gateway owns a private `CollectorRegistry` (never the process-global one),
so several gateways in one process (tests) keep separate counts. The numbers
are fed from the points that write audit events, one call per event:
``session.opened`` -> `session_opened`, ``message.result`` -> `message_result`;
the upstream connector's attempts -> `upstream_attempt`; a reload ->
`config_reload`. Gauges that describe a state (sessions in flight, queue depth)
are read at scrape time from callables. No reactor.

Queue mode plugs in with `Metrics.watch_queue(probe)`: ``probe()`` returns a
`QueueState` (messages waiting, age in seconds of the oldest, messages held, the
spool's free bytes) and is called on every scrape; without a probe the queue gauges are absent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from gateway.queue.state import QueueState

# Seconds: a loopback provider answers in milliseconds, a slow one in tens of seconds.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


def reply_class(code: object) -> str:
    """``250`` -> ``"2xx"``; anything that is not a reply code -> ``"other"``."""
    if isinstance(code, int) and 200 <= code < 600:
        return f"{code // 100}xx"
    return "other"


def rule_label(rules: object) -> str:
    """The rules a message's recipients matched, in order, joined by ``+`` (``"none"``: no rule)."""
    if isinstance(rules, list | tuple) and rules:
        return "+".join(str(r) for r in rules)
    return "none"


# The ``error`` label of mailgate_oauth_refresh_failures: RFC 6749 5.2's codes and the few the
# providers add; anything else the endpoint says is "other" (its text stays in the audit).
OAUTH_ERROR_LABELS = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "temporarily_unavailable",
        "server_error",
        "interaction_required",
        "consent_required",
        "access_denied",
        "none",
    }
)


class _StateCollector(Collector):
    """Gauges computed at scrape time from the registered probes."""

    def __init__(self) -> None:
        self.sessions: Callable[[], int] | None = None
        self.queue: Callable[[], QueueState] | None = None
        self.cluster: Callable[[], tuple[bool, int]] | None = None
        self.budgets: Callable[[], Iterable[tuple[str, str, int, int]]] | None = None
        self.paced: Callable[[], int] | None = None

    def collect(self) -> Iterator[Metric]:
        yield from self._budgets()
        if self.sessions is not None:
            yield GaugeMetricFamily(
                "mailgate_sessions_active", "App sessions open now.", value=self.sessions()
            )
        if self.queue is not None:
            state = self.queue()
            yield GaugeMetricFamily(
                "mailgate_queue_depth",
                "Messages in the spool waiting for delivery.",
                value=state.depth,
            )
            yield GaugeMetricFamily(
                "mailgate_queue_oldest_age_seconds",
                "Age of the oldest message in the spool (0 when empty).",
                value=state.oldest_age_seconds,
            )
            yield GaugeMetricFamily(
                "mailgate_queue_held_messages",
                "Messages held by the operator (mailgate queue hold), in hold/.",
                value=state.held,
            )
            if state.free_bytes is not None:
                yield GaugeMetricFamily(
                    "mailgate_queue_free_bytes",
                    "Bytes free on the spool's file system (queue.min_free is the floor).",
                    value=state.free_bytes,
                )
        if self.cluster is not None:
            available, instances = self.cluster()
            yield GaugeMetricFamily(
                "mailgate_cluster_available",
                "[cluster]: 1 while the shared Redis answers, 0 during an outage.",
                value=1 if available else 0,
            )
            yield GaugeMetricFamily(
                "mailgate_cluster_instances",
                "[cluster]: gateway instances alive when Redis was last asked (this one included).",
                value=instances,
            )

    def _budgets(self) -> Iterator[Metric]:
        if self.budgets is not None:
            used = GaugeMetricFamily(
                "mailgate_upstream_budget_used",
                "Provider budget used in its window (pace: messages in the period; "
                "recipients_per_day: the last 24 hours), by upstream, for its busiest identity.",
                labels=["upstream", "budget"],
            )
            left = GaugeMetricFamily(
                "mailgate_upstream_budget_remaining",
                "Provider budget left in its window, by upstream, for its busiest identity.",
                labels=["upstream", "budget"],
            )
            for upstream, budget, count, remaining in self.budgets():
                used.add_metric([upstream, budget], count)
                left.add_metric([upstream, budget], remaining)
            yield used
            yield left
        if self.paced is not None:
            yield GaugeMetricFamily(
                "mailgate_queue_paced_messages",
                "Queued messages waiting for a provider budget or a throttling pause.",
                value=self.paced(),
            )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sessions = Counter(
            "mailgate_sessions",
            "App sessions opened, by whether the client was allowed.",
            ["allowed"],
            registry=r,
        )
        self.messages = Counter(
            "mailgate_messages",
            "Mail transactions ended, by outcome, rule(s) and upstream.",
            ["outcome", "rule", "upstream"],
            registry=r,
        )
        self.upstream_replies = Counter(
            "mailgate_upstream_replies",
            "Last upstream reply of each transaction, by class (2xx, 4xx, 5xx).",
            ["upstream", "class"],
            registry=r,
        )
        self.upstream_connections = Counter(
            "mailgate_upstream_connections",
            "Upstream connection attempts (TLS, verification, AUTH), by result.",
            ["upstream", "result"],
            registry=r,
        )
        self.upstream_tls = Counter(
            "mailgate_upstream_tls",
            "Upstream sessions ready, by TLS version negotiated.",
            ["upstream", "version"],
            registry=r,
        )
        self.connect_seconds = Histogram(
            "mailgate_upstream_connect_seconds",
            "Upstream connection set-up: connect to ready for MAIL (TLS and AUTH done).",
            ["upstream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.message_seconds = Histogram(
            "mailgate_upstream_message_seconds",
            "Per message: end of data sent upstream to the upstream's final reply.",
            ["upstream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reloads = Counter(
            "mailgate_config_reloads",
            "Configuration reloads (SIGHUP), by result.",
            ["result"],
            registry=r,
        )
        self.cluster_decisions = Counter(
            "mailgate_cluster_rate_decisions",
            "[cluster]: rule rate decisions, by where they were made"
            " (shared: Redis; local: this instance's share; undecided: on_unavailable = defer).",
            ["source"],
            registry=r,
        )
        self.inbound_tls = Counter(
            "mailgate_inbound_tls_sessions",
            "App TLS sessions (STARTTLS or smtps://) whose handshake completed, by TLS version.",
            ["version"],
            registry=r,
        )
        self.listener_cert_expiry = Gauge(
            "mailgate_listener_certificate_expiry_timestamp_seconds",
            "When the listener's TLS certificate (listener.tls_cert_file) expires, Unix time.",
            registry=r,
        )
        self.oauth_failures = Counter(
            "mailgate_oauth_refresh_failures",
            "XOAUTH2 token requests that failed, by upstream and the endpoint's error code.",
            ["upstream", "error"],
            registry=r,
        )
        self.oauth_refreshed = Gauge(
            "mailgate_oauth_last_refresh_timestamp_seconds",
            "XOAUTH2: Unix time of the upstream's last successful token request.",
            ["upstream"],
            registry=r,
        )
        self.oauth_expiry = Gauge(
            "mailgate_oauth_token_expiry_seconds",
            "XOAUTH2: seconds until the upstream's current access token expires (negative: expired).",
            ["upstream"],
            registry=r,
        )
        self.oauth_secret_expiry = Gauge(
            "mailgate_oauth_client_secret_expiry_timestamp_seconds",
            "XOAUTH2: Unix time the client secret expires (oauth_client_secret_expires).",
            ["upstream"],
            registry=r,
        )
        self.throttle_pauses = Counter(
            "mailgate_upstream_throttle_pauses",
            "Sending identities paused after a provider's throttling reply, by upstream.",
            ["upstream"],
            registry=r,
        )
        self.ready = Gauge("mailgate_ready", "1 while /readyz answers 200.", registry=r)
        self._state = _StateCollector()
        r.register(self._state)

    # --- state probes ------------------------------------------------------------------

    def watch_sessions(self, probe: Callable[[], int]) -> None:
        self._state.sessions = probe

    def watch_queue(self, probe: Callable[[], QueueState] | None) -> None:
        """Queue mode: report depth and oldest age from ``probe()`` on every scrape (None: stop)."""
        self._state.queue = probe

    def watch_cluster(self, probe: Callable[[], tuple[bool, int]]) -> None:
        """``[cluster]``: ``probe()`` says whether Redis answers and how many instances are alive."""
        self._state.cluster = probe

    def watch_budgets(
        self,
        usage: Callable[[], Iterable[tuple[str, str, int, int]]],
        paced: Callable[[], int] | None,
    ) -> None:
        """Provider budgets: (upstream, budget, used, remaining) rows; paced messages waiting."""
        self._state.budgets = usage
        self._state.paced = paced

    # --- events ------------------------------------------------------------------------

    def oauth_event(self, name: str, fields: Mapping[str, Any], now: float) -> None:
        """``oauth.token_issued`` / ``oauth.token_failed``: the upstream's token health."""
        upstream = str(fields.get("upstream", "?"))
        if name == "oauth.token_failed":
            code = str(fields.get("error_code"))
            error = code if code in OAUTH_ERROR_LABELS else "other"  # the endpoint's words: bounded
            self.oauth_failures.labels(upstream=upstream, error=error).inc()
        elif name == "oauth.token_issued":
            self.oauth_refreshed.labels(upstream=upstream).set(now)
            expires = now + float(fields.get("expires_in", 0))
            self.oauth_expiry.labels(upstream=upstream).set_function(lambda: expires - time.time())

    def oauth_secret_expires(self, upstream: str, when: float) -> None:
        self.oauth_secret_expiry.labels(upstream=upstream).set(when)

    def throttle_pause(self, upstream: str) -> None:
        self.throttle_pauses.labels(upstream=upstream).inc()

    def cluster_decision(self, source: str) -> None:
        self.cluster_decisions.labels(source=source).inc()

    def session_opened(self, allowed: bool) -> None:
        self.sessions.labels(allowed="true" if allowed else "false").inc()

    def message_result(
        self, fields: Mapping[str, Any], upstream_seconds: float | None = None
    ) -> None:
        """One ``message.result`` event (its fields) and the upstream's time for the message."""
        upstream = str(fields.get("upstream") or "none")
        self.messages.labels(
            outcome=str(fields.get("outcome", "unknown")),
            rule=rule_label(fields.get("rules")),
            upstream=upstream,
        ).inc()
        if "upstream_code" in fields:
            self.upstream_replies.labels(
                upstream=upstream, **{"class": reply_class(fields["upstream_code"])}
            ).inc()
        if upstream_seconds is not None and fields.get("upstream"):
            self.message_seconds.labels(upstream=upstream).observe(upstream_seconds)

    def upstream_attempt(
        self, upstream: str, ok: bool, seconds: float, tls_version: str | None = None
    ) -> None:
        self.upstream_connections.labels(upstream=upstream, result="ok" if ok else "failed").inc()
        if ok:
            self.connect_seconds.labels(upstream=upstream).observe(seconds)
            self.upstream_tls.labels(upstream=upstream, version=tls_version or "unknown").inc()

    def tls_session(self, version: str) -> None:
        self.inbound_tls.labels(version=version).inc()

    def listener_certificate(self, expires: float) -> None:
        self.listener_cert_expiry.set(expires)

    def config_reload(self, ok: bool) -> None:
        self.reloads.labels(result="ok" if ok else "failed").inc()

    # --- exposition ----------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition format (`CONTENT_TYPE`)."""
        return generate_latest(self.registry)
