"""`audit summary` in the terminal: bar charts and tables, every value from the log escaped."""

from __future__ import annotations

from gateway.audit.query import OUTCOMES
from gateway.audit.report import Summary, ordered, stamp, step_name, utc
from gateway.terminal import printable

BLOCKS = " ▏▎▍▌▋▊▉█"
SPARKS = "▁▂▃▄▅▆▇█"


def bar(value: int, largest: int, width: int, unicode: bool = True) -> str:
    if largest <= 0 or value <= 0:
        return ""
    eighths = max(1, round(value / largest * width * 8))
    if not unicode:
        return "#" * max(1, eighths // 8)
    return "█" * (eighths // 8) + (BLOCKS[eighths % 8] if eighths % 8 else "")


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


def render_text(summary: Summary, width: int = 80, unicode: bool = True, top: int = 10) -> str:
    s = summary
    out = [
        f"audit summary: {stamp(s.first)} to {stamp(s.last)}",
        (
            f"{s.messages:,} message(s) in {s.sessions:,} session(s); {s.denied:,} session(s) denied by "
            f"listener.allowed_clients; {s.refused_at_mail:,} refused at MAIL"
        ),
        "",
    ]
    out += _table("by outcome", ordered(s.by_outcome), s.messages, width, unicode)
    out += _table("by rule", s.by_rule.most_common(top), s.messages, width, unicode)
    out += _table("by upstream", s.by_upstream.most_common(top), s.messages, width, unicode)
    out += _table("by TLS version", s.by_tls.most_common(top), s.messages, width, unicode)
    out += _table(
        "upstream AUTH by app (password or XOAUTH2)",
        s.by_auth.most_common(top),
        s.messages,
        width,
        unicode,
    )
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
        out.append(f"messages per {step_name(step)}, from {stamp(utc(buckets[0][0]))}")
        for outcome in [o for o in OUTCOMES if s.by_outcome[o]] + [
            o for o in s.by_outcome if o not in OUTCOMES
        ]:
            values = [counts[outcome] for _, counts in buckets]
            out.append(
                f"  {printable(outcome):<9} {sparkline(values, unicode)}  max {max(values):,}".rstrip()
            )
        out.append("")
    return "\n".join(out)
