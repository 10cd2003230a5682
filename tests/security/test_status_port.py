"""Class 6b, the status HTTP port: whoever reaches it can neither starve SMTP nor learn secrets.

The port (``[metrics] listen``) serves ``/metrics``, ``/healthz`` and ``/readyz``
to monitoring, and to anyone else who can connect. Idle connections are capped
and each one gets a fixed time from connect to answer, so they cannot use up the
process's file descriptors (which broke SMTP); a request body is refused at its
headers, never spooled to /tmp; ``/readyz`` says ready / not ready, and gives
its reasons (upstream usernames, errors) only for ``?verbose=1`` from an address
in ``[metrics] details_from``.
"""

from __future__ import annotations

import os
import resource
import select
import selectors
import smtplib
import socket
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from twisted.web import server

from gateway.daemon import status
from tests.conftest import USER, relay_all, upstream_table

BODY = b"Subject: while the status port is flooded\r\n\r\nbody\r\n"


def with_metrics(document: dict[str, Any], **metrics: Any) -> dict[str, Any]:
    return {**document, "metrics": {"listen": "127.0.0.1:0", **metrics}}


def status_port(gw: Any) -> int:
    return gw.gateway.status_port.getHost().port


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_all_closed_or_answered(sockets: list[socket.socket], timeout: float = 15) -> list[bytes]:
    """What each socket got before the server closed it (b"" if nothing); fails on a socket left open."""
    got = {sock: b"" for sock in sockets}
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        open_ones = set(sockets)
        while open_ones:
            ready = selector.select(timeout)
            assert ready, f"{len(open_ones)} connections were neither answered nor closed"
            for key, _ in ready:
                sock = key.fileobj
                try:
                    data = sock.recv(4096)  # type: ignore[union-attr]
                except ConnectionResetError:
                    data = b""
                got[sock] += data  # type: ignore[index]
                if not data:
                    selector.unregister(sock)
                    open_ones.discard(sock)  # type: ignore[arg-type]
    return [got[sock] for sock in sockets]


# --- file descriptors: idle connections cannot starve SMTP -----------------------------------


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_status_connections_do_not_starve_smtp(mailgate_run, make_upstream, ca):
    """Prevents idle status connections using up file descriptors so SMTP can accept no one."""
    upstream = make_upstream()
    gateway = mailgate_run(with_metrics(relay_all(upstream_table(upstream, ca.ca_file))))
    smtp_port = gateway.port
    line = gateway.wait_for(gateway.stderr, b"metrics and health on http://")
    http_port = int(line.strip().rstrip(b"/").rsplit(b":", 1)[1])
    pid = gateway.process.pid
    # Room for the status port's cap and a few SMTP sessions, and not one descriptor more.
    limit = open_descriptors(pid) + status.MAX_CONNECTIONS + 24
    hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))

    idle = []
    try:
        for number in range(limit + 100):  # far more than the process could hold...
            source = (f"127.0.0.{2 + number % 10}", 0)  # ...from ten addresses, past the total cap
            idle.append(socket.create_connection(("127.0.0.1", http_port), 10, source))
        for sock in idle[:5]:
            sock.sendall(b"GET /readyz HTTP/1.1\r\n")  # and never the rest
        # The flood is over once the gateway has refused everything past its cap (it accepts
        # in bursts, and Twisted sheds a connection it cannot give a descriptor): wait for that.
        refused = _wait_refused(idle, len(idle) - status.MAX_CONNECTIONS)
        assert len(refused) >= len(idle) - status.MAX_CONNECTIONS
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=20) as client:
            assert client.sendmail("app@example.com", ["ops@example.net"], BODY) == {}
        assert len(upstream.wait_for(1)) == 1
    finally:
        for sock in idle:
            sock.close()
    assert open_descriptors(pid) < limit


def _wait_refused(
    socks: list[socket.socket], enough: int, within: float = 60.0
) -> set[socket.socket]:
    """The sockets the server refused (503 and close), waiting on their readability until
    `enough` were refused or `within` seconds passed."""
    refused: set[socket.socket] = set()
    deadline = time.monotonic() + within
    while len(refused) < enough and time.monotonic() < deadline:
        waiting = [sock for sock in socks if sock not in refused]
        readable, _, _ = select.select(waiting, [], [], 1.0)
        refused.update(sock for sock in readable if _closed_at_once(sock))
    return refused


def _closed_at_once(sock: socket.socket) -> bool:
    """The server answered 503 and closed (looked at without waiting: it happened at connect)."""
    sock.setblocking(False)
    try:
        data = sock.recv(4096)
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    return data == b"" or data.startswith(b"HTTP/1.1 503")


