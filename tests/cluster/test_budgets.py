"""Provider budgets shared through Redis ([cluster]): one identity's pace across instances."""

from __future__ import annotations

import hashlib
import threading

import pytest

from gateway.cluster.store import Store, client
from gateway.config.model import ClusterConfig
from tests.cluster.conftest import cluster_table
from tests.cluster.test_gateways import heartbeat, rcpt
from tests.conftest import relay_all, upstream_table


def store(url: str, instance: str) -> Store:
    return Store(client(ClusterConfig(redis_url=url, timeout=0.5), None, 2), instance)


def test_spend_shares_the_pace_exactly(redis_server):
    """Two stores on one identity at 3/hour: 3 messages between them, then the pace and when."""
    one, two = store(redis_server.url, "a"), store(redis_server.url, "b")
    answers = [
        (one if i % 2 else two).spend("budget:m365:x", (3, 3600), None, 1, 1) for i in range(5)
    ]
    assert answers[:3] == [None] * 3
    which, seconds = answers[3]  # type: ignore[misc]
    assert which == 1 and 3590 < seconds <= 3600


def test_spend_counts_recipients_over_a_rolling_day(redis_server):
    """10 recipients a day: 6 + 4 fit, one more is told about the recipients' window."""
    one = store(redis_server.url, "a")
    assert one.spend("budget:g:y", None, 10, 1, 6) is None
    assert one.spend("budget:g:y", None, 10, 1, 4) is None
    which, seconds = one.spend("budget:g:y", None, 10, 1, 1)  # type: ignore[misc]
    assert which == 2 and 86390 < seconds <= 86400
    assert one.spend("budget:g:other", None, 10, 1, 1) is None  # another identity


def test_two_gateways_share_one_upstream_pace(make_upstream, start_gateway, ca, redis_server):
    """pace = "3/hour" over two gateways: 3 relayed between them, the rest 451 4.7.1."""
    server = make_upstream()
    document = relay_all(upstream_table(server, ca.ca_file, pace="3/hour"))
    document["cluster"] = cluster_table(redis_server.url)
    one = start_gateway({**document, "cluster": {**document["cluster"], "instance": "mg-1"}})
    two = start_gateway({**document, "cluster": {**document["cluster"], "instance": "mg-2"}})
    codes = [rcpt((one if i % 2 else two).port)[0] for i in range(6)]
    assert sorted(codes) == [250] * 3 + [451] * 3
    assert len(server.wait_for(3)) == 3


def test_shared_budget_metrics_count_what_this_instance_took(
    make_upstream, start_gateway, ca, redis_server
):
    """Taken in Redis, counted in this instance's budget metrics."""
    server = make_upstream()
    document = relay_all(upstream_table(server, ca.ca_file, pace="3/hour"))
    document["cluster"] = cluster_table(redis_server.url)
    gw = start_gateway(document)
    assert rcpt(gw.port)[0] == 250
    rows = list(gw.gateway.budgets.usage(gw.reactor.seconds()))
    assert ("up", "pace", 1, 2) in rows


def test_a_pause_one_store_publishes_is_read_back_by_the_others_heartbeat(redis_server):
    """pause("m365:HASH", 60): its key expires with the pause, another store's heartbeat reads
    the seconds left; a pause whose key was deleted is no longer reported."""
    one, two = store(redis_server.url, "a"), store(redis_server.url, "b")
    one.pause("m365:" + "ab" * 16, 60)
    assert 59000 < one.redis.pttl("mailgate:pause:m365:" + "ab" * 16) <= 60000
    _, _, paused = two.heartbeat(5, [])
    assert list(paused) == ["m365:" + "ab" * 16] and 59 < paused["m365:" + "ab" * 16] <= 60
    one.redis.delete("mailgate:pause:m365:" + "ab" * 16)  # an operator ends the pause
    assert two.heartbeat(5, [])[2] == {}
    assert one.redis.zcard("mailgate:pauses") == 0


