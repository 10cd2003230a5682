"""Issue 12, item 3: every failure on the outbound path ends in a reply, a record and a free slot.

A real gateway (relay mode and queue mode, ``max_connections = 1``) talks to a
`FaultyUpstream` that misbehaves once at a chosen step of the connection (refused,
closed, reset, garbage, a 4xx, a stall), or our own code raises `RuntimeError` at a
chosen step (the protocol's byte handler, the peer check, the dialogue, AUTH, the pool,
MAIL/RCPT/DATA, the body, the final dot). For each:

- relay: the app gets a reply (bounded by the client's timeout: a hang fails), exactly one
  ``message.result`` is written, never "relayed";
- queue: the app's message is queued, the round is recorded and the message deferred
  (``message.deferred``), then retried;
- a ``gateway.error`` exactly when the fault was our bug;
- afterwards, with the upstream healthy, a good message goes through on the one
  connection the pool may open (a leaked slot would make it wait and fail "busy").

Every step is enumerated (parametrize); hypothesis draws sequences of faults for one
gateway (`test_any_sequence_of_faults_leaves_the_gateway_whole`).
"""

from __future__ import annotations

import copy
import smtplib
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config.toml import parse
from gateway.outbound import connector as connector_module
from gateway.outbound.connector import UpstreamConnector, UpstreamSession
from gateway.outbound.pool import UpstreamPool
from gateway.outbound.protocol import ProtocolFactory, UpstreamProtocol
from gateway.outbound.tls import UpstreamTLS
from gateway.outbound.transaction import Transaction
from gateway.queue import attempt as attempt_module
from gateway.testing.audit import CapturedAudit
from gateway.testing.pki import ServerCert
from tests.conftest import PASSWORD, USER
from tests.security.faulty_upstream import KINDS, STEPS, Fault, FaultyUpstream, applicable

TIMEOUT = 1.5  # the upstream's command and data timeouts: a stall costs this much (0.5 s let
# an earlier step time out on a loaded machine, so a stall at the dot never came: a flake)
APP_DEADLINE = 15  # the app waits at most this long for any reply: a hang fails the test


def body(n: int) -> bytes:
    return (
        f"From: app@example.com\r\nTo: ops@example.net\r\nSubject: fault {n}\r\n"
        f"Message-ID: <fault{n}@example.com>\r\n\r\nline one\r\nline two\r\nline three\r\n"
    ).encode()


# --- faults: the upstream's, and our own code's -----------------------------------------------


@dataclass(frozen=True)
class Bug:
    """`RuntimeError` from our own code: the `call`-th call of `owner.attribute` after arming."""

    name: str
    owner: Any
    attribute: str
    call: int = 1
    modes: tuple[str, ...] = ("relay", "queue")
    ours: bool = True  # a gateway.error is due (False: it fails closed as an upstream failure)

    def __str__(self) -> str:
        return f"{self.name}#{self.call}"


def _body_regions(original: Callable[..., Any], call: int, fired: list[str]) -> Callable[..., Any]:
    def read_lines(*args: Any, **kwargs: Any) -> Iterator[bytes]:
        for index, region in enumerate(original(*args, **kwargs), 1):
            if index == call and not fired:
                fired.append("read_lines")
                raise RuntimeError("injected fault")
            yield region

    return read_lines


BUGS = [
    # Before TLS, Twisted closes with the exception as the reason; after it, the TLS layer says
    # only ConnectionLost: the reply handler below the transport's callback is guarded instead.
    *(Bug("UpstreamProtocol.dataReceived", UpstreamProtocol, "dataReceived", k) for k in (1, 2, 3)),
    *(
        Bug("UpstreamProtocol.replies", UpstreamProtocol, "replies_received", k, modes)
        for k in range(1, 8)
        for modes in [("relay", "queue") if k in (1, 4, 6) else ("relay",)]
    ),
    Bug("UpstreamTLS.check_peer", UpstreamTLS, "check_peer", ours=False),
    Bug("UpstreamConnector._dialogue", UpstreamConnector, "_dialogue"),
    Bug("connector.authenticate_password", connector_module, "authenticate_password"),
    Bug("UpstreamPool.acquire", UpstreamPool, "acquire"),
    Bug("Transaction._mail", Transaction, "_mail"),
    *(Bug("UpstreamSession.command", UpstreamSession, "command", k) for k in (1, 2, 3)),
    Bug("Transaction.data", Transaction, "data"),
    Bug("UpstreamSession.write", UpstreamSession, "write", modes=("relay",)),
    Bug("attempt.read_lines", attempt_module, "read_lines", modes=("queue",)),  # one region
    Bug("Transaction.send_body", Transaction, "send_body", modes=("queue",)),
    Bug("UpstreamSession.end_data", UpstreamSession, "end_data"),
    Bug("Transaction.end", Transaction, "end"),
]


