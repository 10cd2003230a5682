"""Provider budgets end to end: pacing, relay mode's 451 4.7.1, throttling replies, queue mode."""

from __future__ import annotations

import smtplib
import time

import pytest

from tests.conftest import upstream_table
from tests.integration.queueing import message, queue_document

BODY = b"Subject: paced\r\n\r\nbody\r\n"


def routed(*upstreams: tuple[str, dict]) -> dict:
    return {
        "listener": {"listen": "127.0.0.1:0", "shutdown_grace": 2},
        "upstreams": dict(upstreams),
        "rules": [{"name": "all", "action": "relay", "upstream": [n for n, _ in upstreams]}],
    }


def send(port: int, sender: str = "app@example.com") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        client.mail(sender)
        code, text = client.rcpt("ops@example.net")
        if code != 250:
            return code, text
        return client.data(BODY)


def test_relay_mode_over_the_pace_answers_451_4_7_1_naming_the_budget(
    make_upstream, start_gateway, ca
):
    """pace = "2/minute": the third message in the minute is refused 4xx, never 5xx."""
    up = make_upstream()
    gw = start_gateway(routed(("paced", upstream_table(up, ca.ca_file, pace="2/minute"))))
    assert send(gw.port)[0] == 250
    assert send(gw.port)[0] == 250
    code, text = send(gw.port)
    assert code == 451
    assert text.startswith(b"4.7.1") and b"paced" in text and b"2/minute" in text
    assert len(up.wait_for(2)) == 2 and up.connections == 1


def test_a_spent_budget_fails_over_to_the_next_upstream(make_upstream, start_gateway, ca):
    """The first upstream's budget is spent: the backup, which has budget left, takes it."""
    primary, backup = make_upstream(), make_upstream()
    gw = start_gateway(
        routed(
            ("primary", upstream_table(primary, ca.ca_file, pace="1/minute")),
            ("backup", upstream_table(backup, ca.ca_file)),
        )
    )
    assert send(gw.port)[0] == 250
    assert send(gw.port)[0] == 250
    assert len(primary.wait_for(1)) == 1 and len(backup.wait_for(1)) == 1
    second = gw.audit.wait_for("message.result", 2)[1]
    assert second["upstream"] == "backup"
    assert "pace 1/minute" in second["upstreams_tried"][0]["reason"]


def test_sender_identities_are_paced_separately(make_upstream, start_gateway, ca):
    """username = "$sender" (XOAUTH2 per mailbox) is shown here by the pace per sender: the
    budget of one sender spent leaves another's whole."""
    up = make_upstream()
    gw = start_gateway(routed(("paced", upstream_table(up, ca.ca_file, pace="1/minute"))))
    ledger = gw.gateway.ledger
    config = gw.gateway.config.upstreams["paced"]
    per_sender = type(config)(**{**config.__dict__, "username": "$sender"})
    assert ledger.take(per_sender, "a@example.com", 1, 1, 0.0) is None
    assert ledger.take(per_sender, "a@example.com", 1, 1, 1.0) is not None
    assert ledger.take(per_sender, "b@example.com", 1, 1, 1.0) is None


def test_a_throttling_reply_pauses_the_identity_and_relay_answers_451(
    make_upstream, start_gateway, ca
):
    """M365's 432 4.3.2 at MAIL: passed on (a 4xx), upstream.throttled, and while paused
    the next message is answered 451 4.7.1 without asking the upstream."""
    up = make_upstream()
    up.script.mail = "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"
    gw = start_gateway(routed(("m365", upstream_table(up, ca.ca_file))))
    code, text = send(gw.port)
    assert (code, text[:5]) == (432, b"4.3.2")
    [event] = gw.audit.wait_for("upstream.throttled")
    assert event["upstream"] == "m365" and event["paused_s"] == 60.0
    assert "sender thread limit exceeded" in event["reply"]
    connections = up.connections
    code, text = send(gw.port)
    assert code == 451 and b"throttling" in text
    assert up.connections == connections  # not asked while paused
    metrics = gw.gateway.metrics.render().decode()
    assert 'mailgate_upstream_throttle_pauses_total{upstream="m365"} 1.0' in metrics


def test_quota_554_5_2_0_is_never_a_5xx_for_the_app(make_upstream, start_gateway, ca):
    """SubmissionQuotaExceededException after the data: 451 4.7.1, the identity paused."""
    up = make_upstream()
    up.script.data = (
        "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; "
        "Failed to process message due to a permanent exception"
    )
    gw = start_gateway(routed(("m365", upstream_table(up, ca.ca_file))))
    code, text = send(gw.port)
    assert (code, text[:5]) == (451, b"4.7.1")
    gw.audit.wait_for("upstream.throttled")


