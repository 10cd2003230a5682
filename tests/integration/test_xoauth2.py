"""XOAUTH2 end to end: smtplib -> mailgate -> XOAUTH2-only aiosmtpd, tokens from a local HTTPS endpoint."""

from __future__ import annotations

import datetime
import smtplib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.testing.oauth import OAuthSubmissionServer, TokenServer
from tests.conftest import relay_all, upstream_table

CLIENT_SECRET = "client-secret-Zq8~never-logged"
MAILBOX = "relay@corp.example"
BODY = b"From: app@example.com\r\nTo: ops@example.net\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def token_server(server_cert: Any) -> Iterator[TokenServer]:
    server = TokenServer(server_cert.server_context()).start()
    yield server
    server.stop()


@pytest.fixture
def make_oauth_upstream(server_cert: Any) -> Iterator[Callable[..., OAuthSubmissionServer]]:
    servers: list[OAuthSubmissionServer] = []

    def make(
        tokens: TokenServer, mailboxes: set[str] | None = None, **kwargs: Any
    ) -> OAuthSubmissionServer:
        server = OAuthSubmissionServer(
            server_cert.server_context(), tokens, mailboxes or {MAILBOX}, **kwargs
        )
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def client_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILGATE_TEST_CLIENT_SECRET", CLIENT_SECRET)


def oauth_table(
    upstream: OAuthSubmissionServer, tokens: TokenServer, ca_file: str, **overrides: Any
) -> dict[str, Any]:
    table: dict[str, Any] = {
        "host": "localhost",
        "port": upstream.port,
        "tls": "starttls",
        "ca_file": ca_file,
        "auth": "xoauth2",
        "username": MAILBOX,
        "oauth_grant": "client_credentials",
        "oauth_token_url": tokens.url,
        "oauth_client_id": "app-id-1234",
        "oauth_client_secret_env": "MAILGATE_TEST_CLIENT_SECRET",
        "oauth_scope": "https://outlook.office365.com/.default",
        "oauth_ca_file": ca_file,
        "connect_timeout": 5,
        "command_timeout": 10,
        "data_timeout": 10,
        "pool_idle_timeout": 0,  # no pooling: every message opens a session and authenticates
    }
    table.update(overrides)
    return table


def send(port: int, sender: str = "app@example.com", body: bytes = BODY) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("app.test")
        assert client.mail(sender)[0] == 250
        code, text = client.rcpt("ops@example.net")
        if code != 250:
            return code, text
        return client.data(body)


def test_delivers_for_several_token_lifetimes_with_one_fetch_per_lifetime(
    token_server, make_oauth_upstream, start_gateway, ca
):
    """Messages keep flowing across token expiries; the endpoint sees about one request per lifetime."""
    token_server.script.lifetime = 2
    token_server.script.grace = 1  # valid 3 s, announced as 2 s: the gateway must refresh on time
    upstream = make_oauth_upstream(token_server)
    gw = start_gateway(relay_all(oauth_table(upstream, token_server, ca.ca_file)))
    started = time.monotonic()
    sent = 0
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo("app.test")
        while len(token_server.requests) < 4:
            assert client.sendmail("app@example.com", ["ops@example.net"], BODY) == {}
            sent += 1
    elapsed = time.monotonic() - started
    assert len(upstream.wait_for(sent)) == sent
    fetches = len(token_server.requests)
    assert fetches * 4 <= sent
    assert fetches <= elapsed / 1.6 + 2  # refreshed a fifth of a lifetime early, not more often
    assert all(ok for _, _, ok in upstream.bearer_attempts)
    results = gw.audit.wait_for("message.result", sent)
    assert {
        (r["outcome"], r["auth_user"], r["oauth_grant"], r["auth_mechanism"]) for r in results
    } == {("relayed", MAILBOX, "client_credentials", "XOAUTH2")}
    issued = gw.audit.named("oauth.token_issued")
    assert len(issued) == fetches and issued[0]["client_id"] == "app-id-1234"


def test_token_request_carries_the_client_credentials_grant(
    token_server, make_oauth_upstream, start_gateway, ca
):
    """The token request is the client_credentials form with the configured client and scope."""
    upstream = make_oauth_upstream(token_server)
    gw = start_gateway(relay_all(oauth_table(upstream, token_server, ca.ca_file)))
    assert send(gw.port)[0] == 250
    [request] = token_server.requests
    assert request.form == {
        "grant_type": "client_credentials",
        "client_id": "app-id-1234",
        "client_secret": CLIENT_SECRET,
        "scope": "https://outlook.office365.com/.default",
    }


