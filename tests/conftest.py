"""Shared fixtures: a reactor thread, a throwaway CA, real upstreams, a real gateway.

Everything binds 127.0.0.1 port 0. Tests talk to the gateway with smtplib from
the test thread while the Twisted reactor runs in a background thread.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.config.toml import parse
from gateway.testing.audit import CapturedAudit
from gateway.testing.pki import ServerCert, ThrowawayCA
from gateway.testing.submission import SubmissionServer

PASSWORD = "s3cret-Pa55word-never-logged"


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables the CLI fits to the terminal are as wide in every test process (xdist workers too)."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("LINES", "50")


USER = "relay@example.test"


@pytest.fixture(scope="session")
def reactor() -> Iterator[Any]:
    from twisted.internet import reactor as global_reactor

    thread = threading.Thread(
        target=global_reactor.run,
        kwargs={"installSignalHandlers": False},
        name="reactor",
        daemon=True,
    )
    thread.start()
    yield global_reactor
    global_reactor.callFromThread(global_reactor.stop)
    thread.join(10)


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayCA:
    return ThrowawayCA(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="session")
def server_cert(ca: ThrowawayCA) -> ServerCert:
    return ca.issue("upstream", "localhost", "127.0.0.1")


@pytest.fixture
def make_upstream(server_cert: ServerCert) -> Iterator[Callable[..., SubmissionServer]]:
    servers: list[SubmissionServer] = []

    def make(
        tls: str = "starttls",
        cert: ServerCert | None = None,
        users: dict[str, str] | None = None,
        context: Any = None,
    ) -> SubmissionServer:
        context = context or (cert or server_cert).server_context()
        server = SubmissionServer(
            tls, context if tls != "none" else None, users or {USER: PASSWORD}
        )
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def upstream_table(server: SubmissionServer, ca_file: str, **overrides: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "host": "localhost",
        "port": server.port,
        "tls": "implicit" if server.tls == "implicit" else "starttls",
        "username": USER,
        "password_env": "MAILGATE_TEST_PASSWORD",
        "ca_file": ca_file,
        "connect_timeout": 5,
        "command_timeout": 10,
        "data_timeout": 10,
    }
    table.update(overrides)
    return table


def relay_all(upstream: dict[str, Any], **listener: Any) -> dict[str, Any]:
    """A config document: loopback listener, every recipient relayed to `upstream`."""
    return {
        "listener": {
            "listen": "127.0.0.1:0",
            "hostname": "mailgate.test",
            "shutdown_grace": 2,
            **listener,
        },
        "upstreams": {"up": upstream},
        "rules": [{"name": "all", "action": "relay", "upstream": "up"}],
    }


@dataclass
class RunningGateway:
    port: int
    audit: CapturedAudit
    gateway: Any
    reactor: Any

    stopped: bool = False

    def stop(self) -> None:
        """Stop the gateway (once; the fixture's teardown calls it again): pooled upstream
        sessions are QUIT, so a test can then wait for the upstream to see them end."""
        from twisted.internet import defer, threads

        if self.stopped:
            return
        self.stopped = True
        threads.blockingCallFromThread(
            self.reactor, lambda: defer.Deferred.fromCoroutine(self.gateway.stop())
        )


@pytest.fixture
def start_gateway(
    reactor: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[dict[str, Any]], RunningGateway]]:
    from twisted.internet import defer, threads

    from gateway.daemon.gateway import Gateway

    monkeypatch.setenv("MAILGATE_TEST_PASSWORD", PASSWORD)
    running: list[RunningGateway] = []

    def start(document: dict[str, Any]) -> RunningGateway:
        config = parse(copy.deepcopy(document), "test.toml")
        audit = CapturedAudit()

        def go() -> Any:
            gateway = Gateway(reactor, config, audit.log())
            d = defer.Deferred.fromCoroutine(gateway.start())
            return d.addCallback(lambda port: (gateway, port))

        gateway, port = threads.blockingCallFromThread(reactor, go)
        handle = RunningGateway(port, audit, gateway, reactor)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        handle.stop()