@contextmanager
def injected(bug: Bug) -> Iterator[list[str]]:
    """`bug` armed for the block; the list gets an entry when it fired (once)."""
    fired: list[str] = []
    original = getattr(bug.owner, bug.attribute)
    if bug.attribute == "read_lines":
        replacement: Any = _body_regions(original, bug.call, fired)
    else:
        calls = [0]

        def replacement(*args: Any, **kwargs: Any) -> Any:
            if bug.owner is UpstreamProtocol and args[0] not in fresh:
                return original(*args, **kwargs)  # the last message's connection, saying 221
            calls[0] += 1
            if calls[0] == bug.call and not fired:
                fired.append(bug.name)
                raise RuntimeError("injected fault")
            return original(*args, **kwargs)

    fresh: weakref.WeakSet[UpstreamProtocol] = weakref.WeakSet()
    build = ProtocolFactory.buildProtocol

    def built(factory: ProtocolFactory, addr: object) -> UpstreamProtocol:
        protocol = build(factory, addr)
        fresh.add(protocol)
        return protocol

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ProtocolFactory, "buildProtocol", built)
        patch.setattr(bug.owner, bug.attribute, replacement)
        yield fired


def upstream_faults(tls: str) -> list[Fault]:
    return [Fault(s, k) for s in STEPS for k in KINDS if applicable(Fault(s, k), tls)]


def quick(fault: Fault | Bug) -> bool:
    return not (isinstance(fault, Fault) and fault.kind == "stall")


# --- one gateway per (mode, TLS mode), shared by the module ------------------------------------


@dataclass
class Rig:
    mode: str
    upstream: FaultyUpstream
    audit: CapturedAudit
    gateway: Any
    port: int
    reactor: Any
    sent: int = 0

    def count(self, name: str) -> int:
        return sum(1 for line in list(self.audit.lines) if f'"event":"{name}"' in line)


@pytest.fixture(scope="module")
def rigs(
    reactor: Any, server_cert: ServerCert, ca: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str, str], Rig]]:
    from twisted.internet import defer, threads

    from gateway.daemon.gateway import Gateway

    made: dict[tuple[str, str], Rig] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MAILGATE_TEST_PASSWORD", PASSWORD)

        def rig(mode: str, tls: str) -> Rig:
            if (mode, tls) in made:
                return made[mode, tls]
            upstream = FaultyUpstream(server_cert.server_context(), tls)
            table = {
                "host": "127.0.0.1",  # an IP literal: no name resolution per connection
                "port": upstream.port,
                "tls": tls,
                "username": USER,
                "password_env": "MAILGATE_TEST_PASSWORD",
                "ca_file": ca.ca_file,
                "connect_timeout": 5,
                "command_timeout": TIMEOUT,
                "data_timeout": TIMEOUT,
                "max_connections": 1,
                "pool_idle_timeout": 0,  # every message opens its connection: each step happens
            }
            rule: dict[str, Any] = {"name": "all", "action": "relay", "upstream": "up"}
            document: dict[str, Any] = {
                "listener": {"listen": "127.0.0.1:0", "hostname": "mailgate.test"},
                "upstreams": {"up": table},
                "rules": [rule],
            }
            if mode == "queue":
                rule["delivery"] = "queue"
                spool = str(tmp_path_factory.mktemp("spool"))
                document["queue"] = {"path": spool, "min_backoff": 60, "max_backoff": 60}
            config = parse(copy.deepcopy(document), "faults.toml")
            audit = CapturedAudit()

            def go() -> Any:
                gateway = Gateway(reactor, config, audit.log())
                d = defer.Deferred.fromCoroutine(gateway.start())
                return d.addCallback(lambda port: (gateway, port))

            gateway, port = threads.blockingCallFromThread(reactor, go)
            made[mode, tls] = Rig(mode, upstream, audit, gateway, port, reactor)
            return made[mode, tls]

        yield rig
        for made_rig in made.values():
            threads.blockingCallFromThread(
                reactor, lambda g=made_rig.gateway: defer.Deferred.fromCoroutine(g.stop())
            )
            made_rig.upstream.stop()


# --- the app's side ---------------------------------------------------------------------------


def submit(port: int, content: bytes) -> tuple[int, bytes]:
    """As an app: one message; the first reply that is not a go-ahead (or the final one)."""
    client = smtplib.SMTP("127.0.0.1", port, timeout=APP_DEADLINE)
    try:
        client.ehlo("app.test")
        for command in ("MAIL FROM:<app@example.com>", "RCPT TO:<ops@example.net>"):
            code, text = client.docmd(command)
            if code != 250:
                return code, text
        code, text = client.docmd("DATA")
        if code != 354:
            return code, text
        client.send(content + b".\r\n")
        return client.getreply()
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


# --- the property, for one fault ----------------------------------------------------------------


