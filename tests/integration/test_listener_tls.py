"""TLS on the listener with real clients: smtplib starttls() and SMTP_SSL, openssl s_client,
swaks; plain, starttls:// and smtps:// entries served by one process (issue 14)."""

from __future__ import annotations

import shutil
import smtplib
import subprocess

import pytest

from tests.integration.tls_apps import (
    BODY,
    fingerprint,
    make_world,
    ports,
    starttls_client,
    tls_document,
)


@pytest.fixture
def world(tmp_path):
    return make_world(str(tmp_path))


@pytest.fixture
def tls_gateway(make_upstream, start_gateway, ca, world):
    def start(**listener):
        upstream = make_upstream()
        gw = start_gateway(tls_document(upstream, ca.ca_file, world, **listener))
        return gw, upstream

    return start


def test_starttls_offers_auth_only_after_tls_and_relays(tls_gateway, world):
    """starttls://: EHLO offers STARTTLS and no AUTH; after TLS, AUTH and no STARTTLS; mail relays."""
    gw, upstream = tls_gateway()
    gw_doc_apps = gw.gateway.config.apps
    assert not gw_doc_apps  # AUTH is offered only with apps: checked with apps below
    _, port, _ = ports(gw)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("app.test")
        assert client.has_extn("starttls")
        client.starttls(context=world.client_context())
        client.ehlo("app.test")
        assert not client.has_extn("starttls")
        client.sendmail("scanner@corp.example", ["ops@example.net"], BODY)
    upstream.wait_for(1)
    [result] = gw.audit.wait_for("message.result")
    assert result["outcome"] == "relayed"
    assert result["client_tls_version"] == "TLSv1.3" and result["client_tls_cipher"]
    assert "client_cert_sha256" not in result
    [closed] = gw.audit.wait_for("session.closed")
    assert closed["client_tls_version"] == "TLSv1.3"


def test_auth_offered_after_starttls_only(tls_gateway, world):
    """With apps: AUTH is absent from the EHLO before STARTTLS and present after it."""
    from tests.security.test_app_identity import HASH

    gw, _ = tls_gateway()
    gw.gateway.reload(_with_apps(gw.gateway.config, {"billing": HASH}))
    _, port, _ = ports(gw)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("app.test")
        assert not client.has_extn("auth")
        client.starttls(context=world.client_context())
        client.ehlo("app.test")
        assert client.has_extn("auth")


def _with_apps(config, hashes):
    import dataclasses

    from gateway.config.model import App

    apps = {name: App(name, h) for name, h in hashes.items()}
    return dataclasses.replace(config, apps=apps)


def test_smtps_relays_with_tls_fields(tls_gateway, world):
    """smtps://: TLS from the first byte (SMTP_SSL); the audit records version and cipher."""
    gw, upstream = tls_gateway()
    _, _, port = ports(gw)
    with smtplib.SMTP_SSL("127.0.0.1", port, timeout=30, context=world.client_context()) as client:
        client.ehlo("app.test")
        assert not client.has_extn("starttls")
        client.sendmail("scanner@corp.example", ["ops@example.net"], BODY)
    upstream.wait_for(1)
    [result] = gw.audit.wait_for("message.result")
    assert result["client_tls_version"] == "TLSv1.3" and result["client_tls_cipher"]


def test_plain_entry_unchanged_and_fields_null(tls_gateway):
    """A plain HOST:PORT entry next to TLS ones: no STARTTLS, and the TLS fields are null."""
    gw, upstream = tls_gateway()
    port, _, _ = ports(gw)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("app.test")
        assert not client.has_extn("starttls")
        assert client.docmd("STARTTLS")[0] == 500
        client.sendmail("scanner@corp.example", ["ops@example.net"], BODY)
    upstream.wait_for(1)
    [result] = gw.audit.wait_for("message.result")
    assert result["client_tls_version"] is None and result["client_tls_cipher"] is None
    [closed] = gw.audit.wait_for("session.closed")
    assert closed["client_tls_version"] is None and closed["client_tls_cipher"] is None


def test_client_certificate_identifies_app(tls_gateway, world):
    """A verified, listed client certificate identifies the app: require_auth is satisfied,
    the sender must be the app's, and the audit names the app and the fingerprint."""
    gw, upstream = tls_gateway(client_ca_file=world.apps_ca.ca_file)
    digest = fingerprint(world.printer.cert_file)
    _reload_with_printer(gw, digest, require_auth=True)
    _, port, _ = ports(gw)
    with starttls_client(port, world.client_context(world.printer)) as client:
        assert client.docmd("MAIL", "FROM:<boss@corp.example>")[0] == 553
        client.sendmail("scanner@corp.example", ["ops@example.net"], BODY)
    upstream.wait_for(1)
    result = gw.audit.wait_until("message.result", outcome="relayed")
    assert result["app"] == "printer" and result["client_cert_sha256"] == digest
    identified = gw.audit.wait_for("session.authenticated")[0]
    assert identified["app"] == "printer" and identified["mechanism"] == "client certificate"


