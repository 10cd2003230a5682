"""/metrics, /healthz and /readyz over real loopback HTTP, fed by real relayed sessions."""

from __future__ import annotations

import asyncio
import smtplib
import threading
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import relay_all, upstream_table

BODY = b"From: app@example.com\r\nSubject: metrics\r\n\r\nbody\r\n"


def with_metrics(document: dict[str, Any]) -> dict[str, Any]:
    return {**document, "metrics": {"listen": "127.0.0.1:0"}}


def get(gw: Any, path: str) -> tuple[int, str]:
    port = gw.gateway.status_port.getHost().port
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(gw: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, text = get(gw, "/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def send(port: int) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("app.test")
        client.mail("app@example.com")
        code, text = client.rcpt("ops@example.net")
        if code != 250:
            return code, text
        return client.data(BODY)


def test_scrape_after_a_relayed_message_shows_its_counters(make_upstream, start_gateway, ca):
    """One relayed message: session, message, reply-class, TLS-version and latency series each count it."""
    upstream = make_upstream()
    gw = start_gateway(with_metrics(relay_all(upstream_table(upstream, ca.ca_file))))
    assert send(gw.port)[0] == 250
    gw.audit.wait_for("session.closed")
    found = samples(gw)
    tls = upstream.wait_for(1)[0].tls_version
    assert value(found, "mailgate_sessions_total", allowed="true") == 1
    assert (
        value(found, "mailgate_messages_total", outcome="relayed", rule="all", upstream="up") == 1
    )
    assert value(found, "mailgate_upstream_replies_total", upstream="up", **{"class": "2xx"}) == 1
    assert value(found, "mailgate_upstream_connections_total", upstream="up", result="ok") == 1
    assert value(found, "mailgate_upstream_tls_total", upstream="up", version=tls) == 1
    assert value(found, "mailgate_upstream_connect_seconds_count", upstream="up") == 1
    assert value(found, "mailgate_upstream_message_seconds_count", upstream="up") == 1
    assert value(found, "mailgate_sessions_active") == 0


def test_a_refused_recipient_is_counted_as_rejected_by_rule(make_upstream, start_gateway, ca):
    """A policy refusal shows up under outcome="rejected" with its rule and no upstream."""
    upstream = make_upstream()
    document = relay_all(upstream_table(upstream, ca.ca_file))
    document["rules"].insert(
        0, {"name": "no-blocked", "recipients": ["*@blocked.example"], "action": "reject"}
    )
    gw = start_gateway(with_metrics(document))
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo("app.test")
        client.mail("app@example.com")
        assert client.rcpt("x@blocked.example")[0] == 550
        client.rset()
    gw.audit.wait_for("message.result")
    found = samples(gw)
    assert (
        value(
            found, "mailgate_messages_total", outcome="rejected", rule="no-blocked", upstream="none"
        )
        == 1
    )


def test_healthz_answers_200(make_upstream, start_gateway, ca):
    """/healthz is 200 while the process runs."""
    gw = start_gateway(with_metrics(relay_all(upstream_table(make_upstream(), ca.ca_file))))
    assert get(gw, "/healthz") == (200, "ok\n")


def test_unknown_path_is_404(make_upstream, start_gateway, ca):
    """Only /metrics, /healthz and /readyz exist."""
    gw = start_gateway(with_metrics(relay_all(upstream_table(make_upstream(), ca.ca_file))))
    assert get(gw, "/admin")[0] == 404


def stop_listening(server: Any) -> None:
    """Close the upstream's listening socket (the port stays known, so it can come back)."""

    async def close() -> None:
        server._server.close()  # the listening socket closes now; wait_closed() would wait for clients
        await asyncio.sleep(0)

    asyncio.run_coroutine_threadsafe(close(), server._loop).result(10)


def listen_again(server: Any) -> None:
    async def serve() -> Any:
        return await server._loop.create_server(server._factory, "127.0.0.1", server.port)

    server._server = asyncio.run_coroutine_threadsafe(serve(), server._loop).result(10)


def test_readiness_follows_the_upstream_down_and_back_up(make_upstream, start_gateway, ca):
    """/readyz: 200, then 503 naming the upstream once a connection to it failed, then 200 after one succeeds."""
    upstream = make_upstream()
    table = upstream_table(upstream, ca.ca_file, pool_idle_timeout=0, failover_cooldown=0)
    gw = start_gateway(with_metrics(relay_all(table)))
    assert get(gw, "/readyz") == (200, "ready\n")
    assert send(gw.port)[0] == 250

    stop_listening(upstream)
    assert send(gw.port)[0] == 451
    assert get(gw, "/readyz") == (503, "not ready\n")  # the reasons only when asked for
    status, text = get(gw, "/readyz?verbose=1")  # from loopback: details_from's default
    assert status == 503
    assert "upstream up: last connection attempt failed" in text
    assert value(samples(gw), "mailgate_ready") == 0

    listen_again(upstream)
    assert send(gw.port)[0] == 250
    assert get(gw, "/readyz") == (200, "ready\n")


def test_index_lists_the_pages(make_upstream, start_gateway, ca):
    """/ names the three pages, for a person who opens the port in a browser."""
    gw = start_gateway(with_metrics(relay_all(upstream_table(make_upstream(), ca.ca_file))))
    assert get(gw, "/") == (200, "mailgate: /metrics /healthz /readyz\n")


def test_readyz_probes_a_failed_upstream_so_readiness_recovers_without_traffic(
    make_upstream, start_gateway, ca, monkeypatch
):
    """With no mail flowing, asking /readyz retries a failed upstream; once it is back, /readyz is 200."""
    from twisted.internet import threads

    from gateway.daemon import health

    monkeypatch.setattr(health, "PROBE_INTERVAL", 0.0)
    upstream = make_upstream()
    table = upstream_table(upstream, ca.ca_file, pool_idle_timeout=0, failover_cooldown=0)
    gw = start_gateway(with_metrics(relay_all(table)))
    stop_listening(upstream)
    assert send(gw.port)[0] == 451
    readiness = gw.gateway.readiness
    assert threads.blockingCallFromThread(gw.reactor, readiness.problems)

    listen_again(upstream)
    changed, seen = threading.Condition(), []
    record = readiness.attempted

    def attempted(name: str, attempt: health.Attempt) -> None:
        record(name, attempt)
        with changed:
            seen.append(attempt)
            changed.notify_all()

    monkeypatch.setattr(readiness, "attempted", attempted)
    assert get(gw, "/readyz")[0] == 503  # answers from what is known, and starts a probe
    with changed:
        assert changed.wait_for(lambda: any(a.ok for a in seen), 30)
    assert get(gw, "/readyz") == (200, "ready\n")
