"""Provider budgets in [upstreams.NAME]: pace, max_recipients_per_day, presets by host."""

from __future__ import annotations

import datetime

from gateway.config.model import Rate
from gateway.config.toml import parse
from tests.config.documents import SOURCE, document, problem_at, with_upstream


def upstream(**keys: object):  # type: ignore[no-untyped-def]
    return parse(document(upstreams={"provider": keys}), SOURCE).upstreams["provider"]


def test_the_m365_preset_carries_its_budget() -> None:
    """provider = "m365": 30 messages a minute, 10,000 recipients a day, 3 connections per
    mailbox; the upstream's total stays the general 10."""
    m365 = upstream(provider="m365", username="app@example.com", password_env="PW")
    assert m365.pace == Rate(30, 60.0, "30/minute")
    assert m365.max_recipients_per_day == 10000
    assert (m365.max_connections_per_identity, m365.max_connections) == (3, 10)


def test_google_hosts_carry_theirs() -> None:
    """smtp.gmail.com 2,000 messages a day per user; smtp-relay.gmail.com 10,000."""
    assert upstream(host="smtp.gmail.com").pace == Rate(2000, 86400.0, "2000/day")
    relay = upstream(host="smtp-relay.gmail.com")
    assert relay.pace == Rate(10000, 86400.0, "10000/day")
    assert relay.max_recipients_per_day is None


def test_explicit_keys_override_the_preset() -> None:
    """pace, max_recipients_per_day, max_connections(_per_identity) as written win."""
    m365 = upstream(
        provider="m365",
        pace="20/minute",
        max_recipients_per_day=5000,
        max_connections=2,
        max_connections_per_identity=1,
    )
    assert (
        m365.pace,
        m365.max_recipients_per_day,
        m365.max_connections,
        m365.max_connections_per_identity,
    ) == (Rate(20, 60.0, "20/minute"), 5000, 2, 1)


def test_other_hosts_have_no_per_identity_cap_unless_given() -> None:
    """No preset: max_connections_per_identity is None; a value out of range is a problem."""
    assert parse(with_upstream(), SOURCE).upstreams["provider"].max_connections_per_identity is None
    found = problem_at(
        with_upstream(max_connections_per_identity=0),
        "upstreams.provider.max_connections_per_identity",
    )
    assert "an integer from 1 to 10000" in str(found)


def test_other_hosts_have_no_budget_unless_given() -> None:
    """An unknown host is not paced; pace = "3/second" paces it."""
    assert parse(with_upstream(), SOURCE).upstreams["provider"].pace is None
    assert parse(with_upstream(pace="3/second"), SOURCE).upstreams["provider"].pace == Rate(
        3, 1.0, "3/second"
    )


def test_a_bad_pace_names_the_key_and_the_form() -> None:
    """pace must be COUNT/UNIT."""
    found = problem_at(with_upstream(pace="fast"), "upstreams.provider.pace")
    assert "30/minute" in str(found)
    problem_at(with_upstream(max_recipients_per_day=0), "upstreams.provider.max_recipients_per_day")


def test_the_client_secret_expiry_is_a_date() -> None:
    """oauth_client_secret_expires = 2027-06-30: midnight UTC of that day."""
    date = datetime.date(2027, 6, 30)
    expected = datetime.datetime(2027, 6, 30, tzinfo=datetime.UTC).timestamp()
    got = parse(with_upstream(oauth_client_secret_expires=date), SOURCE).upstreams["provider"]
    assert got.oauth_client_secret_expires == expected
    problem_at(
        with_upstream(oauth_client_secret_expires="soon"),
        "upstreams.provider.oauth_client_secret_expires",
    )
