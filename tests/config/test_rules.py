"""gateway.config.rules: the [[rules]] tables, in order, checked against upstreams and apps."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config.toml import parse
from tests.config.documents import (
    SOURCE,
    document,
    problem_at,
    problem_texts,
    queued_document,
    with_rule,
)


def test_rules_keep_order() -> None:
    """Rules are kept in file order (the first match wins)."""
    config = parse(document(rules=[{"name": n, "action": "reject"} for n in "cab"]), SOURCE)
    assert [r.name for r in config.rules] == ["c", "a", "b"]


def test_rule_default_name() -> None:
    """A rule without a name is called rule-N (1-based)."""
    config = parse(
        document(rules=[{"name": "x", "action": "reject"}, {"action": "reject"}]), SOURCE
    )
    assert config.rules[1].name == "rule-2"


def test_rule_single_string_glob() -> None:
    """A single string where a list is expected is taken as a list of one."""
    assert parse(with_rule(action="reject", senders="*@a.example"), SOURCE).rules[0].senders == (
        "*@a.example",
    )


def test_rule_without_conditions_matches_all() -> None:
    """Conditions left out are None (no condition), not empty."""
    rule = parse(document(), SOURCE).rules[0]
    assert (rule.clients, rule.senders, rule.recipients) == (None, None, None)


def test_rule_action_required() -> None:
    """A rule without action is a problem."""
    problem_at(with_rule(name="r"), "rules[0].action")


def test_rule_action_choices() -> None:
    """An action other than relay or reject is a problem."""
    problem_at(with_rule(name="r", action="accept"), "rules[0].action")


def test_relay_rule_needs_upstream() -> None:
    """A relay rule without upstream is a problem."""
    problem_at(with_rule(name="r", action="relay"), "rules[0].upstream")


def test_rule_unknown_upstream() -> None:
    """A rule naming an upstream that is not defined is a problem listing the defined ones."""
    problem = problem_at(
        with_rule(name="r", action="relay", upstream="missing"), "rules[0].upstream"
    )
    assert "provider" in problem.expected and "'missing'" in problem.found


def test_duplicate_rule_names() -> None:
    """Two rules with the same name are a problem at the second one."""
    doc = document(
        rules=[
            {"name": "r", "action": "reject"},
            {"name": "s", "action": "reject"},
            {"name": "r", "action": "reject"},
        ]
    )
    problem_at(doc, "rules[2].name")


@pytest.mark.parametrize(
    ("keys", "key"),
    [
        ({"clients": ["10.0.0.0/8", "nope"]}, "rules[0].clients[1]"),
        ({"senders": []}, "rules[0].senders"),
        ({"recipients": [""]}, "rules[0].recipients"),
        ({"recipients": [1]}, "rules[0].recipients"),
    ],
)
def test_bad_rule_condition(keys: dict[str, Any], key: str) -> None:
    """A malformed clients, senders or recipients list is a problem at its key."""
    problem_at(with_rule(name="r", action="reject", **keys), key)


def test_rule_of_wrong_type() -> None:
    """A rule that is not a table is a problem at rules[N]."""
    problem_at(document(rules=["relay everything"]), "rules[0]")


# --- delivery: relay (cut-through) or queue (store-and-forward) --------------------------------


def test_delivery_defaults_to_relay():
    """A rule without delivery stays in cut-through relay mode."""
    doc = queued_document(rules=[{"name": "all", "action": "relay", "upstream": "up"}])
    assert parse(doc, "q.toml").rules[0].delivery == "relay"


def test_unknown_delivery_mode_is_a_problem():
    """delivery must be "relay" or "queue"."""
    doc = queued_document(
        rules=[{"name": "all", "action": "relay", "upstream": "up", "delivery": "later"}]
    )
    assert 'expected one of "relay", "queue"' in problem_texts(doc)["rules[0].delivery"]


def test_queue_delivery_needs_a_relay_action():
    """delivery = "queue" on a reject rule is a problem."""
    doc = queued_document(rules=[{"name": "no", "action": "reject", "delivery": "queue"}])
    assert "rules[0].delivery" in problem_texts(doc)


def test_bounce_to_senders_is_off_by_default_and_read():
    """rules[].bounce_to_senders: false unless set; true is kept with a senders list."""
    rule = {"name": "all", "action": "relay", "upstream": "up", "delivery": "queue"}
    assert parse(queued_document(rules=[rule]), "q.toml").rules[0].bounce_to_senders is False
    marked = {**rule, "senders": ["*@corp.example"], "bounce_to_senders": True}
    assert parse(queued_document(rules=[marked]), "q.toml").rules[0].bounce_to_senders is True


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"bounce_to_senders": True}, "only with a senders list"),
        ({"senders": ["*"], "bounce_to_senders": "yes"}, "true or false"),
    ],
)
def test_bounce_to_senders_problems(extra, expected):
    """bounce_to_senders needs a boolean, and senders to vouch for (the default any vouches for none)."""
    rule = {"name": "all", "action": "relay", "upstream": "up", "delivery": "queue", **extra}
    assert expected in problem_texts(queued_document(rules=[rule]))["rules[0].bounce_to_senders"]
