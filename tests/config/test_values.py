"""gateway.config.values: HOST:PORT endpoints, COUNT/UNIT rates, client networks."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.config.model import Endpoint, ListenEntry, Rate
from gateway.config.toml import parse
from gateway.config.values import parse_endpoint, parse_network, parse_rate
from tests.config.documents import SOURCE, document


def test_ipv6_listen_endpoint() -> None:
    """listen accepts a bracketed IPv6 address."""
    config = parse(document(listener={"listen": "[::1]:2525"}), SOURCE)
    assert (
        config.listener.listen == (ListenEntry(Endpoint("::1", 2525)),)
        and str(config.listener.listen[0]) == "[::1]:2525"
    )


def test_ipv4_mapped_client_network_matches_mapped_clients() -> None:
    """A ``::ffff:10.0.0.0/104`` clients entry is read as 10.0.0.0/8, the form clients arrive in."""
    from gateway.policy import rules as policy
    from gateway.smtp.address import Address

    config = parse(
        {
            "upstreams": {"u": {"host": "h"}},
            "rules": [{"clients": ["::ffff:10.0.0.0/104"], "action": "relay", "upstream": "u"}],
        },
        "t",
    )
    client = policy.parse_client("::ffff:10.1.2.3")
    assert (
        policy.decide(config, client, Address("a@b.example"), Address("c@d.example")).action
        == "relay"
    )


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("100/minute", Rate(100, 60.0, "100/minute")),
        ("1/second", Rate(1, 1.0, "1/second")),
        ("5/hours", Rate(5, 3600.0, "5/hours")),
        ("2/ Day", Rate(2, 86400.0, "2/ Day")),
    ],
)
def test_rate_units(text: str, rate: Rate) -> None:
    """COUNT/UNIT takes second, minute, hour or day, any case, plural allowed; the text is kept."""
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    "text", ["100", "0/minute", "-1/minute", "x/minute", "10/week", "/minute", "10/"]
)
def test_rate_malformed(text: str) -> None:
    """A rate without a positive count, a slash or a known unit is not a rate."""
    assert parse_rate(text) is None


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("127.0.0.1:2525", Endpoint("127.0.0.1", 2525)),
        ("[::1]:2525", Endpoint("::1", 2525)),
        ("localhost:25", Endpoint("localhost", 25)),
    ],
)
def test_endpoint_forms(text: str, endpoint: Endpoint) -> None:
    """HOST:PORT takes an IP address (IPv6 in brackets) or localhost."""
    assert parse_endpoint(text) == endpoint


@pytest.mark.parametrize(
    "text", ["127.0.0.1", "mail.example.com:25", "127.0.0.1:70000", "[::1:2525", ":2525"]
)
def test_endpoint_malformed(text: str) -> None:
    """No port, a host name other than localhost, a port over 65535, an open bracket: None."""
    assert parse_endpoint(text) is None


@pytest.mark.parametrize(
    ("text", "network"),
    [
        ("10.1.2.3/16", "10.1.0.0/16"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("::ffff:192.0.2.1/128", "192.0.2.1/32"),
    ],
)
def test_network_forms(text: str, network: str) -> None:
    """Host bits are allowed; an IPv4-mapped IPv6 network is read as the IPv4 network it maps."""
    assert parse_network(text) == ipaddress.ip_network(network)


@pytest.mark.parametrize("text", ["ten", "10.0.0.0/33", ""])
def test_network_malformed(text: str) -> None:
    """Text that is not a CIDR network raises ValueError (the reader reports it at its key)."""
    with pytest.raises(ValueError):
        parse_network(text)


@pytest.mark.parametrize(
    ("written", "size"),
    [
        (0, 0),
        (1048576, 1048576),
        ("100MiB", 100 * 1024**2),
        ("1 GiB", 1024**3),
        ("500MB", 500 * 1000**2),
        ("64kib", 64 * 1024),
        ("2048", 2048),
    ],
)
def test_sizes_in_bytes_or_with_a_unit(written, size) -> None:
    """A size is bytes (an integer) or a string with KiB/MiB/GiB/TiB (1024) or kB/MB/GB/TB (1000)."""
    from gateway.config.values import parse_size

    assert parse_size(written) == size


@pytest.mark.parametrize("written", [-1, True, 1.5, "", "MiB", "1.5GiB", "10 parsecs", "²MiB"])
def test_what_is_not_a_size(written) -> None:
    """Negative, fractional, boolean or unit-less-of-sense values are not sizes."""
    from gateway.config.values import parse_size

    assert parse_size(written) is None
