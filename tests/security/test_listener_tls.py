"""TLS on the listener, the attacks and the refusals (issue 14): STARTTLS command injection,
AUTH and MAIL before TLS, client certificates that do not verify, handshakes that stall or
offer TLS 1.1, connection limits, certificate renewal on SIGHUP."""

from __future__ import annotations

import base64
import os
import shutil
import smtplib
import ssl
import threading
import warnings

import pytest

from gateway.testing.pki import ThrowawayCA
from tests.integration.tls_apps import (
    BODY,
    connect,
    fingerprint,
    make_world,
    ports,
    read_reply,
    starttls_client,
    tls_document,
)
from tests.security.test_app_identity import APP_PASSWORD, HASH


@pytest.fixture
def world(tmp_path):
    return make_world(str(tmp_path))


@pytest.fixture
def tls_gateway(make_upstream, start_gateway, ca, world):
    def start(apps=None, **listener):
        upstream = make_upstream()
        document = tls_document(upstream, ca.ca_file, world, **listener)
        if apps:
            document["apps"] = apps
        return start_gateway(document), upstream

    return start


def test_commands_pipelined_after_starttls_are_discarded(tls_gateway, world):
    """Commands in the same packet as STARTTLS are never executed inside TLS (CVE-2011-0411)."""
    gw, upstream = tls_gateway()
    _, port, _ = ports(gw)
    sock = connect(port)
    reader = sock.makefile("rb")
    assert read_reply(reader).startswith(b"220 ")
    sock.sendall(
        b"EHLO app.test\r\nSTARTTLS\r\nEHLO evil\r\nMAIL FROM:<evil@example.com>\r\n"
        b"RCPT TO:<ops@example.net>\r\nHELP\r\n"
    )
    assert read_reply(reader).startswith(b"250 ")
    assert read_reply(reader) == b"220 2.0.0 Ready to start TLS"
    tls = world.client_context().wrap_socket(sock, server_hostname="127.0.0.1")
    tls_reader = tls.makefile("rb")
    tls.sendall(b"NOOP\r\n")
    # The first reply inside TLS answers our NOOP: nothing from before the handshake ran.
    assert read_reply(tls_reader) == b"250 2.0.0 OK"
    tls.sendall(b"MAIL FROM:<app@example.com>\r\n")
    assert read_reply(tls_reader).startswith(b"503 5.5.1")  # a new EHLO is needed
    tls.sendall(b"QUIT\r\n")
    assert read_reply(tls_reader).startswith(b"221")
    tls.close()
    gw.audit.wait_for("session.closed")
    assert not gw.audit.named("message.result") and upstream.connections == 0


def test_second_starttls_is_503_and_state_is_reset(tls_gateway, world):
    """After TLS, STARTTLS again gets 503 5.5.1, and MAIL before a new EHLO gets 503 5.5.1."""
    gw, _ = tls_gateway()
    _, port, _ = ports(gw)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("app.test")
        client.starttls(context=world.client_context())
        code, text = client.docmd("MAIL", "FROM:<app@example.com>")
        assert (code, text) == (503, b"5.5.1 Send EHLO or HELO first")
        client.ehlo("app.test")
        assert client.docmd("STARTTLS") == (503, b"5.5.1 TLS already active")


