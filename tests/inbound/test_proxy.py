"""The PROXY header reader over an in-memory transport: split headers, refusals."""

from __future__ import annotations

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from gateway.inbound.proxy import ProxyListenerFactory, could_be_header

V1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n"


class Recorder(Protocol):
    def __init__(self, trusted: bool = True) -> None:
        self.received = b""
        self.peers: list[str] = []
        self.refused = 0
        self.untrusted = 0
        self.headers = 0  # complete headers reported (before any data passes on)
        self.proxy_peer_trusted = trusted  # as the listener decides from listener.proxy_trusted

    def proxy_header_received(self) -> None:
        self.headers += 1

    def proxy_peer_untrusted(self) -> None:
        self.untrusted += 1
        self.transport.write(b"421 4.7.0 not from you\r\n")
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += data
        self.peers.append(self.transport.getPeer().host)

    def proxy_header_invalid(self) -> None:
        self.refused += 1
        self.transport.write(b"421 4.7.0 refused\r\n")
        self.transport.loseConnection()


def connect(trusted: bool = True) -> tuple[object, Recorder, StringTransport]:
    recorder = Recorder(trusted)
    factory = ProxyListenerFactory(Factory.forProtocol(lambda: recorder))
    wrapper = factory.buildProtocol(None)
    transport = StringTransport()
    wrapper.makeConnection(transport)
    return wrapper, recorder, transport


def test_a_header_split_byte_by_byte_is_still_read():
    """Twisted's wrapper needs 16 bytes at once; the reader gathers them first."""
    wrapper, recorder, transport = connect()
    for i in range(len(V1)):
        wrapper.dataReceived(V1[i : i + 1])
    assert recorder.headers == 1 and recorder.received == b""  # reported before any command
    wrapper.dataReceived(b"EHLO app\r\n")
    assert recorder.received == b"EHLO app\r\n"
    assert recorder.peers == ["192.0.2.7"]
    assert not transport.disconnecting


def test_a_command_instead_of_a_header_is_answered_and_closed():
    """Plain SMTP on a PROXY listener gets the listener's refusal, not a silent drop."""
    wrapper, recorder, transport = connect()
    wrapper.dataReceived(b"EHLO app\r\n")
    assert recorder.refused == 1 and recorder.received == b""
    assert transport.value() == b"421 4.7.0 refused\r\n" and transport.disconnecting


def test_a_short_command_is_refused_at_once():
    """Fewer than 16 bytes that cannot start a header are refused without waiting for more."""
    wrapper, recorder, transport = connect()
    wrapper.dataReceived(b"QUIT\r\n")
    assert recorder.refused == 1 and transport.disconnecting


def test_a_malformed_v1_header_is_refused():
    """A line that starts like a header but does not parse is refused."""
    wrapper, recorder, transport = connect()
    wrapper.dataReceived(b"PROXY TCP4 not-an-address 198.51.100.1 1 2\r\n")
    assert recorder.refused == 1 and transport.disconnecting


def test_could_be_header():
    """Prefixes of either signature may still be headers; anything else may not."""
    assert could_be_header(b"PRO") and could_be_header(b"\r\n\r\n\x00")
    assert not could_be_header(b"EHLO") and not could_be_header(b"PROXX")


def test_a_v1_header_with_a_bad_port_is_refused():
    """A port that is not a number is a refusal, not an exception in the reactor."""
    wrapper, recorder, transport = connect()
    wrapper.dataReceived(b"PROXY TCP4 192.0.2.7 198.51.100.1 http 25\r\n")
    assert recorder.refused == 1 and transport.disconnecting


def test_a_v2_header_names_the_client():
    """A binary v2 header (TCP over IPv4) in one read gives the client's address."""
    import struct

    body = bytes([192, 0, 2, 9, 198, 51, 100, 1]) + struct.pack("!HH", 40001, 25)
    header = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body
    wrapper, recorder, _ = connect()
    wrapper.dataReceived(header + b"EHLO app\r\n")
    assert recorder.peers == ["192.0.2.9"] and recorder.received == b"EHLO app\r\n"


def test_a_peer_outside_proxy_trusted_is_refused_before_its_header_is_parsed():
    """Not a balancer: its first bytes are refused, a valid header or not, and nothing passes on."""
    wrapper, recorder, transport = connect(trusted=False)
    wrapper.dataReceived(V1 + b"EHLO a\r\n")
    wrapper.dataReceived(b"MAIL FROM:<a@example.com>\r\n")
    assert recorder.untrusted == 1 and recorder.refused == 0 and recorder.received == b""
    assert transport.value().startswith(b"421 4.7.0") and wrapper.getPeer().host != "192.0.2.7"
