"""gateway.policy.budgets: refunds, promised slots kept oldest first, relay's unkept slots, and
budgets that change under their windows; time passed in (plain floats)."""

from __future__ import annotations

import heapq
from dataclasses import replace

from gateway.config.model import Rate, UpstreamConfig
from gateway.policy.budgets import DAY, PROMISE_GRACE, Ledger, Taken, Window

M365 = UpstreamConfig(
    name="m365",
    host="smtp.office365.com",
    username="app@example.com",
    pace=Rate(2, 60.0, "2/minute"),
    max_recipients_per_day=10,
)


def usage(ledger: Ledger, now: float) -> dict[str, int]:
    return {budget: used for _, budget, used, _ in ledger.usage(now)}


# --- refunds -------------------------------------------------------------------------------------


def test_a_refund_gives_back_the_message_and_its_recipients():
    """Two messages of 5 recipients spend 2/minute and 10 a day; one refunded, one more fits."""
    ledger = Ledger()
    assert ledger.take(M365, "", 1, 5, 0.0) is None
    assert ledger.take(M365, "", 1, 5, 1.0) is None
    assert ledger.take(M365, "", 1, 1, 2.0, promise=False) is not None
    ledger.refund(M365, "", Taken("t1", 0.0, 1, 5), 1, 5)
    assert usage(ledger, 2.0) == {"pace": 1, "recipients_per_day": 5}
    assert ledger.take(M365, "", 1, 5, 2.0) is None


def test_refused_recipients_give_back_their_share_only():
    ledger = Ledger()
    assert ledger.take(M365, "", 1, 8, 0.0) is None
    ledger.refund(M365, "", Taken("t1", 0.0, 1, 8), 0, 3)
    assert usage(ledger, 0.0) == {"pace": 1, "recipients_per_day": 5}


def test_a_refund_of_a_take_that_left_the_window_gives_nothing():
    """Refunded after its window moved on: no negative count, and later takes stay counted."""
    ledger = Ledger()
    assert ledger.take(M365, "", 1, 5, 0.0) is None
    assert ledger.take(M365, "", 1, 5, DAY - 1) is None
    ledger.refund(M365, "", Taken("t1", 0.0, 1, 5), 1, 5)
    assert usage(ledger, DAY) == {"pace": 1, "recipients_per_day": 5}


def test_a_window_gives_back_events_of_one_instant_across_takes():
    window = Window(10, 60.0)
    window.add(3, 5.0)
    window.add(2, 5.0)
    window.add(4, 6.0)
    window.remove(4, 5.0)
    assert window.used(6.0) == 5 and list(window.events) == [(5.0, 1), (6.0, 4)]
    window.remove(9, 1.0)  # nothing was taken then
    assert window.used(6.0) == 5


# --- oldest first ---------------------------------------------------------------------------------


def test_fresh_mail_does_not_take_the_room_a_promised_slot_waits_for():
    """2/minute: C is promised 60. At 60 a fresh D arrives before C is back: D is promised the
    next slot (90), and C, back a moment later for its slot, goes."""
    ledger = Ledger()
    assert ledger.take(M365, "", 1, 1, 0.0) is None
    assert ledger.take(M365, "", 1, 1, 0.0) is None
    c = ledger.take(M365, "", 1, 1, 1.0)
    assert c is not None and c.until == 60.0
    d = ledger.take(M365, "", 1, 1, 60.0)
    assert d is not None and d.until == 90.0 and d.budget == "pace 2/minute"
    assert ledger.take(M365, "", 1, 1, 60.5, promised=c.until) is None
    assert ledger.take(M365, "", 1, 1, 90.0, promised=d.until) is None


