"""Issue 12 item 14: a reload reaches open sessions at their next transaction (MAIL).

A session kept alive with NOOP must not go on under a policy the operator withdrew: at each
MAIL it takes the gateway's current config. An app the reload removed or changed must
authenticate again (``530 5.7.0``, then ``535`` for a removed app or an old password); new
rules and client limits apply from that MAIL; a transaction already under way finishes under
the config it started with. Real gateway, real sockets, a real `Gateway.reload`.
"""

from __future__ import annotations

import copy
import smtplib
from typing import Any

import pytest
from twisted.internet import threads

from gateway.config.toml import parse
from gateway.policy.passwords import make_hash
from tests.conftest import relay_all, upstream_table

OLD_PASSWORD, NEW_PASSWORD = "billing-password-old-1", "billing-password-new-2"
OLD_HASH, NEW_HASH = make_hash(OLD_PASSWORD, "scrypt"), make_hash(NEW_PASSWORD, "scrypt")
OTHER_PASSWORD = "another-app-password"
OTHER_HASH = make_hash(OTHER_PASSWORD, "scrypt")
SENDER = "invoices@billing.example.com"
BODY = b"Subject: s\r\n\r\nbody\r\n"


@pytest.fixture
def setup(make_upstream, start_gateway, ca):
    upstream = make_upstream()
    document = relay_all(upstream_table(upstream, ca.ca_file), require_auth=True)
    document["apps"] = {
        "billing": {"password_hash": OLD_HASH, "senders": ["*@billing.example.com"]},
        "other": {"password_hash": OTHER_HASH},
    }
    gw = start_gateway(document)

    def reload(change: Any) -> None:
        new = copy.deepcopy(document)
        change(new)
        config = parse(new, "reloaded.toml")
        threads.blockingCallFromThread(gw.reactor, gw.gateway.reload, config)

    return gw, upstream, reload


def session(gw: Any, password: str = OLD_PASSWORD, app: str = "billing") -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", gw.port, timeout=30)
    client.ehlo("app.test")
    client.login(app, password)
    assert client.noop()[0] == 250
    return client


def relays(client: smtplib.SMTP, sender: str = SENDER) -> None:
    assert client.mail(sender)[0] == 250
    assert client.rcpt("ops@example.net")[0] == 250
    assert client.data(BODY)[0] == 250


def removed(doc: dict[str, Any]) -> None:
    del doc["apps"]["billing"]


def new_password(doc: dict[str, Any]) -> None:
    doc["apps"]["billing"]["password_hash"] = NEW_HASH


def new_senders(doc: dict[str, Any]) -> None:
    doc["apps"]["billing"]["senders"] = ["*@other.example.com"]


def from_check(doc: dict[str, Any]) -> None:
    doc["apps"]["billing"]["check_from_header"] = True


@pytest.mark.parametrize(
    "change",
    [removed, new_password, new_senders, from_check],
    ids=["removed", "password", "senders", "check_from_header"],
)
def test_an_app_removed_or_changed_must_authenticate_again(setup, change):
    """Every MAIL after the reload is refused 530 5.7.0 until the app authenticates anew."""
    gw, _, reload = setup
    client = session(gw)
    relays(client)
    reload(change)
    for _ in range(10):  # kept alive with NOOP, message after message (below max_errors)
        code, text = client.mail(SENDER)
        assert (code, text[:5]) == (530, b"5.7.0")
        client.rset()
        assert client.noop()[0] == 250
    [refused, *_] = gw.audit.named("mail.refused")
    assert refused["app"] == "billing" and "reload" in refused["limit"]
    client.close()


def test_a_removed_app_or_old_password_cannot_authenticate_again(setup):
    gw, _, reload = setup
    client = session(gw)
    reload(new_password)
    assert client.mail(SENDER)[0] == 530
    code, _ = client.docmd("AUTH", "PLAIN " + _plain("billing", OLD_PASSWORD))
    assert code == 535
    client.close()
    gone = session(gw, NEW_PASSWORD)
    reload(removed)
    assert gone.mail(SENDER)[0] == 530
    assert gone.docmd("AUTH", "PLAIN " + _plain("billing", NEW_PASSWORD))[0] == 535
    gone.close()


