"""gateway.config.toml: the issue-2 contract, section defaults, problems, [queue], load()."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from gateway.config.model import Endpoint, ListenEntry, ListenerConfig, QueueConfig
from gateway.config.toml import load, parse
from gateway.errors import ConfigError, Problem
from tests.config.documents import (
    SOURCE,
    document,
    problem_at,
    problem_texts,
    problems,
    queued_document,
)

# --- the whole contract -----------------------------------------------------------------------


def test_full_contract_parses(tmp_path: Path) -> None:
    """Every key of the issue-2 contract is read into the frozen config values."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here\n")
    config = parse(
        {
            "listener": {
                "listen": "127.0.0.1:2525",
                "allowed_clients": ["127.0.0.0/8", "::1/128"],
                "hostname": "mailgate.example",
                "max_message_size": 26214400,
                "max_recipients": 100,
                "idle_timeout": 300,
            },
            "audit": {"path": "-"},
            "upstreams": {
                "NAME": {
                    "host": "smtp.example.com",
                    "port": 587,
                    "tls": "starttls",
                    "username": "relay@example.com",
                    "password_env": "VAR",
                    "ca_file": str(ca),
                    "min_tls_version": "1.2",
                }
            },
            "rules": [
                {
                    "name": "billing",
                    "clients": ["10.1.0.0/16"],
                    "senders": ["*@billing.example.com"],
                    "recipients": ["*"],
                    "action": "relay",
                    "upstream": "NAME",
                }
            ],
        },
        SOURCE,
    )
    assert config.listener == ListenerConfig(
        listen=(ListenEntry(Endpoint("127.0.0.1", 2525)),),
        allowed_clients=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
        hostname="mailgate.example",
        max_message_size=26214400,
        max_recipients=100,
        idle_timeout=300.0,
    )
    assert config.audit.path == "-"
    upstream = config.upstreams["NAME"]
    assert (
        upstream.host,
        upstream.port,
        upstream.tls,
        upstream.username,
        upstream.password_env,
        upstream.ca_file,
        upstream.min_tls_version,
    ) == ("smtp.example.com", 587, "starttls", "relay@example.com", "VAR", str(ca), "1.2")
    (rule,) = config.rules
    assert (
        rule.name,
        rule.clients,
        rule.senders,
        rule.recipients,
        rule.action,
        rule.upstreams,
    ) == (
        "billing",
        (ipaddress.ip_network("10.1.0.0/16"),),
        ("*@billing.example.com",),
        ("*",),
        "relay",
        ("NAME",),
    )
    assert config.source == SOURCE


def test_listener_defaults() -> None:
    """Without a [listener] table the listener is 127.0.0.1:2525, loopback clients only."""
    listener = parse(document(), SOURCE).listener
    assert listener.listen == (ListenEntry(Endpoint("127.0.0.1", 2525)),)
    assert listener.allowed_clients == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert (listener.max_message_size, listener.max_recipients, listener.idle_timeout) == (
        26214400,
        100,
        300,
    )


def test_audit_default_is_stdout() -> None:
    """Without an [audit] table the audit goes to stdout ("-")."""
    assert parse(document(), SOURCE).audit.path == "-"


# --- problems: naming file, key, found, expected ----------------------------------------------


def test_problem_names_file_key_found_expected() -> None:
    """A problem names the file, the key, what was found and what was expected."""
    problem = problem_at(document(listener={"max_recipients": 0}), "listener.max_recipients")
    assert problem == Problem(
        SOURCE, "listener.max_recipients", "0 (integer)", "an integer from 1 to 100000"
    )
    assert (
        str(problem) == f"{SOURCE}: listener.max_recipients: found 0 (integer), "
        "expected an integer from 1 to 100000"
    )


def test_all_problems_reported_at_once() -> None:
    """Every problem of a document is reported in one ConfigError, not just the first."""
    doc = document(
        listener={"listen": "nowhere", "max_message_size": "big", "colour": "red"},
        upstreams={"provider": {"host": "smtp.example.com", "tls": "ssl", "port": 0}},
        rules=[{"name": "r", "action": "relay", "upstream": "nope"}],
    )
    keys = {p.key for p in problems(doc)}
    assert keys == {
        "listener.listen",
        "listener.max_message_size",
        "listener.colour",
        "upstreams.provider.tls",
        "upstreams.provider.port",
        "rules[0].upstream",
    }


