"""Unit tests of gateway/config.py: the issue-2 TOML contract, defaults, problems, environment."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.config.environment import from_environment
from gateway.config.model import LOOPBACK, Endpoint, ListenerConfig, UpstreamConfig
from gateway.config.secrets import Secret, resolve_password
from gateway.config.toml import load, parse
from gateway.errors import ConfigError, Problem, SecretError, UsageError

SOURCE = "/etc/mailgate/test.toml"
PIN = "ab" * 32


def document(**sections: Any) -> dict[str, Any]:
    """A valid document (one upstream, one relay rule) with sections replaced or added."""
    doc: dict[str, Any] = {
        "upstreams": {"provider": {"host": "smtp.example.com"}},
        "rules": [{"name": "all", "action": "relay", "upstream": "provider"}],
    }
    doc.update(sections)
    return doc


def with_upstream(**keys: Any) -> dict[str, Any]:
    """A valid document whose upstream `provider` has these keys besides its host."""
    return document(upstreams={"provider": {"host": "smtp.example.com", **keys}})


def with_rule(**keys: Any) -> dict[str, Any]:
    """A valid document whose only rule has exactly these keys."""
    return document(rules=[keys])


def problems(doc: dict[str, Any]) -> list[Problem]:
    """The problems parse() reports for `doc` (fails the test if it parses)."""
    with pytest.raises(ConfigError) as raised:
        parse(doc, SOURCE)
    return raised.value.problems


def problem_at(doc: dict[str, Any], key: str) -> Problem:
    """The one problem reported at `key`."""
    found = [p for p in problems(doc) if p.key == key]
    assert len(found) == 1, problems(doc)
    return found[0]


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
        listen=Endpoint("127.0.0.1", 2525),
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


def test_config_values_are_frozen() -> None:
    """Config values cannot be changed after validation."""
    config = parse(document(), SOURCE)
    with pytest.raises(AttributeError):
        config.listener.max_recipients = 1  # type: ignore[misc]


def test_listener_defaults() -> None:
    """Without a [listener] table the listener is 127.0.0.1:2525, loopback clients only."""
    listener = parse(document(), SOURCE).listener
    assert listener.listen == Endpoint("127.0.0.1", 2525)
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


def test_ipv6_listen_endpoint() -> None:
    """listen accepts a bracketed IPv6 address."""
    config = parse(document(listener={"listen": "[::1]:2525"}), SOURCE)
    assert (
        config.listener.listen == Endpoint("::1", 2525)
        and str(config.listener.listen) == "[::1]:2525"
    )


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


# --- rules ------------------------------------------------------------------------------------


def test_rules_keep_order() -> None:
    """Rules are kept in file order (the first match wins)."""
    config = parse(document(rules=[{"name": n, "action": "reject"} for n in "cab"]), SOURCE)
    assert [r.name for r in config.rules] == ["c", "a", "b"]


def test_rule_default_name() -> None:
    """A rule without a name is called rule-N (1-based)."""
    config = parse(
        document(rules=[{"name": "x", "action": "reject"}, {"action": "reject"}]), SOURCE
    )
    assert config.rules[1].name == "rule-2"


def test_rule_single_string_glob() -> None:
    """A single string where a list is expected is taken as a list of one."""
    assert parse(with_rule(action="reject", senders="*@a.example"), SOURCE).rules[0].senders == (
        "*@a.example",
    )


def test_rule_without_conditions_matches_all() -> None:
    """Conditions left out are None (no condition), not empty."""
    rule = parse(document(), SOURCE).rules[0]
    assert (rule.clients, rule.senders, rule.recipients) == (None, None, None)


def test_rule_action_required() -> None:
    """A rule without action is a problem."""
    problem_at(with_rule(name="r"), "rules[0].action")


def test_rule_action_choices() -> None:
    """An action other than relay or reject is a problem."""
    problem_at(with_rule(name="r", action="accept"), "rules[0].action")


def test_relay_rule_needs_upstream() -> None:
    """A relay rule without upstream is a problem."""
    problem_at(with_rule(name="r", action="relay"), "rules[0].upstream")


def test_rule_unknown_upstream() -> None:
    """A rule naming an upstream that is not defined is a problem listing the defined ones."""
    problem = problem_at(
        with_rule(name="r", action="relay", upstream="missing"), "rules[0].upstream"
    )
    assert "provider" in problem.expected and "'missing'" in problem.found


def test_duplicate_rule_names() -> None:
    """Two rules with the same name are a problem at the second one."""
    doc = document(
        rules=[
            {"name": "r", "action": "reject"},
            {"name": "s", "action": "reject"},
            {"name": "r", "action": "reject"},
        ]
    )
    problem_at(doc, "rules[2].name")


@pytest.mark.parametrize(
    ("keys", "key"),
    [
        ({"clients": ["10.0.0.0/8", "nope"]}, "rules[0].clients[1]"),
        ({"senders": []}, "rules[0].senders"),
        ({"recipients": [""]}, "rules[0].recipients"),
        ({"recipients": [1]}, "rules[0].recipients"),
    ],
)
def test_bad_rule_condition(keys: dict[str, Any], key: str) -> None:
    """A malformed clients, senders or recipients list is a problem at its key."""
    problem_at(with_rule(name="r", action="reject", **keys), key)


def test_rule_of_wrong_type() -> None:
    """A rule that is not a table is a problem at rules[N]."""
    problem_at(document(rules=["relay everything"]), "rules[0]")


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


# --- from_environment -------------------------------------------------------------------------


def test_environment_starttls_url() -> None:
    """MAILGATE_UPSTREAM=starttls://USER@HOST:587 makes a STARTTLS upstream with that user."""
    config = from_environment({"MAILGATE_UPSTREAM": "starttls://relay@smtp.example.com:587"})
    upstream = config.upstreams["default"]
    assert (
        upstream.tls,
        upstream.host,
        upstream.port,
        upstream.username,
        upstream.password_env,
    ) == ("starttls", "smtp.example.com", 587, "relay", "MAILGATE_UPSTREAM_PASSWORD")


