"""Unit tests of gateway/policy.py: which rule a recipient matches and the decision it gets."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from gateway.config.model import Config
from gateway.config.toml import parse
from gateway.policy.rules import client_allowed, decide, parse_client
from gateway.smtp import replies
from gateway.smtp.address import Address

V4 = ipaddress.ip_address("10.1.2.3")
OTHER_V4 = ipaddress.ip_address("192.0.2.7")
V6 = ipaddress.ip_address("2001:db8::5")
SENDER = Address("app@billing.example.com")
RECIPIENT = Address("customer@example.net")


def config(*rules: dict[str, Any], listener: dict[str, Any] | None = None) -> Config:
    """A config with two upstreams (a, b) and these rules, in order."""
    return parse(
        {
            "listener": listener or {},
            "upstreams": {"a": {"host": "a.example"}, "b": {"host": "b.example", "port": 465}},
            "rules": list(rules),
        },
        "test",
    )


def rule_for(
    cfg: Config, client: Any = V4, sender: Address = SENDER, recipient: Address = RECIPIENT
) -> str | None:
    """The name of the rule that decides for this client, sender and recipient."""
    return decide(cfg, client, sender, recipient).rule_name


# --- order and outcome ------------------------------------------------------------------------


def test_first_match_wins() -> None:
    """Of several matching rules, the first in file order decides."""
    cfg = config(
        {"name": "one", "action": "relay", "upstream": "a"},
        {"name": "two", "action": "relay", "upstream": "b"},
    )
    decision = decide(cfg, V4, SENDER, RECIPIENT)
    assert (decision.action, decision.rule_name, decision.upstream) == (
        "relay",
        "one",
        cfg.upstreams["a"],
    )


def test_later_rule_when_earlier_does_not_match() -> None:
    """A rule whose condition fails is skipped and the next one is tried."""
    cfg = config(
        {"name": "org", "recipients": ["*@example.org"], "action": "relay", "upstream": "a"},
        {"name": "net", "recipients": ["*@example.net"], "action": "relay", "upstream": "b"},
    )
    decision = decide(cfg, V4, SENDER, RECIPIENT)
    assert (decision.rule_name, decision.upstream) == ("net", cfg.upstreams["b"])


def test_relay_decision_has_no_reply() -> None:
    """A relay decision carries the upstream and no refusal."""
    decision = decide(
        config({"name": "r", "action": "relay", "upstream": "a"}), V4, SENDER, RECIPIENT
    )
    assert decision.reply is None


def test_no_rule_is_550_571() -> None:
    """A recipient no rule matches is refused with 550 5.7.1 and no rule name."""
    decision = decide(
        config(
            {"name": "org", "recipients": ["*@example.org"], "action": "relay", "upstream": "a"}
        ),
        V4,
        SENDER,
        RECIPIENT,
    )
    assert (decision.action, decision.rule, decision.reply) == ("reject", None, replies.NO_RULE)
    assert (decision.reply.code, decision.reply.enhanced) == (550, "5.7.1")


def test_no_rules_at_all_refuses() -> None:
    """With no rules every recipient is refused: the gateway is closed by default."""
    assert decide(config(), V4, SENDER, RECIPIENT).reply == replies.NO_RULE


def test_reject_rule() -> None:
    """A matching reject rule refuses (550 5.7.1, naming the rule), even if a relay rule follows."""
    cfg = config(
        {"name": "blocked", "recipients": ["*@example.net"], "action": "reject"},
        {"name": "all", "action": "relay", "upstream": "a"},
    )
    decision = decide(cfg, V4, SENDER, RECIPIENT)
    assert (decision.action, decision.rule_name, decision.upstream) == ("reject", "blocked", None)
    assert decision.reply is not None
    assert (decision.reply.code, decision.reply.enhanced) == (
        550,
        "5.7.1",
    ) and "blocked" in decision.reply.text


# --- clients ----------------------------------------------------------------------------------


def test_client_in_v4_cidr() -> None:
    """A client inside a rule's IPv4 network matches it; one outside does not."""
    cfg = config({"name": "lan", "clients": ["10.1.0.0/16"], "action": "relay", "upstream": "a"})
    assert rule_for(cfg, V4) == "lan" and rule_for(cfg, OTHER_V4) is None


