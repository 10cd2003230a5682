"""The targets of issues 6 and 13, judged from one run's figures, and the human summary. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NOISE_CORES = 0.25  # CPU used by processes outside the bench above which a run is flagged
SINK_BUSY_PERCENT = 80  # sink CPU above which a relay run may have been limited by the sink


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    status: str  # PASS, MISS or n/a


def _ratio(results: dict[str, Any], top: str, bottom: str) -> float | None:
    runs = results["throughput"]
    a, b = runs.get(top), runs.get(bottom)
    if not a or not b or "msgs_per_s" not in a or "msgs_per_s" not in b:
        return None
    return float(a["msgs_per_s"]) / float(b["msgs_per_s"])


def ratios(results: dict[str, Any]) -> dict[str, float | None]:
    return {
        "c/b": _ratio(results, "mailgate_relay", "postfix"),
        "d/b": _ratio(results, "mailgate_queue", "postfix"),
        "c/a": _ratio(results, "mailgate_relay", "direct"),
    }


def _cpu(results: dict[str, Any], key: str) -> float | None:
    value = (results["throughput"].get(key) or {}).get("relay_cpu_ms_per_message")
    return None if value is None else float(value)


def evaluate_issue13(results: dict[str, Any]) -> list[Verdict]:
    """Issue 13's targets (one run; the issue asks for the median of three)."""
    r = {
        **ratios(results),
        "d/b+": _ratio(results, "mailgate_queue", "postfix_tls_reuse"),
        "c/b+": _ratio(results, "mailgate_relay", "postfix_tls_reuse"),
    }
    relay, queue = _cpu(results, "mailgate_relay"), _cpu(results, "mailgate_queue")
    per_relay = queue / relay if queue is not None and relay else None
    return [
        _judge("queue mode >= 1.5x Postfix msgs/s (d/b)", r["d/b"], 1.5, at_least=True, unit="x"),
        _judge(
            "queue mode >= 1.0x Postfix with TLS reuse (d/b+)",
            r["d/b+"],
            1.0,
            at_least=True,
            unit="x",
        ),
        _judge("relay mode >= 3.0x Postfix msgs/s (c/b)", r["c/b"], 3.0, at_least=True, unit="x"),
        _judge(
            "relay mode >= 2.0x Postfix with TLS reuse (c/b+)",
            r["c/b+"],
            2.0,
            at_least=True,
            unit="x",
        ),
        _judge(
            "queue CPU per message <= 1.5x relay mode's",
            per_relay,
            1.5,
            at_least=False,
            inclusive=True,
            unit="x",
        ),
        _judge(
            "queue CPU <= 2.0 ms per message",
            queue,
            2.0,
            at_least=False,
            inclusive=True,
            unit=" ms",
        ),
        _judge(
            "relay CPU <= 1.0 ms per message",
            relay,
            1.0,
            at_least=False,
            inclusive=True,
            unit=" ms",
        ),
    ]


def _judge(
    target: str,
    value: float | None,
    limit: float,
    *,
    at_least: bool,
    inclusive: bool = False,
    unit: str = "",
    shown: str | None = None,
) -> Verdict:
    """PASS when value >= limit (`at_least`), else when value < limit (<= with `inclusive`)."""
    if value is None:
        return Verdict(target, "not measured", "n/a")
    if at_least:
        ok = value >= limit
    else:
        ok = value <= limit if inclusive else value < limit
    return Verdict(
        target, shown if shown is not None else f"{value:.2f}{unit}", "PASS" if ok else "MISS"
    )


def evaluate(results: dict[str, Any]) -> list[Verdict]:
    r = ratios(results)
    runs = results["throughput"]
    verdicts = [
        _judge("relay mode >= 2.0x Postfix msgs/s (c/b)", r["c/b"], 2.0, at_least=True, unit="x"),
        _judge("queue mode >= 1.0x Postfix msgs/s (d/b)", r["d/b"], 1.0, at_least=True, unit="x"),
        _judge("relay mode >= 0.8x direct msgs/s (c/a)", r["c/a"], 0.8, at_least=True, unit="x"),
    ]
    for key, label in (("mailgate_relay", "relay"), ("mailgate_queue", "queue")):
        per_1000 = (runs.get(key) or {}).get("handshakes_per_1000")
        verdicts.append(
            _judge(
                f"<= 10 upstream TLS handshakes per 1,000 messages ({label} mode)",
                per_1000,
                10,
                at_least=False,
                inclusive=True,
                shown=None if per_1000 is None else f"{per_1000:.1f} per 1,000",
            )
        )
    big = results.get("big_message", {})
    verdicts.append(
        _judge(
            f"{big.get('bytes', 100 * 2**20) / 2**20:g} MiB message: mailgate peak RSS < 64 MiB",
            big.get("peak_rss_mib"),
            64,
            at_least=False,
            unit=" MiB",
        )
    )
    idle = results.get("idle_sessions", {}).get("rss_mib")
    verdicts.append(
        _judge(
            f"{results.get('idle_sessions', {}).get('sessions', 2000)} idle sessions: "
            "mailgate RSS < 256 MiB",
            idle,
            256,
            at_least=False,
            unit=" MiB",
        )
    )
    added = results.get("latency", {}).get("added_p50_ms")
    verdicts.append(
        _judge(
            "p50 added latency < 5 ms on loopback (one app at a time)",
            added,
            5,
            at_least=False,
            unit=" ms",
        )
    )
    return verdicts


