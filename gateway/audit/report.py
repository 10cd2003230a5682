"""`audit summary`: counts over a window, drawn as terminal bar charts or one self-contained HTML page.

`Summary.add()` takes records one at a time in bounded memory: top-N lists keep
at most `TopCounter.capacity` keys (exact below that, approximate above), and the
time series coarsens its buckets (minute, 5 min, ..., week) to stay under
`TimeSeries.limit` buckets. Rendering is pure string building; every value that
came from the log is HTML-escaped (senders and HELO names are chosen by clients).
"""

from __future__ import annotations

import datetime as dt
import html
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
from gateway.terminal import printable

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

BLOCKS = " ▏▎▍▌▋▊▉█"
SPARKS = "▁▂▃▄▅▆▇█"


def bar(value: int, largest: int, width: int, unicode: bool = True) -> str:
    if largest <= 0 or value <= 0:
        return ""
    eighths = max(1, round(value / largest * width * 8))
    if not unicode:
        return "#" * max(1, eighths // 8)
    return "█" * (eighths // 8) + (BLOCKS[eighths % 8] if eighths % 8 else "")


def _stamp(when: dt.datetime | None) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%SZ") if when else "-"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(
    title: str, rows: list[tuple[str, int]], total: int, width: int, unicode: bool, note: str = ""
) -> list[str]:
    lines = [f"{title}{note}"]
    if not rows:
        return lines + ["  (none)", ""]
    rows = [
        (printable(key), value) for key, value in rows
    ]  # keys came from clients: no ESC reaches the tty
    count_width = max(len(f"{v:,}") for _, v in rows)
    bar_width = max(10, min(30, width // 4))
    label_width = max(8, min(max(len(k) for k, _ in rows), width - bar_width - count_width - 14))
    largest = max(v for _, v in rows)
    for key, value in rows:
        share = f"{100 * value / total:5.1f}%" if total else ""
        lines.append(
            f"  {_clip(key, label_width):<{label_width}}  {value:>{count_width},}  {share}  "
            f"{bar(value, largest, bar_width, unicode)}".rstrip()
        )
    return lines + [""]


def sparkline(values: list[int], unicode: bool = True) -> str:
    top = max(values, default=0)
    if top == 0:
        return ""
    if not unicode:
        return "".join("#" if v else "." for v in values)
    return "".join(SPARKS[max(0, -(-v * 8 // top) - 1)] if v else " " for v in values)


def _step_name(step: int) -> str:
    return STEP_NAMES[step]


def render_text(summary: Summary, width: int = 80, unicode: bool = True, top: int = 10) -> str:
    s = summary
    out = [
        f"audit summary: {_stamp(s.first)} to {_stamp(s.last)}",
        (
            f"{s.messages:,} message(s) in {s.sessions:,} session(s); {s.denied:,} session(s) denied by "
            f"listener.allowed_clients; {s.refused_at_mail:,} refused at MAIL"
        ),
        "",
    ]
    out += _table("by outcome", _ordered(s.by_outcome), s.messages, width, unicode)
    out += _table("by rule", s.by_rule.most_common(top), s.messages, width, unicode)
    out += _table("by upstream", s.by_upstream.most_common(top), s.messages, width, unicode)
    out += _table("by TLS version", s.by_tls.most_common(top), s.messages, width, unicode)
    approx = " (approximate: many distinct values)"
    out += _table(
        "top senders",
        s.senders.top(top),
        s.messages,
        width,
        unicode,
        approx if s.senders.approximate else "",
    )
    out += _table(
        "top rejection reasons",
        s.rejections.top(top),
        s.rejections.total,
        width,
        unicode,
        approx if s.rejections.approximate else "",
    )
    out += _table(
        "top deferral reasons",
        s.deferrals.top(top),
        s.deferrals.total,
        width,
        unicode,
        approx if s.deferrals.approximate else "",
    )
    step, buckets = s.outcome_series.series(bars=max(10, min(120, width - 30)))
    if buckets:
        out.append(f"messages per {_step_name(step)}, from {_stamp(_utc(buckets[0][0]))}")
        for outcome in [o for o in OUTCOMES if s.by_outcome[o]] + [
            o for o in s.by_outcome if o not in OUTCOMES
        ]:
            values = [counts[outcome] for _, counts in buckets]
            out.append(
                f"  {printable(outcome):<9} {sparkline(values, unicode)}  max {max(values):,}".rstrip()
            )
        out.append("")
    return "\n".join(out)


def _ordered(counts: Counter[str]) -> list[tuple[str, int]]:
    known = [(o, counts[o]) for o in OUTCOMES if counts[o]]
    return known + [(k, v) for k, v in counts.most_common() if k not in OUTCOMES]


def _utc(epoch: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


# --- the HTML page -----------------------------------------------------------------------------

COLOURS = {"relayed": "#2e7d32", "deferred": "#ef8f00", "rejected": "#c62828", "failed": "#6a1b9a"}
PALETTE = ("#1565c0", "#00897b", "#8e24aa", "#f4511e", "#6d4c41", "#3949ab", "#c0ca33", "#546e7a")
_e = html.escape


def _colours(keys: list[str], fixed: Mapping[str, str]) -> dict[str, str]:
    spare = iter(PALETTE * (len(keys) // len(PALETTE) + 1))
    return {k: fixed.get(k) or next(spare) for k in keys}


def axis_ticks(value: int, most: int = 5) -> list[int]:
    """0 and up to `most` evenly spaced round numbers (1, 2, 5 x 10^k apart) reaching `value`."""
    for power in range(16):
        for m in (1, 2, 5):
            step = m * 10**power
            count = max(1, -(-value // step))
            if count <= most:
                return [step * i for i in range(count + 1)]
    return [0, value]


def svg_stacked(
    series: TimeSeries,
    order: list[str],
    colours: Mapping[str, str],
    title: str,
    width: int = 900,
    height: int = 260,
) -> str:
    """Stacked bars over time with axes, a legend and a tooltip per bar (SVG <title>)."""
    step, buckets = series.series(bars=72)
    if not buckets:
        return f'<p class="empty">{_e(title)}: no messages in this window.</p>'
    left, right, top_pad, bottom = 48, 12, 28, 40
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    ticks = axis_ticks(max(sum(c.values()) for _, c in buckets))
    ceiling = ticks[-1]
    slot = plot_w / len(buckets)
    gap = min(2.0, slot * 0.15)
    bar_w = min(slot - gap, 48.0)
    parts = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{_e(title)}" class="chart">'
        ),
        f"<title>{_e(title)}</title>",
    ]
    for value in ticks:  # grid lines and y labels
        y = top_pad + plot_h - plot_h * value / ceiling
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">{value:,.0f}</text>'
        )
    for index, (start, counts) in enumerate(buckets):
        x = left + index * slot + (slot - bar_w) / 2
        y = top_pad + plot_h
        label = _utc(start).strftime("%Y-%m-%d %H:%M")
        tip = ", ".join(f"{k}: {counts[k]}" for k in order if counts[k]) or "no messages"
        parts.append(f"<g><title>{_e(label)} UTC (+{_e(_step_name(step))}): {_e(tip)}</title>")
        for key in order:
            if counts[key]:
                h = plot_h * counts[key] / ceiling
                y -= h
                parts.append(
                    f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bar_w, 0.5):.1f}" '
                    f'height="{h:.1f}" fill="{colours[key]}"/>'
                )
        parts.append("</g>")
    ticks = sorted({0, len(buckets) // 2, len(buckets) - 1})
    clock = "%m-%d %H:%M:%S" if step < 60 else "%m-%d %H:%M" if step < 86400 else "%Y-%m-%d"
    for index in ticks:
        x = left + index * slot + slot / 2
        anchor = "middle"
        if len(ticks) > 1 and index == ticks[0]:
            x, anchor = left + index * slot, "start"
        elif len(ticks) > 1 and index == ticks[-1]:
            x, anchor = left + (index + 1) * slot, "end"
        label = _utc(buckets[index][0]).strftime(clock)
        parts.append(
            f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="{anchor}" class="axis">'
            f"{_e(label)}</text>"
        )
    parts.append(
        f'<text x="{left}" y="{height - 6}" class="axis">UTC, one bar per {_e(_step_name(step))}'
        "</text>"
    )
    x = left
    for key in order:  # legend
        parts.append(f'<rect x="{x}" y="6" width="12" height="12" fill="{colours[key]}"/>')
        parts.append(f'<text x="{x + 16}" y="16" class="legend">{_e(key)}</text>')
        x += 28 + 7 * len(key)
    parts.append("</svg>")
    return "\n".join(parts)


def _html_bars(
    title: str,
    rows: list[tuple[str, int]],
    total: int,
    colours: Mapping[str, str] | None = None,
    note: str = "",
) -> str:
    if not rows:
        return f'<section><h2>{_e(title)}</h2><p class="empty">none</p></section>'
    largest = max(v for _, v in rows)
    body = []
    for key, value in rows:
        share = f"{100 * value / total:.1f}%" if total else ""
        colour = (colours or {}).get(key, "#1565c0")
        body.append(
            f'<tr><td class="key">{_e(key)}</td><td class="num">{value:,}</td>'
            f'<td class="num">{share}</td><td class="bar"><span style="width:{100 * value / largest:.1f}%;'
            f'background:{colour}"></span></td></tr>'
        )
    return (
        f"<section><h2>{_e(title)}</h2>{f'<p class=note>{_e(note)}</p>' if note else ''}"
        f"<table>{''.join(body)}</table></section>"
    )


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:980px;
color:#1d1d1f;background:#fff;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:15px;margin:24px 0 8px}
.sub{color:#555;margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{border:1px solid #ddd;border-radius:8px;padding:8px 12px;flex:1 1 0;min-width:84px}
.card b{display:block;font-size:20px}.card span{color:#555;font-size:12px}
.chart{width:100%;height:auto;border:1px solid #eee;border-radius:8px}
.chart .grid{stroke:#e6e6e6;stroke-width:1}.chart .axis{font-size:11px;fill:#555}
.chart .legend{font-size:12px;fill:#1d1d1f}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:0 32px}
@media (max-width:760px){.grid2{grid-template-columns:1fr}}
table{border-collapse:collapse;width:100%}td{padding:3px 6px;border-bottom:1px solid #f0f0f0}
td.key{max-width:300px;overflow-wrap:anywhere}td.num{text-align:right;white-space:nowrap;color:#333}
td.bar{width:35%}td.bar span{display:block;height:12px;border-radius:2px;min-width:2px}
.empty,.note{color:#777}footer{color:#777;font-size:12px;margin-top:32px}
"""


def render_html(summary: Summary, sources: list[str], generated: dt.datetime, top: int = 10) -> str:
    s = summary
    outcomes = [o for o in OUTCOMES if s.by_outcome[o]] + [
        o for o in s.by_outcome if o not in OUTCOMES
    ]
    outcome_colours = _colours(outcomes, COLOURS)
    upstreams = s.upstream_series.keys()
    upstream_colours = _colours(upstreams, {NONE: "#9e9e9e"})
    cards = [(f"{s.messages:,}", "messages"), (f"{s.sessions:,}", "sessions")]
    cards += [(f"{s.by_outcome[o]:,}", o) for o in outcomes]
    cards += [(f"{s.denied:,}", "sessions denied"), (f"{s.refused_at_mail:,}", "refused at MAIL")]
    approx = "approximate: more distinct values than can be counted exactly"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            "<title>mailgate audit summary</title>",
            f"<style>{CSS}</style></head><body>",
            "<h1>mailgate audit summary</h1>",
            (
                f'<p class="sub">{_e(_stamp(s.first))} to {_e(_stamp(s.last))} &middot; '
                f"{len(sources)} file(s)</p>"
            ),
            '<div class="cards">'
            + "".join(f"<div class=card><b>{_e(v)}</b><span>{_e(k)}</span></div>" for v, k in cards)
            + "</div>",
            "<h2>Messages over time, by outcome</h2>",
            svg_stacked(
                s.outcome_series, outcomes, outcome_colours, "Messages over time, by outcome"
            ),
            "<h2>Messages over time, by upstream</h2>",
            svg_stacked(
                s.upstream_series, upstreams, upstream_colours, "Messages over time, by upstream"
            ),
            '<div class="grid2">',
            _html_bars("By outcome", _ordered(s.by_outcome), s.messages, outcome_colours),
            _html_bars("By upstream", s.by_upstream.most_common(top), s.messages, upstream_colours),
            _html_bars("By rule", s.by_rule.most_common(top), s.messages),
            _html_bars("By TLS version", s.by_tls.most_common(top), s.messages),
            "</div>",
            _html_bars(
                "Top senders",
                s.senders.top(top),
                s.messages,
                note=approx if s.senders.approximate else "",
            ),
            _html_bars(
                "Top rejection reasons",
                s.rejections.top(top),
                s.rejections.total,
                {},
                approx if s.rejections.approximate else "",
            ),
            _html_bars(
                "Top deferral reasons",
                s.deferrals.top(top),
                s.deferrals.total,
                {},
                approx if s.deferrals.approximate else "",
            ),
            f"<footer>Generated {_e(_stamp(generated))} by <code>mailgate audit summary</code> from "
            + ", ".join(f"<code>{_e(p)}</code>" for p in sources)
            + ".</footer>",
            "</body></html>",
            "",
        ]
    )
