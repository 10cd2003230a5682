"""Gateways sharing one Redis ([cluster]): rule rates, cool-downs, and Redis going away."""

from __future__ import annotations

import smtplib
import time

from twisted.internet import threads

from tests.cluster.conftest import cluster_table
from tests.conftest import relay_all, upstream_table

BODY = b"Subject: shared\r\n\r\nbody\r\n"


def rated(upstream: dict, url: str, rate: str, **cluster: object) -> dict:
    document = relay_all(upstream)
    document["rules"][0]["rate"] = rate
    document["cluster"] = cluster_table(url, **cluster)
    return document


def rcpt(port: int, to: str = "ops@example.net") -> tuple[int, bytes]:
    """MAIL and one RCPT; DATA only when the RCPT was accepted."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("app.test")
        client.mail("app@example.com")
        code, text = client.rcpt(to)
        if code == 250:
            code, text = client.data(BODY)
        return code, text


def heartbeat(gw) -> None:
    """One registration round now (the gateway also runs one every second)."""
    threads.blockingCallFromThread(gw.reactor, gw.gateway.cluster.heartbeat)


def test_two_gateways_share_one_rule_rate(make_upstream, start_gateway, ca, redis_server):
    """A 4/hour rule over two gateways: exactly 4 messages accepted between them."""
    server = make_upstream()
    document = rated(upstream_table(server, ca.ca_file), redis_server.url, "4/hour")
    one = start_gateway({**document, "cluster": {**document["cluster"], "instance": "mg-1"}})
    two = start_gateway({**document, "cluster": {**document["cluster"], "instance": "mg-2"}})
    codes = [rcpt((one if i % 2 else two).port)[0] for i in range(8)]
    assert sorted(codes) == [250] * 4 + [450] * 4
    assert len(server.wait_for(4)) == 4


def test_redis_stopped_local_takes_this_instance_share(
    make_upstream, start_gateway, ca, redis_server
):
    """on_unavailable = local, two instances alive: without Redis each takes half the rate."""
    server = make_upstream()
    document = rated(upstream_table(server, ca.ca_file), redis_server.url, "4/hour")
    one = start_gateway({**document, "cluster": {**document["cluster"], "instance": "mg-1"}})
    two = start_gateway({**document, "cluster": {**document["cluster"], "instance": "mg-2"}})
    heartbeat(two)
    heartbeat(one)
    assert one.gateway.cluster.instances == 2
    redis_server.stop()
    assert [rcpt(one.port)[0] for _ in range(3)] == [250, 250, 450]
    [down] = one.audit.wait_for("cluster.unavailable")
    assert down["on_unavailable"] == "local" and down["instances"] == 2
    assert "127.0.0.1" in down["redis"]


def test_redis_stopped_defer_answers_451_in_relay_mode(
    make_upstream, start_gateway, ca, redis_server
):
    """on_unavailable = defer: a relay-mode recipient gets 451 4.3.0 while Redis is away."""
    server = make_upstream()
    document = rated(
        upstream_table(server, ca.ca_file), redis_server.url, "100/hour", on_unavailable="defer"
    )
    gw = start_gateway(document)
    redis_server.stop()
    code, text = rcpt(gw.port)
    assert (code, text[:5]) == (451, b"4.3.0")
    [result] = gw.audit.wait_for("message.result")
    assert result["recipients"][0]["limit"] == "cluster.on_unavailable"
    assert len(gw.audit.wait_for("cluster.unavailable")) == 1


def test_redis_stopped_defer_still_queues_queue_mode(
    make_upstream, start_gateway, ca, redis_server, tmp_path
):
    """on_unavailable = defer: a queue-mode message is still accepted into the spool."""
    server = make_upstream()
    document = rated(
        upstream_table(server, ca.ca_file), redis_server.url, "100/hour", on_unavailable="defer"
    )
    document["rules"][0]["delivery"] = "queue"
    document["queue"] = {"path": str(tmp_path / "spool"), "min_backoff": 1, "max_backoff": 2}
    gw = start_gateway(document)
    redis_server.stop()
    assert rcpt(gw.port)[0] == 250
    assert len(gw.audit.wait_for("message.queued")) == 1


def test_outage_is_written_once_and_restored_after(make_upstream, start_gateway, ca, redis_server):
    """Three decisions during one outage: one cluster.unavailable; Redis back: cluster.restored."""
    server = make_upstream()
    gw = start_gateway(rated(upstream_table(server, ca.ca_file), redis_server.url, "100/hour"))
    redis_server.stop()
    assert [rcpt(gw.port)[0] for _ in range(3)] == [250, 250, 250]
    assert gw.gateway.readiness.ready, "/readyz stays ready while Redis is away"
    redis_server.start()
    [restored] = gw.audit.wait_for("cluster.restored")
    assert restored["down_s"] >= 0
    assert len(gw.audit.named("cluster.unavailable")) == 1


def test_redis_restarted_empty_decides_in_redis_again(
    make_upstream, start_gateway, ca, redis_server
):
    """Redis restarted with nothing in it: the next decisions are answered and made in Redis."""
    server = make_upstream()
    gw = start_gateway(rated(upstream_table(server, ca.ca_file), redis_server.url, "1/hour"))
    assert [rcpt(gw.port)[0] for _ in range(2)] == [250, 450]
    redis_server.restart()
    heartbeat(gw)
    assert rcpt(gw.port)[0] in (250, 450)  # answered: a fresh budget, or the local one
    heartbeat(gw)
    assert gw.gateway.cluster.available
    assert rcpt(gw.port)[0] == 450  # the budget of 1 is spent in the restarted Redis
    assert gw.gateway.cluster.store.redis.exists("mailgate:rate:all")


def test_silent_redis_decides_locally_after_the_timeout(
    make_upstream, start_gateway, ca, fake_redis
):
    """A Redis that never answers: the RCPT is decided locally within about the timeout."""
    from tests.cluster.test_store import silent

    server = make_upstream()
    gw = start_gateway(rated(upstream_table(server, ca.ca_file), fake_redis(silent).url, "5/hour"))
    started = time.monotonic()
    assert rcpt(gw.port)[0] == 250
    assert time.monotonic() - started < 10
    assert gw.audit.wait_for("cluster.unavailable")


def test_garbage_answering_redis_does_not_break_the_session(
    make_upstream, start_gateway, ca, fake_redis
):
    """A server answering garbage: the session goes on (local decision), no gateway.error."""
    from tests.cluster.test_store import garbage

    server = make_upstream()
    gw = start_gateway(rated(upstream_table(server, ca.ca_file), fake_redis(garbage).url, "5/hour"))
    assert rcpt(gw.port)[0] == 250
    assert gw.audit.named("gateway.error") == []


def test_cooldown_found_by_one_instance_reaches_the_other(
    make_upstream, start_gateway, ca, redis_server
):
    """Instance 1 finds the primary down; instance 2 learns it and goes to the backup first."""
    from tests.integration.test_failover import dead_port

    backup = make_upstream()
    primary = upstream_table(backup, ca.ca_file, host="127.0.0.1", port=dead_port())
    document = {
        "listener": {"listen": "127.0.0.1:0", "shutdown_grace": 2},
        "upstreams": {"primary": primary, "backup": upstream_table(backup, ca.ca_file)},
        "rules": [{"name": "all", "action": "relay", "upstream": ["primary", "backup"]}],
        "cluster": cluster_table(redis_server.url),
    }
    one = start_gateway({**document, "cluster": {**document["cluster"], "instance": "mg-1"}})
    two = start_gateway({**document, "cluster": {**document["cluster"], "instance": "mg-2"}})
    assert rcpt(one.port)[0] == 250
    [first] = one.audit.wait_for("message.result")
    assert first["upstreams_tried"][0]["upstream"] == "primary"
    assert 0 < one.gateway.cluster.store.redis.pttl("mailgate:cooldown:primary")
    heartbeat(two)
    assert rcpt(two.port)[0] == 250
    [second] = two.audit.wait_for("message.result")
    assert second["upstream"] == "backup"
    assert "upstreams_tried" not in second or all(
        t["upstream"] != "primary" for t in second["upstreams_tried"]
    )
