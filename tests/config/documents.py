"""Config documents and problem look-ups shared by the tests of gateway.config's readers."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config.toml import parse
from gateway.errors import ConfigError, Problem

SOURCE = "/etc/mailgate/test.toml"


def document(**sections: Any) -> dict[str, Any]:
    """A valid document (one upstream, one relay rule) with sections replaced or added."""
    doc: dict[str, Any] = {
        "upstreams": {"provider": {"host": "smtp.example.com"}},
        "rules": [{"name": "all", "action": "relay", "upstream": "provider"}],
    }
    doc.update(sections)
    return doc


def with_upstream(**keys: Any) -> dict[str, Any]:
    """A valid document whose upstream `provider` has these keys besides its host."""
    return document(upstreams={"provider": {"host": "smtp.example.com", **keys}})


def with_rule(**keys: Any) -> dict[str, Any]:
    """A valid document whose only rule has exactly these keys."""
    return document(rules=[keys])


def problems(doc: dict[str, Any]) -> list[Problem]:
    """The problems parse() reports for `doc` (fails the test if it parses)."""
    with pytest.raises(ConfigError) as raised:
        parse(doc, SOURCE)
    return raised.value.problems


def problem_at(doc: dict[str, Any], key: str) -> Problem:
    """The one problem reported at `key`."""
    found = [p for p in problems(doc) if p.key == key]
    assert len(found) == 1, problems(doc)
    return found[0]


def queued_document(**sections: Any) -> dict[str, Any]:
    """A valid document whose only rule queues (store-and-forward), sections replaced or added."""
    base = {
        "upstreams": {"up": {"host": "smtp.example.net"}},
        "rules": [{"name": "all", "action": "relay", "upstream": "up", "delivery": "queue"}],
    }
    base.update(sections)
    return base


def problem_texts(doc: dict[str, Any]) -> dict[str, str]:
    """Each problem parse() reports for `doc` (source "q.toml"), by key, as its full text."""
    with pytest.raises(ConfigError) as raised:
        parse(doc, "q.toml")
    return {p.key: str(p) for p in raised.value.problems}
