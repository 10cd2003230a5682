"""gateway.config.upstreams: the [upstreams.NAME] tables, their defaults and their problems."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config.toml import parse
from tests.config.documents import (
    SOURCE,
    document,
    problem_at,
    problem_texts,
    queued_document,
    with_upstream,
)

PIN = "ab" * 32


def test_upstream_defaults() -> None:
    """An upstream with only a host gets port 587, STARTTLS, TLS 1.2 minimum and no AUTH."""
    upstream = parse(document(), SOURCE).upstreams["provider"]
    assert (upstream.port, upstream.tls, upstream.min_tls_version, upstream.username) == (
        587,
        "starttls",
        "1.2",
        None,
    )


@pytest.mark.parametrize(
    ("port", "tls"), [(465, "implicit"), (587, "starttls"), (25, "starttls"), (2465, "starttls")]
)
def test_tls_default_follows_port(port: int, tls: str) -> None:
    """The default tls is implicit for port 465 and starttls for every other port."""
    assert parse(with_upstream(port=port), SOURCE).upstreams["provider"].tls == tls


def test_tls_explicit_overrides_port_default() -> None:
    """An explicit tls wins over the port's default."""
    assert (
        parse(with_upstream(port=465, tls="starttls"), SOURCE).upstreams["provider"].tls
        == "starttls"
    )


def test_upstream_host_required() -> None:
    """An upstream without host is a problem at upstreams.NAME.host."""
    problem = problem_at(document(upstreams={"provider": {"port": 587}}), "upstreams.provider.host")
    assert "host" in problem.expected


@pytest.mark.parametrize(
    ("keys", "key"),
    [
        ({"port": 0}, "upstreams.provider.port"),
        ({"port": "587"}, "upstreams.provider.port"),
        ({"tls": "none"}, "upstreams.provider.tls"),
        ({"tls": "ssl"}, "upstreams.provider.tls"),
        ({"min_tls_version": "1.1"}, "upstreams.provider.min_tls_version"),
        ({"min_tls_version": 1.2}, "upstreams.provider.min_tls_version"),
        ({"connect_timeout": 0}, "upstreams.provider.connect_timeout"),
    ],
)
def test_bad_upstream_value(keys: dict[str, Any], key: str) -> None:
    """An upstream value of the wrong type or outside its choices is a problem at its key."""
    problem_at(with_upstream(**keys), key)


def test_no_plaintext_tls_mode() -> None:
    """The only tls modes are starttls and implicit: there is no plaintext upstream."""
    assert 'expected one of "starttls", "implicit"' in str(
        problem_at(with_upstream(tls="none"), "upstreams.provider.tls")
    )


def test_min_tls_version_13() -> None:
    """min_tls_version "1.3" is accepted."""
    assert (
        parse(with_upstream(min_tls_version="1.3"), SOURCE).upstreams["provider"].min_tls_version
        == "1.3"
    )


def test_password_file_accepted(tmp_path: Path) -> None:
    """username with password_file (instead of password_env) is valid."""
    config = parse(with_upstream(username="u", password_file=str(tmp_path / "pw")), SOURCE)
    assert config.upstreams["provider"].password_file == str(tmp_path / "pw")


def test_password_env_and_file_both_refused() -> None:
    """password_env and password_file together are a problem: exactly one of the two."""
    problem = problem_at(
        with_upstream(username="u", password_env="V", password_file="/f"),
        "upstreams.provider.password_file",
    )
    assert problem.expected == "exactly one of the two"


def test_username_without_password_refused() -> None:
    """A username without password_env or password_file is a problem."""
    problem_at(with_upstream(username="u"), "upstreams.provider.password_env")


def test_password_without_username_refused() -> None:
    """A password reference without a username is a problem."""
    problem_at(with_upstream(password_env="V"), "upstreams.provider.username")


def test_ca_file_must_exist() -> None:
    """A ca_file that does not exist is a problem naming the path."""
    problem = problem_at(with_upstream(ca_file="/nonexistent/ca.pem"), "upstreams.provider.ca_file")
    assert "/nonexistent/ca.pem" in problem.found


def test_ca_file_problem_shows_long_path_whole(tmp_path: Path) -> None:
    """A missing ca_file with a long path is named in full, so the user can find it."""
    missing = str(tmp_path / ("deep-directory-name/" * 4) / "provider-ca.pem")
    problem = problem_at(with_upstream(ca_file=missing), "upstreams.provider.ca_file")
    assert missing in problem.found


def test_ca_file_directory_refused(tmp_path: Path) -> None:
    """A ca_file that is a directory is a problem."""
    problem_at(with_upstream(ca_file=str(tmp_path)), "upstreams.provider.ca_file")


@pytest.mark.parametrize(
    "pin",
    [PIN, PIN.upper(), ":".join(PIN[i : i + 2] for i in range(0, 64, 2))],
    ids=["lower", "upper", "colons"],
)
def test_pin_sha256_accepted_and_normalised(pin: str) -> None:
    """pin_sha256 takes 64 hex digits, any case, colons optional, and stores lower-case hex."""
    assert parse(with_upstream(pin_sha256=[pin]), SOURCE).upstreams["provider"].pin_sha256 == (PIN,)


@pytest.mark.parametrize(
    "pin",
    ["ab" * 31, "ab" * 33, "zz" * 32, "sha256/" + PIN],
    ids=["short", "long", "not-hex", "prefix"],
)
def test_pin_sha256_bad_format(pin: str) -> None:
    """A pin that is not 64 hex digits is a problem at its index."""
    problem = problem_at(with_upstream(pin_sha256=[PIN, pin]), "upstreams.provider.pin_sha256[1]")
    assert "64 hex digits" in problem.expected


def test_upstream_of_wrong_type() -> None:
    """An upstream that is not a table is a problem at upstreams.NAME."""
    problem_at(document(upstreams={"provider": "smtp.example.com"}), "upstreams.provider")


def test_max_connections_out_of_range_is_a_problem():
    """max_connections is an integer from 1 to 1000."""
    doc = queued_document(upstreams={"up": {"host": "smtp.example.net", "max_connections": 0}})
    assert "an integer from 1 to 1000" in problem_texts(doc)["upstreams.up.max_connections"]