@pytest.mark.parametrize("pace", [None, "30/minute"])
def test_a_throttling_reply_to_one_gateway_pauses_the_identity_on_the_other(
    make_upstream, start_gateway, ca, redis_server, pace
):
    """432 4.3.2 to mg-1: mg-2 learns the pause from its heartbeat and answers 451 4.7.1 for
    that identity without connecting to the upstream (with a budget or without)."""
    server = make_upstream()
    server.script.mail = "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"
    extra = {"pace": pace} if pace else {}
    document = relay_all(upstream_table(server, ca.ca_file, **extra))
    document["cluster"] = cluster_table(redis_server.url)
    one = start_gateway({**document, "cluster": {**document["cluster"], "instance": "mg-1"}})
    two = start_gateway({**document, "cluster": {**document["cluster"], "instance": "mg-2"}})
    published = threading.Event()
    pause = one.gateway.cluster.store.pause

    def publishing(member: str, seconds: float) -> None:
        pause(member, seconds)
        published.set()

    one.gateway.cluster.store.pause = publishing  # runs in the cluster's thread pool
    code, text = rcpt(one.port)
    assert (code, text[:5]) == (432, b"4.3.2")
    assert published.wait(30)
    keys = [k.decode() for k in store(redis_server.url, "t").redis.keys("mailgate:pause:*")]
    who = hashlib.sha256(b"relay@example.test").hexdigest()[:32]
    assert keys == [f"mailgate:pause:up:{who}"]  # the identity hashed, no address
    heartbeat(two)
    connections = server.connections
    code, text = rcpt(two.port)
    assert code == 451 and text.startswith(b"4.7.1") and b"throttling" in text
    assert server.connections == connections  # mg-2 never asked the upstream
    assert two.audit.named("upstream.throttled") == []  # mg-1 wrote it, where it was said


def test_with_redis_away_a_throttling_pause_stays_this_instances(
    make_upstream, start_gateway, ca, redis_server
):
    """Redis stopped: the 432 4.3.2 still pauses the identity here (451 4.7.1 next time)."""
    server = make_upstream()
    server.script.mail = "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"
    document = relay_all(upstream_table(server, ca.ca_file))
    document["cluster"] = cluster_table(redis_server.url)
    gw = start_gateway(document)
    redis_server.stop()
    assert rcpt(gw.port)[:1] == (432,)
    code, text = rcpt(gw.port)
    assert code == 451 and b"throttling" in text


def test_a_restarted_process_adds_to_the_budget_not_over_it(redis_server):
    """Same instance name and pid after a restart (pid 1 in a container): its new spends are
    new members, so the pace still holds across the restart and the daily total matches."""
    key = "budget:m365:restart"
    first = store(redis_server.url, "mailgate-1")
    assert [first.spend(key, (3, 60), 100, 1, 10) for _ in range(2)] == [None, None]
    again = store(redis_server.url, "mailgate-1")  # the same name, the same pid here
    answers = [again.spend(key, (3, 60), 100, 1, 10) for _ in range(2)]
    assert answers[0] is None and answers[1] is not None and answers[1][0] == 1
    redis = first.redis
    assert redis.zcard(f"mailgate:{key}:pace") == 3
    assert int(redis.get(f"mailgate:{key}:rcpt_total")) == 30


def test_the_daily_total_does_not_outlive_the_recipients_it_counts(redis_server):
    """The set of the day's recipients expired (a long quiet spell): its total goes with it,
    instead of refusing the identity a day at a time with nothing sent."""
    key = "budget:m365:quiet"
    one = store(redis_server.url, "a")
    assert one.spend(key, None, 10, 1, 10) is None  # the day's 10 recipients, all of them
    assert one.spend(key, None, 10, 1, 1) is not None
    one.redis.delete(f"mailgate:{key}:rcpt")  # as when its expiry passes before the total's
    assert one.spend(key, None, 10, 1, 5) is None
    assert int(one.redis.get(f"mailgate:{key}:rcpt_total")) == 5
    assert one.redis.pttl(f"mailgate:{key}:rcpt") > 86_000_000