def test_environment_smtps_url() -> None:
    """MAILGATE_UPSTREAM=smtps://USER@HOST:465 makes an implicit-TLS upstream."""
    upstream = from_environment(
        {"MAILGATE_UPSTREAM": "smtps://relay@smtp.example.com:465"}
    ).upstreams["default"]
    assert (upstream.tls, upstream.port) == ("implicit", 465)


@pytest.mark.parametrize(("scheme", "port"), [("starttls", 587), ("smtps", 465)])
def test_environment_default_port(scheme: str, port: int) -> None:
    """Without a port the scheme's usual port is used (587 for starttls, 465 for smtps)."""
    upstream = from_environment({"MAILGATE_UPSTREAM": f"{scheme}://u@smtp.example.com"}).upstreams[
        "default"
    ]
    assert upstream.port == port


def test_environment_username_with_at() -> None:
    """A username containing '@' is split at the last '@' before the host."""
    upstream = from_environment(
        {"MAILGATE_UPSTREAM": "starttls://relay@example.com@smtp.example.com:587"}
    ).upstreams["default"]
    assert (upstream.username, upstream.host) == ("relay@example.com", "smtp.example.com")


def test_environment_percent_encoded_username() -> None:
    """A percent-encoded username is decoded."""
    upstream = from_environment(
        {"MAILGATE_UPSTREAM": "starttls://relay%40example.com@smtp.example.com"}
    ).upstreams["default"]
    assert upstream.username == "relay@example.com"


def test_environment_ipv6_host_with_port() -> None:
    """A bracketed IPv6 host with a port is understood."""
    upstream = from_environment({"MAILGATE_UPSTREAM": "smtps://u@[2001:db8::25]:465"}).upstreams[
        "default"
    ]
    assert (upstream.host, upstream.port) == ("2001:db8::25", 465)


def test_environment_ipv6_host_without_port() -> None:
    """A bracketed IPv6 host without a port gets the scheme's default port."""
    upstream = from_environment({"MAILGATE_UPSTREAM": "smtps://u@[2001:db8::25]"}).upstreams[
        "default"
    ]
    assert (upstream.host, upstream.port) == ("2001:db8::25", 465)


def test_environment_without_user_has_no_auth() -> None:
    """A URL without user configures no AUTH."""
    upstream = from_environment({"MAILGATE_UPSTREAM": "starttls://smtp.example.com"}).upstreams[
        "default"
    ]
    assert upstream.username is None and upstream.password_env is None


def test_environment_password_in_url_refused() -> None:
    """A password in the URL is refused, and the error does not repeat it."""
    with pytest.raises(UsageError) as raised:
        from_environment({"MAILGATE_UPSTREAM": "starttls://relay:hunter2@smtp.example.com:587"})
    assert "hunter2" not in str(raised.value) and "MAILGATE_UPSTREAM_PASSWORD" in str(raised.value)


def test_environment_bad_scheme_error_hides_password() -> None:
    """A URL with a wrong scheme is refused without echoing a password it contains."""
    with pytest.raises(UsageError) as raised:
        from_environment({"MAILGATE_UPSTREAM": "smtp://relay:hunter2@smtp.example.com:587"})
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        "smtp://u@smtp.example.com",
        "smtp.example.com:587",
        "starttls://",
        "starttls://u@smtp.example.com:port",
        "starttls://u@:587",
    ],
)
def test_environment_bad_url(url: str) -> None:
    """A malformed MAILGATE_UPSTREAM is a UsageError naming the variable and the expected form."""
    with pytest.raises(UsageError) as raised:
        from_environment({"MAILGATE_UPSTREAM": url})
    assert str(raised.value).startswith("MAILGATE_UPSTREAM: ")


