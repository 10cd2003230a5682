"""The bench's side of the sink: start bench/sink.py as a child, ask it for counts, wait on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import procfs
from errors import BenchError

HERE = os.path.dirname(os.path.abspath(__file__))


class SinkProcess:
    def __init__(self, cert_file: str, key_file: str, user: str, password: str) -> None:
        self.process = subprocess.Popen(
            procfs.tied_to_parent(
                [sys.executable, os.path.join(HERE, "sink.py"), cert_file, key_file, user]
            ),
            env=dict(os.environ, BENCH_SINK_PASSWORD=password),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        first = self._read()
        self.plain_port: int = first["plain"]
        self.tls_port: int = first["tls"]
        self.pid: int = first["pid"]

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait(10)
            raise BenchError(f"the sink (bench/sink.py) exited with {code}")
        return json.loads(line)

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._read()

    def stats(self) -> dict[str, Any]:
        return self._ask({"cmd": "stats"})

    def wait_for(self, count: int, timeout: float) -> dict[str, Any]:
        """Block until the sink has counted `count` messages in all; the answer has ``at``
        (CLOCK_MONOTONIC of the count, comparable with this process's time.monotonic())."""
        answer = self._ask({"cmd": "wait", "count": count, "timeout": timeout})
        if not answer.get("ok"):
            raise BenchError(
                f"the sink counted {answer['messages']} of {count} messages within {timeout:g} s"
            )
        return answer

    def cpu_seconds(self) -> float:
        return procfs.cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()  # the sink exits when its control pipe closes
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