def test_a_changed_app_authenticates_again_under_its_new_settings(setup):
    gw, _, reload = setup
    client = session(gw)
    reload(new_senders)
    assert client.mail(SENDER)[0] == 530
    client.login("billing", OLD_PASSWORD)  # the password did not change
    assert client.mail(SENDER)[0] == 553  # the new senders apply
    relays(client, "x@other.example.com")
    client.close()


def test_without_require_auth_a_dropped_app_loses_its_rules(make_upstream, start_gateway, ca):
    """Without require_auth the session goes on unauthenticated: rules for the app no longer match."""
    upstream = make_upstream()
    document = relay_all(upstream_table(upstream, ca.ca_file))
    document["apps"] = {
        "billing": {"password_hash": OLD_HASH},
        "other": {"password_hash": OTHER_HASH},
    }
    document["rules"][0]["apps"] = ["billing"]
    gw = start_gateway(document)
    client = session(gw)
    relays(client)
    new = copy.deepcopy(document)
    new["apps"]["billing"]["password_hash"] = NEW_HASH
    threads.blockingCallFromThread(gw.reactor, gw.gateway.reload, parse(new, "r.toml"))
    assert client.mail(SENDER)[0] == 530
    assert client.mail(SENDER)[0] == 250  # unauthenticated now
    assert client.rcpt("ops@example.net")[0] == 550  # the app's rule does not match
    client.close()


def test_an_unchanged_app_goes_on_without_a_new_auth(setup):
    """A reload that leaves the app as it was does not disturb its session."""
    gw, upstream, reload = setup
    client = session(gw)
    reload(lambda doc: doc["apps"].pop("other"))
    relays(client)
    client.close()


def test_new_rules_apply_to_an_open_session_from_its_next_mail(setup):
    gw, _, reload = setup
    client = session(gw, OTHER_PASSWORD, app="other")
    in_flight = session(gw, OTHER_PASSWORD, app="other")
    assert in_flight.mail("app@example.com")[0] == 250  # a transaction under way
    block = {"name": "blocked", "recipients": ["*@example.net"], "action": "reject"}
    reload(lambda doc: doc["rules"].insert(0, block))
    assert in_flight.rcpt("ops@example.net")[0] == 250  # it finishes under its config
    assert in_flight.data(BODY)[0] == 250
    for sessions in (client, in_flight):
        assert sessions.mail("app@example.com")[0] == 250
        assert sessions.rcpt("ops@example.net")[0] == 550  # the next transaction: new rules
        sessions.close()


def test_a_client_no_longer_allowed_is_refused_at_its_next_mail(setup):
    gw, _, reload = setup
    client = session(gw, OTHER_PASSWORD, app="other")
    reload(lambda doc: doc["listener"].update(allowed_clients=["192.0.2.0/24"]))
    assert client.mail("app@example.com")[0] == 503
    assert client.noop()[0] == 503
    client.close()


def _plain(user: str, password: str) -> str:
    import base64

    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


@pytest.mark.parametrize("step", ["rcpt", "data"])
def test_a_transaction_held_open_across_a_reload_cannot_relay_for_a_removed_app(setup, step):
    """MAIL before the reload, NOOPs, then RCPT or DATA after a reload removed the app: the
    transaction ends with 530 5.7.0 and nothing reaches the upstream."""
    gw, upstream, reload = setup
    client = session(gw)
    assert client.mail(SENDER)[0] == 250
    if step == "data":
        assert client.rcpt("ops@example.net")[0] == 250
    reload(removed)
    for _ in range(5):
        assert client.noop()[0] == 250
    if step == "rcpt":
        assert client.rcpt("ops@example.net")[0] == 530
    else:
        assert client.docmd("DATA")[0] == 530
    assert client.docmd("DATA")[0] == 503  # the transaction is over
    results = gw.audit.wait_for("message.result", 1)
    assert "reload" in results[-1]["reason"] and upstream.messages == []
    client.close()