def test_config_error_message_lists_every_problem() -> None:
    """str(ConfigError) has one line per problem."""
    with pytest.raises(ConfigError) as raised:
        parse(document(listener={"max_recipients": 0, "idle_timeout": -1}), SOURCE)
    assert str(raised.value).count("\n") == 1 and str(raised.value).count(SOURCE) == 2


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"colour": 1}, "colour"),
        ({"listener": {"port": 25}}, "listener.port"),
        ({"audit": {"file": "x"}}, "audit.file"),
        (
            {"upstreams": {"provider": {"host": "h", "password": "x"}}},
            "upstreams.provider.password",
        ),
        ({"rules": [{"name": "r", "action": "reject", "sender": "*"}]}, "rules[0].sender"),
    ],
    ids=["top", "listener", "audit", "upstream", "rule"],
)
def test_unknown_key(doc: dict[str, Any], key: str) -> None:
    """An unknown key is a problem at every level, listing the known keys."""
    problem = problem_at(document(**doc), key)
    assert problem.found == "an unknown key" and problem.expected.startswith("one of: ")


@pytest.mark.parametrize(
    ("listener", "key"),
    [
        ({"listen": "127.0.0.1"}, "listener.listen"),
        ({"listen": "mail.example.com:25"}, "listener.listen"),
        ({"listen": "127.0.0.1:70000"}, "listener.listen"),
        ({"listen": 2525}, "listener.listen"),
        ({"allowed_clients": ["10.0.0.0/8", "ten"]}, "listener.allowed_clients[1]"),
        ({"allowed_clients": []}, "listener.allowed_clients"),
        ({"hostname": ""}, "listener.hostname"),
        ({"max_message_size": 10}, "listener.max_message_size"),
        ({"max_message_size": "25M"}, "listener.max_message_size"),
        ({"max_recipients": True}, "listener.max_recipients"),
        ({"max_recipients": 1.5}, "listener.max_recipients"),
        ({"idle_timeout": 0}, "listener.idle_timeout"),
        ({"idle_timeout": "5m"}, "listener.idle_timeout"),
    ],
)
def test_bad_listener_value(listener: dict[str, Any], key: str) -> None:
    """A listener value of the wrong type or range is a problem at its key."""
    problem_at(document(listener=listener), key)


def test_section_of_wrong_type() -> None:
    """A section that is not a table (or rules not an array) is a problem naming the section."""
    keys = {p.key for p in problems({"listener": "x", "audit": 1, "upstreams": [], "rules": {}})}
    assert keys == {"listener", "audit", "upstreams", "rules"}


# --- [queue] ---------------------------------------------------------------------------------


def test_defaults_are_postfix_like():
    """Without [queue]: ./var/spool, 300/4000 s backoff, 5 days, bounces on; 10 connections."""
    config = parse(queued_document(), "q.toml")
    assert config.queue == QueueConfig("./var/spool", 300, 4000, 432000, True)
    assert config.upstreams["up"].max_connections == 10
    assert config.rules[0].delivery == "queue"


def test_queue_values_are_read():
    """Every [queue] key is taken as given; one-second backoffs are allowed."""
    doc = queued_document(
        queue={
            "path": "/srv/spool",
            "min_backoff": 1,
            "max_backoff": 2,
            "max_age": 60,
            "bounce": False,
        }
    )
    assert parse(doc, "q.toml").queue == QueueConfig("/srv/spool", 1, 2, 60, False)


def test_max_backoff_below_min_backoff_is_a_problem():
    """max_backoff smaller than min_backoff is reported on max_backoff."""
    found = problem_texts(queued_document(queue={"min_backoff": 600, "max_backoff": 300}))
    assert "q.toml: queue.max_backoff: found 300 (integer)" in found["queue.max_backoff"]


def test_bad_queue_values_are_all_reported():
    """A wrong type, a zero backoff and an unknown key in [queue] are reported together."""
    found = problem_texts(queued_document(queue={"bounce": "yes", "min_backoff": 0, "retry": 1}))
    assert set(found) == {"queue.bounce", "queue.min_backoff", "queue.retry"}
    assert "expected true or false" in found["queue.bounce"]


def test_min_free_is_off_by_default_and_takes_a_size_or_bytes():
    """queue.min_free: 0 (off) unless given, as "1GiB", as bytes, or 0."""
    assert parse(queued_document(), "q.toml").queue.min_free == 0
    for written, size in (("1GiB", 1024**3), (52428800, 52428800), (0, 0)):
        assert parse(queued_document(queue={"min_free": written}), "q.toml").queue.min_free == size


def test_a_bad_min_free_names_the_file_the_key_and_what_was_expected():
    """A negative number or a size without sense is a problem on queue.min_free."""
    for written in (-1, "lots", "1.5GiB", True):
        found = problem_texts(queued_document(queue={"min_free": written}))
        text = found["queue.min_free"]
        assert text.startswith("q.toml: queue.min_free: found ")
        assert 'expected a size in bytes: a whole number, or a string such as "100MiB"' in text


