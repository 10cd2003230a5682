"""`audit summary` aggregation and rendering, and the search/show views, pure (no files, no sockets)."""

from __future__ import annotations

import datetime as dt
import itertools
import re

from gateway.audit import report as audit_report
from gateway.audit import report_html, report_text
from gateway.audit import view as audit_view
from gateway.audit.report import TimeSeries, TopCounter
from gateway.testing import audit_sample

START = dt.datetime(2026, 11, 27, 20, tzinfo=dt.UTC)


def sample(count: int = 200) -> list[dict]:
    events = []
    for session in audit_sample.sessions(count, START):
        for event in session:
            events.append(
                {**event, "timestamp": event["timestamp"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
            )
    return events


def test_summary_counts_match_the_records():
    """Outcome, upstream and rule counts add up to the message.result records given."""
    events = sample()
    results = [e for e in events if e["event"] == "message.result"]
    summary = audit_report.consume(events)
    assert summary.messages == len(results) == sum(summary.by_outcome.values())
    assert summary.sessions == len(results)
    assert summary.by_outcome["relayed"] == sum(1 for r in results if r["outcome"] == "relayed")
    assert sum(summary.by_upstream.values()) == len(results)
    assert summary.by_rule["blocked-domain"] == summary.by_outcome["rejected"]


def test_top_counter_keeps_at_most_capacity_keys():
    """Many distinct senders do not grow memory; the heavy hitters stay on top."""
    counter = TopCounter(capacity=50)
    for n in range(10000):
        counter.add(f"sender{n}@example.com")
        counter.add("heavy@example.com")
    assert len(counter.counts) == 50 and counter.approximate
    assert counter.top(1)[0][0] == "heavy@example.com"


def test_time_series_widens_its_buckets_to_stay_bounded():
    """A year of per-second events ends in at most `limit` buckets, none lost."""
    series = TimeSeries(limit=100)
    for hour in range(24 * 365):
        series.add(START + dt.timedelta(hours=hour, seconds=hour % 60), "relayed")
    assert len(series.buckets) <= 100 and series.step == 7 * 86400
    assert sum(sum(c.values()) for c in series.buckets.values()) == 24 * 365


def test_series_fills_gaps_and_limits_bars():
    """The chart gets consecutive buckets, no more than asked for."""
    series = TimeSeries()
    series.add(START, "relayed")
    series.add(START + dt.timedelta(hours=5), "rejected")
    step, buckets = series.series(bars=60)
    assert len(buckets) <= 60 and all(
        b - a == step for (a, _), (b, _) in itertools.pairwise(buckets)
    )


def test_axis_ticks_are_round_numbers_reaching_the_top():
    """Grid lines at 0, 5, 10, 15 for a tallest bar of 11."""
    assert report_html.axis_ticks(11) == [0, 5, 10, 15]
    assert report_html.axis_ticks(0) == [0, 1]


def test_terminal_summary_draws_a_bar_per_row():
    """Each count row ends with a bar whose length follows the count."""
    text = report_text.render_text(audit_report.consume(sample()), width=80)
    rows = text.split("by outcome\n", 1)[1].split("\n\n", 1)[0].splitlines()
    bars = {row.split()[0]: len(re.sub(r"[^█▏▎▍▌▋▊▉]", "", row)) for row in rows}
    assert bars["relayed"] > bars["deferred"] > 0


def test_terminal_summary_without_unicode_uses_hashes():
    """A terminal that cannot show block characters gets ASCII bars."""
    text = report_text.render_text(audit_report.consume(sample(20)), width=80, unicode=False)
    assert "#" in text and "█" not in text


def test_html_escapes_everything_that_came_from_the_log():
    """A sender chosen by a client cannot inject markup into the page."""
    events = sample(5)
    evil = '<script>alert("x")</script>@example.com'
    for event in events:
        if event["event"] == "message.result":
            event["sender"] = evil
    page = report_html.render_html(audit_report.consume(events), ["a<b>.jsonl"], START)
    assert "<script>" not in page and "&lt;script&gt;" in page and "a&lt;b&gt;.jsonl" in page


def test_html_is_self_contained():
    """No scripts, no external stylesheets, images or fonts: one file that opens anywhere."""
    page = report_html.render_html(audit_report.consume(sample()), ["audit.jsonl"], START)
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 2
    assert not re.search(r"<script|<link|src=|url\(|@import", page)


def test_empty_window_renders_without_charts():
    """No messages in the window: the page says so instead of drawing empty axes."""
    window = audit_report.Window(START, START + dt.timedelta(seconds=1))
    page = report_html.render_html(audit_report.consume(sample(5), window), [], START)
    assert "no messages in this window" in page


def test_search_rows_are_aligned_and_clipped_to_their_columns():
    """Every row is cut into the same column widths, so columns line up."""
    table = audit_view.MessageTable.fitting(120)
    results = [e for e in sample(30) if e["event"] == "message.result"]
    results[0]["sender"] = "a-very-long-sender-name-that-goes-on@subdomain.example.com"
    rows = [table.header()] + [table.row(r) for r in results]
    start = table.header().index("outcome")
    assert all(row[start - 2 : start] == "  " for row in rows)
    assert "…" in rows[1]


def test_timeline_lists_each_event_with_its_offset_and_fields():
    """show: one headline per event with +seconds from the first, then its fields."""
    session = sample(1)
    text = audit_view.timeline(
        session[0]["session_id"], [("audit.jsonl", n, e) for n, e in enumerate(session, 1)]
    )
    assert "audit.jsonl (lines 1-3)" in text
    heads = [line for line in text.splitlines() if line[:2].isdigit()]
    assert [h.split()[2] for h in heads] == ["session.opened", "message.result", "session.closed"]
    assert heads[0].split()[1] == "+0.000s"
    assert "seq" not in text.split()


def _hostile() -> list[dict]:
    events = sample(3)
    for event in events:
        if event["event"] == "message.result":
            event["sender"] = "evil\x1b]0;owned\x07\x1b[2J@example.com"
            event["helo"] = "\u202eexample.com"
    return events


def test_terminal_views_show_control_characters_instead_of_obeying_them():
    """A client's ESC sequence or bidi override in the log reaches the terminal as text, in every view."""
    events = _hostile()
    result = next(e for e in events if e["event"] == "message.result")
    outputs = [
        audit_view.MessageTable.fitting(300).row(result),
        audit_view.timeline(
            result["session_id"], [("a.jsonl", n, e) for n, e in enumerate(events[:3], 1)]
        ),
        report_text.render_text(audit_report.consume(events), width=200),
    ]
    for text in outputs:
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "\\u001b]0;owned\\u0007" in outputs[0]


def test_summary_counts_password_and_xoauth2_per_app_and_upstream():
    """The migration report: messages that went with password AUTH and with XOAUTH2."""
    base = {"event": "message.result", "timestamp": "2026-11-27T20:00:00.000000Z"}
    records = [
        {
            **base,
            "outcome": "relayed",
            "upstream": "m365",
            "app": "crm",
            "tls_version": "TLSv1.3",
            "auth_user": "relay@corp.example",
        },
        {
            **base,
            "outcome": "relayed",
            "upstream": "m365",
            "app": "crm",
            "tls_version": "TLSv1.3",
            "auth_user": "relay@corp.example",
            "oauth_grant": "client_credentials",
        },
        {
            **base,
            "outcome": "relayed",
            "upstream": "m365",
            "app": "crm",
            "tls_version": "TLSv1.3",
            "auth_user": "relay@corp.example",
            "oauth_grant": "client_credentials",
        },
        {**base, "outcome": "rejected", "upstream": "m365", "app": "crm"},  # no session
    ]
    summary = audit_report.consume(records)
    assert dict(summary.by_auth) == {"crm -> m365: password": 1, "crm -> m365: xoauth2": 2}
    text = report_text.render_text(summary)
    assert "upstream AUTH by app (password or XOAUTH2)" in text and "crm -> m365: xoauth2" in text
