"""The configuration files we ship are valid, so a user copying one starts from a working file."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.toml import parse

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted([*ROOT.glob("policies/*.toml"), *ROOT.glob("deploy/*.toml")])


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_config_parses(path: Path, monkeypatch: pytest.MonkeyPatch):
    """Every shipped TOML file passes validation (secrets are not read here)."""
    monkeypatch.chdir(ROOT)
    document = __import__("tomllib").loads(path.read_text())
    for upstream in document.get("upstreams", {}).values():
        if "ca_file" in upstream:  # the demo rewrites it; samples point at files on the target host
            upstream["ca_file"] = str(ROOT / "certs" / "README.md")
    parse(document, str(path))


def test_there_are_shipped_files():
    """The sample and the demo policy exist (the parametrized test above is not vacuous)."""
    names = {p.name for p in SHIPPED}
    assert {"sample.toml", "demo.toml"} <= names
