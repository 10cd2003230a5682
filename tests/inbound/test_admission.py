"""Unit tests of gateway/inbound/admission.py: which clients may use the gateway."""

from __future__ import annotations

import ipaddress

from gateway.inbound.admission import admit, client_key, proxy_trusted
from gateway.smtp import replies
from tests.inbound.fakes import config


def test_allowed_client():
    """A client inside listener.allowed_clients is admitted, with its parsed address."""
    admission = admit(config(), "127.0.0.1")
    assert admission.allowed and admission.refusal is None and admission.proxy == {}
    assert admission.address == ipaddress.ip_address("127.0.0.1")


def test_ipv4_mapped_client_is_its_ipv4_address():
    """::ffff:127.0.0.1 is judged as 127.0.0.1."""
    admission = admit(config(), "::ffff:127.0.0.1")
    assert admission.allowed and admission.address == ipaddress.ip_address("127.0.0.1")


def test_client_outside_allowed_clients_is_denied():
    """Outside listener.allowed_clients: denied with 554 5.7.1, the setting named."""
    admission = admit(config(), "192.0.2.7")
    assert not admission.allowed and admission.limit == "listener.allowed_clients"
    assert admission.refusal == replies.GREETING_DENIED


def test_unparsable_client_is_denied():
    """A peer that is not an IP address (a UNIX socket, say) is denied."""
    admission = admit(config(), "unknown")
    assert not admission.allowed and admission.address is None
    assert admission.refusal == replies.GREETING_DENIED


def test_proxied_client_names_the_balancer():
    """Behind a PROXY header the decision is on the header's client; the event names the balancer."""
    admission = admit(config(), "127.0.0.9", proxied=True, proxy_peer=("127.0.0.1", 5000))
    assert admission.allowed and admission.proxy == {"proxy_ip": "127.0.0.1", "proxy_port": 5000}


def test_missing_proxy_header_is_denied():
    """listener.proxy_protocol and no header yet: denied, the header reported missing."""
    admission = admit(config(), "127.0.0.1", proxied=True)
    assert not admission.allowed and admission.limit == "listener.proxy_protocol"
    assert admission.proxy == {"proxy_header": "missing"}
    assert admission.refusal == replies.GREETING_DENIED


def test_invalid_proxy_header_is_denied_with_its_own_reply():
    """An invalid PROXY header: denied with the PROXY refusal."""
    admission = admit(config(), "127.0.0.1", proxied=True, proxy_rejected=True)
    assert admission.proxy == {"proxy_header": "invalid"}
    assert admission.refusal == replies.PROXY_HEADER_INVALID


def test_a_peer_outside_proxy_trusted_is_denied_with_its_own_reply():
    """An untrusted peer that sent bytes: denied on its own address, limit proxy_trusted, 421."""
    admission = admit(config(), "127.0.0.1", proxied=True, proxy_untrusted=True)
    assert not admission.allowed and admission.limit == "listener.proxy_trusted"
    assert admission.proxy == {"proxy_header": "untrusted"}
    assert admission.refusal == replies.PROXY_UNTRUSTED


def test_proxy_trusted_is_decided_on_the_peer_address():
    """Inside listener.proxy_trusted (a mapped IPv4 peer too) or not; a non-IP peer is not."""
    listener = config(proxy_protocol=True, proxy_trusted=["10.0.0.5/32"]).listener
    assert proxy_trusted(listener, "10.0.0.5") and proxy_trusted(listener, "::ffff:10.0.0.5")
    assert not proxy_trusted(listener, "10.0.0.6") and not proxy_trusted(listener, "unknown")


def test_client_key_is_one_spelling_per_address():
    """The per-client limit counts ::ffff:a.b.c.d as a.b.c.d, IPv6 in its short form."""
    assert client_key("::ffff:10.20.5.7") == client_key("::FFFF:0A14:0507") == "10.20.5.7"
    assert client_key("2001:DB8:0::7") == "2001:db8::7" and client_key("unknown") == "unknown"