def drained(arrivals: list[float], late: float) -> list[int]:
    """A queue over the ledger: message n arrives at arrivals[n] (tried at once); one kept back
    is tried again `late` seconds after its slot (the runner's scan) and names its slot.
    Returns the messages in the order they went."""
    ledger, sent = Ledger(), []
    no_recipient_limit = replace(M365, max_recipients_per_day=None)
    events = [(t, 0, n, None) for n, t in enumerate(arrivals)]  # fresh first at one instant
    heapq.heapify(events)
    while events:
        now, _, n, slot = heapq.heappop(events)
        spent = ledger.take(no_recipient_limit, "", 1, 1, now, promised=slot)
        if spent is None:
            sent.append(n)
        else:
            heapq.heappush(events, (spent.until + late, 1, n, spent.until))
    return sent


def test_a_steady_stream_at_the_pace_drains_oldest_first():
    """A burst of 4 and then one message every 30 s (the pace, 2/minute), the runner a second
    late for each slot: the messages go in the order they came (each naming the slot it was
    promised), none overtaken by fresh mail arriving while the window had room."""
    arrivals = [0.0, 0.0, 0.0, 0.0] + [30.0 * k + 10.0 for k in range(1, 12)]
    assert drained(arrivals, late=1.0) == list(range(len(arrivals)))


def test_a_message_back_early_gives_up_its_slot_and_waits_behind_the_others():
    """`queue retry` before the slot: it is not let past the other promise, and its own slot
    is not left holding anyone up."""
    ledger = Ledger()
    ledger.take(M365, "", 1, 1, 0.0)
    ledger.take(M365, "", 1, 1, 0.0)
    a = ledger.take(M365, "", 1, 1, 1.0)
    b = ledger.take(M365, "", 1, 1, 1.0)
    assert a is not None and b is not None and (a.until, b.until) == (60.0, 90.0)
    again = ledger.take(M365, "", 1, 1, 10.0, promised=b.until)  # early
    assert again is not None and again.until == 120.0
    assert ledger.take(M365, "", 1, 1, 60.0, promised=a.until) is None


def test_a_promise_nobody_comes_back_for_stops_holding_fresh_mail():
    ledger = Ledger()
    ledger.take(M365, "", 1, 1, 0.0)
    ledger.take(M365, "", 1, 1, 0.0)
    gone = ledger.take(M365, "", 1, 1, 1.0)  # deleted by the operator, say
    assert gone is not None and gone.until == 60.0
    assert ledger.take(M365, "", 1, 1, 60.0 + PROMISE_GRACE - 1, promise=False) is not None
    assert ledger.take(M365, "", 1, 1, 60.0 + PROMISE_GRACE + 1) is None


def test_a_promised_message_that_finds_no_room_goes_ahead_of_later_slots():
    """Another instance took the room at A's slot (counted here from Redis): A is given the
    time the window frees, ahead of the last slot, not after it."""
    ledger = Ledger()
    ledger.take(M365, "", 1, 1, 0.0)
    ledger.take(M365, "", 1, 1, 0.0)
    slots = [ledger.take(M365, "", 1, 1, 1.0).until for _ in range(4)]  # type: ignore[union-attr]
    assert slots == [60.0, 90.0, 120.0, 150.0]
    ledger.count(M365, "", 1, 1, 60.0)
    ledger.count(M365, "", 1, 1, 60.0)
    again = ledger.take(M365, "", 1, 1, 60.0, promised=60.0)
    assert again is not None and again.first and again.until == 120.0
    assert ledger.backlog(M365, "", 60.0) == 90.0  # not pushed to 180


# --- relay: slots not kept ------------------------------------------------------------------------


def test_relay_refusals_promise_no_slot():
    """promise=False (relay): the answer names when the budget frees, the queue's next slot is
    where it would have been, and fresh mail is not held for it."""
    ledger = Ledger()
    ledger.take(M365, "", 1, 1, 0.0)
    ledger.take(M365, "", 1, 1, 0.0)
    for _ in range(5):
        spent = ledger.take(M365, "", 1, 1, 1.0, promise=False)
        assert spent is not None and spent.until == 60.0
    assert ledger.backlog(M365, "", 1.0) == 0.0
    queued = ledger.take(M365, "", 1, 1, 1.0)
    assert queued is not None and queued.until == 60.0