# --- load() -----------------------------------------------------------------------------------


def test_load_file(tmp_path: Path) -> None:
    """load() reads a TOML file and records it as the config's source."""
    path = tmp_path / "mailgate.toml"
    path.write_text(
        '[upstreams.p]\nhost = "smtp.example.com"\n\n'
        '[[rules]]\nname = "r"\naction = "relay"\nupstream = "p"\n'
    )
    assert load(str(path)).source == str(path)


def test_load_problems_name_the_file(tmp_path: Path) -> None:
    """Problems of a loaded file carry the file's path."""
    path = tmp_path / "bad.toml"
    path.write_text("[listener]\nmax_recipients = 0\n")
    with pytest.raises(ConfigError) as raised:
        load(str(path))
    assert [p.source for p in raised.value.problems] == [str(path)]


def test_load_missing_file(tmp_path: Path) -> None:
    """A missing file is one problem naming the file."""
    path = str(tmp_path / "absent.toml")
    with pytest.raises(ConfigError) as raised:
        load(path)
    (problem,) = raised.value.problems
    assert (problem.source, problem.key) == (path, "(file)")


def test_load_toml_syntax_error(tmp_path: Path) -> None:
    """A TOML syntax error is one problem naming the file and the position."""
    path = tmp_path / "broken.toml"
    path.write_text("[listener\n")
    with pytest.raises(ConfigError) as raised:
        load(str(path))
    (problem,) = raised.value.problems
    assert (problem.source, problem.key, problem.expected) == (str(path), "(syntax)", "valid TOML")
    assert "line 1" in problem.found


# --- issue 12: PROXY trust and the RCPT command cap --------------------------------------------


def test_proxy_protocol_needs_proxy_trusted() -> None:
    """proxy_protocol = true without the balancers' networks is a problem naming proxy_trusted."""
    problem = problem_at(document(listener={"proxy_protocol": True}), "listener.proxy_trusted")
    assert problem.found == "nothing" and "listener.proxy_protocol = true" in problem.expected
    empty = document(listener={"proxy_protocol": True, "proxy_trusted": []})
    assert problem_at(empty, "listener.proxy_trusted").found == "[] (array)"


def test_proxy_trusted_is_read_as_networks() -> None:
    """proxy_trusted holds CIDR networks; a bad one is named by its index."""
    listener = {"proxy_protocol": True, "proxy_trusted": ["10.0.0.5/32", "2001:db8::/64"]}
    parsed = parse(document(listener=listener), SOURCE).listener
    assert parsed.proxy_trusted == (
        ipaddress.ip_network("10.0.0.5/32"),
        ipaddress.ip_network("2001:db8::/64"),
    )
    bad = document(listener={"proxy_protocol": True, "proxy_trusted": ["10.0.0.5/33"]})
    assert problem_at(bad, "listener.proxy_trusted[0]").found == "'10.0.0.5/33' (string)"


def test_max_rcpt_commands_default_and_range() -> None:
    """listener.max_rcpt_commands: 1000 by default, 1 to 1000000."""
    assert parse(document(), SOURCE).listener.max_rcpt_commands == 1000
    problem = problem_at(document(listener={"max_rcpt_commands": 0}), "listener.max_rcpt_commands")
    assert problem.expected == "an integer from 1 to 1000000"


# --- issue 15: several instances on one port --------------------------------------------------


def test_reuse_port_is_off_by_default_and_read_as_a_boolean() -> None:
    """listener.reuse_port defaults to false; a non-boolean is a problem naming the key."""
    assert parse(document(), SOURCE).listener.reuse_port is False
    assert parse(document(listener={"reuse_port": True}), SOURCE).listener.reuse_port is True
    problem = problem_at(document(listener={"reuse_port": "yes"}), "listener.reuse_port")
    assert problem.expected == "true or false" and problem.found == "'yes' (string)"


def test_add_received_default_and_type() -> None:
    """listener.add_received: true by default; false turns it off; a non-boolean is a problem."""
    assert parse(document(), SOURCE).listener.add_received is True
    off = parse(document(listener={"add_received": False}), SOURCE)
    assert off.listener.add_received is False
    problem = problem_at(document(listener={"add_received": "no"}), "listener.add_received")
    assert (problem.found, problem.expected) == ("'no' (string)", "true or false")
    assert str(problem).startswith(f"{SOURCE}: listener.add_received: ")
