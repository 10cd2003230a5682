"""SharedCooldowns: failures and recoveries are published; learned cool-downs are not echoed."""

from __future__ import annotations

from gateway.cluster.cooldowns import SharedCooldowns


def make(now: list[float]) -> tuple[SharedCooldowns, list[tuple]]:
    said: list[tuple] = []
    cooldowns = SharedCooldowns(
        lambda: now[0],
        lambda n, s: said.append(("cool", n, s)),
        lambda n: said.append(("clear", n)),
    )
    return cooldowns, said


def test_failure_is_published_and_recovery_cleared():
    """A failure here is told to the others; the upstream's next success clears it."""
    cooldowns, said = make([100.0])
    cooldowns.failed("primary", 100.0, 60)
    cooldowns.succeeded("primary")
    assert said == [("cool", "primary", 60), ("clear", "primary")]


def test_learned_cooldown_orders_without_echo():
    """A cool-down learned from another instance moves the upstream last and is not re-published."""
    cooldowns, said = make([100.0])
    cooldowns.learn("primary", 30)
    assert cooldowns.order(["primary", "backup"], 100.0) == ["backup", "primary"]
    assert not cooldowns.cooling("primary", 131.0)
    assert said == []


def test_success_without_a_shared_cooldown_says_nothing():
    """The usual case, a healthy upstream: no Redis write per message."""
    cooldowns, said = make([100.0])
    cooldowns.succeeded("primary")
    assert said == []