def test_queue_mode_drains_a_burst_at_the_pace_with_nothing_bounced(
    make_upstream, start_gateway, ca, tmp_path
):
    """Six queued messages at 3/second: all 250 at once, delivered three per second, none
    counted as a failed attempt, nothing bounced or dead."""
    up = make_upstream()
    arrived: list[float] = []
    up.on_message = lambda _: arrived.append(time.monotonic())
    document = queue_document(upstream_table(up, ca.ca_file, pace="3/second"), str(tmp_path))
    gw = start_gateway(document)
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        for number in range(6):
            assert client.sendmail("app@example.com", ["ops@example.net"], message(number)) == {}
    assert len(up.wait_for(6)) == 6
    arrived.sort()
    assert arrived[3] - arrived[0] >= 0.8, "more than the pace within one second"
    results = gw.audit.wait_for("message.result", 6)
    assert {r["outcome"] for r in results} == {"delivered"}
    deferred = gw.audit.named("message.deferred")
    assert deferred and all(d.get("paced") for d in deferred)
    assert all(d["attempts"] == 0 for d in deferred)
    assert not gw.audit.named("message.dead") and not gw.audit.named("message.bounced")


def test_queue_mode_waits_out_a_throttling_pause_and_resumes(
    make_upstream, start_gateway, ca, tmp_path, monkeypatch
):
    """432 4.3.2 pauses the identity; when the provider lets it, the queued message goes,
    its throttled round not counted as an attempt."""
    monkeypatch.setattr("gateway.policy.budgets.PAUSE_FIRST", 1.0)
    up = make_upstream()
    up.script.mail = "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"
    gw = start_gateway(queue_document(upstream_table(up, ca.ca_file), str(tmp_path)))
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        assert client.sendmail("app@example.com", ["ops@example.net"], message(1)) == {}
    gw.audit.wait_for("upstream.throttled")
    [deferred] = gw.audit.wait_for("message.deferred")
    assert deferred["paced"] is True and deferred["attempts"] == 0
    up.script.mail = None
    assert len(up.wait_for(1)) == 1
    [result] = gw.audit.wait_for("message.result")
    assert result["outcome"] == "delivered"


@pytest.mark.parametrize("budget", ["pace", "recipients_per_day"])
def test_budget_metrics_show_used_and_remaining(make_upstream, start_gateway, ca, budget):
    """Used and remaining per upstream, without a sender label."""
    up = make_upstream()
    table = upstream_table(up, ca.ca_file, pace="5/minute", max_recipients_per_day=100)
    gw = start_gateway(routed(("paced", table)))
    assert send(gw.port)[0] == 250
    metrics = gw.gateway.metrics.render().decode()
    left = 4 if budget == "pace" else 99
    assert f'mailgate_upstream_budget_used{{budget="{budget}",upstream="paced"}} 1.0' in metrics
    assert (
        f'mailgate_upstream_budget_remaining{{budget="{budget}",upstream="paced"}} {left}.0'
        in metrics
    )


def test_queue_mode_refuses_452_4_3_1_when_the_backlog_outlasts_max_age(
    make_upstream, start_gateway, ca, tmp_path
):
    """1/hour with max_age 600 s: once a message waits for a slot an hour away, new mail for
    that sender gets 452 4.3.1 instead of a promise the queue cannot keep."""
    up = make_upstream()
    document = queue_document(
        upstream_table(up, ca.ca_file, pace="1/hour"), str(tmp_path), max_age=600
    )
    gw = start_gateway(document)
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        assert client.sendmail("app@example.com", ["ops@example.net"], message(1)) == {}
        assert client.sendmail("app@example.com", ["ops@example.net"], message(2)) == {}
    assert len(up.wait_for(1)) == 1
    [deferred] = gw.audit.wait_for("message.deferred")
    assert deferred["paced"] is True
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo()
        client.mail("app@example.com")
        code, text = client.rcpt("ops@example.net")
        assert (code, text[:5]) == (452, b"4.3.1")
        client.rset()
        client.mail("other@example.com")  # the upstream's AUTH user is the identity: same budget
        assert client.rcpt("ops@example.net")[0] == 452
    assert len(up.messages) == 1


def test_one_recipients_greylisting_does_not_pause_the_sender(make_upstream, start_gateway, ca):
    """450 4.7.1 to one recipient (greylisting) is that recipient's answer: the next message of
    the same sender, to someone else, is relayed; no upstream.throttled."""
    up = make_upstream()
    up.script.rcpt["grey@example.net"] = (
        "450 4.7.1 <grey@example.net>: Recipient address rejected: Greylisted, try again"
    )
    gw = start_gateway(routed(("smarthost", upstream_table(up, ca.ca_file))))
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo("app.test")
        client.mail("app@example.com")
        assert client.rcpt("grey@example.net")[0] == 450
        client.rset()
    assert send(gw.port)[0] == 250
    assert gw.audit.named("upstream.throttled") == []