def _reload_with_printer(gw, digest, **listener):
    import dataclasses

    from gateway.config.model import App

    config = gw.gateway.config
    apps = {
        "printer": App(
            "printer", "", senders=("scanner@corp.example",), client_cert_sha256=(digest,)
        )
    }
    config = dataclasses.replace(
        config, apps=apps, listener=dataclasses.replace(config.listener, **listener)
    )
    from twisted.internet import threads

    threads.blockingCallFromThread(gw.reactor, gw.gateway.reload, config)


def test_verified_but_unlisted_certificate_identifies_nobody(tls_gateway, world):
    """A certificate the CA signed but no app lists: unidentified (require_auth: 530)."""
    gw, _ = tls_gateway(client_ca_file=world.apps_ca.ca_file)
    _reload_with_printer(gw, fingerprint(world.printer.cert_file), require_auth=True)
    _, port, _ = ports(gw)
    with starttls_client(port, world.client_context(world.unlisted)) as client:
        code, text = client.docmd("MAIL", "FROM:<scanner@corp.example>")
        assert (code, text[:5]) == (530, b"5.7.0")
    closed = gw.audit.wait_for("session.closed")[0]
    assert closed["client_cert_sha256"] == fingerprint(world.unlisted.cert_file)
    assert not gw.audit.named("session.authenticated")


def test_no_client_certificate_goes_on_unidentified(tls_gateway, world):
    """With client_ca_file, an app without a certificate still gets TLS, unidentified."""
    gw, upstream = tls_gateway(client_ca_file=world.apps_ca.ca_file)
    _, _, port = ports(gw)
    with smtplib.SMTP_SSL("127.0.0.1", port, timeout=30, context=world.client_context()) as client:
        client.sendmail("scanner@corp.example", ["ops@example.net"], BODY)
    upstream.wait_for(1)
    result = gw.audit.wait_for("message.result")[0]
    assert result["app"] is None and "client_cert_sha256" not in result


def test_queued_message_result_carries_the_app_tls_from_the_spool(
    make_upstream, start_gateway, ca, world, tmp_path
):
    """Queue mode: the runner's message.result, written from the spooled envelope, carries the
    app's TLS version, cipher and certificate as message.queued did; null for a plain app."""
    upstream = make_upstream()
    document = tls_document(upstream, ca.ca_file, world, client_ca_file=world.apps_ca.ca_file)
    document["queue"] = {"path": str(tmp_path / "spool"), "min_backoff": 1, "max_backoff": 2}
    document["rules"][0]["delivery"] = "queue"
    gw = start_gateway(document)
    digest = fingerprint(world.printer.cert_file)
    _reload_with_printer(gw, digest)
    plain, _, smtps = ports(gw)
    context = world.client_context(world.printer)
    with smtplib.SMTP_SSL("127.0.0.1", smtps, timeout=30, context=context) as client:
        client.sendmail("scanner@corp.example", ["ops@example.net"], BODY)
    [queued] = gw.audit.wait_for("message.queued")
    result = gw.audit.wait_until("message.result", queue_id=queued["queue_id"])
    assert result["delivery"] == "queue" and result["outcome"] == "delivered"
    for record in (queued, result):
        assert record["client_tls_version"] == "TLSv1.3" and record["client_tls_cipher"]
        assert record["client_cert_sha256"] == digest
    assert result["client_tls_cipher"] == queued["client_tls_cipher"]
    with smtplib.SMTP("127.0.0.1", plain, timeout=30) as client:
        client.sendmail("scanner@corp.example", ["ops@example.net"], BODY)
    queued = gw.audit.wait_for("message.queued", 2)[1]
    result = gw.audit.wait_until("message.result", queue_id=queued["queue_id"])
    assert result["client_tls_version"] is None and result["client_tls_cipher"] is None
    assert "client_cert_sha256" not in result
    upstream.wait_for(2)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_openssl_s_client_starttls_smtp(tls_gateway, world):
    """`openssl s_client -starttls smtp` as an app: it verifies the listener and sends a message."""
    gw, upstream = tls_gateway()
    _, port, _ = ports(gw)
    dialogue = (
        b"EHLO app.test\r\nMAIL FROM:<scanner@corp.example>\r\nRCPT TO:<ops@example.net>\r\n"
        b"DATA\r\n" + BODY + b".\r\nQUIT\r\n"
    )
    command = [
        "openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}",
        "-CAfile", world.listener_ca.ca_file, "-verify_return_error", "-nocommands",
    ]  # fmt: skip
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    ) as app:
        assert app.stdin is not None and app.stdout is not None
        app.stdin.write(dialogue)
        app.stdin.flush()
        seen = b""
        for line in app.stdout:  # until the gateway's 221; then s_client ends at stdin's EOF
            seen += line
            if line.startswith(b"221 "):
                break
        app.stdin.close()
        app.wait(30)
    assert b"250 2.0.0" in seen and b"221 " in seen, seen
    upstream.wait_for(1)
    assert gw.audit.wait_for("message.result")[0]["client_tls_version"].startswith("TLSv1.")


def _swaks_tls() -> bool:
    if shutil.which("swaks") is None:
        return False
    found = subprocess.run(["swaks", "--support"], capture_output=True, check=False)
    return b"=== TLS supported" in found.stdout + found.stderr