def test_secrets_and_tokens_never_reach_the_audit(
    token_server, make_oauth_upstream, start_gateway, ca
):
    """Neither the access tokens nor the client secret appear in any audit event."""
    upstream = make_oauth_upstream(token_server)
    gw = start_gateway(relay_all(oauth_table(upstream, token_server, ca.ca_file)))
    token_server.revoke_all()  # nothing issued yet; next: one good token, then a refused one
    assert send(gw.port)[0] == 250
    token_server.revoke_all()
    assert send(gw.port)[0] == 250
    gw.audit.wait_for("session.closed", 2)
    assert len(token_server.issued) == 2
    for secret in [CLIENT_SECRET, *token_server.issued]:
        assert secret not in gw.audit.text


@pytest.mark.parametrize("closes", [False, True], ids=["same-connection", "new-connection"])
def test_revoked_token_is_refreshed_and_retried_once(
    closes, token_server, make_oauth_upstream, start_gateway, ca
):
    """A token the upstream refuses (334, then 535) is refetched once and AUTH retried once."""
    upstream = make_oauth_upstream(token_server)
    upstream.close_after_reject = closes
    gw = start_gateway(relay_all(oauth_table(upstream, token_server, ca.ca_file)))
    assert send(gw.port)[0] == 250
    token_server.revoke_all()
    assert send(gw.port)[0] == 250
    assert len(token_server.requests) == 2
    assert [ok for _, _, ok in upstream.bearer_attempts] == [True, False, True]
    assert upstream.connections == (3 if closes else 2)
    assert len(upstream.wait_for(2)) == 2


def test_token_refused_after_refresh_gives_4xx_after_one_retry(
    token_server, make_oauth_upstream, start_gateway, ca
):
    """If the refreshed token is refused too, the app gets 451 4.7.0 and nothing more is tried."""
    upstream = make_oauth_upstream(token_server, mailboxes={"someone-else@corp.example"})
    gw = start_gateway(relay_all(oauth_table(upstream, token_server, ca.ca_file)))
    code, text = send(gw.port)
    assert (code, text[:5]) == (451, b"4.7.0")
    assert len(token_server.requests) == 2 and len(upstream.bearer_attempts) == 2
    [result] = gw.audit.wait_for("message.result")
    assert (
        "AUTH XOAUTH2 as relay@corp.example refused after error challenge: status 401"
        in result["upstream_error"]
    )
    assert "(with a refreshed token)" in result["upstream_error"]


def test_token_endpoint_error_gives_4xx_and_is_audited_without_secrets(
    token_server, make_oauth_upstream, start_gateway, ca
):
    """An endpoint error answer is a 451 to the app; its error and description go to the audit, redacted."""
    token_server.script.error = (
        401,
        {
            "error": "invalid_client",
            "error_description": f"AADSTS7000215: Invalid client secret provided: {CLIENT_SECRET}\r\nTrace",
        },
    )
    upstream = make_oauth_upstream(token_server)
    gw = start_gateway(relay_all(oauth_table(upstream, token_server, ca.ca_file)))
    code, text = send(gw.port)
    assert (code, text[:5]) == (451, b"4.7.0")
    assert upstream.bearer_attempts == [] and upstream.messages == []
    [result] = gw.audit.wait_for("message.result")
    assert result["outcome"] == "deferred"
    assert (
        "answered HTTP 401: invalid_client: AADSTS7000215: Invalid client secret provided: <secret>"
        in result["upstream_error"]
    )
    [failed] = gw.audit.named("oauth.token_failed")
    assert failed["error"].endswith("<secret>")
    assert CLIENT_SECRET not in gw.audit.text


def test_token_endpoint_unreachable_gives_4xx(make_oauth_upstream, token_server, start_gateway, ca):
    """Nothing listening at the token URL: 451 to the app, "cannot connect" in the audit."""
    import socket

    upstream = make_oauth_upstream(token_server)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    table = oauth_table(
        upstream, token_server, ca.ca_file, oauth_token_url=f"https://127.0.0.1:{dead}/token"
    )
    gw = start_gateway(relay_all(table))
    code, text = send(gw.port)
    assert (code, text[:5]) == (451, b"4.7.0")
    [result] = gw.audit.wait_for("message.result")
    assert (
        f"token endpoint https://127.0.0.1:{dead}/token: cannot connect" in result["upstream_error"]
    )


