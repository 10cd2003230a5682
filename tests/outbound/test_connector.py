"""The upstream connector's pure parts: EHLO capabilities, endpoints, refusals during set-up."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint

from gateway.config import toml as configuration
from gateway.config.model import UpstreamConfig
from gateway.outbound.connector import UpstreamConnector, _endpoint, parse_ehlo
from gateway.outbound.failure import UpstreamFailure
from gateway.smtp.replies import Reply


def upstream(**settings: Any) -> UpstreamConfig:
    document = {
        "upstreams": {"up": {"host": "smtp.example.net", **settings}},
        "rules": [{"name": "r", "action": "relay", "upstream": "up"}],
    }
    return configuration.parse(document, "t.toml").upstreams["up"]


def test_ehlo_capabilities_are_keywords_with_their_parameters():
    """Lines after the first become KEYWORD -> parameters, keywords upper-cased."""
    reply = Reply(250, "", "up.example greets you\nsize 35882577\nAUTH PLAIN LOGIN\n8BITMIME")
    assert parse_ehlo(reply) == {"SIZE": "35882577", "AUTH": "PLAIN LOGIN", "8BITMIME": ""}


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("192.0.2.1", TCP4ClientEndpoint),
        ("2001:db8::1", TCP6ClientEndpoint),
        ("smtp.example.net", HostnameEndpoint),
    ],
)
def test_an_ip_literal_skips_name_resolution(host, kind):
    """IPv4 and IPv6 literals connect directly; a name goes through the resolver."""
    from twisted.internet import reactor  # HostnameEndpoint wants a resolver; nothing connects

    assert isinstance(_endpoint(reactor, upstream(host=host)), kind)


def test_a_refused_step_names_the_step_and_keeps_the_upstreams_reply():
    """A greeting or EHLO answered with the wrong code: 451 for the app, the step in the reason."""
    connector = UpstreamConnector(task.Clock(), upstream(), None, "gw.example")
    answer = Reply(554, "5.7.1", "go away")
    with pytest.raises(UpstreamFailure) as caught:
        connector._expect(answer, 220, "greeting")
    failure = caught.value
    assert failure.reply.code == 451 and failure.upstream_reply == answer
    assert failure.reason == "up: greeting answered 554 5.7.1"


def test_sender_placeholder_sessions_authenticate_as_the_sender():
    """A connector for username = "$sender" opens sessions as each message's sender."""
    connector = UpstreamConnector(
        task.Clock(), upstream(username="$sender", password_env="P"), None, "gw.example"
    )
    assert connector.user_for("app@example.com") == "app@example.com"
