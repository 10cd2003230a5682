"""Rewrite README.md's "Tested against" table from the last interop run (interop/results.json).

`make interop README=1` runs it after the suite. The table sits between the markers
``<!-- tested-against:start -->`` and ``<!-- tested-against:end -->``; everything else in the
README is left as it is.
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(os.path.dirname(HERE), "README.md")
RESULTS = os.environ.get("MAILGATE_INTEROP_RESULTS", os.path.join(HERE, "results.json"))
START, END = "<!-- tested-against:start -->", "<!-- tested-against:end -->"
SERVERS = ("Postfix", "Dovecot", "Exim", "OpenSMTPD")
MARK = {"passed": "✓", "skipped": "–", "failed": "✗"}


def label(test: str) -> str:
    return test.removeprefix("test_").replace("_", " ")


def table(results: dict) -> str:
    versions = results["versions"]
    rows = results["results"]
    by_test: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_test.setdefault(row["test"], {})[row["server"]] = row
    servers = [s for s in SERVERS if s in versions]
    lines = [
        "| server | version (as the binary reports it) | checks passed | skipped: the server "
        "cannot express it | failed |",
        "| --- | --- | --- | --- | --- |",
    ]
    for server in servers:
        mine = [r for r in rows if r["server"] == server]
        passed = sum(r["outcome"] == "passed" for r in mine)
        skipped = [label(r["test"]) for r in mine if r["outcome"] == "skipped"]
        failed = [label(r["test"]) for r in mine if r["outcome"] == "failed"]
        lines.append(
            f"| {server} | {versions[server]} | {passed} of {len(mine)} | "
            f"{', '.join(skipped) or '–'} | {', '.join(failed) or '–'} |"
        )
    lines += ["", "| check | " + " | ".join(servers) + " |", "|---" * (len(servers) + 1) + "|"]
    for test, per_server in by_test.items():
        marks = [MARK.get(per_server.get(s, {}).get("outcome", ""), " ") for s in servers]
        lines.append(f"| {label(test)} | " + " | ".join(marks) + " |")
    lines += [
        "",
        "✓ passed, – skipped (the server cannot express the check; reasons in the",
        "run's output and in docs/testing.md), ✗ failed.",
    ]
    return "\n".join(lines)


def main() -> int:
    with open(RESULTS) as handle:
        results = json.load(handle)
    with open(README, encoding="utf-8") as handle:
        text = handle.read()
    if START not in text or END not in text:
        print(f"{README}: the markers {START} and {END} are missing", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    with open(README, "w", encoding="utf-8") as handle:
        handle.write(f"{head}{START}\n{table(results)}\n{END}{tail}")
    print(f"interop: rewrote the Tested against table in {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
