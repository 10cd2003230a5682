"""bench/targets.py: the issue's targets judged from figures (pure)."""

from __future__ import annotations

from typing import Any

from targets import evaluate, ratios, summary


def figures(**overrides: Any) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": "2026-11-28T00:00:00Z",
        "machine": {"summary": "test machine"},
        "parameters": {"messages": 1000, "size": 10240, "concurrency": 20},
        "throughput": {
            "direct": {"msgs_per_s": 1000.0},
            "postfix": {"msgs_per_s": 200.0},
            "mailgate_relay": {"msgs_per_s": 400.0, "handshakes_per_1000": 10.0},
            "mailgate_queue": {"msgs_per_s": 200.0, "handshakes_per_1000": 4.0},
        },
        "latency": {"added_p50_ms": 4.99, "added_p99_ms": 6.0},
        "big_message": {"bytes": 104857600, "peak_rss_mib": 63.9},
        "idle_sessions": {"sessions": 2000, "rss_mib": 255.9, "peak_rss_mib": 255.9},
    }
    results.update(overrides)
    return results


def statuses(results: dict[str, Any]) -> dict[str, str]:
    return {v.target: v.status for v in evaluate(results)}


def test_ratios_are_relay_over_postfix_queue_over_postfix_relay_over_direct() -> None:
    """c/b, d/b and c/a are computed from msgs/s of the same run."""
    assert ratios(figures()) == {"c/b": 2.0, "d/b": 1.0, "c/a": 0.4}


def test_figures_exactly_at_the_targets_pass() -> None:
    """2.0x, 1.0x, 10 handshakes per 1,000 are inclusive; RSS and latency just under the limit pass."""
    results = figures()
    results["throughput"]["mailgate_relay"]["msgs_per_s"] = 800.0
    results["throughput"]["postfix"]["msgs_per_s"] = 400.0
    results["throughput"]["mailgate_queue"]["msgs_per_s"] = 400.0
    assert set(statuses(results).values()) == {"PASS"}


def test_each_figure_past_its_target_is_a_miss() -> None:
    """Every target turns to MISS when its figure is on the wrong side."""
    results = figures(
        latency={"added_p50_ms": 5.0, "added_p99_ms": 6.0},
        big_message={"bytes": 104857600, "peak_rss_mib": 64.0},
        idle_sessions={"sessions": 2000, "rss_mib": 256.0, "peak_rss_mib": 256.0},
    )
    results["throughput"]["mailgate_relay"]["handshakes_per_1000"] = 10.1
    results["throughput"]["mailgate_queue"]["handshakes_per_1000"] = 11.0
    results["throughput"]["mailgate_relay"]["msgs_per_s"] = 399.0
    results["throughput"]["mailgate_queue"]["msgs_per_s"] = 199.0
    assert set(statuses(results).values()) == {"MISS"}


def test_a_skipped_queue_run_is_not_measured_rather_than_a_miss() -> None:
    """Without queue mode, its two targets say n/a and the summary says it was skipped."""
    results = figures()
    results["throughput"]["mailgate_queue"] = {"skipped": "queue mode not available in this build"}
    judged = statuses(results)
    assert [s for t, s in judged.items() if "queue mode" in t] == ["n/a", "n/a"]
    assert "skipped: queue mode not available in this build" in summary(results, evaluate(results))


def test_summary_warns_when_other_processes_loaded_the_machine() -> None:
    """A run with other load above the threshold is named in a warning."""
    results = figures()
    results["throughput"]["postfix"]["other_load_cores"] = 0.9
    assert "warning: processes outside the bench used" in summary(results, evaluate(results))


def test_the_big_message_is_labelled_with_its_real_size() -> None:
    """A quick run with a 10 MiB message says 10 MiB, not 100 MiB."""
    results = figures(big_message={"bytes": 10 * 2**20, "peak_rss_mib": 50.0, "seconds": 1.0})
    assert "10 MiB message: mailgate peak RSS < 64 MiB" in statuses(results)
    assert "one 10 MiB message through relay mode" in summary(results, evaluate(results))


def test_summary_warns_when_the_sink_was_busy_during_a_relay_run() -> None:
    """A relay run with the sink above 80% of a core is named; the direct run is its ceiling run."""
    results = figures()
    results["throughput"]["direct"]["sink_cpu_percent"] = 95
    results["throughput"]["mailgate_relay"]["sink_cpu_percent"] = 85
    text = summary(results, evaluate(results))
    assert "warning: the sink used more than 80% of a core during mailgate_relay:" in text


def test_summary_shows_the_n_instance_run_and_its_scaling() -> None:
    """--instances 2: the (cx2) row and the scaling line with its caveat appear in the summary."""
    results = figures()
    results["throughput"]["mailgate_relay_x2"] = {"msgs_per_s": 700.0}
    results["scaling"] = {
        "instances": 2,
        "speedup": 1.75,
        "note": "2 instances on 2 core(s), shared with the sink and smtp-source",
    }
    text = summary(results, evaluate(results))
    assert "(cx2) relay, 2 instances" in text
    assert "scaling: 2 instances on one port = x1.75" in text


def test_issue13_targets_judge_rates_against_both_postfixes_and_cpu_per_message() -> None:
    """d/b >= 1.5, d/b+ >= 1.0, c/b >= 3.0, c/b+ >= 2.0, queue CPU <= 1.5x relay and <= 2 ms,
    relay CPU <= 1 ms: each judged, and a missing run is n/a."""
    from targets import evaluate_issue13

    results = figures()
    runs = results["throughput"]
    runs["postfix"]["msgs_per_s"] = 100.0
    runs["postfix_tls_reuse"] = {"msgs_per_s": 150.0}
    runs["mailgate_relay"].update(msgs_per_s=300.0, relay_cpu_ms_per_message=1.0)
    runs["mailgate_queue"].update(msgs_per_s=150.0, relay_cpu_ms_per_message=1.5)
    verdicts = {v.target: v.status for v in evaluate_issue13(results)}
    assert set(verdicts.values()) == {"PASS"} and len(verdicts) == 7
    runs["mailgate_queue"]["relay_cpu_ms_per_message"] = 2.1
    missed = [
        t for t, s in ((v.target, v.status) for v in evaluate_issue13(results)) if s == "MISS"
    ]
    assert missed == [
        "queue CPU per message <= 1.5x relay mode's",
        "queue CPU <= 2.0 ms per message",
    ]
    del runs["postfix_tls_reuse"]
    assert [v.status for v in evaluate_issue13(results)][1] == "n/a"
