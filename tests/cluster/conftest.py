"""Fixtures for ``[cluster]``: a real redis-server per test, and fake Redis servers that misbehave."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gateway.testing.redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path: Any) -> Iterator[RedisServer]:
    server = RedisServer(str(tmp_path))
    server.start()
    yield server
    server.stop()


def cluster_table(url: str, **overrides: Any) -> dict[str, Any]:
    return {"redis_url": url, "timeout": 0.5, **overrides}


class FakeRedis:
    """A TCP server on a loopback port 0 that answers each connection with `behaviour`."""

    def __init__(self, behaviour: Callable[[socket.socket], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.behaviour = behaviour
        self.connections: list[socket.socket] = []
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self.behaviour, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        for conn in self.connections:
            conn.close()


@pytest.fixture
def fake_redis() -> Iterator[Callable[[Callable[[socket.socket], None]], FakeRedis]]:
    made: list[FakeRedis] = []

    def make(behaviour: Callable[[socket.socket], None]) -> FakeRedis:
        fake = FakeRedis(behaviour)
        made.append(fake)
        return fake

    yield make
    for fake in made:
        fake.close()
