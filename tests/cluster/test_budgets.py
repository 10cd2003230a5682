"""Provider budgets shared through Redis ([cluster]): one identity's pace across instances."""

from __future__ import annotations

from gateway.cluster.store import Store, client
from gateway.config.model import ClusterConfig
from tests.cluster.conftest import cluster_table
from tests.cluster.test_gateways import rcpt
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
