"""README's claims point at tests and modules that exist, so a renamed test cannot orphan a claim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
# `tests/x/test_y.py` or `tests/x/test_y.py::test_name`, and `::test_b` after one of those
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)((?:::\w+)?)`|`::(\w+)`")


def _references() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for line in README.splitlines():
        last = ""
        for match in REFERENCE.finditer(line):
            path, name, more = match.group(1), match.group(2), match.group(3)
            if path:
                last = path
                found.append((path, name.removeprefix("::")))
            elif last:
                found.append((last, more))
    return found


def test_readme_names_tests():
    """The security table names tests at all (so the check below is not vacuous)."""
    assert len(_references()) > 30


def test_every_test_the_readme_names_exists():
    """Each test file the README cites exists, and each `::name` is defined in it."""
    missing = []
    for path, name in _references():
        file = ROOT / path
        if not file.is_file():
            missing.append(path)
        elif name and not re.search(rf"def {re.escape(name)}\b", file.read_text()):
            missing.append(f"{path}::{name}")
    assert missing == []


def test_every_module_in_the_security_table_exists():
    """The `where` column of the security table names modules under gateway/ that exist."""
    section = README.split("## Security", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| **")]
    assert rows
    missing = []
    for row in rows:
        where = row.split(" | ")[1]
        for module in re.findall(r"`([\w/]+\.py)`", where):
            if not (ROOT / "gateway" / module).is_file():
                missing.append(module)
    assert missing == []
