"""gateway.config.model: the values are frozen and show no secret."""

from __future__ import annotations

import pytest

from gateway.config.model import UpstreamConfig
from gateway.config.toml import parse
from tests.config.documents import SOURCE, document


def test_config_values_are_frozen() -> None:
    """Config values cannot be changed after validation."""
    config = parse(document(), SOURCE)
    with pytest.raises(AttributeError):
        config.listener.max_recipients = 1  # type: ignore[misc]


def test_upstream_url_shows_no_secret() -> None:
    """An upstream's URL form names scheme, user, host and port, never a password."""
    upstream = UpstreamConfig(
        name="x",
        host="smtp.example.com",
        port=465,
        tls="implicit",
        username="relay@example.com",
        password_env="VAR",
    )
    assert upstream.url == "smtps://relay%40example.com@smtp.example.com:465"
