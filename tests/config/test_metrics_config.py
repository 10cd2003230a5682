"""Unit tests of the [metrics] section: where the status server listens, who sees /readyz details."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from gateway.config.model import LOOPBACK, Endpoint
from gateway.config.toml import parse
from gateway.errors import ConfigError

SOURCE = "/etc/mailgate/test.toml"


def document(metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "upstreams": {"provider": {"host": "smtp.example.com"}},
        "rules": [{"name": "all", "action": "relay", "upstream": "provider"}],
    }
    if metrics is not None:
        doc["metrics"] = metrics
    return doc


def test_no_section_no_server_and_loopback_details():
    """Without [metrics] there is no status server; details_from still defaults to loopback."""
    metrics = parse(document(), SOURCE).metrics
    assert metrics.listen is None and metrics.details_from == LOOPBACK


def test_details_from_defaults_to_loopback():
    """[metrics] without details_from lets only loopback clients see /readyz details."""
    metrics = parse(document({"listen": "127.0.0.1:9225"}), SOURCE).metrics
    assert metrics.listen == Endpoint("127.0.0.1", 9225)
    assert metrics.details_from == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )


def test_details_from_takes_networks_and_an_empty_list():
    """details_from is a list of CIDRs (a single address is a /32); [] lets nobody."""
    metrics = parse(document({"details_from": ["10.0.0.0/8", "192.0.2.7"]}), SOURCE).metrics
    assert metrics.details_from == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.7/32"),
    )
    assert parse(document({"details_from": []}), SOURCE).metrics.details_from == ()


@pytest.mark.parametrize(
    "value,key",
    [
        (["10.0.0.0/8", "not-a-network"], "metrics.details_from[1]"),
        ("everyone", "metrics.details_from[0]"),
        ([5], "metrics.details_from"),
        ({"a": 1}, "metrics.details_from"),
    ],
)
def test_bad_details_from_is_a_problem_naming_the_key(value, key):
    """A bad details_from is reported with its file and key, like every other problem."""
    with pytest.raises(ConfigError) as raised:
        parse(document({"details_from": value}), SOURCE)
    assert [p.key for p in raised.value.problems] == [key]
    assert raised.value.problems[0].source == SOURCE