def test_token_endpoint_with_untrusted_certificate_is_refused(
    make_oauth_upstream, token_server, start_gateway, ca, tmp_path
):
    """A token endpoint whose certificate the configured CA did not sign gets no request."""
    from gateway.testing.pki import ThrowawayCA

    stranger = ThrowawayCA(str(tmp_path)).issue("stranger", "localhost")
    rogue = TokenServer(stranger.server_context()).start()
    try:
        upstream = make_oauth_upstream(token_server)
        gw = start_gateway(
            relay_all(oauth_table(upstream, token_server, ca.ca_file, oauth_token_url=rogue.url))
        )
        code, _ = send(gw.port)
        assert code == 451 and rogue.requests == []
        [result] = gw.audit.wait_for("message.result")
        assert "TLS verification failed" in result["upstream_error"]
    finally:
        rogue.stop()


def test_fifty_concurrent_sessions_cause_one_token_fetch(
    token_server, make_oauth_upstream, start_gateway, ca, reactor
):
    """While one token fetch is under way, every other session waits for it instead of fetching."""
    from twisted.internet import threads

    token_server.script.hold.clear()  # the endpoint answers only when released
    upstream = make_oauth_upstream(token_server)
    gw = start_gateway(
        relay_all(oauth_table(upstream, token_server, ca.ca_file, max_connections=50))
    )
    asked = threading.Condition()
    calls = []
    cache = gw.gateway.tokens
    original = cache.token

    def counting(*args: Any) -> Any:
        with asked:
            calls.append(args)
            asked.notify_all()
        return original(*args)

    threads.blockingCallFromThread(reactor, setattr, cache, "token", counting)
    outcomes: list[int] = []
    workers = [
        threading.Thread(target=lambda: outcomes.append(send(gw.port)[0])) for _ in range(50)
    ]
    for worker in workers:
        worker.start()
    with asked:
        assert asked.wait_for(lambda: len(calls) >= 50, 30)
    token_server.script.hold.set()
    for worker in workers:
        worker.join(30)
    assert outcomes == [250] * 50
    assert len(token_server.requests) == 1
    assert len(upstream.wait_for(50)) == 50


def test_oauthbearer_is_used_when_xoauth2_is_not_offered(
    token_server, make_oauth_upstream, start_gateway, ca
):
    """An upstream offering only OAUTHBEARER gets the RFC 7628 initial response."""
    upstream = make_oauth_upstream(token_server, mechanisms=("OAUTHBEARER",))
    gw = start_gateway(relay_all(oauth_table(upstream, token_server, ca.ca_file)))
    assert send(gw.port)[0] == 250
    assert upstream.bearer_attempts == [("OAUTHBEARER", MAILBOX, True)]
    [result] = gw.audit.wait_for("message.result")
    assert result["auth_mechanism"] == "OAUTHBEARER"


def test_no_bearer_mechanism_offered_gives_4xx(token_server, make_upstream, start_gateway, ca):
    """A password-only upstream with auth = "xoauth2" gets no token and the app a 451."""
    upstream = make_upstream()
    table = oauth_table(upstream, token_server, ca.ca_file)  # type: ignore[arg-type]
    gw = start_gateway(relay_all(table))
    code, _ = send(gw.port)
    assert code == 451 and token_server.requests == []
    [result] = gw.audit.wait_for("message.result")
    assert "neither XOAUTH2 nor OAUTHBEARER offered" in result["upstream_error"]


@pytest.fixture(scope="module")
def service_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def service_account_file(tmp_path: Any, key: Any) -> str:
    import json
    import os

    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path = tmp_path / "service-account.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "client_email": "mailgate@proj.iam.gserviceaccount.com",
                "private_key_id": "kid-1",
                "private_key": pem,
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    os.chmod(path, 0o600)
    return str(path)


