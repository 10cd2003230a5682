"""`audit summary`: counts over a window (drawn by `report_text` and `report_html`).

`Summary.add()` takes records one at a time in bounded memory: top-N lists keep
at most `TopCounter.capacity` keys (exact below that, approximate above), and the
time series coarsens its buckets (minute, 5 min, ..., week) to stay under
`TimeSeries.limit` buckets. Rendering is pure string building; every value that
came from the log is HTML-escaped (senders and HELO names are chosen by clients).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.audit.events import Event
from gateway.audit.query import (
    OUTCOMES,
    RESULT,
    Window,
    reasons,
    record_time,
    rules_of,
    upstreams_of,
)

STEPS = (1, 10, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400)
STEP_NAMES = dict(
    zip(
        STEPS,
        (
            "second",
            "10 seconds",
            "minute",
            "5 minutes",
            "15 minutes",
            "hour",
            "4 hours",
            "day",
            "week",
        ),
        strict=True,
    )
)
NONE = "(none)"


@dataclass
class TopCounter:
    """Counts per key, keeping at most `capacity` keys (the Space-Saving algorithm above that)."""

    capacity: int = 10000
    counts: dict[str, int] = field(default_factory=dict)
    approximate: bool = False

    def add(self, key: str, amount: int = 1) -> None:
        if key in self.counts or len(self.counts) < self.capacity:
            self.counts[key] = self.counts.get(key, 0) + amount
            return
        smallest = min(self.counts, key=self.counts.__getitem__)
        floor = self.counts.pop(smallest)
        self.counts[key] = floor + amount
        self.approximate = True

    def top(self, n: int) -> list[tuple[str, int]]:
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class TimeSeries:
    """Counts per (bucket, key); buckets widen as needed to keep at most `limit` of them."""

    limit: int = 4000
    step: int = STEPS[0]
    buckets: dict[int, Counter[str]] = field(default_factory=dict)

    def add(self, when: dt.datetime, key: str) -> None:
        start = int(when.timestamp()) // self.step * self.step
        self.buckets.setdefault(start, Counter())[key] += 1
        while len(self.buckets) > self.limit and self.step < STEPS[-1]:
            self._widen()

    def _widen(self) -> None:
        self.step = next(s for s in STEPS if s > self.step)
        merged: dict[int, Counter[str]] = {}
        for start, counts in self.buckets.items():
            merged.setdefault(start // self.step * self.step, Counter()).update(counts)
        self.buckets = merged

    def keys(self) -> list[str]:
        total: Counter[str] = Counter()
        for counts in self.buckets.values():
            total.update(counts)
        return [k for k, _ in total.most_common()]

    def series(self, bars: int = 60) -> tuple[int, list[tuple[int, Counter[str]]]]:
        """(step, [(bucket start, counts)]) with no gaps and at most about `bars` buckets."""
        if not self.buckets:
            return self.step, []
        first, last = min(self.buckets), max(self.buckets)
        step = next((s for s in STEPS if s >= self.step and (last - first) // s < bars), STEPS[-1])
        start = first // step * step
        out: dict[int, Counter[str]] = {
            t: Counter() for t in range(start, last // step * step + 1, step)
        }
        for when, counts in self.buckets.items():
            out[when // step * step].update(counts)
        return step, sorted(out.items())


@dataclass
class Summary:
    """Everything `audit summary` shows, gathered from a stream of records."""

    window: Window = field(default_factory=Window)
    messages: int = 0
    sessions: int = 0
    denied: int = 0
    refused_at_mail: int = 0
    first: dt.datetime | None = None
    last: dt.datetime | None = None
    by_outcome: Counter[str] = field(default_factory=Counter)
    by_rule: Counter[str] = field(default_factory=Counter)
    by_upstream: Counter[str] = field(default_factory=Counter)
    by_tls: Counter[str] = field(default_factory=Counter)
    # "APP -> UPSTREAM: password|xoauth2": the migration report before basic auth is switched off
    by_auth: Counter[str] = field(default_factory=Counter)
    senders: TopCounter = field(default_factory=TopCounter)
    rejections: TopCounter = field(default_factory=TopCounter)
    deferrals: TopCounter = field(default_factory=TopCounter)
    outcome_series: TimeSeries = field(default_factory=TimeSeries)
    upstream_series: TimeSeries = field(default_factory=TimeSeries)

    def count_session(self, event: str, when: dt.datetime | None) -> None:
        """Count a session.opened or session.denied seen without parsing its line."""
        if not self.window.admits(when):
            return
        if event == Event.SESSION_OPENED:
            self.sessions += 1
        elif event == Event.SESSION_DENIED:
            self.denied += 1

    def add(self, record: Mapping[str, Any]) -> None:
        name = record.get("event")
        if name not in (RESULT, Event.SESSION_OPENED, Event.SESSION_DENIED, Event.MAIL_REFUSED):
            return
        when = record_time(record)
        if when is None or not self.window.contains(record):
            return
        if name == Event.SESSION_OPENED:
            self.sessions += 1
            return
        if name == Event.SESSION_DENIED:
            self.denied += 1
            return
        if name == Event.MAIL_REFUSED:
            self.refused_at_mail += 1
            self.rejections.add(f"{record.get('reply', '')} ({record.get('limit', '')})")
            return
        self.messages += 1
        self.first = when if self.first is None or when < self.first else self.first
        self.last = when if self.last is None or when > self.last else self.last
        outcome = str(record.get("outcome", NONE))
        upstream = ", ".join(upstreams_of(record)) or NONE
        self.by_outcome[outcome] += 1
        self.by_upstream[upstream] += 1
        self.by_tls[str(record.get("tls_version") or "(no upstream session)")] += 1
        if record.get("tls_version"):  # a session with the upstream: how it authenticated
            how = (
                "xoauth2"
                if record.get("oauth_grant")
                else "password"
                if record.get("auth_user")
                else "no AUTH"
            )
            self.by_auth[f"{record.get('app') or '(no app)'} -> {upstream}: {how}"] += 1
        for rule in rules_of(record) or [NONE]:
            self.by_rule[rule] += 1
        self.senders.add(str(record.get("sender", "")) or "<>")
        if outcome in ("rejected", "deferred"):
            target = self.rejections if outcome == "rejected" else self.deferrals
            for reason in reasons(record):
                target.add(reason)
        self.outcome_series.add(when, outcome)
        self.upstream_series.add(when, upstream)


def consume(records: Iterable[Mapping[str, Any]], window: Window | None = None) -> Summary:
    summary = Summary(window or Window())
    for record in records:
        summary.add(record)
    return summary


# --- the terminal ------------------------------------------------------------------------------


def ordered(counts: Counter[str]) -> list[tuple[str, int]]:
    known = [(o, counts[o]) for o in OUTCOMES if counts[o]]
    return known + [(k, v) for k, v in counts.most_common() if k not in OUTCOMES]


def utc(epoch: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def stamp(when: dt.datetime | None) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%SZ") if when else "-"


def step_name(step: int) -> str:
    return STEP_NAMES[step]
