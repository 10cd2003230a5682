"""bench/sink.py over real loopback sockets: framing, STARTTLS + AUTH, counting."""

from __future__ import annotations

import smtplib
import socket
import ssl
from collections.abc import Iterator

import pytest
from sink_control import SinkProcess

from gateway.testing.pki import ThrowawayCA

USER, PASSWORD = "bench@bench.test", "sink-test-password"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    ca = ThrowawayCA(str(tmp_path_factory.mktemp("pki")))
    cert = ca.issue("sink", "sink.bench.test", "127.0.0.1")
    return ca.ca_file, cert.cert_file, cert.key_file


@pytest.fixture
def sink(pki: tuple[str, str, str]) -> Iterator[SinkProcess]:
    process = SinkProcess(pki[1], pki[2], USER, PASSWORD)
    yield process
    process.stop()


def tls_client(sink: SinkProcess, ca_file: str) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", sink.tls_port, local_hostname="test.bench", timeout=10)
    client.starttls(context=ssl.create_default_context(cafile=ca_file))
    return client


def test_tls_port_counts_a_message_a_handshake_and_an_auth(
    sink: SinkProcess, pki: tuple[str, str, str]
) -> None:
    """STARTTLS, AUTH and one message are each counted once, and wait_for returns."""
    client = tls_client(sink, pki[0])
    client.login(USER, PASSWORD)
    client.sendmail("a@bench.test", ["b@sink.test"], b"Subject: x\r\n\r\nbody\r\n")
    client.quit()
    answer = sink.wait_for(1, 10)
    assert (answer["messages"], answer["handshakes"], answer["auths"]) == (1, 1, 1)


def test_tls_port_refuses_a_wrong_password_and_mail_before_auth(
    sink: SinkProcess, pki: tuple[str, str, str]
) -> None:
    """A wrong password gets 535; MAIL without AUTH gets 530."""
    client = tls_client(sink, pki[0])
    with pytest.raises(smtplib.SMTPAuthenticationError):
        client.login(USER, "wrong")
    assert client.mail("a@bench.test")[0] == 530
    client.close()


def test_end_of_data_split_across_reads_ends_the_message_once(sink: SinkProcess) -> None:
    """A terminator written byte by byte, after a dot-stuffed line, ends exactly one message."""
    with socket.create_connection(("127.0.0.1", sink.plain_port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        for command in (
            b"HELO t\r\n",
            b"MAIL FROM:<a@b.c>\r\n",
            b"RCPT TO:<d@e.f>\r\n",
            b"DATA\r\n",
        ):
            sock.sendall(command)
            reader.readline()
        sock.sendall(b"Subject: x\r\n\r\n..not the end\r\n")
        for byte in b"\r\n.\r\n"[2:]:
            sock.sendall(bytes([byte]))
        assert reader.readline().startswith(b"250 ")
        sock.sendall(b"QUIT\r\n")
        assert reader.readline().startswith(b"221 ")
    assert sink.stats()["messages"] == 1


def test_pipelined_commands_are_answered_in_order(sink: SinkProcess) -> None:
    """A whole transaction in one write gets its replies in order and one message counted."""
    with socket.create_connection(("127.0.0.1", sink.plain_port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(
            b"EHLO t\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n"
        )
        codes = []
        while len(codes) < 6:
            line = reader.readline()
            if line[3:4] == b" ":
                codes.append(int(line[:3]))
    assert codes == [250, 250, 250, 354, 250, 221]
    assert sink.stats()["messages"] == 1


def test_a_command_sent_with_the_tls_finished_message_is_answered(
    sink: SinkProcess, pki: tuple[str, str, str]
) -> None:
    """EHLO in the same write as the client's TLS Finished (as Twisted sends it) is not lost."""
    context = ssl.create_default_context(cafile=pki[0])
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="sink.bench.test")
    with socket.create_connection(("127.0.0.1", sink.tls_port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"EHLO t\r\n")
        while reader.readline()[3:4] == b"-":
            pass
        sock.sendall(b"STARTTLS\r\n")
        assert reader.readline().startswith(b"220 ")
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        tls.write(b"EHLO t\r\n")
        sock.sendall(outgoing.read())  # Finished and EHLO in one segment
        answer = b""
        while b"\r\n250 " not in b"\r\n" + answer:
            try:
                answer += tls.read(65536)
            except ssl.SSLWantReadError:
                incoming.write(sock.recv(65536))
    assert b"AUTH PLAIN LOGIN" in answer
