"""gateway.policy.budgets: pace and recipients a day per sending identity, pauses; time passed in."""

from __future__ import annotations

from dataclasses import replace

from gateway.config.model import Rate, UpstreamConfig
from gateway.policy.budgets import DAY, PAUSE_FIRST, PAUSE_MAX, Ledger, Window, identity

M365 = UpstreamConfig(
    name="m365",
    host="smtp.office365.com",
    username="app@example.com",
    pace=Rate(30, 60.0, "30/minute"),
    max_recipients_per_day=10000,
)
PER_SENDER = replace(M365, name="shared", username="$sender")


def sent_times(ledger: Ledger, upstream: UpstreamConfig, count: int, sender: str = "a@x") -> list:
    """Offer `count` messages as fast as the ledger lets them go (each one kept back comes
    back at its promised slot and names it); their send times."""
    times, now, promised = [], 0.0, None
    while len(times) < count:
        spent = ledger.take(upstream, sender, 1, 1, now, promised=promised)
        if spent is None:
            times.append(now)
            promised = None
        else:
            assert spent.until > now
            now = promised = spent.until
    return times


def test_no_window_of_the_period_holds_more_than_the_pace():
    """100 messages at 30/minute: every 60-second window carries at most 30."""
    times = sent_times(Ledger(), M365, 100)
    for start in times:
        assert sum(1 for t in times if start <= t < start + 60.0) <= 30
    assert times[29] == 0.0 and times[30] == 60.0  # the burst, then the window's turn


def test_a_spent_pace_names_the_budget_and_when_it_frees():
    """The 31st message in a minute is told which budget and when it may go."""
    ledger = Ledger()
    for _ in range(30):
        assert ledger.take(M365, "", 1, 1, 10.0) is None
    spent = ledger.take(M365, "", 1, 1, 20.0)
    assert spent is not None
    assert spent.budget == "pace 30/minute" and spent.until == 70.0
    assert "m365" in spent.describe() and "30/minute" in spent.describe()


def test_paced_messages_are_promised_distinct_slots_in_order():
    """A backlog is spread one pace interval apart (oldest first), not all at the same second."""
    ledger = Ledger()
    for _ in range(30):
        ledger.take(M365, "", 1, 1, 0.0)
    slots = [ledger.take(M365, "", 1, 1, 1.0).until for _ in range(3)]  # type: ignore[union-attr]
    assert slots == [60.0, 62.0, 64.0]
    assert ledger.backlog(M365, "", 1.0) == 63.0


def test_recipients_per_day_is_a_rolling_24_hours():
    """10,000 recipients: the next one waits until the first ones are 24 hours old."""
    ledger = Ledger()
    bulk = replace(M365, pace=None)
    assert ledger.take(bulk, "", 1, 6000, 0.0) is None
    assert ledger.take(bulk, "", 1, 4000, 3600.0) is None
    spent = ledger.take(bulk, "", 1, 1, 7200.0)
    assert spent is not None and spent.budget == "max_recipients_per_day 10000"
    assert spent.until == DAY  # the 6,000 of time 0 leave the window
    assert ledger.take(bulk, "", 1, 1, DAY, promised=spent.until) is None


def test_more_recipients_of_a_counted_message_take_no_pace():
    """Cut-through RCPTs after the first count recipients only."""
    ledger = Ledger()
    assert ledger.take(M365, "", 1, 1, 0.0) is None
    for _ in range(50):
        assert ledger.take(M365, "", 0, 1, 0.0) is None
    assert list(ledger.usage(0.0)) == [
        ("m365", "pace", 1, 29),
        ("m365", "recipients_per_day", 51, 9949),
    ]


def test_sender_identities_are_paced_separately():
    """username = "$sender": each envelope sender has its own budget."""
    ledger = Ledger()
    for _ in range(30):
        assert ledger.take(PER_SENDER, "a@example.com", 1, 1, 0.0) is None
    assert ledger.take(PER_SENDER, "a@example.com", 1, 1, 0.0) is not None
    assert ledger.take(PER_SENDER, "b@example.com", 1, 1, 0.0) is None
    assert identity(PER_SENDER, "B@Example.com") == "b@example.com"
    assert identity(M365, "b@example.com") == "app@example.com"