def faulty_attempt(rig: Rig, fault: Fault | Bug) -> None:
    """One message meets `fault`: a reply, the records, and the upstream healthy again after."""
    errors = rig.count("gateway.error")
    results = rig.count("message.result")
    rig.sent += 1
    n = rig.sent
    if isinstance(fault, Fault):
        rig.upstream.arm(fault)
        try:
            code, text = submit(rig.port, body(n))
            if rig.mode == "queue":  # the delivery runs after the 250: heal after its round
                delivered_once(rig, n)
        finally:
            fired = [str(rig.upstream.fired)] if rig.upstream.fired else []
            rig.upstream.heal()
        ours = False
    else:
        with injected(fault) as fired:
            code, text = submit(rig.port, body(n))
            if rig.mode == "queue":  # the delivery runs after the 250: keep the bug armed for it
                delivered_once(rig, n)
        ours = fault.ours
    assert fired, f"{fault} never happened"
    if rig.mode == "relay":
        assert 400 <= code < 500, (fault, code, text)
        [result] = rig.audit.wait_for("message.result", results + 1)[results:]
        assert result["outcome"] in ("deferred", "failed"), (fault, result)
    else:
        assert code == 250, (fault, code, text)
        queued = rig.audit.wait_until("message.queued", message_id=f"<fault{n}@example.com>")
        queue_id = queued["queue_id"]
        deferred = rig.audit.wait_until("message.deferred", queue_id=queue_id)
        assert deferred["recipients"] == ["ops@example.net"], (fault, deferred)
        attempt = rig.audit.wait_until("delivery.attempt", queue_id=queue_id)
        assert [r["result"] for r in attempt["recipients"]] == ["deferred"], (fault, attempt)
    if ours:
        rig.audit.wait_for("gateway.error", errors + 1)
    assert rig.count("gateway.error") == errors + (1 if ours else 0), (fault, rig.audit.text)

    if rig.mode == "queue":  # the operator's "queue retry": the deferred message goes now
        retry(rig, queue_id)
        done = rig.audit.wait_until("message.result", queue_id=queue_id)
        assert done["outcome"] == "delivered", (fault, done)
    assert rig.count("message.result") == results + 1, (fault, rig.audit.named("message.result"))


def delivered_once(rig: Rig, n: int) -> None:
    """Wait for the first delivery round of queued message `n`."""
    queued = rig.audit.wait_until("message.queued", message_id=f"<fault{n}@example.com>")
    rig.audit.wait_until("delivery.attempt", queue_id=queued["queue_id"])


def good_message(rig: Rig) -> None:
    """A healthy message goes through on the pool's one connection (no slot was leaked)."""
    results = rig.count("message.result")
    errors = rig.count("gateway.error")
    received = len(rig.upstream.messages)
    rig.sent += 1
    code, text = submit(rig.port, body(rig.sent))
    assert code == 250, (code, text)
    rig.upstream.wait_messages(received + 1)
    [result] = rig.audit.wait_for("message.result", results + 1)[results:]
    assert result["outcome"] in ("relayed", "delivered"), result
    assert rig.count("gateway.error") == errors


def retry(rig: Rig, queue_id: str) -> None:
    from twisted.internet import threads

    from gateway.queue.spool import ACTIVE, DEFERRED

    def now() -> None:
        rig.gateway.spool.move(queue_id, DEFERRED, ACTIVE, durable=False)
        rig.gateway.runner.submitted(queue_id)

    threads.blockingCallFromThread(rig.reactor, now)


# --- every step, enumerated --------------------------------------------------------------------

# Every upstream fault at every step, in both modes (and the start of implicit TLS in relay).
# A stall costs TIMEOUT: in queue mode only where the queue has its own part (body, dot).
# Our own bugs: in the modes whose code they are in.
CASES = [
    *(("relay", "starttls", f) for f in upstream_faults("starttls")),
    *(
        ("relay", "implicit", f)
        for f in upstream_faults("implicit")
        if f.step in ("connect", "handshake", "greeting")
    ),
    *(
        ("queue", "starttls", f)
        for f in upstream_faults("starttls")
        if f.kind != "stall" or f.step in ("body", "dot")
    ),
    *((m, "starttls", b) for b in BUGS for m in b.modes),
]


@pytest.mark.parametrize(("mode", "tls", "fault"), CASES, ids=lambda v: str(v))
def test_a_fault_at_any_step_ends_in_a_reply_a_record_and_a_free_slot(rigs, mode, tls, fault):
    """Prevents any outbound failure from hanging the app, losing its record or leaking a slot."""
    rig = rigs(mode, tls)
    faulty_attempt(rig, fault)
    good_message(rig)


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    mode=st.sampled_from(["relay", "queue"]),
    faults=st.lists(
        st.sampled_from([f for f in upstream_faults("starttls") if quick(f)] + BUGS),
        min_size=2,
        max_size=3,
    ),
)
def test_any_sequence_of_faults_leaves_the_gateway_whole(rigs, mode, faults):
    """Prevents faults from adding up: after any run of them, one connection still carries mail."""
    rig = rigs(mode, "starttls")
    for fault in faults:
        if isinstance(fault, Bug) and mode not in fault.modes:
            continue
        faulty_attempt(rig, fault)
    good_message(rig)
