"""gateway.config.headers: a rule's rewrite_from and strip_headers read into HeaderEdits."""

from __future__ import annotations

import pytest

from gateway.config.headers import HeaderEdits
from gateway.config.toml import parse
from gateway.errors import ConfigError


def rules_document(**rule: object) -> dict[str, object]:
    return {
        "upstreams": {"up": {"host": "localhost"}},
        "rules": [{"name": "r", "action": "relay", "upstream": "up", **rule}],
    }


def test_config_reads_rewrite_from_and_strip_headers():
    """The rule's keys become a HeaderEdits value with lower-case names."""
    config = parse(
        rules_document(
            rewrite_from="relay@corp.example", strip_headers=["Received", "X-Originating-IP"]
        ),
        "t.toml",
    )
    assert config.rules[0].headers == HeaderEdits(
        "relay@corp.example", frozenset({"received", "x-originating-ip"})
    )


@pytest.mark.parametrize(
    "rule,key,expected",
    [
        (
            {"rewrite_from": "Relay <relay@corp.example>"},
            "rules[0].rewrite_from",
            "a plain ASCII address",
        ),
        ({"strip_headers": ["Bad Name"]}, "rules[0].strip_headers[0]", "a header field name"),
        ({"strip_headers": ["from"]}, "rules[0].strip_headers[0]", "use rewrite_from"),
        ({"strip_headers": []}, "rules[0].strip_headers", "a non-empty list"),
    ],
)
def test_config_problems_name_the_key(rule, key, expected):
    """Bad rewrite_from / strip_headers values are reported with their key and what was expected."""
    with pytest.raises(ConfigError) as caught:
        parse(rules_document(**rule), "t.toml")
    [problem] = caught.value.problems
    assert problem.key == key and expected in problem.expected
