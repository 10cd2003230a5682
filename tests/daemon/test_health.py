"""Readiness (pure) and the connector wrapper that feeds it, without sockets."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer

from gateway.daemon.health import PROBE_INTERVAL, Attempt, Readiness, WatchedConnector
from gateway.daemon.metrics import Metrics


def ready_state() -> Readiness:
    readiness = Readiness()
    readiness.listening = True
    readiness.config_loaded = True
    return readiness


def test_ready_when_bound_loaded_and_no_upstream_tried_yet():
    """An upstream never tried does not make the gateway unready."""
    assert ready_state().problems() == []


def test_not_ready_before_the_listener_is_bound():
    """listening False is a problem of its own."""
    readiness = ready_state()
    readiness.listening = False
    assert readiness.problems() == ["listener not bound"]


def test_a_failed_attempt_names_the_upstream_and_reason():
    """The last failed attempt makes the gateway unready and says which upstream and why."""
    readiness = ready_state()
    readiness.attempted("up", Attempt(False, 5.0, "up: cannot connect"))
    assert readiness.problems() == [
        "upstream up: last connection attempt failed: up: cannot connect"
    ]
    assert not readiness.ready


def test_an_upstream_whose_token_cannot_be_had_is_named():
    """/readyz says which XOAUTH2 upstream has no token, and the endpoint's error."""
    readiness = ready_state()
    reason = "m365: token endpoint https://login.example/t answered HTTP 400: invalid_grant"
    readiness.attempted("m365", Attempt(False, 5.0, reason))
    assert readiness.problems() == [f"upstream m365: no OAuth token can be had: {reason}"]


def test_a_later_success_makes_it_ready_again():
    """The most recent attempt decides."""
    readiness = ready_state()
    readiness.attempted("up", Attempt(False, 5.0, "down"))
    readiness.attempted("up", Attempt(True, 6.0))
    assert readiness.ready


def test_an_older_attempt_finishing_late_does_not_overwrite_a_newer_one():
    """Attempts are ordered by when they started, not when they ended."""
    readiness = ready_state()
    readiness.attempted("up", Attempt(True, 9.0))
    readiness.attempted("up", Attempt(False, 4.0, "slow timeout"))
    assert readiness.ready


def test_failed_upstreams_are_probed_only_after_the_interval_and_once_at_a_time():
    """due_probes waits PROBE_INTERVAL after the failure and skips an upstream being probed."""
    readiness = ready_state()
    readiness.attempted("up", Attempt(False, 100.0, "down"))
    readiness.attempted("ok", Attempt(True, 100.0))
    assert readiness.due_probes(100.0 + PROBE_INTERVAL - 0.1) == []
    assert readiness.due_probes(100.0 + PROBE_INTERVAL) == ["up"]
    readiness.probing.add("up")
    assert readiness.due_probes(200.0) == []


def test_forget_drops_what_a_reload_changed():
    """An upstream removed or changed by a reload starts again as never tried."""
    readiness = ready_state()
    readiness.attempted("up", Attempt(False, 1.0, "down"))
    readiness.forget(["up"])
    assert readiness.ready


@dataclass
class FakeUpstream:
    name: str = "up"


@dataclass
class FakeTLS:
    version: str = "TLSv1.3"


@dataclass
class FakeSession:
    tls: FakeTLS
    quitted: bool = False

    def quit(self) -> None:
        self.quitted = True


class FakeConnector:
    config = FakeUpstream()

    def __init__(self, result: object) -> None:
        self.result = result

    def open(self, sender: str | None = None, *, probe: bool = False) -> defer.Deferred[object]:
        if isinstance(self.result, Exception):
            return defer.fail(self.result)
        return defer.succeed(self.result)


class Failure(Exception):
    reason = "up: cannot connect to localhost:1 (refused)"


def watched(result: object, now: list[float]) -> tuple[WatchedConnector, Readiness, Metrics]:
    readiness, metrics = ready_state(), Metrics()
    return (
        WatchedConnector(FakeConnector(result), readiness, metrics, lambda: now[0]),
        readiness,
        metrics,
    )


def test_watched_connector_reports_a_failed_open_and_passes_the_failure_on():
    """A failed open() marks the upstream unready, counts a failed connection, and still fails."""
    connector, readiness, metrics = watched(Failure(), [10.0])
    failures: list[object] = []
    connector.open().addErrback(failures.append)
    assert len(failures) == 1
    assert readiness.attempts["up"] == Attempt(False, 10.0, Failure.reason)
    assert (
        metrics.registry.get_sample_value(
            "mailgate_upstream_connections_total", {"upstream": "up", "result": "failed"}
        )
        == 1
    )


def test_watched_connector_records_tls_version_and_set_up_time():
    """A successful open() counts its TLS version and observes the set-up latency."""
    now = [10.0]
    session = FakeSession(FakeTLS())
    connector, readiness, metrics = watched(session, now)
    d: defer.Deferred[object] = defer.Deferred()
    connector.connector.open = lambda sender=None, probe=False: d  # type: ignore[method-assign]
    opened: list[object] = []
    connector.open().addCallback(opened.append)
    now[0] = 10.5
    d.callback(session)
    assert opened == [session] and readiness.attempts["up"].ok
    assert (
        metrics.registry.get_sample_value(
            "mailgate_upstream_tls_total", {"upstream": "up", "version": "TLSv1.3"}
        )
        == 1
    )
    assert (
        metrics.registry.get_sample_value(
            "mailgate_upstream_connect_seconds_sum", {"upstream": "up"}
        )
        == 0.5
    )


def test_probe_quits_the_session_it_opened():
    """A readiness probe says QUIT at once and is no longer 'probing' afterwards."""
    session = FakeSession(FakeTLS())
    connector, readiness, _ = watched(session, [1.0])
    connector.probe()
    assert session.quitted and readiness.probing == set() and readiness.ready