def test_m365_preset_with_host_and_token_url_overridden(
    token_server, make_oauth_upstream, start_gateway, ca
):
    """provider = "m365" supplies the grant's scope; host, port and token URL point to loopback."""
    upstream = make_oauth_upstream(token_server)
    table = {
        "provider": "m365",
        "host": "localhost",
        "port": upstream.port,
        "ca_file": ca.ca_file,
        "auth": "xoauth2",
        "username": MAILBOX,
        "oauth_token_url": token_server.url,
        "oauth_client_id": "app-id-1234",
        "oauth_client_secret_env": "MAILGATE_TEST_CLIENT_SECRET",
        "oauth_ca_file": ca.ca_file,
    }
    gw = start_gateway(relay_all(table))
    assert send(gw.port)[0] == 250
    [request] = token_server.requests
    assert request.form["grant_type"] == "client_credentials"
    assert request.form["scope"] == "https://outlook.office365.com/.default"
    assert upstream.messages[0].auth_user == MAILBOX


def test_gmail_preset_with_a_service_account_signs_a_jwt_for_the_mailbox(
    token_server, make_oauth_upstream, start_gateway, ca, tmp_path, service_key
):
    """provider = "gmail" with a service account: an RS256 assertion with sub = the mailbox, Google's scope."""
    token_server.public_key = service_key.public_key()
    upstream = make_oauth_upstream(token_server)
    table = {
        "provider": "gmail",
        "host": "localhost",
        "port": upstream.port,
        "ca_file": ca.ca_file,
        "auth": "xoauth2",
        "username": MAILBOX,
        "oauth_token_url": token_server.url,
        "service_account_file": service_account_file(tmp_path, service_key),
        "oauth_ca_file": ca.ca_file,
    }
    gw = start_gateway(relay_all(table))
    assert send(gw.port)[0] == 250
    [request] = token_server.requests
    assert request.claims is not None, "the assertion's signature did not verify"
    assert request.claims["iss"] == "mailgate@proj.iam.gserviceaccount.com"
    assert request.claims["sub"] == MAILBOX and request.claims["aud"] == token_server.url
    assert request.claims["scope"] == "https://mail.google.com/"
    assert request.claims["exp"] - request.claims["iat"] == 3600
    [result] = gw.audit.wait_for("message.result")
    assert result["oauth_grant"] == "jwt_bearer" and result["auth_user"] == MAILBOX


def test_sender_placeholder_authenticates_as_each_envelope_sender(
    token_server, make_oauth_upstream, start_gateway, ca, tmp_path, service_key
):
    """username = "$sender" authenticates as each envelope sender (JWT subject too); pooled sessions stay per sender."""
    token_server.public_key = service_key.public_key()
    senders = ["alice@corp.example", "bob@corp.example"]
    upstream = make_oauth_upstream(token_server, mailboxes=set(senders))
    table = {
        "provider": "gmail",
        "host": "localhost",
        "port": upstream.port,
        "ca_file": ca.ca_file,
        "auth": "xoauth2",
        "username": "$sender",
        "oauth_token_url": token_server.url,
        "service_account_file": service_account_file(tmp_path, service_key),
        "oauth_ca_file": ca.ca_file,
    }
    gw = start_gateway(relay_all(table))
    for sender in senders + senders:
        assert send(gw.port, sender=sender)[0] == 250
    assert [
        r.claims["sub"] for r in token_server.requests
    ] == senders  # one token per mailbox, reused
    assert [m.auth_user for m in upstream.wait_for(4)] == senders + senders
    assert upstream.connections == 2  # each sender's second message reused its own pooled session
    assert [r["auth_user"] for r in gw.audit.wait_for("message.result", 4)] == senders + senders


def test_each_mailbox_gets_its_own_connections_up_to_max_connections_per_identity(
    token_server, make_oauth_upstream, start_gateway, ca
):
    """username = "$sender", max_connections_per_identity = 2: alice and bob each hold two
    sessions at once; alice's third message waits for one of her own (no third connection
    for her) while bob's go through, then reuses it."""
    senders = ["alice@corp.example", "bob@corp.example"]
    upstream = make_oauth_upstream(token_server, mailboxes=set(senders))
    gate = upstream.script.hold_data = threading.Event()
    table = oauth_table(
        upstream,
        token_server,
        ca.ca_file,
        username="$sender",
        max_connections_per_identity=2,
        pool_idle_timeout=30,
    )
    gw = start_gateway(relay_all(table))
    pool = next(iter(gw.gateway.pools.values()))
    waiting = threading.Event()
    wait = pool._wait

    def noted_wait(user: str | None) -> Any:
        waiting.set()  # a transaction waits in the pool (called on the reactor thread)
        return wait(user)

    pool._wait = noted_wait  # type: ignore[method-assign]
    codes: list[int] = []

    def sending(sender: str) -> threading.Thread:
        thread = threading.Thread(target=lambda: codes.append(send(gw.port, sender=sender)[0]))
        thread.start()
        return thread

    threads = [sending("alice@corp.example"), sending("alice@corp.example")]
    assert upstream.wait_held(2) == ["alice@corp.example"] * 2
    threads.append(sending("alice@corp.example"))  # over alice's cap: waits in the pool
    assert waiting.wait(30) and [u for u, _ in pool._waiters] == ["alice@corp.example"]
    threads += [sending("bob@corp.example"), sending("bob@corp.example")]
    assert upstream.wait_held(4) == ["alice@corp.example"] * 2 + ["bob@corp.example"] * 2
    assert upstream.connections == 4 and len(upstream.held) == 4  # alice's third is not sent
    gate.set()
    for thread in threads:
        thread.join(30)
    assert codes == [250] * 5
    assert (
        sorted(m.auth_user for m in upstream.wait_for(5))
        == ["alice@corp.example"] * 3 + ["bob@corp.example"] * 2
    )
    assert upstream.connections == 4  # alice's third message went on one of her two sessions


