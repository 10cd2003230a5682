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
