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


def test_every_package_is_listed_for_the_wheel():
    """pyproject.toml lists exactly the packages in gateway/, so none is left out of the wheel."""
    listed = set(
        __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
            "packages"
        ]
    )
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "gateway").rglob("__init__.py")
    }
    assert listed == found | {"gateway.policies"}


def test_the_shipped_policies_are_package_data():
    """gateway/policies is the repository's policies/ (what the wheel installs and the demo reads)."""
    from gateway.cli.demo import shipped_policy

    assert (
        shipped_policy("demo.toml").read_bytes() == (ROOT / "policies" / "demo.toml").read_bytes()
    )
    assert (ROOT / "gateway" / "policies").resolve() == (ROOT / "policies").resolve()
