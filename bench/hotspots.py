"""Where mailgate spends its time: a summary of py-spy's collapsed stacks (``--format raw``). Pure.

Each line of the input is ``frame;frame;...;leaf COUNT``, a frame being
``function (path:line)``; with ``--threads`` the first frame is
``thread (TID): NAME``. Samples are split by thread (the reactor runs in
MainThread; Twisted's thread pool runs getaddrinfo), and for the main thread
self time goes to the leaf, inclusive time to every distinct function on the
stack, and self time is grouped by package (gateway, twisted, OpenSSL,
structlog, ...) to show which layer costs what.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

_THREAD = re.compile(r"^thread \((?P<tid>\w+)\)(?::\s*(?P<name>.*))?$")
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<path>[^()]*?)(?::\d+)?\)$")
_PACKAGES = (
    ("gateway/", "gateway (mailgate)"),
    ("twisted/", "twisted"),
    ("OpenSSL/", "pyOpenSSL"),
    ("cryptography/", "cryptography"),
    ("service_identity/", "service-identity"),
    ("structlog/", "structlog"),
    ("json/", "json (stdlib)"),
    ("zope/", "zope.interface"),
)


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3", "/work/"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker != "site-packages/" else tail
    return path


def _function(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    return f"{match['function']} ({_short(match['path'])})"


def _package(function: str) -> str:
    for marker, name in _PACKAGES:
        if f"({marker}" in function or f"/{marker}" in function:
            return name
    if "(<" in function or function.endswith(")") is False:
        return "native / other"
    return "python stdlib / other"


def _samples(path: str) -> list[tuple[str | None, list[str], int]]:
    """(thread id or None, frames, count) per line; thread names are resolved by the caller."""
    samples = []
    with open(path) as handle:
        for line in handle:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            frames = [frame for frame in stack.split(";") if frame]
            tid = None
            if frames and (thread := _THREAD.match(frames[0])):
                tid, frames = thread["tid"], frames[1:]
            samples.append((tid, frames, int(count_text)))
    return samples


def summarise(path: str, top: int = 15) -> dict[str, Any]:
    samples = _samples(path)
    names: dict[str, str] = {}
    with open(path) as handle:
        for line in handle:
            first = line.split(";", 1)[0]
            if (thread := _THREAD.match(first)) and thread["name"]:
                names[thread["tid"]] = thread["name"].strip()
    main = [tid for tid, name in names.items() if name == "MainThread"]
    by_thread: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    everything = sum(count for _, _, count in samples)
    total = 0
    for tid, frames, count in samples:
        is_main = tid is None or not main or tid in main
        by_thread["main (reactor) thread" if is_main else "other threads (thread pool)"] += count
        if not is_main:
            continue
        functions = [_function(frame) for frame in frames]
        if not functions:
            continue
        total += count
        own[functions[-1]] += count
        for function in set(functions):
            inclusive[function] += count
    if total == 0:
        return {"samples": 0}
    packages: Counter[str] = Counter()
    for function, count in own.items():
        packages[_package(function)] += count

    def share(counter: Counter[str], n: int) -> list[list[Any]]:
        return [[name, round(100 * count / total, 1)] for name, count in counter.most_common(n)]

    return {
        "samples": total,
        "self": share(own, top),
        "inclusive": share(inclusive, top * 2),
        "self_by_package": share(packages, len(packages)),
        "threads": [
            [name, round(100 * count / everything, 1)] for name, count in by_thread.most_common()
        ],
    }


def render(profile: dict[str, Any]) -> str:
    threads = ", ".join(f"{name} {pct}%" for name, pct in profile.get("threads", []))
    lines = [
        f"profile of mailgate {profile.get('mode', 'relay')} mode under load ({profile['samples']} samples of the reactor thread, py-spy):",
        f"  samples by thread: {threads}",
        "  self time by package (reactor thread):",
    ]
    lines += [f"    {pct:5.1f}%  {name}" for name, pct in profile["self_by_package"]]
    lines.append("  top functions by self time (reactor thread):")
    lines += [f"    {pct:5.1f}%  {name}" for name, pct in profile["self"]]
    lines.append("  top functions by inclusive time (reactor thread):")
    lines += [f"    {pct:5.1f}%  {name}" for name, pct in profile["inclusive"]]
    return "\n".join(lines)