@pytest.mark.parametrize("environ", [{}, {"MAILGATE_UPSTREAM": ""}], ids=["unset", "empty"])
def test_environment_missing_variable(environ: dict[str, str]) -> None:
    """Without MAILGATE_UPSTREAM there is no configuration: a UsageError saying what to set."""
    with pytest.raises(UsageError) as raised:
        from_environment(environ)
    assert "--config" in str(raised.value) and "MAILGATE_UPSTREAM=" in str(raised.value)


def test_environment_relays_everything_from_loopback() -> None:
    """The embedded default: 127.0.0.1:2525, loopback clients only, one rule relaying all."""
    config = from_environment({"MAILGATE_UPSTREAM": "starttls://u@smtp.example.com"})
    assert config.listener.listen == Endpoint("127.0.0.1", 2525)
    assert config.listener.allowed_clients == LOOPBACK
    (rule,) = config.rules
    assert (rule.action, rule.upstreams, rule.clients, rule.senders, rule.recipients) == (
        "relay",
        ("default",),
        None,
        None,
        None,
    )


def test_environment_optional_variables(tmp_path: Path) -> None:
    """MAILGATE_LISTEN, MAILGATE_AUDIT and MAILGATE_UPSTREAM_CA_FILE are applied."""
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    config = from_environment(
        {
            "MAILGATE_UPSTREAM": "starttls://u@smtp.example.com",
            "MAILGATE_LISTEN": "[::1]:2626",
            "MAILGATE_AUDIT": str(tmp_path / "audit.jsonl"),
            "MAILGATE_UPSTREAM_CA_FILE": str(ca),
        }
    )
    assert config.listener.listen == Endpoint("::1", 2626)
    assert config.audit.path == str(tmp_path / "audit.jsonl")
    assert config.upstreams["default"].ca_file == str(ca)


def test_environment_bad_listen_is_config_error() -> None:
    """A malformed MAILGATE_LISTEN is reported like a config problem, with source "environment"."""
    with pytest.raises(ConfigError) as raised:
        from_environment(
            {"MAILGATE_UPSTREAM": "starttls://u@h.example", "MAILGATE_LISTEN": "everywhere"}
        )
    assert [(p.source, p.key) for p in raised.value.problems] == [
        ("environment", "listener.listen")
    ]


# --- resolve_password -------------------------------------------------------------------------


def test_resolve_password_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """resolve_password reads password_env's variable into a Secret."""
    monkeypatch.setenv("MAILGATE_UNIT_PW", "pw-from-env")
    upstream = UpstreamConfig(name="p", host="h", username="u", password_env="MAILGATE_UNIT_PW")
    assert resolve_password(upstream) == Secret("pw-from-env")


def test_resolve_password_from_file(tmp_path: Path) -> None:
    """resolve_password reads password_file into a Secret."""
    path = tmp_path / "pw"
    path.write_text("pw-from-file\n")
    os.chmod(path, 0o600)
    upstream = UpstreamConfig(name="p", host="h", username="u", password_file=str(path))
    assert resolve_password(upstream) == Secret("pw-from-file")


def test_resolve_password_none_without_auth() -> None:
    """An upstream without a password reference has no password (no AUTH)."""
    assert resolve_password(UpstreamConfig(name="p", host="h")) is None


def test_resolve_password_error_names_upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    """A password that cannot be read is a SecretError naming the upstream and the variable."""
    monkeypatch.delenv("MAILGATE_UNIT_ABSENT", raising=False)
    upstream = UpstreamConfig(name="p", host="h", username="u", password_env="MAILGATE_UNIT_ABSENT")
    with pytest.raises(SecretError) as raised:
        resolve_password(upstream)
    assert str(raised.value).startswith("upstreams.p: ") and "MAILGATE_UNIT_ABSENT" in str(
        raised.value
    )


def test_ipv4_mapped_client_network_matches_mapped_clients() -> None:
    """A ``::ffff:10.0.0.0/104`` clients entry is read as 10.0.0.0/8, the form clients arrive in."""
    from gateway.policy import rules as policy
    from gateway.smtp.address import Address

    config = parse(
        {
            "upstreams": {"u": {"host": "h"}},
            "rules": [{"clients": ["::ffff:10.0.0.0/104"], "action": "relay", "upstream": "u"}],
        },
        "t",
    )
    client = policy.parse_client("::ffff:10.1.2.3")
    assert (
        policy.decide(config, client, Address("a@b.example"), Address("c@d.example")).action
        == "relay"
    )


def test_null_sender_glob_matches_only_the_null_sender() -> None:
    """``senders = ["<>"]`` matches bounces (MAIL FROM:<>) and nothing else."""
    from gateway.policy import rules as policy
    from gateway.smtp.address import Address

    config = parse(
        {
            "upstreams": {"u": {"host": "h"}},
            "rules": [{"senders": ["<>"], "action": "relay", "upstream": "u"}],
        },
        "t",
    )
    client = policy.parse_client("127.0.0.1")
    assert policy.decide(config, client, Address(""), Address("c@d.example")).action == "relay"
    assert (
        policy.decide(config, client, Address("a@b.example"), Address("c@d.example")).action
        == "reject"
    )