def test_sender_placeholder_refuses_the_null_sender(
    token_server, make_oauth_upstream, start_gateway, ca
):
    """With username = "$sender", a bounce (MAIL FROM:<>) cannot authenticate: 550 5.7.1, no token."""
    upstream = make_oauth_upstream(token_server)
    gw = start_gateway(
        relay_all(oauth_table(upstream, token_server, ca.ca_file, username="$sender"))
    )
    code, text = send(gw.port, sender="")
    assert (code, text[:5]) == (550, b"5.7.1")
    assert token_server.requests == [] and upstream.bearer_attempts == []


def test_refresh_token_grant_uses_and_keeps_a_rotated_refresh_token(
    token_server, make_oauth_upstream, start_gateway, ca, tmp_path, monkeypatch
):
    """The refresh_token grant sends the file's token; a rotated one is used next and kept in
    the state directory (the operator's file is left as it was)."""
    import os

    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    path = tmp_path / "refresh-token"
    path.write_text("1//refresh-original\n")
    os.chmod(path, 0o600)
    token_server.script.lifetime = 1
    token_server.script.rotate_refresh_token = "1//refresh-rotated"
    upstream = make_oauth_upstream(token_server)
    table = oauth_table(
        upstream,
        token_server,
        ca.ca_file,
        oauth_grant="refresh_token",
        refresh_token_file=str(path),
        oauth_scope="https://mail.google.com/",
    )
    gw = start_gateway(relay_all(table))
    while len(token_server.requests) < 2:
        assert send(gw.port)[0] == 250
    first, second = token_server.requests[:2]
    assert (
        first.form["grant_type"] == "refresh_token"
        and first.form["refresh_token"] == "1//refresh-original"
    )
    assert second.form["refresh_token"] == "1//refresh-rotated"
    kept = tmp_path / "state" / "refresh-tokens" / "up"
    assert kept.read_text() == "1//refresh-rotated\n" and os.stat(kept).st_mode & 0o077 == 0
    assert path.read_text() == "1//refresh-original\n"
    gw.audit.wait_for("session.closed", 2)
    assert "refresh-original" not in gw.audit.text and "refresh-rotated" not in gw.audit.text


def test_probe_of_a_sender_upstream_stops_before_auth(
    token_server, make_oauth_upstream, start_gateway, ca, reactor
):
    """A readiness probe (no sender) of a "$sender" upstream proves TLS and EHLO; no token, no AUTH."""
    from twisted.internet import threads

    upstream = make_oauth_upstream(token_server)
    gw = start_gateway(
        relay_all(oauth_table(upstream, token_server, ca.ca_file, username="$sender"))
    )

    def probe() -> Any:
        return gw.gateway.connector("up").open(probe=True).addCallback(lambda s: (s.quit(), s)[1])

    session = threads.blockingCallFromThread(reactor, probe)
    assert session.auth_user is None and session.tls.version.startswith("TLSv1.")
    assert token_server.requests == [] and upstream.bearer_attempts == []


