"""Shared provider budgets: refunds in Redis (a real redis-server), and this instance's share
while Redis is away counting what it took through Redis."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from gateway.cluster.budgets import SharedBudgets
from gateway.cluster.store import Store, client
from gateway.config.model import ClusterConfig, Rate, UpstreamConfig
from gateway.policy.budgets import Ledger
from tests.cluster.conftest import cluster_table
from tests.cluster.test_gateways import rcpt
from tests.conftest import relay_all, upstream_table

KEY = "budget:m365:x"


def store(url: str, instance: str = "a") -> Store:
    return Store(client(ClusterConfig(redis_url=url, timeout=0.5), None, 2), instance)


def test_a_refund_gives_a_take_back_in_redis(redis_server):
    """2/hour and 10 recipients a day: two takes of 5 spend both; one refunded, one more fits;
    the daily total follows; a refund given twice gives nothing the second time."""
    one = store(redis_server.url)
    assert one.spend(KEY, (2, 3600), 10, 1, 5, "t1") is None
    assert one.spend(KEY, (2, 3600), 10, 1, 5, "t2") is None
    assert one.spend(KEY, (2, 3600), 10, 1, 1, "t3") is not None
    assert one.refund(KEY, "t1", 1, 5, 5) == 6
    assert one.refund(KEY, "t1", 1, 5, 5) == 0  # already given back
    assert int(one.redis.get(f"mailgate:{KEY}:rcpt_total")) == 5
    assert one.spend(KEY, (2, 3600), 10, 1, 5, "t4") is None
    assert one.redis.pttl(f"mailgate:{KEY}:rcpt_total") > 86_000_000  # its expiry kept


def test_refused_recipients_give_back_their_share_in_redis(redis_server):
    one = store(redis_server.url)
    assert one.spend(KEY, (2, 3600), 10, 1, 8, "t1") is None
    assert one.refund(KEY, "t1", 0, 8, 3) == 3
    assert int(one.redis.get(f"mailgate:{KEY}:rcpt_total")) == 5
    assert one.redis.zcard(f"mailgate:{KEY}:pace") == 1  # the message still counts
    assert one.refund(KEY, "t1", 0, 5, 5) == 5  # the rest, named by what it holds now
    assert int(one.redis.get(f"mailgate:{KEY}:rcpt_total")) == 0
    assert one.spend(KEY, (2, 3600), 10, 1, 10, "t2") is None


def test_another_instances_take_is_not_given_back(redis_server):
    """Tickets are per process: the same ticket of another instance names another take."""
    one, two = store(redis_server.url, "a"), store(redis_server.url, "b")
    assert one.spend(KEY, (2, 3600), None, 1, 1, "t1") is None
    assert two.refund(KEY, "t1", 1, 1, 1) == 0
    assert one.redis.zcard(f"mailgate:{KEY}:pace") == 1


def refunding(gw: Any) -> tuple[threading.Event, list[Any]]:
    """Note each refund the gateway's store answers (it runs in the cluster's thread pool)."""
    done, answers = threading.Event(), []
    original = gw.gateway.cluster.store.refund

    def refund(*args: Any) -> Any:
        try:
            answers.append(original(*args))
        except Exception as exc:
            answers.append(exc)
            raise
        finally:
            done.set()
        return answers[-1]

    gw.gateway.cluster.store.refund = refund
    return done, answers


def test_a_refused_mail_gives_the_shared_budget_back(
    make_upstream, start_gateway, ca, redis_server
):
    """MAIL answered 451 by the upstream: the take leaves Redis's window and this instance's."""
    server = make_upstream()
    server.script.mail = "451 4.3.0 Try again later"
    document = relay_all(upstream_table(server, ca.ca_file, pace="3/hour"))
    document["cluster"] = cluster_table(redis_server.url)
    gw = start_gateway(document)
    done, answers = refunding(gw)
    assert rcpt(gw.port)[0] == 451
    assert done.wait(30) and answers == [1]
    who = hashlib.sha256(b"relay@example.test").hexdigest()[:32]
    assert store(redis_server.url).redis.zcard(f"mailgate:budget:up:{who}:pace") == 0
    assert ("up", "pace", 0, 3) in list(gw.gateway.budgets.usage(gw.reactor.seconds()))


def test_with_redis_gone_at_the_refund_the_local_refund_stands(
    make_upstream, start_gateway, ca, redis_server
):
    """Taken in Redis, then Redis stops before the refund: this instance's windows are given
    back all the same, the outage is noted, and the next message is decided without Redis."""
    server = make_upstream()
    server.script.mail = "451 4.3.0 Try again later"
    document = relay_all(upstream_table(server, ca.ca_file, pace="3/hour"))
    document["cluster"] = cluster_table(redis_server.url)
    gw = start_gateway(document)
    done, answers = refunding(gw)
    original = gw.gateway.cluster.store.refund

    def gone_first(*args: Any) -> Any:
        redis_server.stop()
        return original(*args)

    gw.gateway.cluster.store.refund = gone_first
    assert rcpt(gw.port)[0] == 451
    assert done.wait(30) and isinstance(answers[0], Exception)
    gw.audit.wait_for("cluster.unavailable")
    assert ("up", "pace", 0, 3) in list(gw.gateway.budgets.usage(gw.reactor.seconds()))
    server.script.mail = None
    assert rcpt(gw.port)[0] == 250


class Away:
    """A SharedState whose Redis is away: every decision is the local one."""

    def __init__(self, instances: int) -> None:
        self.instances = instances
        self.store = type("S", (), {"spend": None})()
        self.metrics = type("M", (), {"cluster_decision": lambda self, kind: None})()

    def ask(self, question: Any, args: Any, answered: Any, without: Any) -> Any:
        return without()


def test_while_redis_is_away_the_local_share_counts_what_was_taken_through_it():
    """30/minute over 2 instances: 10 taken through Redis this minute, then Redis goes away;
    this instance's share (15) has 5 left, not 15."""
    m365 = UpstreamConfig(name="m365", host="h", username="u", pace=Rate(30, 60.0, "30/minute"))
    ledger = Ledger()
    for _ in range(10):
        ledger.count(m365, "", 1, 1, 0.0)  # what SharedBudgets records of each shared take
    budgets = SharedBudgets(Away(instances=2), ledger)
    answers = [budgets.take(m365, "", 1, 1, 1.0, promise=False) for _ in range(6)]
    assert answers[:5] == [None] * 5 and answers[5] is not None
    assert "30/minute / 2 instances" in answers[5].budget


class Taking(Away):
    """A SharedState whose Redis takes every message (the script answers None)."""

    def ask(self, question: Any, args: Any, answered: Any, without: Any) -> Any:
        return answered(None)


def test_shared_takes_prune_the_idle_sender_accounts():
    """With "$sender" at 30/minute, 5000 senders one a second, every take decided in Redis: the
    accounts that count them here are pruned as a single instance's are (not 5000 kept)."""
    per_sender = UpstreamConfig(
        name="m", host="h", username="$sender", pace=Rate(30, 60.0, "30/minute")
    )
    ledger = Ledger()
    budgets = SharedBudgets(Taking(instances=1), ledger)
    for i in range(5000):
        assert budgets.take(per_sender, f"s{i}@x", 1, 1, float(i), promise=False) is None
    assert len(ledger) <= 1000
