"""Time windows and message filters for `audit search`, pure."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.audit.query import MessageFilter, Window, final_reply, parse_time, peek, reasons
from gateway.errors import UsageError

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


def result(**fields) -> dict:
    base = {
        "timestamp": "2026-11-28T11:30:00.000001Z",
        "event": "message.result",
        "session_id": "3fa2b1c0d9e8f7a6",
        "client_ip": "10.1.2.3",
        "sender": "App@Example.com",
        "rules": ["net"],
        "outcome": "relayed",
        "upstream": "submission",
        "reply": "250 2.0.0 OK",
        "recipients": [
            {
                "address": "ops@example.net",
                "result": "relayed",
                "reply": "250 2.0.0 OK",
                "rule": "net",
            }
        ],
    }
    base.update(fields)
    return base


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2h", NOW - dt.timedelta(hours=2)),
        ("30m", NOW - dt.timedelta(minutes=30)),
        ("7d", NOW - dt.timedelta(days=7)),
        ("90s", NOW - dt.timedelta(seconds=90)),
        ("2w", NOW - dt.timedelta(weeks=2)),
    ],
)
def test_relative_times_count_back_from_now(text, expected):
    """An age with a unit (s, m, h, d, w) is that long before now."""
    assert parse_time("--since", text, NOW) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2026-11-28", dt.datetime(2026, 11, 28, tzinfo=dt.UTC)),
        ("2026-11-28T13:00", dt.datetime(2026, 11, 28, 13, tzinfo=dt.UTC)),
        ("2026-11-28T13:00:00Z", dt.datetime(2026, 11, 28, 13, tzinfo=dt.UTC)),
        ("2026-11-28T14:00+01:00", dt.datetime(2026, 11, 28, 13, tzinfo=dt.UTC)),
    ],
)
def test_absolute_times_are_utc_unless_a_zone_is_given(text, expected):
    """ISO dates and times; no zone means UTC, like the audit's own timestamps."""
    assert parse_time("--since", text, NOW) == expected


def test_bad_time_names_the_option_and_the_forms_expected():
    """A time that is neither ISO nor an age is a usage error saying what would do."""
    with pytest.raises(
        UsageError, match=r"--until: found 'yesterday', expected an ISO date .* or an age"
    ):
        parse_time("--until", "yesterday", NOW)


def test_window_includes_since_and_excludes_until():
    """[since, until): a record exactly at --until belongs to the next window."""
    window = Window(NOW - dt.timedelta(hours=1), NOW)
    assert window.contains({"timestamp": "2026-11-28T11:00:00Z"})
    assert not window.contains({"timestamp": "2026-11-28T12:00:00Z"})
    assert not window.contains({"timestamp": "not a time"})


def test_empty_filter_matches_every_message_result_and_nothing_else():
    """Only message.result rows are search results."""
    assert MessageFilter().matches(result())
    assert not MessageFilter().matches({"event": "session.opened"})


@pytest.mark.parametrize(
    "option,value,hit",
    [
        ("senders", ["app@example.com"], True),  # case does not matter
        ("senders", ["*@example.com"], True),
        ("senders", ["<app@example.com>"], True),  # angle brackets as in SMTP
        ("senders", ["other@example.com"], False),
        ("recipients", ["*@example.net"], True),
        ("recipients", ["ops@example.org"], False),
        ("clients", ["10.0.0.0/8"], True),
        ("clients", ["10.1.2.3"], True),
        ("clients", ["192.168.0.0/16"], False),
        ("rules", ["NET"], True),
        ("rules", ["other"], False),
        ("upstreams", ["submission"], True),
        ("upstreams", ["smtps"], False),
        ("outcomes", ["relayed"], True),
        ("outcomes", ["deferred", "rejected"], False),
        ("sessions", ["3fa2*"], True),
        ("sessions", ["3fa2b1c0d9e8f7a6"], True),
        ("sessions", ["ffff*"], False),
    ],
)
def test_each_filter_narrows(option, value, hit):
    """Each option matches its field; several values of one option mean any of them."""
    assert MessageFilter.build(**{option: value}).matches(result()) is hit


def test_outcome_that_is_not_a_word_is_a_usage_error():
    """--outcome takes a word (relay mode's four, or another delivery mode's); not a pattern or a typo'd list."""
    with pytest.raises(
        UsageError, match=r"--outcome: found 'relayed,rejected', expected an outcome such as"
    ):
        MessageFilter.build(outcomes=["relayed,rejected"])
    assert MessageFilter.build(outcomes=["delivered"]).matches(result(outcome="delivered"))


def test_upstream_and_session_also_match_per_recipient_and_origin_fields():
    """A message delivered later (queue) names its upstream per recipient and its origin session."""
    later = result(
        session_id=None,
        origin_session_id="3fa2b1c0d9e8f7a6",
        upstream=None,
        recipients=[{"address": "a@example.net", "result": "relayed", "upstream": "smtps"}],
    )
    assert MessageFilter.build(upstreams=["smtps"], sessions=["3fa2*"]).matches(later)


def test_bad_client_network_is_a_usage_error():
    """--client must be an address or a network."""
    with pytest.raises(UsageError, match=r"--client: found 'mail.example', expected an IP address"):
        MessageFilter.build(clients=["mail.example"])


def test_reasons_prefer_recipient_replies_with_the_rule_or_limit():
    """A policy refusal reads as its reply plus the rule; a deferral without replies as its error."""
    refused = result(
        outcome="rejected",
        reply=None,
        recipients=[
            {
                "address": "x@blocked.example",
                "result": "rejected",
                "reply": "550 5.7.1 Relay access denied",
                "rule": "blocked",
            }
        ],
    )
    assert reasons(refused) == ["550 5.7.1 Relay access denied (rule blocked)"]
    assert final_reply(refused) == "550 5.7.1 Relay access denied"
    deferred = result(
        outcome="deferred", reply=None, recipients=[], upstream_error="cannot connect"
    )
    assert reasons(deferred) == ["cannot connect"]


def test_peek_reads_time_and_event_from_the_head_of_a_line():
    """The gateway's own layout is read without a JSON parser; any other layout says 'cannot tell'."""
    line = '{"timestamp":"2026-11-28T11:30:00.5Z","event":"session.opened","session_id":"ab"}'
    assert peek(line) == (
        dt.datetime(2026, 11, 28, 11, 30, 0, 500000, tzinfo=dt.UTC),
        "session.opened",
    )
    assert peek('{"event":"session.opened","timestamp":"2026-11-28T11:30:00Z"}') is None


def test_window_may_contain_rejects_only_lines_surely_outside():
    """The cheap check never drops a line it cannot read; the full check decides those."""
    window = Window(NOW - dt.timedelta(hours=1), NOW)
    assert window.may_contain('{"timestamp":"2026-11-28T11:30:00Z","event":"message.result"}')
    assert not window.may_contain('{"timestamp":"2026-11-28T09:00:00Z","event":"message.result"}')
    assert window.may_contain('{"event":"message.result","timestamp":"2026-11-28T09:00:00Z"}')
