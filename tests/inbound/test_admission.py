"""Unit tests of gateway/inbound/admission.py: which clients may use the gateway."""

from __future__ import annotations

import ipaddress

from gateway.inbound.admission import admit
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
