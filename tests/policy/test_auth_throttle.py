"""gateway.policy.auth_throttle, pure: what is counted, under which key, and checks under way."""

from __future__ import annotations

from gateway.policy.auth_throttle import AuthThrottle, throttle_key


def test_ipv6_clients_are_counted_by_their_64():
    """Addresses of one /64 share a count; another /64 and IPv4 stand alone; mapped IPv4 is IPv4."""
    assert throttle_key("2001:db8:1:1::5") == throttle_key("2001:db8:1:1:ffff::1")
    assert throttle_key("2001:db8:1:2::5") != throttle_key("2001:db8:1:1::5")
    assert throttle_key("::ffff:192.0.2.7") == throttle_key("192.0.2.7") == "192.0.2.7"


def test_rotating_ipv6_addresses_in_one_64_is_refused_like_one_address():
    """Failures from many addresses of one /64 reach the pair limit."""
    throttle = AuthThrottle()
    for n in range(8):
        throttle.failed(f"2001:db8:1:1::{n + 1:x}", "billing", 100.0)
    assert throttle.refused("2001:db8:1:1::abcd", "billing", 100.0)
    assert not throttle.refused("2001:db8:1:2::1", "billing", 100.0)


def test_a_check_under_way_counts_until_it_ends():
    """begin() counts like a failure for refused()/delay(); end() takes it back."""
    throttle = AuthThrottle()
    for _ in range(8):
        throttle.begin("192.0.2.1", "billing")
    assert throttle.refused("192.0.2.1", "billing", 0.0)
    for _ in range(8):
        throttle.end("192.0.2.1", "billing")
    assert not throttle.refused("192.0.2.1", "billing", 0.0)
    assert throttle.counts("192.0.2.1", "billing", 0.0) == (0, 0)