def test_connections_past_the_cap_are_answered_503_and_closed(make_upstream, start_gateway, ca):
    """Prevents an unbounded number of open status connections (each one a file descriptor)."""
    gw = start_gateway(with_metrics(relay_all(upstream_table(make_upstream(), ca.ca_file))))
    port = status_port(gw)
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(100)]
    try:
        extra = held[status.MAX_PER_CLIENT :]  # all from 127.0.0.1: its share is the limit
        answers = wait_all_closed_or_answered(extra)
        assert all(a == b"" or a.startswith(b"HTTP/1.1 503") for a in answers)
        assert sum(a.startswith(b"HTTP/1.1 503") for a in answers) > 0
        assert gw.gateway.status_port.factory.open_channels <= status.MAX_PER_CLIENT
    finally:
        for sock in held:
            sock.close()
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=20) as client:
        assert client.sendmail("app@example.com", ["ops@example.net"], BODY) == {}


def test_a_connection_that_never_finishes_its_headers_is_closed(
    make_upstream, start_gateway, ca, monkeypatch
):
    """Prevents a half-sent request (slowloris) holding a connection: it ends at the deadline."""
    monkeypatch.setattr(status, "REQUEST_TIMEOUT", 0.5)  # read when the site is built
    gw = start_gateway(with_metrics(relay_all(upstream_table(make_upstream(), ca.ca_file))))
    sock = socket.create_connection(("127.0.0.1", status_port(gw)), timeout=10)
    with sock:
        sock.sendall(b"GET /readyz HTTP/1.1\r\nX-Slow: 1\r\n")
        assert wait_all_closed_or_answered([sock]) == [b""]


# --- request bodies: refused at the headers, never stored ---------------------------------------


@pytest.mark.parametrize(
    "head,code",
    [
        (b"POST /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 209715200\r\n\r\n", b"405"),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 209715200\r\n\r\n",
            b"405",
        ),
        (b"PUT /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n", b"405"),
        (b"GET /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n", b"413"),
        (b"GET /readyz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"413"),
    ],
)
def test_a_request_body_is_refused_without_being_stored(
    head, code, make_upstream, start_gateway, ca, monkeypatch
):
    """Prevents a request body filling /tmp (or memory): refused at its headers, nothing kept."""
    spooled: list[Any] = []
    stored: list[Any] = []
    temporary = tempfile.TemporaryFile
    gotten = server.Request.gotLength

    def spy_temporary(*args: Any, **kwargs: Any) -> Any:
        spooled.append(args)
        return temporary(*args, **kwargs)

    def spy_length(self: Any, length: Any) -> None:
        stored.append(length)
        gotten(self, length)

    monkeypatch.setattr(tempfile, "TemporaryFile", spy_temporary)
    monkeypatch.setattr(server.Request, "gotLength", spy_length)
    gw = start_gateway(with_metrics(relay_all(upstream_table(make_upstream(), ca.ca_file))))
    with socket.create_connection(("127.0.0.1", status_port(gw)), timeout=10) as sock:
        sock.sendall(head)
        answer = sock.recv(4096)  # the fixed gateway answers at once; the unfixed one waits
        assert answer.split(b" ")[1] == code, answer
        assert b"100 Continue" not in answer
        try:
            for _ in range(64):
                sock.sendall(b"x" * 65536)  # the body the gateway will not read
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert spooled == [] and stored == []


# --- /readyz: the reasons only on request, only to allowed addresses --------------------------


def refused_auth_gateway(start_gateway, scripted, ca, **metrics: Any) -> Any:
    upstream = scripted(auth_reply=b"535 5.7.8 Authentication credentials invalid\r\n")
    gw = start_gateway(with_metrics(relay_all(upstream_table(upstream, ca.ca_file)), **metrics))
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo("app.test")
        client.mail("app@example.com")
        assert client.rcpt("ops@example.net")[0] == 451
    gw.audit.wait_for("message.result")
    return gw


@pytest.mark.parametrize("query", ["", "?verbose=1", "?verbose=true", "?x=1&verbose=yes"])
def test_readyz_details_are_hidden_from_a_client_not_in_details_from(
    query, start_gateway, scripted, ca
):
    """Prevents /readyz telling a client outside details_from the upstream username and error."""
    gw = refused_auth_gateway(start_gateway, scripted, ca, details_from=["192.0.2.0/24"])
    assert get(status_port(gw), "/readyz" + query) == (503, "not ready\n")


def test_readyz_details_need_verbose_even_from_an_allowed_client(start_gateway, scripted, ca):
    """From loopback (the default details_from) the reasons come with ?verbose=1 and only then."""
    gw = refused_auth_gateway(start_gateway, scripted, ca)
    port = status_port(gw)
    assert get(port, "/readyz") == (503, "not ready\n")
    code, text = get(port, "/readyz?verbose=1")
    assert code == 503 and USER in text and "refused" in text