def _fmt(value: Any, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def summary(results: dict[str, Any], verdicts: list[Verdict]) -> str:
    p = results["parameters"]
    build = results.get("mailgate", {})
    lines = [
        f"mailgate bench — {results['date']} — {results['machine']['summary']}",
        f"mailgate: {build.get('command', '?')} (checkout {build.get('commit', '?')})",
        (
            f"workload: N={p['messages']} messages, S={p['size']} bytes, C={p['concurrency']} sessions, "
            "one message per connection (smtp-source)"
        ),
        "",
        (
            f"{'run':<34}{'msgs/s':>9}{'seconds':>9}{'TLS hs/1000':>13}{'peak RSS MiB':>14}"
            f"{'relay CPU%':>12}{'CPU ms/msg':>12}{'sink CPU%':>11}{'other load':>12}"
        ),
    ]
    names = {
        "direct": "(a) direct to the sink",
        "postfix": "(b) Postfix null client",
        "postfix_tls_reuse": "(b+) Postfix, TLS conn. reuse",
        "mailgate_relay": "(c) mailgate relay mode",
        "mailgate_queue": "(d) mailgate queue mode",
    }
    for key in results["throughput"]:
        if key.startswith("mailgate_relay_x"):  # --instances N: N processes on one port
            names[key] = f"(cx{key[16:]}) relay, {key[16:]} instances"
    for key, label in names.items():
        run = results["throughput"].get(key)
        if not run:
            continue
        if "skipped" in run:
            lines.append(f"{label:<34}  skipped: {run['skipped']}")
            continue
        lines.append(
            f"{label:<34}{_fmt(run.get('msgs_per_s')):>9}{_fmt(run.get('seconds'), '.2f'):>9}"
            f"{_fmt(run.get('handshakes_per_1000')):>13}{_fmt(run.get('peak_rss_mib'), '.1f'):>14}"
            f"{_fmt(run.get('relay_cpu_percent')):>12}{_fmt(run.get('relay_cpu_ms_per_message'), '.2f'):>12}"
            f"{_fmt(run.get('sink_cpu_percent')):>11}"
            f"{_fmt(run.get('other_load_cores'), '.2f'):>12}"
        )
    scaling = results.get("scaling")
    if scaling:
        lines.append(
            f"scaling: {scaling['instances']} instances on one port = x{scaling['speedup']} "
            f"the single instance's msgs/s; {scaling['note']}"
        )
    noisy = [
        k
        for k, run in results["throughput"].items()
        if (run.get("other_load_cores") or 0) > NOISE_CORES
    ]
    if noisy:
        lines.append(
            f"warning: processes outside the bench used more than {NOISE_CORES} core(s) during "
            f"{', '.join(noisy)}: those figures are low and the ratios unreliable; re-run on an idle machine"
        )
    busy_sink = [
        k
        for k, run in results["throughput"].items()
        if k != "direct" and (run.get("sink_cpu_percent") or 0) > SINK_BUSY_PERCENT
    ]
    if busy_sink:
        lines.append(
            f"warning: the sink used more than {SINK_BUSY_PERCENT}% of a core during {', '.join(busy_sink)}: "
            "it may have limited those runs"
        )
    lines.append(
        "(relay CPU%: % of one core used by the relay, all Postfix processes for (b); CPU ms/msg: "
        "the relay's CPU time per message; other load: cores busy outside the bench)"
    )
    lines.append("")
    lines.append(
        "ratios: " + ", ".join(f"{k} = {_fmt(v, '.2f')}" for k, v in ratios(results).items())
    )
    lat = results.get("latency", {})
    for key, label in (("direct", "direct"), ("mailgate_relay", "mailgate relay")):
        for mode in ("c1", "loaded"):
            figures = lat.get(key, {}).get(mode)
            if figures:
                lines.append(
                    f"latency {label:<15} {figures['concurrency']:>3} app(s), {figures['count']:>5} msgs: "
                    f"p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms"
                )
    if lat.get("added_p50_ms") is not None:
        lines.append(
            f"added latency (mailgate - direct, one app at a time): p50 {lat['added_p50_ms']:.2f} ms, "
            f"p99 {lat['added_p99_ms']:.2f} ms"
        )
    queued = lat.get("mailgate_queue", {}).get("c1")
    if queued and lat.get("queue_added_p50_ms") is not None:
        lines.append(
            f"queue mode, 1 app, {queued['count']} msgs (to a durable 250): p50 {queued['p50_ms']:.2f} ms, "
            f"p99 {queued['p99_ms']:.2f} ms; added p50 {lat['queue_added_p50_ms']:.2f} ms"
        )
    big = results.get("big_message", {})
    if big:
        lines.append(
            f"one {big.get('bytes', 0) / 2**20:g} MiB message through relay mode: {big.get('seconds', 0):.2f} s, "
            f"mailgate peak RSS {_fmt(big.get('peak_rss_mib'), '.1f')} MiB "
            f"(idle before it: {_fmt(big.get('rss_before_mib'), '.1f')} MiB)"
        )
    idle = results.get("idle_sessions", {})
    if idle:
        lines.append(
            f"{idle['sessions']} idle app sessions: mailgate RSS {idle['rss_mib']:.1f} MiB "
            f"(peak {idle['peak_rss_mib']:.1f} MiB; idle before them: {_fmt(idle.get('rss_before_mib'), '.1f')} MiB)"
        )
    lines += ["", "targets (issue 6):"]
    lines += [f"  {v.status:<5} {v.target}: {v.measured}" for v in verdicts]
    lines += ["", "targets (issue 13; the issue judges the median of three runs):"]
    lines += [f"  {v.status:<5} {v.target}: {v.measured}" for v in evaluate_issue13(results)]
    return "\n".join(lines)
