"""`audit summary --html`: one self-contained page (inline SVG), every value from the log HTML-escaped."""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Mapping

from gateway.audit.query import OUTCOMES
from gateway.audit.report import NONE, Summary, TimeSeries, ordered, stamp, step_name, utc

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
        label = utc(start).strftime("%Y-%m-%d %H:%M")
        tip = ", ".join(f"{k}: {counts[k]}" for k in order if counts[k]) or "no messages"
        parts.append(f"<g><title>{_e(label)} UTC (+{_e(step_name(step))}): {_e(tip)}</title>")
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
        label = utc(buckets[index][0]).strftime(clock)
        parts.append(
            f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="{anchor}" class="axis">'
            f"{_e(label)}</text>"
        )
    parts.append(
        f'<text x="{left}" y="{height - 6}" class="axis">UTC, one bar per {_e(step_name(step))}'
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
                f'<p class="sub">{_e(stamp(s.first))} to {_e(stamp(s.last))} &middot; '
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
            _html_bars("By outcome", ordered(s.by_outcome), s.messages, outcome_colours),
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
            f"<footer>Generated {_e(stamp(generated))} by <code>mailgate audit summary</code> from "
            + ", ".join(f"<code>{_e(p)}</code>" for p in sources)
            + ".</footer>",
            "</body></html>",
            "",
        ]
    )
