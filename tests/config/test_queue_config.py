"""Config for store-and-forward: [queue], upstreams' max_connections, rules' delivery."""

from __future__ import annotations

import pytest

from gateway.config.model import QueueConfig
from gateway.config.toml import parse
from gateway.errors import ConfigError


def document(**sections):
    base = {
        "upstreams": {"up": {"host": "smtp.example.net"}},
        "rules": [{"name": "all", "action": "relay", "upstream": "up", "delivery": "queue"}],
    }
    base.update(sections)
    return base


def problems(doc) -> dict[str, str]:
    with pytest.raises(ConfigError) as raised:
        parse(doc, "q.toml")
    return {p.key: str(p) for p in raised.value.problems}


def test_defaults_are_postfix_like():
    """Without [queue]: ./var/spool, 300/4000 s backoff, 5 days, bounces on; 10 connections."""
    config = parse(document(), "q.toml")
    assert config.queue == QueueConfig("./var/spool", 300, 4000, 432000, True)
    assert config.upstreams["up"].max_connections == 10
    assert config.rules[0].delivery == "queue"


def test_delivery_defaults_to_relay():
    """A rule without delivery stays in cut-through relay mode."""
    doc = document(rules=[{"name": "all", "action": "relay", "upstream": "up"}])
    assert parse(doc, "q.toml").rules[0].delivery == "relay"


def test_queue_values_are_read():
    """Every [queue] key is taken as given; one-second backoffs are allowed."""
    doc = document(
        queue={
            "path": "/srv/spool",
            "min_backoff": 1,
            "max_backoff": 2,
            "max_age": 60,
            "bounce": False,
        }
    )
    assert parse(doc, "q.toml").queue == QueueConfig("/srv/spool", 1, 2, 60, False)


def test_max_backoff_below_min_backoff_is_a_problem():
    """max_backoff smaller than min_backoff is reported on max_backoff."""
    found = problems(document(queue={"min_backoff": 600, "max_backoff": 300}))
    assert "q.toml: queue.max_backoff: found 300 (integer)" in found["queue.max_backoff"]


def test_bad_queue_values_are_all_reported():
    """A wrong type, a zero backoff and an unknown key in [queue] are reported together."""
    found = problems(document(queue={"bounce": "yes", "min_backoff": 0, "retry": 1}))
    assert set(found) == {"queue.bounce", "queue.min_backoff", "queue.retry"}
    assert "expected true or false" in found["queue.bounce"]


def test_unknown_delivery_mode_is_a_problem():
    """delivery must be "relay" or "queue"."""
    doc = document(
        rules=[{"name": "all", "action": "relay", "upstream": "up", "delivery": "later"}]
    )
    assert 'expected one of "relay", "queue"' in problems(doc)["rules[0].delivery"]


def test_queue_delivery_needs_a_relay_action():
    """delivery = "queue" on a reject rule is a problem."""
    doc = document(rules=[{"name": "no", "action": "reject", "delivery": "queue"}])
    assert "rules[0].delivery" in problems(doc)


def test_max_connections_out_of_range_is_a_problem():
    """max_connections is an integer from 1 to 1000."""
    doc = document(upstreams={"up": {"host": "smtp.example.net", "max_connections": 0}})
    assert "an integer from 1 to 1000" in problems(doc)["upstreams.up.max_connections"]


def test_reload_refuses_a_new_spool_path():
    """queue.path is fixed at start: a reload that changes it is refused, naming the key."""
    from gateway.config.changes import fixed_changes

    running = parse(document(queue={"path": "/srv/a"}), "q.toml")
    new = parse(document(queue={"path": "/srv/b"}), "q.toml")
    assert [p.key for p in fixed_changes(running, new)] == ["queue.path"]