def test_an_offered_slot_is_kept_by_promise_behind_those_kept_meanwhile():
    ledger = Ledger()
    ledger.take(M365, "", 1, 1, 0.0)
    ledger.take(M365, "", 1, 1, 0.0)
    first = ledger.take(M365, "", 1, 1, 1.0, promise=False)
    second = ledger.take(M365, "", 1, 1, 1.0, promise=False)
    assert first is not None and second is not None and first.until == second.until == 60.0
    assert ledger.promise(M365, "", first).until == 60.0
    assert ledger.promise(M365, "", second).until == 90.0


# --- budgets that change --------------------------------------------------------------------------


def test_a_changed_budget_keeps_the_windows_events():
    """A reload to 3/minute after 2 were sent: one more, not three; back to 1/minute: none."""
    ledger = Ledger()
    ledger.take(M365, "", 1, 1, 0.0)
    ledger.take(M365, "", 1, 1, 0.0)
    faster = replace(M365, pace=Rate(3, 60.0, "3/minute"))
    assert ledger.take(faster, "", 1, 1, 1.0) is None
    assert ledger.take(faster, "", 1, 1, 1.0, promise=False) is not None
    slower = replace(M365, pace=Rate(1, 60.0, "1/minute"))
    spent = ledger.take(slower, "", 1, 1, 2.0, promise=False)
    assert spent is not None and spent.budget == "pace 1/minute"
    assert usage(ledger, 2.0) == {"pace": 3, "recipients_per_day": 3}


def test_a_message_later_in_line_does_not_pass_one_given_its_slot_again():
    """A found no room at its slot (another instance took it) and is given 119 again; B, later in
    line, back first at 119.5, is held just after A, not let past it."""
    ledger = Ledger()
    ledger.take(M365, "", 1, 1, 0.0)
    ledger.take(M365, "", 1, 1, 0.0)
    a, b = (ledger.take(M365, "", 1, 1, 1.0) for _ in range(2))
    assert a is not None and b is not None and (a.until, b.until) == (60.0, 90.0)
    ledger.count(M365, "", 1, 1, 59.0)
    ledger.count(M365, "", 1, 1, 59.5)
    a = ledger.take(M365, "", 1, 1, 60.0, promised=a.until)
    assert a is not None and a.until == 119.0 and a.place == 60.0
    b = ledger.take(M365, "", 1, 1, 119.5, promised=b.until)
    assert b is not None and b.until > a.until and b.place == 90.0
    assert ledger.take(M365, "", 1, 1, 119.5, promised=a.until) is None
    assert ledger.take(M365, "", 1, 1, 119.6, promised=b.until) is None


DAILY = UpstreamConfig(name="daily", host="smtp.example.net", max_recipients_per_day=2)


def test_a_message_given_its_slot_again_that_never_comes_back_holds_no_one_forever():
    """A is given a slot again (the window was full at its slot), then deleted; B, behind it,
    is never answered a time already past, and goes once A's promise is past its grace."""
    ledger = Ledger()
    assert ledger.take(DAILY, "", 1, 2, 0.0) is None
    a, b = (ledger.take(DAILY, "", 1, 1, t) for t in (1.0, 2.0))
    assert a is not None and b is not None and (a.until, b.until) == (DAY, DAY + 1)
    assert ledger.take(DAILY, "", 0, 2, DAY) is None  # more recipients fill the window again
    a = ledger.take(DAILY, "", 1, 1, DAY, promised=a.until)
    assert a is not None and a.until == 2 * DAY and a.place == DAY
    now, slot, scans = b.until, b.until, 0
    while (b := ledger.take(DAILY, "", 1, 1, now, promised=slot)) is not None:
        assert b.until > now and b.place == DAY + 1
        scans += 1
        assert scans <= PROMISE_GRACE + 2
        now = slot = b.until
    assert 2 * DAY < now <= 2 * DAY + PROMISE_GRACE + 2
