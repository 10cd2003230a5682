"""Behind a load balancer: PROXY v1/v2 headers give policy and audit the real client address.

The HAProxy test runs the Debian package's haproxy (installed by .ci/run) in front of
two mailgate instances; clients connect from 127.0.0.2 (allowed) and 127.0.0.3 (not).
"""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import relay_all, upstream_table

BODY = b"From: app@example.com\r\nSubject: proxied\r\n\r\nbody\r\n"


class ProxiedSMTP(smtplib.SMTP):
    """smtplib that writes a PROXY header right after connecting, as a balancer would."""

    def __init__(self, header: bytes, *args: Any, **kwargs: Any) -> None:
        self.header = header
        super().__init__(*args, **kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = super()._get_socket(host, port, timeout)
        sock.sendall(self.header)
        return sock


def proxied(upstream: Any, ca_file: str, allowed: list[str]) -> dict[str, Any]:
    return relay_all(
        upstream_table(upstream, ca_file),
        proxy_protocol=True,
        proxy_trusted=["127.0.0.1/32"],  # the balancer (the tests' and HAProxy's address)
        allowed_clients=allowed,
    )


def test_v1_header_gives_policy_and_audit_the_real_client(make_upstream, start_gateway, ca):
    """The client named in the header is allowed and audited, though the TCP peer (127.0.0.1) is not allowed."""
    upstream = make_upstream()
    gw = start_gateway(proxied(upstream, ca.ca_file, ["192.0.2.7/32"]))
    header = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n"
    with ProxiedSMTP(header, "127.0.0.1", gw.port, timeout=30) as client:
        assert client.sendmail("app@example.com", ["ops@example.net"], BODY) == {}
    [opened] = gw.audit.named("session.opened")
    assert (
        opened["client_ip"] == "192.0.2.7" and opened["client_port"] == 40000 and opened["allowed"]
    )
    assert opened["proxy_ip"] == "127.0.0.1"
    [result] = gw.audit.named("message.result")
    assert result["client_ip"] == "192.0.2.7" and result["outcome"] == "relayed"


def test_denied_real_client_gets_554_at_first_command_then_503(make_upstream, start_gateway, ca):
    """Greeting is 220 (the header is not read yet); the first command gets 554 5.7.1, the rest 503."""
    gw = start_gateway(proxied(make_upstream(), ca.ca_file, ["192.0.2.7/32"]))
    header = b"PROXY TCP4 192.0.2.8 127.0.0.1 40000 25\r\n"
    with ProxiedSMTP(header, "127.0.0.1", gw.port, timeout=30) as client:
        code, text = client.ehlo("app.test")
        assert (code, text[:5]) == (554, b"5.7.1")
        assert client.mail("app@example.com")[0] == 503
    [opened] = gw.audit.named("session.opened")
    assert opened["client_ip"] == "192.0.2.8" and opened["allowed"] is False
    [denied] = gw.audit.named("session.denied")
    assert denied["limit"] == "listener.allowed_clients"


def test_connection_without_header_is_refused_with_421(make_upstream, start_gateway, ca):
    """Plain SMTP straight to a PROXY listener is answered 421 4.7.0 and closed."""
    gw = start_gateway(proxied(make_upstream(), ca.ca_file, ["127.0.0.0/8"]))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as sock:
        stream = sock.makefile("rb")
        assert stream.readline().startswith(b"220 ")
        sock.sendall(b"EHLO app.test\r\n")
        assert stream.readline().startswith(b"421 4.7.0 ")
        assert stream.readline() == b""
    gw.audit.wait_for("session.closed")
    [opened] = gw.audit.named("session.opened")
    assert opened["allowed"] is False and opened["proxy_header"] == "invalid"
    [closed] = gw.audit.named("session.closed")
    assert closed["reason"] == "invalid PROXY header"


# --- a real HAProxy --------------------------------------------------------------------------

HAPROXY_CONFIG = """\
global
    nbthread 1

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend smtp
    bind fd@{fd}
    default_backend mailgate

backend mailgate
    balance roundrobin
    server mg1 127.0.0.1:{first} send-proxy-v2
    server mg2 127.0.0.1:{second} send-proxy-v2
"""


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Any]:
    """Start haproxy on a listening socket made here (so it accepts as soon as it is up: no waiting)."""
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.skip("haproxy is not installed (.ci/run installs the Debian package)")
    processes: list[subprocess.Popen[bytes]] = []
    sockets: list[socket.socket] = []

    def start(first: int, second: int) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        sockets.append(listener)
        fd = listener.fileno()
        os.set_inheritable(fd, True)
        config = tmp_path / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(fd=fd, first=first, second=second))
        check = subprocess.run(
            [binary, "-c", "-q", "-f", str(config)],
            pass_fds=(fd,),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        with open(tmp_path / "haproxy.log", "wb") as log:
            processes.append(
                subprocess.Popen(
                    [binary, "-f", str(config), "-db"],
                    pass_fds=(fd,),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        return int(listener.getsockname()[1])

    yield start
    for process in processes:
        process.terminate()
        process.wait(30)
    for listener in sockets:
        listener.close()


def test_haproxy_in_front_of_two_gateways_passes_the_real_client(
    make_upstream, start_gateway, ca, haproxy
):
    """Through HAProxy (send-proxy-v2): both gateways audit 127.0.0.2 and allow it; 127.0.0.3 is denied."""
    upstream = make_upstream()
    document = proxied(upstream, ca.ca_file, ["127.0.0.2/32"])
    first, second = start_gateway(document), start_gateway(document)
    port = haproxy(first.port, second.port)

    for _ in range(2):  # round robin: one connection to each gateway
        with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=("127.0.0.2", 0)) as client:
            assert client.sendmail("app@example.com", ["ops@example.net"], BODY) == {}
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=("127.0.0.3", 0)) as client:
        assert client.ehlo("app.test")[0] == 554
    upstream.wait_for(2)

    for gw in (first, second):
        allowed = [e for e in gw.audit.named("session.opened") if e["allowed"]]
        assert [e["client_ip"] for e in allowed] == ["127.0.0.2"]
        assert allowed[0]["proxy_ip"] == "127.0.0.1"
        [result] = gw.audit.named("message.result")
        assert result["client_ip"] == "127.0.0.2" and result["outcome"] == "relayed"
    denied = [e for gw in (first, second) for e in gw.audit.named("session.denied")]
    assert [e["client_ip"] for e in denied] == ["127.0.0.3"]


def test_per_client_connection_limit_counts_the_real_client(make_upstream, start_gateway, ca):
    """max_connections_per_client applies to the header's address, not to the balancer's."""
    document = proxied(make_upstream(), ca.ca_file, ["192.0.2.0/24"])
    document["listener"]["max_connections_per_client"] = 1
    gw = start_gateway(document)
    first = ProxiedSMTP(
        b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n", "127.0.0.1", gw.port, timeout=30
    )
    other = ProxiedSMTP(
        b"PROXY TCP4 192.0.2.8 127.0.0.1 40001 25\r\n", "127.0.0.1", gw.port, timeout=30
    )
    again = ProxiedSMTP(
        b"PROXY TCP4 192.0.2.7 127.0.0.1 40002 25\r\n", "127.0.0.1", gw.port, timeout=30
    )
    try:
        assert first.ehlo("a.test")[0] == 250
        assert other.ehlo("b.test")[0] == 250  # same TCP peer (127.0.0.1), another client
        assert again.ehlo("c.test")[0] == 421  # the same client a second time
    finally:
        for client in (first, other):
            client.quit()
        again.close()