def test_client_in_v6_cidr() -> None:
    """A client inside a rule's IPv6 network matches it; one outside does not."""
    cfg = config({"name": "v6", "clients": ["2001:db8::/64"], "action": "relay", "upstream": "a"})
    assert rule_for(cfg, V6) == "v6" and rule_for(cfg, ipaddress.ip_address("2001:db9::5")) is None


def test_v4_client_does_not_match_v6_network() -> None:
    """An IPv4 client never matches an IPv6 network (no accidental all-match across families)."""
    cfg = config({"name": "v6", "clients": ["::/0"], "action": "relay", "upstream": "a"})
    assert rule_for(cfg, V4) is None


def test_v4_mapped_client_matches_v4_network() -> None:
    """A client seen as ::ffff:10.1.2.3 (dual-stack socket) matches an IPv4 rule, 10.1.0.0/16."""
    cfg = config({"name": "lan", "clients": ["10.1.0.0/16"], "action": "relay", "upstream": "a"})
    assert rule_for(cfg, parse_client("::ffff:10.1.2.3")) == "lan"


def test_parse_client_unmaps_v4_mapped() -> None:
    """parse_client turns an IPv4-mapped IPv6 address into the IPv4 address."""
    assert parse_client("::ffff:192.0.2.1") == ipaddress.ip_address("192.0.2.1")


def test_parse_client_drops_zone() -> None:
    """parse_client ignores an IPv6 zone identifier."""
    assert parse_client("fe80::1%eth0") == ipaddress.ip_address("fe80::1")


def test_parse_client_refuses_garbage() -> None:
    """parse_client raises ValueError for text that is not an IP address."""
    with pytest.raises(ValueError):
        parse_client("localhost")


def test_allowed_clients() -> None:
    """client_allowed follows listener.allowed_clients, IPv4-mapped clients included."""
    cfg = config(listener={"allowed_clients": ["10.1.0.0/16", "::1/128"]})
    assert client_allowed(cfg, V4) and client_allowed(cfg, parse_client("::ffff:10.1.9.9"))
    assert client_allowed(cfg, ipaddress.ip_address("::1"))
    assert not client_allowed(cfg, OTHER_V4) and not client_allowed(cfg, V6)


def test_default_allowed_clients_are_loopback() -> None:
    """By default only loopback clients are allowed."""
    cfg = config()
    assert client_allowed(cfg, ipaddress.ip_address("127.0.0.1"))
    assert client_allowed(cfg, ipaddress.ip_address("::1"))
    assert not client_allowed(cfg, V4)


# --- sender and recipient globs ---------------------------------------------------------------


def test_sender_glob() -> None:
    """A sender glob matches the envelope sender."""
    cfg = config(
        {
            "name": "billing",
            "senders": ["*@billing.example.com"],
            "action": "relay",
            "upstream": "a",
        }
    )
    assert rule_for(cfg, sender=SENDER) == "billing"
    assert rule_for(cfg, sender=Address("app@other.example.com")) is None


def test_sender_glob_does_not_match_suffix_lookalike() -> None:
    """`*@billing.example.com` does not match a domain that merely ends the same way."""
    cfg = config(
        {
            "name": "billing",
            "senders": ["*@billing.example.com"],
            "action": "relay",
            "upstream": "a",
        }
    )
    assert rule_for(cfg, sender=Address("x@evilbilling.example.com")) is None
    assert rule_for(cfg, sender=Address("x@billing.example.com.evil")) is None


