"""Issue 12 item 9: listener AUTH — throttling, its own hash pool, unknown names that cost the same.

Over real sockets: failed AUTH from one client (or for one name from one client) waits longer
and longer before its answer — right or wrong, so the wait tells nothing — and then gets
``454 4.7.0`` without a hash check; a client that did not fail still authenticates (no lockout
an attacker can cause). Structural: an unknown name is checked against a dummy with the scheme
and parameters of a configured app's hash, made at start-up and on reload; the hash checks run
in a bounded pool of their own, and a spool commit goes through while that pool is saturated.
The known-vs-unknown timing figure is measured by ``bench/auth_timing.py``, not here.
"""

from __future__ import annotations

import base64
import copy
import smtplib
import socket
import threading
from typing import Any

import bcrypt
import pytest
from argon2 import PasswordHasher
from twisted.internet import defer, threads

from gateway.config.toml import parse
from gateway.policy import passwords
from tests.conftest import relay_all, upstream_table
from tests.integration.queueing import Upstream, queue_document

PASSWORD = "billing-app-password-123"
ARGON2 = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
BCRYPT = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=5)).decode()
SCRYPT = passwords.make_hash(PASSWORD, "scrypt")


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def apps_document(upstream: Any, ca_file: str, **apps: str) -> dict[str, Any]:
    document = relay_all(upstream_table(upstream, ca_file))
    document["apps"] = {name: {"password_hash": h} for name, h in apps.items()}
    return document


def auth(port: int, user: str, password: str, source: str = "127.0.0.1") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0)) as client:
        client.ehlo("app.test")
        return client.docmd("AUTH", f"PLAIN {plain(user, password)}")


@pytest.fixture
def instant_pauses(monkeypatch):
    """The gateway's pauses recorded and skipped (a test must not wait for them)."""
    asked: list[float] = []

    def start(gw: Any) -> list[float]:
        def pause(seconds: float) -> defer.Deferred[None]:
            asked.append(seconds)
            return defer.succeed(None)

        monkeypatch.setattr(gw.gateway, "pause", pause)
        return asked

    return start


# --- throttle replies over real sockets ---------------------------------------------------------


def test_failures_for_one_app_from_one_client_grow_delays_then_454(
    make_upstream, start_gateway, ca, instant_pauses
):
    """Wrong passwords for one app: growing waits, then 454 4.7.0 even for the right one,
    while the same app from another address still gets in."""
    gw = start_gateway(apps_document(make_upstream(), ca.ca_file, billing=SCRYPT))
    pauses = instant_pauses(gw)
    codes = [auth(gw.port, "billing", f"guess-{n}")[0] for n in range(12)]
    first_454 = codes.index(454)
    assert set(codes[:first_454]) == {535} and set(codes[first_454:]) == {454}
    assert 2 <= first_454 <= 10
    # growing waits before the answers (each less the hash check's own time, so not exact)
    assert len(pauses) >= 3 and max(pauses) >= 4 * min(pauses)
    assert all(later > earlier - 0.5 for earlier, later in zip(pauses, pauses[1:]))
    throttled = gw.audit.named("session.auth_failed")[-1]
    assert throttled["reason"] == "throttled"
    code, text = auth(gw.port, "billing", PASSWORD)
    assert (code, text[:5]) == (454, b"4.7.0")  # the throttled address: no check, no answer
    assert auth(gw.port, "billing", PASSWORD, source="127.0.0.2")[0] == 235  # no lockout


def test_spraying_names_from_one_client_is_throttled_by_address(
    make_upstream, start_gateway, ca, instant_pauses
):
    """Many names, one wrong password each, from one address: the address is throttled."""
    gw = start_gateway(apps_document(make_upstream(), ca.ca_file, billing=SCRYPT))
    instant_pauses(gw)
    codes = [auth(gw.port, f"name-{n}", "guess")[0] for n in range(30)]
    assert codes[0] == 535 and codes[-1] == 454
    assert auth(gw.port, "billing", PASSWORD)[0] == 454
    assert auth(gw.port, "billing", PASSWORD, source="127.0.0.3")[0] == 235


def test_a_throttled_answer_waits_whether_the_password_is_right_or_wrong(
    make_upstream, start_gateway, ca, monkeypatch
):
    """After failures the answer waits for the pause, right password or not (no early tell)."""
    gw = start_gateway(apps_document(make_upstream(), ca.ca_file, billing=SCRYPT))
    pending: list[defer.Deferred[None]] = []
    asked = threading.Semaphore(0)

    def pause(seconds: float) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        pending.append(d)
        asked.release()
        return d

    monkeypatch.setattr(gw.gateway, "pause", pause)
    throttle, now = gw.gateway.auth_throttle, gw.gateway.monotonic()
    for _ in range(throttle.settings.free + 1):  # earlier failures from this address
        threads.blockingCallFromThread(gw.reactor, throttle.failed, "127.0.0.1", "billing", now)
    for password, answer in (("wrong", b"535"), (PASSWORD, b"235")):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as raw:
            reader = raw.makefile("rb")
            reader.readline()
            raw.sendall(b"EHLO app.test\r\n")
            while not reader.readline().startswith(b"250 "):
                pass
            raw.sendall(f"AUTH PLAIN {plain('billing', password)}\r\n".encode())
            assert asked.acquire(timeout=30)  # the check is done; the answer waits
            raw.setblocking(False)
            with pytest.raises(BlockingIOError):
                raw.recv(1)  # held until the pause ends
            raw.setblocking(True)
            threads.blockingCallFromThread(gw.reactor, pending[-1].callback, None)
            assert reader.readline().startswith(answer)


