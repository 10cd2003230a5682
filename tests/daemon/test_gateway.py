"""The Gateway as the listener's host (gateway/inbound/host.py), without sockets."""

from __future__ import annotations

import inspect

import pytest
from twisted.internet.testing import MemoryReactorClock

from gateway.config.model import Rate
from gateway.daemon.gateway import Gateway
from gateway.inbound.connections import Connections
from gateway.inbound.host import ListenerHost, SessionHost
from gateway.testing.audit import CapturedAudit
from tests.inbound.fakes import config


@pytest.fixture
def gateway(tmp_path) -> Gateway:
    document = {"queue": {"path": str(tmp_path / "spool")}}
    return Gateway(MemoryReactorClock(), config(document), CapturedAudit().log())


@pytest.mark.parametrize("protocol", [SessionHost, ListenerHost])
def test_gateway_has_every_member_of_the_host_protocols(gateway, protocol):
    """Each member the inbound side may ask for exists on the Gateway, methods with their parameters."""
    for name, member in vars(protocol).items():
        if name.startswith("_"):
            continue
        assert hasattr(gateway, name), name
        if inspect.isfunction(member):
            wanted = list(inspect.signature(member).parameters)[1:]
            assert list(inspect.signature(getattr(gateway, name)).parameters) == wanted, name


def test_connections_are_the_inbound_accounting(gateway):
    """The open-session gauge reads the inbound connection accounting, not a dict on the Gateway."""
    assert isinstance(gateway.connections, Connections)
    assert not hasattr(gateway, "sessions") and not hasattr(gateway, "clients")
    gateway.connections.admit(object(), "127.0.0.1")  # type: ignore[arg-type]
    assert "mailgate_sessions_active 1.0" in gateway.metrics.render().decode()


def test_rate_decision_runs_on_the_reactor_clock(gateway):
    """rate_allowed takes from the rule's bucket at the reactor's time."""
    rate = Rate(1, 60.0, "1/minute")
    assert gateway.rate_allowed("all", rate) and not gateway.rate_allowed("all", rate)
    gateway.reactor.advance(60)
    assert gateway.rate_allowed("all", rate)