def test_a_throttling_reply_pauses_with_exponential_backoff_until_a_success():
    """60 s, 120 s, ... up to an hour; a delivered message starts again from 60 s."""
    paused: list[tuple[str, str, float, str]] = []
    ledger = Ledger(on_pause=lambda *args: paused.append(args))
    now = 0.0
    lengths = []
    for _ in range(8):
        lengths.append(ledger.throttled(M365, "", now, "432 4.3.2 thread limit"))
        spent = ledger.take(M365, "", 1, 1, now + 1)
        assert spent is not None and spent.throttled
        now += lengths[-1]
    assert lengths[:3] == [PAUSE_FIRST, 2 * PAUSE_FIRST, 4 * PAUSE_FIRST]
    assert lengths[-1] == PAUSE_MAX
    assert paused[0] == ("m365", "app@example.com", PAUSE_FIRST, "432 4.3.2 thread limit")
    ledger.delivered(M365, "")
    assert ledger.throttled(M365, "", now, "again") == PAUSE_FIRST
    assert ledger.pauses == {"m365": 9}


def test_replies_of_sessions_in_flight_extend_no_pause():
    """Three connections answering 432 at once: one pause, not three doublings."""
    ledger = Ledger()
    assert ledger.throttled(M365, "", 0.0) == PAUSE_FIRST
    assert ledger.throttled(M365, "", 1.0) == PAUSE_FIRST - 1.0
    assert ledger.pauses == {"m365": 1}


def test_an_upstream_without_a_budget_keeps_nothing():
    """No pace and never throttled: no account is made for it."""
    ledger = Ledger()
    plain = UpstreamConfig(name="plain", host="mx.example.net")
    for _ in range(100):
        assert ledger.take(plain, "a@x", 1, 5, 0.0) is None
    assert list(ledger.usage(0.0)) == []


def test_a_raised_budget_applies_at_once():
    """A reload that raises the pace is applied at once (the events sent stay counted:
    tests/policy/test_budgets_promises.py)."""
    ledger = Ledger()
    for _ in range(30):
        ledger.take(M365, "", 1, 1, 0.0)
    faster = replace(M365, pace=Rate(60, 60.0, "60/minute"))
    assert ledger.take(faster, "", 1, 1, 0.0) is None


def test_idle_sender_accounts_are_forgotten():
    """Accounts whose windows are empty are pruned ("$sender" meets unbounded senders)."""
    ledger = Ledger()
    ledger.take(PER_SENDER, "a@x", 1, 1, 0.0)
    ledger.prune(30.0)
    assert len(list(ledger.usage(30.0))) == 2
    ledger.prune(DAY + 1)
    assert list(ledger.usage(DAY + 1)) == []


def test_a_message_bigger_than_the_daily_budget_goes_alone():
    """More recipients than the whole budget: it waits for an empty window, never forever."""
    window = Window(10, DAY)
    assert window.room(20, 0.0)
    window.add(20, 0.0)
    assert not window.room(1, 1.0)
    assert window.free_at(1, 1.0) == DAY


def test_a_pause_held_for_another_instance_pauses_here_and_backs_off_from_it():
    """hold(until): the identity is paused here until then, no on_pause; a throttling reply
    of this instance's own after it doubles from the held pause's length."""
    paused: list[tuple[str, str, float, str]] = []
    ledger = Ledger(on_pause=lambda *args: paused.append(args))
    plain = UpstreamConfig(name="plain", host="mx.example.net", username="app@example.com")
    spent = ledger.hold(plain, "", 100.0, 10.0)
    assert spent.throttled and spent.until == 100.0 and paused == []
    held = ledger.take(plain, "", 1, 1, 50.0)
    assert held is not None and held.throttled and held.until > 100.0  # the slot after it
    assert ledger.take(plain, "", 1, 1, held.until, promised=held.until) is None
    assert ledger.throttled(plain, "", 100.0) == 2 * 90.0


def test_a_throttled_identity_never_delivered_again_is_forgotten():
    """A pause that ended more than PAUSE_MAX ago is no pause: the account goes with the others;
    throttled again, its backoff starts afresh."""
    ledger = Ledger()
    ledger.throttled(PER_SENDER, "gone@x", 0.0)
    ledger.prune(PAUSE_FIRST + 1)
    assert len(ledger) == 1  # the backoff is remembered for an hour after the pause
    ledger.prune(PAUSE_FIRST + PAUSE_MAX + 1)
    assert len(ledger) == 0
    assert ledger.throttled(PER_SENDER, "gone@x", DAY) == PAUSE_FIRST


def test_accounts_are_pruned_every_thousand_decisions():
    """5000 "$sender" identities at one a second: only the last minute's are kept."""
    ledger, paced = Ledger(), replace(PER_SENDER, max_recipients_per_day=None)
    for i in range(5000):
        ledger.take(paced, f"s{i}@x", 1, 1, float(i), promise=False)
    assert len(ledger) <= 1000
