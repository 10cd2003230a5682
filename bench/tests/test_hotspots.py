"""bench/hotspots.py: py-spy's collapsed stacks summarised (pure)."""

from __future__ import annotations

from pathlib import Path

from hotspots import render, summarise

STACKS = """\
<module> (mailgate:8);run (twisted/internet/base.py:1318);doRead (twisted/internet/tcp.py:248) 30
<module> (mailgate:8);run (twisted/internet/base.py:1318);do_handshake (OpenSSL/SSL.py:2000) 60
<module> (mailgate:8);run (twisted/internet/base.py:1320);feed (/x/site-packages/gateway/data.py:90) 10
"""


def test_self_time_goes_to_the_leaf_and_inclusive_to_every_function(tmp_path: Path) -> None:
    """Leaves get self time; a function on every stack gets 100% inclusive, line numbers merged."""
    path = tmp_path / "stacks.txt"
    path.write_text(STACKS)
    profile = summarise(str(path))
    assert profile["samples"] == 100
    assert profile["self"][0] == ["do_handshake (OpenSSL/SSL.py)", 60.0]
    assert ["run (twisted/internet/base.py)", 100.0] in profile["inclusive"]


def test_self_time_is_grouped_by_package(tmp_path: Path) -> None:
    """OpenSSL, twisted and gateway frames are attributed to their packages."""
    path = tmp_path / "stacks.txt"
    path.write_text(STACKS)
    packages = dict(summarise(str(path))["self_by_package"])
    assert packages == {"pyOpenSSL": 60.0, "twisted": 30.0, "gateway (mailgate)": 10.0}
    assert "self time by package" in render(summarise(str(path)))


def test_only_the_main_thread_is_ranked_and_threads_are_shared_out(tmp_path: Path) -> None:
    """With --threads, thread-pool samples count in the thread split but not in the function ranking."""
    path = tmp_path / "stacks.txt"
    path.write_text(
        "thread (1): MainThread;run (twisted/internet/base.py:1) 3\n"
        "thread (1);doRead (twisted/internet/tcp.py:2) 1\n"
        "thread (2): worker;Condition.wait (threading.py:3) 4\n"
    )
    profile = summarise(str(path))
    assert profile["samples"] == 4
    assert profile["threads"] == [
        ["main (reactor) thread", 50.0],
        ["other threads (thread pool)", 50.0],
    ]
    assert all("Condition.wait" not in name for name, _ in profile["self"])