def test_auth_before_starttls_is_530_even_without_require_tls(tls_gateway, world):
    """AUTH on a starttls:// entry before TLS: 530 5.7.0, and the right password is not checked."""
    gw, _ = tls_gateway(apps={"billing": {"password_hash": HASH}})
    _, port, _ = ports(gw)
    plain = base64.b64encode(f"\0billing\0{APP_PASSWORD}".encode()).decode()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("app.test")
        assert client.docmd("AUTH", f"PLAIN {plain}")[0] == 530
        assert client.docmd("MAIL", "FROM:<a@example.com>")[0] == 250  # require_tls is off
    gw.audit.wait_for("session.closed")
    assert not gw.audit.named("session.authenticated")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_no_password_accepted_before_tls_with_require_tls(tls_gateway, world, mechanism):
    """require_tls = true: no AUTH exchange starts and no MAIL is taken before STARTTLS; the
    password never reaches the audit; after TLS the same password works."""
    gw, upstream = tls_gateway(
        apps={"billing": {"password_hash": HASH, "senders": ["*@corp.example"]}},
        require_tls=True,
        require_auth=True,
    )
    _, port, _ = ports(gw)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("app.test")
        if mechanism == "PLAIN":
            initial = base64.b64encode(f"\0billing\0{APP_PASSWORD}".encode()).decode()
            assert client.docmd("AUTH", f"PLAIN {initial}") == (
                530,
                b"5.7.0 Must issue a STARTTLS command first: AUTH only over TLS",
            )
        else:
            assert client.docmd("AUTH", "LOGIN")[0] == 530  # no 334: the password is never asked
            assert client.docmd(base64.b64encode(APP_PASSWORD.encode()).decode())[0] == 500
        assert client.docmd("MAIL", "FROM:<scanner@corp.example>") == (
            530,
            b"5.7.0 Must issue a STARTTLS command first",
        )
        client.starttls(context=world.client_context())
        client.ehlo("app.test")
        client.login("billing", APP_PASSWORD)
        client.sendmail("scanner@corp.example", ["ops@example.net"], BODY)
    upstream.wait_for(1)
    [authenticated] = gw.audit.wait_for("session.authenticated")
    assert authenticated["app"] == "billing"
    assert APP_PASSWORD not in gw.audit.text


@pytest.mark.parametrize(
    ("cert", "reason"),
    [("foreign", "unable to get local issuer"), ("expired", "certificate has expired")],
)
def test_client_certificate_failing_verification_fails_the_handshake(
    tls_gateway, world, cert, reason
):
    """A wrong-CA or expired client certificate: the handshake ends with an alert, the app sees
    it, and session.tls_failed says why; no session goes on."""
    gw, upstream = tls_gateway(client_ca_file=world.apps_ca.ca_file)
    _, _, port = ports(gw)
    context = world.client_context(getattr(world, cert))
    with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
        with smtplib.SMTP_SSL("127.0.0.1", port, timeout=30, context=context) as client:
            client.ehlo("app.test")  # TLS 1.3: the client learns of the alert at its first read
    [failed] = gw.audit.wait_for("session.tls_failed")
    assert (
        failed["reason"].startswith("client certificate refused: ") and reason in failed["reason"]
    )
    closed = gw.audit.wait_for("session.closed")[0]
    assert closed["reason"] == "TLS handshake failed" and upstream.connections == 0


@pytest.mark.parametrize("entry", ["smtps", "starttls"])
def test_handshake_stall_is_closed(tls_gateway, entry):
    """An app that opens TLS and sends nothing more is closed after tls_handshake_timeout."""
    gw, _ = tls_gateway(tls_handshake_timeout=1)
    _, starttls_port, smtps_port = ports(gw)
    sock = connect(smtps_port if entry == "smtps" else starttls_port)
    if entry == "starttls":
        reader = sock.makefile("rb")
        read_reply(reader)
        sock.sendall(b"EHLO app.test\r\nSTARTTLS\r\n")
        read_reply(reader), read_reply(reader)
    [failed] = gw.audit.wait_for("session.tls_failed")
    assert failed["reason"] == "TLS handshake timeout" and failed["listen"] == entry
    try:
        assert sock.recv(100) == b""  # closed by the gateway (aborted: maybe a reset)
    except ConnectionResetError:
        pass
    finally:
        sock.close()


def test_tls_1_1_client_is_refused(tls_gateway, world):
    """A client forced to offer only TLS 1.1 (@SECLEVEL=0) is refused: session.tls_failed."""
    gw, _ = tls_gateway()
    _, _, port = ports(gw)
    context = world.client_context()
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point of the test
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with smtplib.SMTP_SSL("127.0.0.1", port, timeout=30, context=context):
            pass
    [failed] = gw.audit.wait_for("session.tls_failed")
    assert failed["reason"].startswith("TLS handshake failed: ")
    assert "version" in failed["reason"] or "protocol" in failed["reason"]