def test_a_provider_that_keeps_refusing_does_not_cost_a_token_per_message(
    token_server, make_oauth_upstream, start_gateway, ca
):
    """Refused again and again: one forced refresh, then the cached token is used and the app gets 451."""
    upstream = make_oauth_upstream(token_server, mailboxes={"someone-else@corp.example"})
    gw = start_gateway(relay_all(oauth_table(upstream, token_server, ca.ca_file)))
    for _ in range(4):
        assert send(gw.port)[0] == 451
    assert len(token_server.requests) == 2  # the first token and one forced refresh
    assert len(upstream.bearer_attempts) == 5  # 2 for the first message, then 1 each
    results = gw.audit.wait_for("message.result", 4)
    assert (
        "not retried: a refused token forced a refresh less than 30 s ago"
        in results[-1]["upstream_error"]
    )


def test_sender_upstream_opened_without_a_sender_is_refused(
    token_server, make_oauth_upstream, start_gateway, ca, reactor
):
    """A caller that forgets the sender of a "$sender" upstream gets a 4xx, never an unauthenticated session."""
    from twisted.internet import threads

    from gateway.outbound.failure import UpstreamFailure

    upstream = make_oauth_upstream(token_server)
    gw = start_gateway(
        relay_all(oauth_table(upstream, token_server, ca.ca_file, username="$sender"))
    )

    def open_without_sender() -> Any:
        return (
            gw.gateway.connector("up")
            .open()
            .addErrback(lambda f: f.trap(UpstreamFailure) and f.value)
        )

    failure = threads.blockingCallFromThread(reactor, open_without_sender)
    assert failure.reply.code == 451 and "needs the envelope sender" in failure.reason
    assert upstream.bearer_attempts == []


# --- OAuth health (issue 16): token metrics, the endpoint's error code, provider hints ---


def samples(gw) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:  # type: ignore[no-untyped-def]
    """Every sample of the gateway's metrics, by name and labels."""
    text = gw.gateway.metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_token_metrics_move_with_a_refresh_and_a_failed_refresh(
    token_server, make_oauth_upstream, start_gateway, ca
):
    """A token issued sets the last refresh and the expiry; a failure counts by error code."""
    upstream = make_oauth_upstream(token_server)
    table = oauth_table(
        upstream, token_server, ca.ca_file, oauth_client_secret_expires=datetime.date(2027, 6, 30)
    )
    gw = start_gateway(relay_all(table))
    assert send(gw.port)[0] == 250
    found = samples(gw)
    up = (("upstream", "up"),)
    assert found[("mailgate_oauth_last_refresh_timestamp_seconds", up)] > 1.7e9
    assert 0 < found[("mailgate_oauth_token_expiry_seconds", up)] <= 3600
    secret = datetime.datetime(2027, 6, 30, tzinfo=datetime.UTC).timestamp()
    assert found[("mailgate_oauth_client_secret_expiry_timestamp_seconds", up)] == secret
    assert not any(name == "mailgate_oauth_refresh_failures_total" for name, _ in found)


def test_a_failed_token_request_carries_the_endpoints_error_code(
    token_server, make_oauth_upstream, start_gateway, ca
):
    """oauth.token_failed: error_code invalid_grant and the AADSTS code, never the secret."""
    token_server.script.error = (
        400,
        {
            "error": "invalid_grant",
            "error_description": f"AADSTS700082: The refresh token has expired {CLIENT_SECRET}",
        },
    )
    upstream = make_oauth_upstream(token_server)
    gw = start_gateway(relay_all(oauth_table(upstream, token_server, ca.ca_file)))
    assert send(gw.port)[0] == 451
    [failed] = gw.audit.wait_for("oauth.token_failed")
    assert failed["error_code"] == "invalid_grant" and failed["aadsts"] == "AADSTS700082"
    assert CLIENT_SECRET not in gw.audit.text
    labels = (("error", "invalid_grant"), ("upstream", "up"))
    assert samples(gw)[("mailgate_oauth_refresh_failures_total", labels)] == 1.0


def test_a_known_provider_auth_refusal_gets_a_hint_in_the_audit(make_upstream, start_gateway, ca):
    """M365's 535 5.7.139 (SMTP AUTH disabled): the audit's reason says what to do."""
    up = make_upstream(users={"someone-else": "x" * 16})  # our credentials are refused
    up.script.auth_refusal = (
        "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the "
        "Tenant"
    )
    gw = start_gateway(relay_all(upstream_table(up, ca.ca_file)))
    assert send(gw.port)[0] == 451
    [result] = gw.audit.wait_for("message.result")
    assert "hint: Microsoft 365: SMTP AUTH is disabled" in result["upstream_error"]
