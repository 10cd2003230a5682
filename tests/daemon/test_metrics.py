"""The metrics registry, without sockets: events in, Prometheus samples out."""

from __future__ import annotations

from gateway.daemon.metrics import Metrics, reply_class, rule_label
from gateway.queue.state import QueueState


def test_each_gateway_has_its_own_registry():
    """Two Metrics never share counts (tests run several gateways in one process)."""
    first, second = Metrics(), Metrics()
    first.session_opened(True)
    assert first.registry.get_sample_value("mailgate_sessions_total", {"allowed": "true"}) == 1
    assert second.registry.get_sample_value("mailgate_sessions_total", {"allowed": "true"}) is None


def test_message_result_counts_outcome_rule_upstream_and_reply_class():
    """One message.result event increments the messages and upstream reply-class series."""
    metrics = Metrics()
    metrics.message_result(
        {"outcome": "deferred", "rules": ["a", "b"], "upstream": "up", "upstream_code": 451}, 0.2
    )
    get = metrics.registry.get_sample_value
    assert (
        get("mailgate_messages_total", {"outcome": "deferred", "rule": "a+b", "upstream": "up"})
        == 1
    )
    assert get("mailgate_upstream_replies_total", {"upstream": "up", "class": "4xx"}) == 1
    assert get("mailgate_upstream_message_seconds_count", {"upstream": "up"}) == 1


def test_queue_gauges_appear_only_with_a_probe():
    """Without queue mode there are no queue series; with a probe they show its numbers."""
    metrics = Metrics()
    assert b"mailgate_queue_depth" not in metrics.render()
    metrics.watch_queue(lambda: QueueState(depth=3, oldest_age_seconds=42.5))
    assert metrics.registry.get_sample_value("mailgate_queue_depth") == 3
    assert metrics.registry.get_sample_value("mailgate_queue_oldest_age_seconds") == 42.5


def test_sessions_active_is_read_at_scrape_time():
    """The sessions-in-flight gauge calls its probe on every scrape."""
    metrics = Metrics()
    open_now = [2]
    metrics.watch_sessions(lambda: open_now[0])
    assert metrics.registry.get_sample_value("mailgate_sessions_active") == 2
    open_now[0] = 0
    assert metrics.registry.get_sample_value("mailgate_sessions_active") == 0


def test_reply_class_and_rule_label():
    """Reply codes fold into classes; a message with no rule is labelled "none"."""
    assert [reply_class(c) for c in (250, 421, 554, None, 99)] == [
        "2xx",
        "4xx",
        "5xx",
        "other",
        "other",
    ]
    assert rule_label([]) == "none" and rule_label(["x"]) == "x"


def test_metrics_server_can_be_turned_on_from_the_environment():
    """MAILGATE_METRICS sets [metrics] listen for the env-only (container) configuration."""
    from gateway.config.environment import from_environment
    from gateway.config.model import Endpoint

    config = from_environment(
        {
            "MAILGATE_UPSTREAM": "starttls://u@smtp.example.net:587",
            "MAILGATE_METRICS": "0.0.0.0:9225",
        }
    )
    assert config.metrics.listen == Endpoint("0.0.0.0", 9225)
    assert (
        from_environment({"MAILGATE_UPSTREAM": "starttls://u@smtp.example.net:587"}).metrics.listen
        is None
    )


def test_inbound_tls_sessions_by_version_and_certificate_expiry():
    """App TLS sessions are counted by version; the listener certificate's expiry is a gauge."""
    metrics = Metrics()
    metrics.tls_session("TLSv1.3")
    metrics.tls_session("TLSv1.3")
    metrics.listener_certificate(1893456000.0)
    get = metrics.registry.get_sample_value
    assert get("mailgate_inbound_tls_sessions_total", {"version": "TLSv1.3"}) == 2
    assert get("mailgate_listener_certificate_expiry_timestamp_seconds") == 1893456000.0


def test_oauth_failures_are_labelled_by_a_bounded_set_of_codes():
    """RFC 6749 codes label the failure; whatever else an endpoint says is "other"."""
    metrics = Metrics()
    for code in ("invalid_grant", "a-made-up-code-from-the-endpoint-0001", "x" * 80, "none"):
        metrics.oauth_event("oauth.token_failed", {"upstream": "m365", "error_code": code}, 0.0)
    text = metrics.render().decode()
    assert 'error="invalid_grant"' in text and 'error="none"' in text
    assert 'error="other",upstream="m365"} 2.0' in text
    assert "made-up" not in text