def test_handshakes_count_toward_max_connections(tls_gateway, world):
    """A connection in its handshake holds a slot of listener.max_connections."""
    gw, _ = tls_gateway(max_connections=1)
    plain, _, smtps = ports(gw)
    stalled = connect(smtps)
    # Send a real ClientHello and wait for the ServerHello: the gateway has counted us.
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    half = world.client_context().wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        half.do_handshake()
    stalled.sendall(outgoing.read())
    assert stalled.recv(5)[:1] == b"\x16"  # a TLS handshake record from the gateway
    other = connect(plain)
    assert other.makefile("rb").readline().startswith(b"421 4.7.0")
    other.close()
    stalled.close()


def test_a_denied_client_gets_no_tls_handshake_on_an_smtps_entry(tls_gateway, world):
    """smtps:// without proxy_protocol: a client outside allowed_clients is closed at connect,
    its ClientHello answered by no ServerHello, and audited as a denied session (no TLS started);
    an allowed client is served as before, and the plain entry still greets the denied one 554."""
    import socket

    from gateway.inbound.admission import NO_TLS_STARTED

    gw, upstream = tls_gateway(allowed_clients=["127.0.0.1/32"])
    plain, _, smtps = ports(gw)
    denied = socket.create_connection(
        ("127.0.0.1", smtps), timeout=30, source_address=("127.0.0.2", 0)
    )
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    half = world.client_context().wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        half.do_handshake()
    try:
        denied.sendall(outgoing.read())  # a real ClientHello
        answer = denied.recv(5)  # the close: nothing before it
    except ConnectionResetError:  # our ClientHello reached a socket already closed
        answer = b""
    finally:
        denied.close()
    assert answer == b""
    event = gw.audit.wait_until("session.denied", client_ip="127.0.0.2")
    assert event["limit"] == "listener.allowed_clients" and event["reason"] == NO_TLS_STARTED
    assert "reply" not in event
    opened = gw.audit.wait_until("session.opened", session_id=event["session_id"])
    assert opened["allowed"] is False and opened["client_port"] > 0
    closed = gw.audit.wait_until("session.closed", session_id=event["session_id"])
    assert closed["reason"] == "denied before TLS" and closed["client_tls_version"] is None
    assert not gw.audit.named("session.tls_failed")
    context = world.client_context()
    with smtplib.SMTP_SSL("127.0.0.1", smtps, timeout=30, context=context) as client:
        client.sendmail("scanner@corp.example", ["ops@example.net"], BODY)
    upstream.wait_for(1)
    result = gw.audit.wait_until("message.result", outcome="relayed")
    assert result["client_ip"] == "127.0.0.1" and result["client_tls_version"] == "TLSv1.3"
    with socket.create_connection(
        ("127.0.0.1", plain), timeout=30, source_address=("127.0.0.2", 0)
    ) as sock:
        assert read_reply(sock.makefile("rb")).startswith(b"554 5.7.1")