def test_globs_case_insensitive() -> None:
    """Globs match regardless of case on either side."""
    cfg = config(
        {
            "name": "r",
            "senders": ["*@Billing.Example.COM"],
            "recipients": ["CUSTOMER@*"],
            "action": "relay",
            "upstream": "a",
        }
    )
    assert (
        rule_for(
            cfg,
            sender=Address("App@BILLING.example.com"),
            recipient=Address("customer@Example.NET"),
        )
        == "r"
    )


def test_null_sender_matches_empty_glob() -> None:
    """The null sender <> is matched as the empty string: `*` matches it, `*@*` does not."""
    cfg = config(
        {"name": "bounces", "senders": ["*@*"], "action": "reject"},
        {"name": "null", "senders": ["*"], "action": "relay", "upstream": "a"},
    )
    assert rule_for(cfg, sender=Address("")) == "null"


def test_null_sender_not_matched_by_domain_glob() -> None:
    """A domain glob does not match the null sender."""
    cfg = config(
        {
            "name": "billing",
            "senders": ["*@billing.example.com"],
            "action": "relay",
            "upstream": "a",
        }
    )
    assert rule_for(cfg, sender=Address("")) is None


def test_glob_question_mark_is_one_character() -> None:
    """`?` matches exactly one character."""
    cfg = config(
        {"name": "r", "recipients": ["user?@a.example"], "action": "relay", "upstream": "a"}
    )
    assert rule_for(cfg, recipient=Address("user1@a.example")) == "r"
    assert rule_for(cfg, recipient=Address("user12@a.example")) is None


def test_glob_brackets_are_literal_so_address_literals_match() -> None:
    """`[...]` is not a character class: `*@[10.0.0.1]` matches that address literal and not `x@1`."""
    cfg = config({"name": "r", "recipients": ["*@[10.0.0.1]"], "action": "relay", "upstream": "a"})
    assert rule_for(cfg, recipient=Address("x@[10.0.0.1]")) == "r"
    assert rule_for(cfg, recipient=Address("x@1")) is None


def test_all_conditions_must_hold() -> None:
    """A rule with client, sender and recipient conditions matches only when all three hold."""
    cfg = config(
        {
            "name": "r",
            "clients": ["10.1.0.0/16"],
            "senders": ["*@billing.example.com"],
            "recipients": ["*@example.net"],
            "action": "relay",
            "upstream": "a",
        }
    )
    assert rule_for(cfg) == "r"
    assert rule_for(cfg, client=OTHER_V4) is None
    assert rule_for(cfg, sender=Address("a@other.example")) is None
    assert rule_for(cfg, recipient=Address("a@example.org")) is None


def test_recipient_glob_sees_text_as_written() -> None:
    """Recipients are matched on the text as written: a percent hack is not reinterpreted."""
    cfg = config(
        {"name": "net", "recipients": ["*@example.net"], "action": "relay", "upstream": "a"}
    )
    assert rule_for(cfg, recipient=Address("victim%evil.example@example.net")) == "net"
    assert rule_for(cfg, recipient=Address("victim@evil.example")) is None


def test_decision_is_per_recipient() -> None:
    """Two recipients of one transaction can get different decisions."""
    cfg = config(
        {"name": "net", "recipients": ["*@example.net"], "action": "relay", "upstream": "a"}
    )
    assert decide(cfg, V4, SENDER, Address("a@example.net")).action == "relay"
    assert decide(cfg, V4, SENDER, Address("a@example.org")).action == "reject"


def test_null_sender_glob_matches_only_the_null_sender() -> None:
    """``senders = ["<>"]`` matches bounces (MAIL FROM:<>) and nothing else."""
    cfg = parse(
        {
            "upstreams": {"u": {"host": "h"}},
            "rules": [{"senders": ["<>"], "action": "relay", "upstream": "u"}],
        },
        "t",
    )
    client = parse_client("127.0.0.1")
    assert decide(cfg, client, Address(""), Address("c@d.example")).action == "relay"
    assert decide(cfg, client, Address("a@b.example"), Address("c@d.example")).action == "reject"