# --- structure: the dummy hashes and the hash pool ----------------------------------------------


@pytest.mark.parametrize("stored", [ARGON2, BCRYPT, SCRYPT], ids=["argon2", "bcrypt", "scrypt"])
def test_unknown_names_use_a_dummy_of_the_apps_scheme_and_parameters(
    make_upstream, start_gateway, ca, stored
):
    """The dummy is made at start-up with the configured hash's scheme and parameters."""
    gw = start_gateway(apps_document(make_upstream(), ca.ca_file, billing=stored))
    made = dict(gw.gateway.dummies.by_parameters)  # before any AUTH: not made on first use
    assert list(made) == [passwords.parameters(stored)]
    for name in ("nobody", "billing2", "x" * 64):
        dummy = gw.gateway.dummy_hash(name)
        assert dummy != stored and passwords.parameters(dummy) == passwords.parameters(stored)
    assert gw.gateway.dummies.by_parameters == made


def test_a_reload_makes_dummies_for_new_parameters(make_upstream, start_gateway, ca):
    """One dummy per parameter set in use, made on reload; unknown names spread over them."""
    upstream = make_upstream()
    gw = start_gateway(apps_document(upstream, ca.ca_file, billing=SCRYPT))
    kept = gw.gateway.dummies.by_parameters[passwords.parameters(SCRYPT)]
    new = parse(copy.deepcopy(apps_document(upstream, ca.ca_file, a=SCRYPT, b=BCRYPT)), "n.toml")
    threads.blockingCallFromThread(gw.reactor, gw.gateway.reload, new)
    by = gw.gateway.dummies.by_parameters
    assert set(by) == {passwords.parameters(SCRYPT), passwords.parameters(BCRYPT)}
    assert by[passwords.parameters(SCRYPT)] == kept
    used = {passwords.parameters(gw.gateway.dummy_hash(f"n{i}")) for i in range(64)}
    assert used == set(by)


def test_hash_checks_have_a_bounded_pool_of_their_own(make_upstream, start_gateway, ca):
    gw = start_gateway(apps_document(make_upstream(), ca.ca_file, billing=SCRYPT))
    pool = gw.gateway.hash_pool
    assert pool is not gw.reactor.getThreadPool()
    assert 1 <= pool.max <= 4


def test_a_spool_commit_goes_through_while_the_hash_pool_is_saturated(
    server_cert, start_gateway, ca, tmp_path, monkeypatch
):
    """An AUTH flood holding every hash thread (and more than the reactor's pool has) does
    not hold up a queue commit: it runs in the reactor's pool."""
    upstream = Upstream(server_cert)
    try:
        document = queue_document(upstream.table(ca.ca_file), str(tmp_path / "spool"))
        document["apps"] = {"billing": {"password_hash": SCRYPT}}
        gw = start_gateway(document)
        release, started = threading.Event(), threading.Semaphore(0)

        def stuck_verify(password_hash: str, password: str) -> bool:
            started.release()
            release.wait(60)
            return False

        monkeypatch.setattr(passwords, "verify", stuck_verify)
        flood = []
        for _ in range(gw.reactor.getThreadPool().max + 2):
            raw = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
            raw.sendall(f"EHLO a\r\nAUTH PLAIN {plain('billing', 'guess')}\r\n".encode())
            flood.append(raw)
        for _ in range(gw.gateway.hash_pool.max):
            assert started.acquire(timeout=30)  # every hash thread is busy
        try:
            with smtplib.SMTP("127.0.0.1", gw.port, timeout=20) as client:
                client.ehlo("app.test")
                client.mail("app@example.com")
                assert client.rcpt("ops@example.net")[0] == 250
                code, text = client.data(b"Subject: commit\r\n\r\nbody\r\n")
            assert code == 250 and b"Queued as" in text
        finally:
            release.set()
            for raw in flood:
                raw.close()
    finally:
        upstream.down()


PARALLEL = 40


def test_parallel_guesses_from_one_address_are_throttled_like_sequential_ones(
    make_upstream, start_gateway, ca
):
    """40 wrong AUTHs for one name sent at the same moment over 40 connections: a check under way
    counts, so at most refuse_pair (8) are hash-checked and the rest get 454 4.7.0."""
    gw = start_gateway(apps_document(make_upstream(), ca.ca_file, billing=SCRYPT))
    socks = []
    for _ in range(PARALLEL):
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=60)
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO app.test\r\n")
        while f.readline()[3:4] == b"-":
            pass
        socks.append((s, f))
    barrier = threading.Barrier(PARALLEL)
    codes: list[int] = []
    lock = threading.Lock()

    def go(s, f, n):
        barrier.wait()
        s.sendall(f"AUTH PLAIN {plain('billing', f'guess-{n}')}\r\n".encode())
        line = f.readline()
        with lock:
            codes.append(int(line[:3]))

    threads = [threading.Thread(target=go, args=(s, f, n)) for n, (s, f) in enumerate(socks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for s, _ in socks:
        s.close()
    assert len(codes) == PARALLEL
    assert codes.count(535) <= 8 and codes.count(454) >= PARALLEL - 8, sorted(codes)
