"""The Redis side of [cluster] (gateway.cluster.store), against a real redis-server."""

from __future__ import annotations

import socket
import time

import pytest

from gateway.cluster.store import Store, StoreError, client
from gateway.config.model import ClusterConfig
from gateway.config.secrets import Secret
from gateway.testing.redis_server import RedisServer


def store(url: str, instance: str = "mg-1", **options: object) -> Store:
    cluster = ClusterConfig(redis_url=url, timeout=0.5, **options)  # type: ignore[arg-type]
    return Store(client(cluster, None, 2), instance)


def test_take_allows_exactly_the_budget(redis_server):
    """Two stores on one key: 5/hour lets 5 through between them, then refuses."""
    one, two = store(redis_server.url, "a"), store(redis_server.url, "b")
    answers = [(one if i % 2 else two).take("rate:all", 5, 3600) for i in range(8)]
    assert answers == [True] * 5 + [False] * 3


def test_take_refills_with_time(redis_server):
    """A spent budget of 1 per 0.2 s allows one again once 0.2 s have passed."""
    shared = store(redis_server.url)
    assert shared.take("rate:fast", 1, 0.2) and not shared.take("rate:fast", 1, 0.2)
    time.sleep(0.25)  # the budget's own period: the behaviour under test is the refill
    assert shared.take("rate:fast", 1, 0.2)


def test_keys_are_namespaced_and_expire(redis_server):
    """The rate key lives under mailgate: and carries a TTL."""
    shared = store(redis_server.url)
    shared.take("rate:all", 10, 60)
    assert shared.redis.keys("*") == [b"mailgate:rate:all"]
    assert 0 < shared.redis.pttl("mailgate:rate:all") <= 61000


def test_heartbeat_counts_live_instances(redis_server):
    """Two registered stores each see 2 instances; one that left is no longer counted."""
    one, two = store(redis_server.url, "a"), store(redis_server.url, "a")  # same name, same pid
    two.member = "a/other-process"
    assert one.heartbeat(5, [])[0] == 1
    assert two.heartbeat(5, [])[0] == 2
    two.leave()
    assert one.heartbeat(5, [])[0] == 1


def test_heartbeat_reports_shared_cooldowns(redis_server):
    """A cool-down one store publishes is read back by another with the time left."""
    one, two = store(redis_server.url, "a"), store(redis_server.url, "b")
    one.cool("primary", 30)
    _, cooling, _ = two.heartbeat(5, ["primary", "backup"])
    assert list(cooling) == ["primary"] and 29 < cooling["primary"] <= 30
    one.uncool("primary")
    assert two.heartbeat(5, ["primary"])[1] == {}


def test_restarted_empty_redis_reloads_the_script(redis_server):
    """After a restart (no scripts, no keys) the next take works again: the budget is fresh."""
    shared = store(redis_server.url)
    assert shared.take("rate:all", 1, 3600) and not shared.take("rate:all", 1, 3600)
    redis_server.restart()
    assert shared.take("rate:all", 1, 3600)


def test_stopped_redis_is_a_store_error(redis_server):
    """Nobody listening: a StoreError, not a hang."""
    shared = store(redis_server.url)
    redis_server.stop()
    with pytest.raises(StoreError, match="ConnectionError"):
        shared.take("rate:all", 1, 60)


def garbage(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")


def silent(conn: socket.socket) -> None:
    conn.recv(65536)  # and never answers


def drops(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"*3\r\n:1\r\n")  # half an answer, then the connection is gone
    conn.close()


@pytest.mark.parametrize("behaviour", [garbage, silent, drops], ids=lambda b: b.__name__)
def test_misbehaving_redis_is_a_store_error_within_the_timeout(fake_redis, behaviour):
    """Garbage, silence or a drop mid-answer: a StoreError within about the timeout."""
    shared = store(fake_redis(behaviour).url)
    started = time.monotonic()
    with pytest.raises(StoreError):
        shared.take("rate:all", 1, 60)
    assert time.monotonic() - started < 3


def test_rediss_with_the_right_name_answers(tmp_path, ca):
    """TLS to a certificate for localhost, verified against ca_file: PING answers."""
    server = RedisServer(str(tmp_path), tls=ca.issue("redis-good", "localhost"))
    server.start()
    try:
        store(server.url, ca_file=ca.ca_file).ping()
    finally:
        server.stop()


def test_rediss_with_a_wrong_name_certificate_is_refused(tmp_path, ca):
    """A certificate signed by the trusted CA but for another name: refused, never used."""
    server = RedisServer(str(tmp_path), tls=ca.issue("redis-wrong", "other.example"))
    server.start()
    try:
        with pytest.raises(StoreError, match="(?i)hostname|match"):
            store(server.url, ca_file=ca.ca_file).ping()
    finally:
        server.stop()


def test_rediss_with_an_unknown_ca_is_refused(tmp_path, ca):
    """A certificate for the right name from a CA not in ca_file (the system's): refused."""
    server = RedisServer(str(tmp_path), tls=ca.issue("redis-good2", "localhost"))
    server.start()
    try:
        with pytest.raises(StoreError, match="(?i)certificate"):
            store(server.url).ping()
    finally:
        server.stop()


def test_a_password_protected_redis_shares_the_budget(tmp_path):
    """requirepass: stores given the password share one budget; one without it gets a StoreError."""

    server = RedisServer(str(tmp_path), password="pw-for-redis")
    server.start()
    try:
        cluster = ClusterConfig(redis_url=server.url, timeout=0.5)
        one = Store(client(cluster, Secret("pw-for-redis"), 2), "a")
        two = Store(client(cluster, Secret("pw-for-redis"), 2), "b")
        assert [one.take("rate:all", 2, 3600), two.take("rate:all", 2, 3600)] == [True, True]
        assert not one.take("rate:all", 2, 3600)
        anonymous = Store(client(cluster, None, 1), "c")
        with pytest.raises(StoreError) as refused:
            anonymous.take("rate:all", 2, 3600)
        assert refused.value.refused_password
        assert "pw-for-redis" not in str(refused.value)
    finally:
        server.stop()