def test_sighup_renews_the_certificate_under_load_without_dropping_sessions(
    tls_gateway, world, tmp_path
):
    """A renewed certificate (same paths) and SIGHUP: new connections get it, sessions open and
    messages in flight are not dropped; a bad new key is refused, the current one kept."""
    from twisted.internet import threads

    from gateway.config.toml import parse
    from gateway.daemon.run import reload

    live = tmp_path / "live"
    live.mkdir()
    cert_file, key_file = str(live / "fullchain.pem"), str(live / "key.pem")
    shutil.copy(world.listener.cert_file, cert_file)
    shutil.copy(world.listener.key_file, key_file)
    os.chmod(key_file, 0o600)
    gw, upstream = tls_gateway(tls_cert_file=cert_file, tls_key_file=key_file)
    _, starttls_port, smtps_port = ports(gw)
    document = _document_of(gw, cert_file, key_file)
    errors: list[BaseException] = []
    sent = [0]
    stop = threading.Event()

    def app(port: int, implicit: bool) -> None:
        try:
            while not stop.is_set():
                if implicit:
                    client = smtplib.SMTP_SSL(
                        "127.0.0.1", port, timeout=30, context=world.client_context()
                    )
                else:
                    client = starttls_client(port, world.client_context())
                with client:
                    for _ in range(3):  # several messages per session, across the reload
                        client.sendmail("scanner@corp.example", ["ops@example.net"], BODY)
                        sent[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    workers = [
        threading.Thread(target=app, args=(starttls_port, False)),
        threading.Thread(target=app, args=(smtps_port, True)),
    ]
    for worker in workers:
        worker.start()
    upstream.wait_for(4)
    renewed = world.listener_ca.issue("renewed", "localhost", "127.0.0.1")
    shutil.copy(renewed.cert_file, cert_file)
    shutil.copy(renewed.key_file, key_file)
    ok = threads.blockingCallFromThread(
        gw.reactor, reload, gw.gateway, lambda: parse(document, "test.toml")
    )
    assert ok
    before = sent[0]
    upstream.wait_for(before + 6)
    with smtplib.SMTP_SSL(
        "127.0.0.1", smtps_port, timeout=30, context=world.client_context()
    ) as client:
        served = client.sock.getpeercert(binary_form=True)
    assert _sha256(served) == fingerprint(renewed.cert_file)

    # A bad new key (another certificate's): refused, the renewed certificate stays in use.
    other = ThrowawayCA(str(tmp_path)).issue("other", "localhost")
    shutil.copy(other.key_file, key_file)
    refused = threads.blockingCallFromThread(
        gw.reactor, reload, gw.gateway, lambda: parse(document, "test.toml")
    )
    assert refused is False
    failed = gw.audit.wait_for("config.reload_failed")[0]
    assert any("listener.tls_key_file" in p and key_file in p for p in failed["problems"])
    stop.set()
    for worker in workers:
        worker.join(60)
    assert not errors, errors
    with smtplib.SMTP_SSL(
        "127.0.0.1", smtps_port, timeout=30, context=world.client_context()
    ) as client:
        assert _sha256(client.sock.getpeercert(binary_form=True)) == fingerprint(renewed.cert_file)


def _sha256(der: bytes) -> str:
    import hashlib

    return hashlib.sha256(der).hexdigest()


def _document_of(gw, cert_file, key_file):
    """The running gateway's document again (what SIGHUP reads from the file)."""
    config = gw.gateway.config
    up = config.upstreams["up"]
    return {
        "listener": {
            "listen": [str(e) for e in config.listener.listen],
            "hostname": config.listener.hostname,
            "shutdown_grace": config.listener.shutdown_grace,
            "tls_cert_file": cert_file,
            "tls_key_file": key_file,
        },
        "upstreams": {
            "up": {
                "host": up.host,
                "port": up.port,
                "tls": up.tls,
                "username": up.username,
                "password_env": up.password_env,
                "ca_file": up.ca_file,
                "connect_timeout": up.connect_timeout,
                "command_timeout": up.command_timeout,
                "data_timeout": up.data_timeout,
            }
        },
        "rules": [{"name": "all", "action": "relay", "upstream": "up"}],
    }


def test_real_sighup_takes_the_renewed_certificate(
    mailgate_run, world, tmp_path, make_upstream, ca
):
    """`mailgate run` and a real SIGHUP: the renewed certificate file is served to new connections."""
    import signal

    from tests.conftest import relay_all, upstream_table

    live = tmp_path / "live"
    live.mkdir()
    cert_file, key_file = str(live / "fullchain.pem"), str(live / "key.pem")
    shutil.copy(world.listener.cert_file, cert_file)
    shutil.copy(world.listener.key_file, key_file)
    os.chmod(key_file, 0o600)
    upstream = make_upstream()
    document = relay_all(
        upstream_table(upstream, ca.ca_file),
        listen=["smtps://127.0.0.1:0"],
        tls_cert_file=cert_file,
        tls_key_file=key_file,
    )
    daemon = mailgate_run(document)
    port = daemon.port

    def served() -> str:
        with smtplib.SMTP_SSL(
            "127.0.0.1", port, timeout=30, context=world.client_context()
        ) as client:
            return _sha256(client.sock.getpeercert(binary_form=True))

    assert served() == fingerprint(world.listener.cert_file)
    renewed = world.listener_ca.issue("renewed", "localhost", "127.0.0.1")
    shutil.copy(renewed.cert_file, cert_file)
    shutil.copy(renewed.key_file, key_file)
    marker = len(daemon.stderr)
    daemon.signal(signal.SIGHUP)
    daemon.wait_for(daemon.stderr, b"reloaded configuration", after=marker)
    assert served() == fingerprint(renewed.cert_file)