@pytest.mark.skipif(
    not _swaks_tls(), reason="needs swaks with TLS (apt-get install swaks libnet-ssleay-perl)"
)
@pytest.mark.parametrize("mode", ["--tls", "--tlsc"])
def test_swaks_as_app(tls_gateway, world, mode):
    """swaks --tls (STARTTLS) and --tlsc (smtps) with a client certificate: identified, relayed."""
    gw, upstream = tls_gateway(client_ca_file=world.apps_ca.ca_file)
    _reload_with_printer(gw, fingerprint(world.printer.cert_file), require_auth=True)
    _, starttls_port, smtps_port = ports(gw)
    port = starttls_port if mode == "--tls" else smtps_port
    done = subprocess.run(
        [
            "swaks",
            "--server",
            f"127.0.0.1:{port}",
            mode,
            "--tls-verify",
            "--tls-ca-path",
            world.listener_ca.ca_file,
            "--tls-cert",
            world.printer.cert_file,
            "--tls-key",
            world.printer.key_file,
            "--from",
            "scanner@corp.example",
            "--to",
            "ops@example.net",
            "--header",
            "From: scanner@corp.example",
            "--ehlo",
            "app.test",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    upstream.wait_for(1)
    result = gw.audit.wait_until("message.result", outcome="relayed")
    assert result["app"] == "printer"


@pytest.mark.parametrize("entry", ["starttls", "smtps"])
def test_tls_behind_a_proxy_header(tls_gateway, world, entry):
    """proxy_protocol with TLS entries: the PROXY header comes first in clear, then TLS; the
    session is the header's client and the audit has its TLS facts."""
    import socket

    from tests.integration.tls_apps import read_reply

    gw, upstream = tls_gateway(
        proxy_protocol=True,
        proxy_trusted=["127.0.0.1/32"],
        allowed_clients=["10.0.0.0/8"],
    )
    _, starttls_port, smtps_port = ports(gw)
    port = starttls_port if entry == "starttls" else smtps_port
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"PROXY TCP4 10.9.8.7 127.0.0.1 40000 587\r\n")
    context = world.client_context()
    if entry == "starttls":
        reader = sock.makefile("rb")
        assert read_reply(reader).startswith(b"220 ")
        sock.sendall(b"EHLO app.test\r\nSTARTTLS\r\n")
        assert read_reply(reader).startswith(b"250 ")
        assert read_reply(reader).startswith(b"220 2.0.0")
    tls = context.wrap_socket(sock, server_hostname="127.0.0.1")
    reader = tls.makefile("rb")
    if entry == "smtps":
        assert read_reply(reader).startswith(b"220 ")
    for line in (
        b"EHLO app.test",
        b"MAIL FROM:<scanner@corp.example>",
        b"RCPT TO:<ops@example.net>",
        b"DATA",
    ):
        tls.sendall(line + b"\r\n")
        assert read_reply(reader)[:1] in (b"2", b"3")
    tls.sendall(BODY + b".\r\nQUIT\r\n")
    assert read_reply(reader).startswith(b"250 ")
    tls.close()
    upstream.wait_for(1)
    result = gw.audit.wait_for("message.result")[0]
    assert result["client_ip"] == "10.9.8.7" and result["client_tls_version"] == "TLSv1.3"


def _connect_smtps(port, context, session=None):
    import socket

    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    tls = context.wrap_socket(raw, server_hostname="127.0.0.1", session=session)
    greeting = tls.recv(1024)
    tls.sendall(b"NOOP\r\n")
    tls.recv(1024)  # TLS 1.3 session tickets arrive with the server's data
    return tls, greeting


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
@pytest.mark.parametrize("with_client_ca", [False, True], ids=["no-client-ca", "client-ca"])
def test_an_app_offering_its_last_session_reconnects(tls_gateway, world, version, with_client_ca):
    """An app whose TLS library resumes sessions gets its second connection too: resumed without
    client_ca_file; with it, a full handshake that verifies the certificate again (the app is
    still identified by it), never the "session id context uninitialized" alert."""
    import ssl

    listener = {"client_ca_file": world.apps_ca.ca_file} if with_client_ca else {}
    gw, _ = tls_gateway(**listener)
    if with_client_ca:
        _reload_with_printer(gw, fingerprint(world.printer.cert_file))
    _, _, port = ports(gw)
    context = world.client_context(world.printer if with_client_ca else None)
    context.minimum_version = context.maximum_version = getattr(ssl.TLSVersion, version)
    first, greeting = _connect_smtps(port, context)
    assert greeting.startswith(b"220")
    session = first.session
    first.sendall(b"QUIT\r\n")
    first.recv(1024)
    first.close()
    second, greeting = _connect_smtps(port, context, session=session)
    try:
        assert greeting.startswith(b"220"), greeting
        assert second.session_reused is (not with_client_ca)
        if with_client_ca:
            assert gw.audit.wait_for("session.authenticated", 2)[1]["app"] == "printer"
    finally:
        second.close()
    assert gw.audit.named("session.tls_failed") == []
