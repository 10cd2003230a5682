"""Provider budgets in queue mode against an aiosmtpd upstream: a steady stream drains oldest
first, and an upstream outage costs the identity no budget (the takes are given back)."""

from __future__ import annotations

import re
import smtplib
import time

from tests.conftest import upstream_table
from tests.integration.queueing import message, queue_document


def number(content: bytes) -> int:
    found = re.search(rb"Subject: queued (\d+)", content)
    assert found is not None
    return int(found.group(1))


def test_a_steady_stream_over_the_pace_drains_oldest_first(
    make_upstream, start_gateway, ca, tmp_path
):
    """1/second: a burst of 3, then a fresh message every 0.4 s. Fresh mail arrives while the
    window has room and earlier messages wait for their slots (the runner takes them up at its
    next look, up to a second late): it does not take their room. The upstream gets the
    messages in the order the app sent them, one a second at most, none bounced."""
    up = make_upstream()
    arrived: list[tuple[float, int]] = []
    up.on_message = lambda received: arrived.append((time.monotonic(), number(received.content)))
    document = queue_document(upstream_table(up, ca.ca_file, pace="1/second"), str(tmp_path))
    gw = start_gateway(document)
    count = 9
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        for n in range(3):
            assert client.sendmail("app@example.com", ["ops@example.net"], message(n)) == {}
        for n in range(3, count):
            time.sleep(0.4)  # the stream's schedule (the stimulus, not a wait for an outcome)
            assert client.sendmail("app@example.com", ["ops@example.net"], message(n)) == {}
    assert len(up.wait_for(count, timeout=60)) == count
    assert [n for _, n in sorted(arrived)] == list(range(count))
    # The takes are a second apart at least; what the upstream sees adds each delivery's own
    # latency (a new TLS session, a busy machine), so its gaps are allowed that jitter, and
    # the whole stream must still span the budget: 9 messages at 1/second take 8 seconds.
    times = sorted(t for t, _ in arrived)
    assert all(later - first >= 0.5 for first, later in zip(times, times[1:], strict=False))
    assert times[-1] - times[0] >= (count - 1) - 0.5
    results = gw.audit.wait_for("message.result", count)
    assert {r["outcome"] for r in results} == {"delivered"}
    assert not gw.audit.named("message.dead") and not gw.audit.named("message.bounced")


def test_an_outage_gives_the_budget_back(make_upstream, start_gateway, ca, tmp_path):
    """2/minute, and the upstream refuses MAIL (451) for three tries: each try's take is given
    back, so when it answers again the message goes at its next try (not a minute later), and
    the budget shows one message used."""
    up = make_upstream()
    up.script.mail = "451 4.3.0 Try again later"
    document = queue_document(upstream_table(up, ca.ca_file, pace="2/minute"), str(tmp_path))
    gw = start_gateway(document)
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        assert client.sendmail("app@example.com", ["ops@example.net"], message(1)) == {}
    attempts = gw.audit.wait_for("delivery.attempt", 3)
    assert all("451 4.3.0" in a["recipients"][0]["reply"] for a in attempts)
    up.script.mail = None
    assert len(up.wait_for(1, timeout=15)) == 1
    [result] = gw.audit.wait_for("message.result")
    assert result["outcome"] == "delivered"
    assert not [d for d in gw.audit.named("message.deferred") if d.get("paced")]
    rows = list(gw.gateway.budgets.usage(gw.reactor.seconds()))
    assert ("up", "pace", 1, 1) in rows
